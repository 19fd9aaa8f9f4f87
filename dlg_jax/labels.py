"""Label strategies: how the attack treats the private labels.

- ``joint`` (DLG): dummy label logits ``y' [B, K] ~ N(0, 1)`` are optimised together with the images;
  the victim loss uses ``softmax(y')``. The recovered label is ``argmax(y')``.

Strategies other than ``joint`` recover the labels from the shared gradient *before* the attack and
hold them fixed during it (:func:`recover_labels`).
"""

from typing import Any

import numpy as np

from dlg_jax.errors import check_choice
from dlg_jax.models import Model

LABEL_STRATEGIES = ("joint",)


def is_joint(strategy: str) -> bool:
    """Whether ``strategy`` optimises label logits with the images (else the labels are fixed)."""
    return strategy == "joint"


def recover_labels(strategy: str, model: Model, params: Any, target_grads: Any, batch_size: int) -> np.ndarray | None:
    """Labels ``[T, B]`` read off the shared gradients ``target_grads`` (leading ``T`` axis) by
    ``strategy``, or ``None`` for ``joint`` (labels are optimised, not recovered)."""
    check_choice("label strategy", strategy, LABEL_STRATEGIES)
    return None
