"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """Bad input from the user: scripts print its message as one line and exit non-zero
    (`exit_code`: 2, unless a subclass says otherwise)."""

    exit_code = 2


def first_line(error: BaseException) -> str:
    """An exception's message reduced to its first line (its type's name when it has none),
    for one-line user errors that wrap a library's multi-line ones."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
