"""Label strategies: how the attack treats the private labels.

- ``joint`` (DLG): dummy label logits ``y' [B, K] ~ N(0, 1)`` are optimised together with the images;
  the victim loss uses ``softmax(y')``. The recovered label is ``argmax(y')``.
"""

LABEL_STRATEGIES = ("joint",)


def is_joint(strategy: str) -> bool:
    """Whether ``strategy`` optimises label logits with the images (else the labels are fixed)."""
    return strategy == "joint"
