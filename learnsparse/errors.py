"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad configuration, missing data, or an unreadable checkpoint.

    The message must be complete on one line: it is all the user sees.
    """

    exit_code = 2
