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


def find_cause(exc: BaseException) -> BaseException:
    """What went wrong behind `exc`: the UserError it wraps if there is one, else its innermost
    cause. Hydra and OmegaConf wrap what a resolver or a `_target_` raised in exceptions of
    their own, with `raise ... from` (a cause) or inside an `except` block (a context); the
    innermost explicit cause is the message that names the problem."""
    seen, behind = set(), exc
    while behind is not None and id(behind) not in seen:  # a UserError anywhere behind it
        if isinstance(behind, UserError):
            return behind
        seen.add(id(behind))
        behind = behind.__cause__ or behind.__context__
    seen.clear()
    while exc.__cause__ is not None and id(exc) not in seen:  # else the innermost explicit cause
        seen.add(id(exc))
        exc = exc.__cause__
    return exc
