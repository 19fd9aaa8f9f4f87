"""The victim: the gradient a client shares after one step on its private batch.

For a batch ``x [B, H, W, C]`` with soft targets ``t [B, K]`` (one-hot for true labels) the loss is DLG's
mean soft-label cross-entropy

    loss(W) = (1 / B) * sum_b sum_k -t[b, k] * log_softmax(F(x; W))[b, k]

and the shared gradient is ``dW = grad_W loss(W)``, a pytree shaped like the parameters. The same
functions serve any input array (``images`` is the attacked input: images ``[B, H, W, C]`` or word
embeddings ``[B, L, E]``) and targets with extra axes (masked-LM: ``[B, M, V]``, mean over ``B`` and ``M``).
"""

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.attack.precision import DEFAULT_PRECISION, matmul_precision
from dlg_jax.errors import DLGInputError
from dlg_jax.models import Model, check_same_tree


def soft_cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """``mean_b sum_k -targets[b, k] * log_softmax(logits)[b, k]`` for ``logits, targets [B, K]``; with
    extra axes (``[B, M, K]``) the mean runs over every axis but the class axis."""
    return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits, axis=-1), axis=-1))


def one_hot(labels: jnp.ndarray, num_classes: int, dtype=jnp.float32) -> jnp.ndarray:
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def batch_loss(model: Model, params: Any, images: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
    """The victim's training loss on ``images [B, *input_shape]`` with soft targets ``[B, *label_axes, K]``."""
    return soft_cross_entropy(model.apply(params, images), targets)


def shared_gradient(model: Model, params: Any, images: jnp.ndarray, labels: jnp.ndarray) -> Any:
    """``grad_W`` of the mean cross-entropy of one client's batch ``images [B, H, W, C]``, ``labels [B]``."""
    targets = one_hot(labels, model.num_classes, images.dtype)
    return jax.grad(batch_loss, argnums=1)(model, params, images, targets)


def shared_gradients(model: Model, params: Any, images: jnp.ndarray, labels: jnp.ndarray,
                     precision: str = DEFAULT_PRECISION) -> Any:
    """The shared gradients of ``T`` clients at once: ``images [T, B, H, W, C]``, ``labels [T, B]``
    give a parameter-shaped pytree with a leading ``T`` axis on every leaf. ``precision``: of its matmuls
    and convolutions (:mod:`dlg_jax.attack.precision`; full float32 by default, as a client's float32 step is)."""
    with matmul_precision(precision):
        return _shared_gradients(model, params, jnp.asarray(images), jnp.asarray(labels))


@jax.jit(static_argnums=0)
def _shared_gradients(model, params, images, labels):
    return jax.vmap(shared_gradient, in_axes=(None, None, 0, 0))(model, params, images, labels)


def check_shared_gradients(model: Model, params: Any, target_grads: Any) -> int:
    """Validate a stack of shared gradients for ``model``; return the number of targets ``T``.

    Raises :class:`DLGInputError` when the tree or a leaf's shape (after the leading ``T`` axis) does not
    match the model's parameters, the leading axes disagree, or a value is NaN/inf.
    """
    leaves = jax.tree.leaves(target_grads)
    if not leaves:
        raise DLGInputError("shared gradient is empty; expected a pytree shaped like the model's params")
    counts = {int(np.shape(leaf)[0]) if np.ndim(leaf) else -1 for leaf in leaves}
    if len(counts) != 1 or -1 in counts:
        raise DLGInputError(
            f"shared gradients must all have one leading targets axis T; got leading sizes {sorted(counts)}"
        )
    per_target = jax.tree.map(lambda leaf: jax.ShapeDtypeStruct(np.shape(leaf)[1:], jnp.float32), target_grads)
    check_same_tree("shared gradient", per_target, jax.eval_shape(model.init, jax.random.key(0)),
                    f"model {model.name!r}")
    for path, leaf in jax.tree_util.tree_leaves_with_path(target_grads):
        finite = np.isfinite(np.asarray(leaf))
        if not finite.all():
            name = "/".join(str(k.key) for k in path)
            bad = np.asarray(leaf)[~finite].reshape(-1)[0]
            raise DLGInputError(
                f"shared gradient leaf {name!r} holds a non-finite value ({bad}); only finite values are allowed"
            )
    return counts.pop()
