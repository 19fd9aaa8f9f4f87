"""Memory-aware chunking: the largest chunk of problems whose compiled attack step fits a byte budget.

XLA reports what a compiled program needs (``compiled.memory_analysis()``): its arguments, outputs and
temporaries. For the attack's step over ``n`` problems (the vmapped solver iteration of
:mod:`dlg_jax.attack.engine`, which holds the dummies and the solver state, e.g. L-BFGS's history) that is

    bytes(n) = arguments + outputs + temporaries - aliased  ~=  a + b * n

where ``a`` is what all problems share (the model parameters) and ``b`` what each problem adds. We
compile the step for ``n = 1`` and ``n = 2`` (shapes only, nothing runs), fit ``a`` and ``b``, take
``n = floor((budget - a) / b)`` (at most the number of problems) and verify that size by compiling it
too (the attack then reuses that compiled program); if it does not fit (memory grew faster than
linearly), ``n`` shrinks in proportion to the excess until it does, which may land a little below the
largest size that fits. A budget below ``bytes(1)`` raises :class:`~dlg_jax.errors.DLGInputError`.

Sizes are written ``8GB`` (10^9 bytes), ``512MiB`` (2^20 bytes), ``1.5 GB`` or a plain byte count.
"""

import re

from dlg_jax.errors import DLGInputError

_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40, "k": 10**3, "m": 10**6, "g": 10**9}
_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")


def parse_bytes(value) -> int:
    """A byte count from ``8GB``, ``512MiB``, ``1.5 GB``, ``1000000`` or an int (>= 1)."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE.match(value) if isinstance(value, str) else None
        unit = match.group(2).lower() if match else None
        if unit not in _UNITS:
            raise DLGInputError(f"memory budget must be a size such as 8GB, 512MiB or a byte count, got {value!r}")
        size = int(float(match.group(1)) * _UNITS[unit])
    if size < 1:
        raise DLGInputError(f"memory budget must be at least 1 byte, got {value!r}")
    return size


def format_bytes(size: float) -> str:
    """``1.5 GB``-style text (powers of 1000)."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if size >= scale:
            return f"{size / scale:.3g} {unit}"
    return f"{int(size)} B"


def compiled_bytes(compiled) -> int:
    """Arguments + outputs + temporaries - aliased bytes of a compiled program (its peak footprint)."""
    stats = compiled.memory_analysis()
    return int(stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes
               - stats.alias_size_in_bytes)


def chunk_for_budget(budget: int, problems: int, measure) -> int:
    """A chunk ``n <= problems`` with ``measure(n) <= budget`` (``measure(n)``: bytes of the step over
    ``n`` problems): the largest by the linear fit of the module docstring, verified at ``n``."""
    one = measure(1)
    if one > budget:
        raise DLGInputError(f"memory budget {format_bytes(budget)} is too small for one problem: the attack step "
                            f"needs {format_bytes(one)} for one target x restart; raise --memory-budget")
    if problems == 1:
        return 1
    per_problem = max(measure(2) - one, 1)
    shared = max(one - per_problem, 0)
    chunk = int(min(problems, (budget - shared) // per_problem))
    while chunk > 1:
        need = measure(chunk)
        if need <= budget:
            break
        chunk = max(1, min(chunk - 1, int(chunk * budget / need)))  # the fit was optimistic: shrink
    return max(chunk, 1)
