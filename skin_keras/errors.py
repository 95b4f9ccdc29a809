"""The one exception type that means "the user asked for something we cannot do"."""


class UserError(ValueError):
    """Bad input from the user: scripts print its message as one line and exit non-zero
    (`exit_code`: 2, unless a subclass says otherwise)."""

    exit_code = 2
