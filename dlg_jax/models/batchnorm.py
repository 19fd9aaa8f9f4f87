"""Batch normalisation computed from the batch itself, as a pure function (no running statistics).

For activations ``x [B, H, W, C]`` and per-channel parameters ``scale, bias [C]``::

    mu_c  = mean_{b,h,w} x[b, h, w, c]          var_c = mean_{b,h,w} (x[b, h, w, c] - mu_c)^2
    y     = scale_c * (x - mu_c) / sqrt(var_c + eps) + bias_c

This is PyTorch's ``BatchNorm2d`` in training mode, the state in which a client computes the gradient it
shares (DLG, Zhu et al. 2019, attack ResNet-56 with batch normalisation). The statistics come from the
batch the model is applied to, so in the attack they come from the *dummy* batch and the victim's
gradient from the private batch: no state, nothing but the parameters shared. With ``B = 1`` the
statistics are over the ``H * W`` positions of the one image.

Each layer also *sows* its input statistics ``(mu [C], var [C])`` into the flax collection
``"intermediates"`` (a no-op unless the collection is mutable): :func:`batchnorm_statistics` reads them
for GradInversion's BN prior (:mod:`dlg_jax.attack.objectives`), and :func:`reference_statistics` averages them
over a reference set of images, standing in for the running statistics a trained model would store.
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.errors import DLGInputError, check_positive_int

BATCH_NORM_EPS = 1e-5
STATISTICS = "batch_statistics"
REFERENCE_BATCH = 64


class BatchStatNorm(nn.Module):
    """``y = scale * (x - mean) / sqrt(var + eps) + bias`` over every axis but the last (channels)."""

    scale_init: Callable = nn.initializers.ones
    bias_init: Callable = nn.initializers.zeros
    eps: float = BATCH_NORM_EPS

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        channels = x.shape[-1]
        scale = self.param("scale", self.scale_init, (channels,))
        bias = self.param("bias", self.bias_init, (channels,))
        axes = tuple(range(x.ndim - 1))
        mean = jnp.mean(x, axis=axes)
        var = jnp.mean(jnp.square(x - mean), axis=axes)
        self.sow("intermediates", STATISTICS, (mean, var))
        return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias


def batchnorm_statistics(model: Any, params: Any, images: jnp.ndarray) -> dict:
    """The input statistics of every :class:`BatchStatNorm` layer when ``model`` (a
    :class:`~dlg_jax.models.Model`) is applied to the batch ``images [B, H, W, C]``:
    ``{layer path: {"mean": mu_l [C_l], "var": var_l [C_l]}}`` (paths as ``"_BasicBlock_0/BatchStatNorm_1"``).
    Differentiable in ``images``; ``{}`` for a model without batch norm."""
    _, state = model.apply_collecting(params, images, ("intermediates",))
    sown = flax.traverse_util.flatten_dict(state.get("intermediates", {}))
    return {"/".join(path[:-1]): {"mean": value[0][0], "var": value[0][1]} for path, value in sown.items()
            if path[-1] == STATISTICS}


def has_batchnorm(model: Any) -> bool:
    """Whether ``model`` has a :class:`BatchStatNorm` layer (traced on shapes only)."""
    params = jax.eval_shape(model.init, jax.random.key(0))
    images = jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32)
    return bool(jax.tree.leaves(jax.eval_shape(lambda p, x: batchnorm_statistics(model, p, x), params, images)))


def check_batchnorm(model: Any, what: str) -> None:
    """Raise :class:`DLGInputError` unless ``model`` has batch normalisation (``what`` needs it)."""
    if getattr(model, "modality", "image") != "image" or not has_batchnorm(model):
        raise DLGInputError(f"{what} needs a model with batch normalisation; model {model.name!r} has none "
                            "(use e.g. a resnet with norm 'batch', spec resnet20-sigmoid-bn)")


def reference_statistics(model: Any, params: Any, images: np.ndarray, batch_size: int = REFERENCE_BATCH) -> dict:
    """What a model trained on ``images [N, H, W, C]`` would hold as running statistics, at ``params``:
    the images are split into consecutive mini-batches of ``batch_size`` (the last may be smaller), each
    normalised by its own statistics as in training, and every layer's ``mu_l`` and ``var_l`` are averaged
    over the mini-batches (weighted by their sizes): PyTorch's running averages in the limit of a uniform
    average (its momentum 0.1 weights recent batches more; its ``running_var`` is the unbiased variance,
    a factor ``n / (n - 1)`` we leave out). Same tree as :func:`batchnorm_statistics`.
    Raises :class:`DLGInputError` for a model without batch norm or an empty reference set."""
    check_batchnorm(model, "the BN prior's reference statistics")
    batch_size = check_positive_int("reference batch size", batch_size)
    images = np.asarray(images)
    if images.ndim != 1 + len(model.input_shape) or len(images) == 0:
        raise DLGInputError(f"reference images must be a non-empty [N, {', '.join(map(str, model.input_shape))}] "
                            f"array, got shape {images.shape}")
    statistics = jax.jit(lambda p, x: batchnorm_statistics(model, p, x))
    total, weight = None, 0
    for start in range(0, len(images), batch_size):
        batch = jnp.asarray(images[start:start + batch_size], jax.tree.leaves(params)[0].dtype)
        stats = jax.tree.map(lambda leaf: leaf * len(batch), statistics(params, batch))
        total = stats if total is None else jax.tree.map(jnp.add, total, stats)
        weight += len(batch)
    return jax.tree.map(lambda leaf: leaf / weight, total)
