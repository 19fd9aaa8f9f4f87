"""Matmul/convolution precision: part of the attack's definition, not of the machine it runs on.

DLG drives the gradient-matching objective to ~1e-8 of ``||dW||^2``; that needs every matmul and
convolution of the victim's gradient, the objective and its second derivative in full float32. On
NVIDIA GPUs XLA runs float32 dots and convolutions in TF32 (a 10-bit mantissa) unless told otherwise;
measured on one H200 (2026-11-26), the default attack then recovered 0 of 8 targets (14 dB) and
8 of 8 (47 dB) at full precision. CPUs always compute float32 in full, so there the setting only
changes the program's annotations.

``PRECISIONS`` (JAX's ``jax.default_matmul_precision`` names):

- ``highest``: full float32 (on GPU: no TF32; on TPU: 6 bf16 passes). The attack's default.
- ``high``:    TF32-like (on TPU: 3 bf16 passes; on GPU XLA runs it as TF32).
- ``default``: the backend's fastest (TF32 on NVIDIA GPUs, 1 bf16 pass on TPUs); ~15% faster
  objective on an H200, and the attack silently fails.
"""

import contextlib
from typing import Iterator

import jax

from dlg_jax.errors import check_choice

PRECISIONS = ("highest", "high", "default")
DEFAULT_PRECISION = "highest"


def check_precision(name: str) -> str:
    """Return ``name`` if it is one of :data:`PRECISIONS`, else raise ``DLGInputError``."""
    check_choice("precision", name, PRECISIONS)
    return name


@contextlib.contextmanager
def matmul_precision(name: str = DEFAULT_PRECISION) -> Iterator[None]:
    """Trace (and so compile) every dot and convolution inside the block at precision ``name``.

    JAX keys its jit caches on this setting, so programs traced under different precisions never
    share a compiled executable.
    """
    with jax.default_matmul_precision(check_precision(name)):
        yield
