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


def find_user_error(exc: BaseException | None) -> UserError | None:
    """The UserError behind `exc`, if any: Hydra and OmegaConf wrap what a resolver or a
    `_target_` raised in exceptions of their own."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, UserError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
