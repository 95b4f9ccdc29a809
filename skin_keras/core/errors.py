"""The one exception type that means "the user asked for something we cannot do", and the
one place that says what a full or read-only disk did."""

import errno


class UserError(ValueError):
    """Bad input from the user: scripts print its message as one line and exit non-zero
    (`exit_code`: 2, unless a subclass says otherwise)."""

    exit_code = 2


# What the machine, not the input or the code, did wrong: said in one line, not a traceback.
_ENVIRONMENT = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                errno.EPERM: "operation not permitted", errno.EFBIG: "file too large"}


def environment_error(error: OSError) -> str | None:
    """One line for an OSError the machine caused (a full disk, a read-only or forbidden
    folder), naming the file; None for other OSErrors."""
    what = _ENVIRONMENT.get(error.errno)
    if what is None:
        return None
    where = f": {error.filename}" if error.filename else ""
    full = error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
    advice = "free space, or choose another folder" if full else (
        "choose a folder you can write to")  # A read-only folder is not a full disk.
    return f"{what}{where} ({advice})"


def first_line(error: BaseException) -> str:
    """An exception's message reduced to its first line (its type's name when it has none),
    for one-line user errors that wrap a library's multi-line ones."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
