"""The one exception type the library raises for bad input.

Every check on user-supplied values raises :class:`DLGInputError`, a ``ValueError`` subclass whose
message is a single line naming the bad value and what is allowed. The CLI turns it into that line on
stderr and exit status 2.
"""


class DLGInputError(ValueError):
    """Bad input: the message names the value and what is allowed."""


def check_choice(what: str, value, allowed) -> None:
    """Raise :class:`DLGInputError` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise DLGInputError(f"unknown {what} {value!r}; allowed: {', '.join(map(str, allowed))}")


def check_positive_int(what: str, value) -> int:
    """Raise :class:`DLGInputError` unless ``value`` is an integer >= 1; return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(value, "__index__"):
        raise DLGInputError(f"{what} must be an integer >= 1, got {value!r}")
    if int(value) < 1:
        raise DLGInputError(f"{what} must be an integer >= 1, got {value!r}")
    return int(value)
