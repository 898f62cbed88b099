"""Errors that are the user's to fix: the CLI prints them as one line and exits non-zero."""


class UserError(Exception):
    """Bad configuration, missing data, or an unreadable checkpoint.

    The message must be complete on one line: it is all the user sees.
    """

    exit_code = 2


def first_line(exc: BaseException, limit: int | None = 160) -> str:
    """The first line of an exception's message (its type name when empty), cut to `limit`."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]
