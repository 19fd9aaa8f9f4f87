"""The one exception type the library raises for bad input.

Every check on user-supplied values raises :class:`DLGInputError`, a ``ValueError`` subclass whose
message is a single line naming the bad value and what is allowed. The CLI turns it into that line on
stderr and exit status 2. Messages quote a value through :func:`quote`, which shortens a long one (a
10 000-character sentence is quoted by its start and its length, not in full).
"""

import math

QUOTE_LIMIT = 60


class DLGInputError(ValueError):
    """Bad input: the message names the value and what is allowed."""


def quote(value, limit: int = QUOTE_LIMIT) -> str:
    """``repr(value)``, cut to its first ``limit`` characters and its length when it is longer."""
    text = repr(value)
    if len(text) <= limit:
        return text
    size = f"{len(value)} characters" if isinstance(value, str) else f"{len(text)} characters as text"
    return f"{text[:limit]}... ({size})"


def check_choice(what: str, value, allowed) -> None:
    """Raise :class:`DLGInputError` unless ``value`` is one of ``allowed``."""
    allowed = list(allowed)
    if value not in allowed:
        raise DLGInputError(f"unknown {what} {quote(value)}; allowed: {', '.join(map(str, allowed))}")


def check_number(what: str, value, *, low: float | None = None, low_inclusive: bool = True,
                 high: float | None = None) -> float:
    """``value`` as a float; :class:`DLGInputError` unless it is a finite number (never NaN or +-inf)
    with ``low <= value`` (``low < value`` if not ``low_inclusive``) and ``value < high`` where given."""
    bounds = ([] if low is None else [f"{'>=' if low_inclusive else '>'} {low:g}"]) + \
        ([] if high is None else [f"< {high:g}"])
    allowed = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise DLGInputError(f"{what} must be {allowed}, got {quote(value)}") from None
    ok = (math.isfinite(number) and (low is None or (number >= low if low_inclusive else number > low))
          and (high is None or number < high))
    if not ok:
        raise DLGInputError(f"{what} must be {allowed}, got {quote(value)}")
    return number


def check_positive_int(what: str, value) -> int:
    """Raise :class:`DLGInputError` unless ``value`` is an integer >= 1; return it as ``int``."""
    if isinstance(value, bool) or not isinstance(value, (int,)) and not hasattr(value, "__index__"):
        raise DLGInputError(f"{what} must be an integer >= 1, got {quote(value)}")
    if int(value) < 1:
        raise DLGInputError(f"{what} must be an integer >= 1, got {quote(value)}")
    return int(value)
