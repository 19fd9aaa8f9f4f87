"""Continuation from low resolution: the attack's first stages solve for coarse dummy images.

A coarse stage with factor ``F`` attacks the same victim (same weights, same shared gradient ``dW``) for
dummies ``u [B, H/F, W/F, C]`` that the model sees bilinearly upsampled, ``x' = U_F(u) [B, H, W, C]``:

    min_u  D(grad_W loss(F(U_F(u); W), y'), dW)

``n / F^2`` unknowns against the same ``m`` equations, over a family of smooth batches. Its ends,
upsampled, start the next stage (the next, smaller factor, then the full resolution). Why it helps: at
full size a colour batch has a whole family of batches with its gradient (the gradient's Jacobian has
fewer independent rows than the batch has pixels), and random starts end at different members of it;
a coarse batch has far fewer unknowns than those rows, so the gradient pins it down, every restart ends
the coarse stages at the same batch near the private one's smooth version, and the full-size solver
starts there (measured in ``docs/solvers.md``: colour batches of two that L-BFGS from a random start
never recovers).

:func:`coarse_problem` builds the coarse victim (:class:`Upsampled` wraps the model's module; its params
and shared gradient are the originals nested under ``"inner"``); :func:`resized` moves a
:class:`~dlg_jax.attack.objectives.Dummy` between resolutions; :func:`check_coarse` validates the
factors against a model; :func:`dlg_jax.attack.engine.coarse_stages` runs the stages.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from dlg_jax.attack.objectives import Dummy
from dlg_jax.errors import DLGInputError
from dlg_jax.models import FixedCollections, Model


class Upsampled(nn.Module):
    """``inner`` applied to ``x [B, h, w, C]`` bilinearly resized to ``shape = (H, W, C)``."""

    inner: nn.Module
    shape: tuple[int, ...]

    @nn.compact
    def __call__(self, x, **kwargs):
        return self.inner(jax.image.resize(x, (x.shape[0], *self.shape), "linear"), **kwargs)


def check_coarse(factors: tuple[int, ...], model: Model) -> None:
    """Raise :class:`DLGInputError` unless ``model`` takes images and every factor divides its height and
    width (factors are validated as integers >= 2, strictly decreasing, by the attack config)."""
    if not factors:
        return
    if model.modality != "image" or len(model.input_shape) != 3:
        raise DLGInputError(f"coarse stages are for image models; model {model.name!r} takes "
                            f"{model.modality} inputs {tuple(model.input_shape)}")
    height, width, _ = model.input_shape
    for factor in factors:
        if height % factor or width % factor:
            raise DLGInputError(f"coarse factor {factor} must divide the image size {height} x {width}")


def coarse_problem(model: Model, params: Any, target_grads: Any, factor: int) -> tuple[Model, Any, Any]:
    """``(coarse model, its params, its shared gradients)``: ``model`` seen through bilinear upsampling
    from ``(H / factor, W / factor)`` (module docstring). The arrays are the originals, nested one level
    deeper (``{"inner": params}``); fixed collections (batch statistics) likewise."""
    height, width, channels = model.input_shape
    fixed = None if model.fixed is None else FixedCollections(
        {name: {"inner": tree} for name, tree in model.fixed.collections.items()})
    coarse = dataclasses.replace(model, name=f"{model.name}@{height // factor}x{width // factor}", fixed=fixed,
                                 module=Upsampled(model.module, tuple(model.input_shape)),
                                 input_shape=(height // factor, width // factor, channels))
    return coarse, {"inner": params}, {"inner": target_grads}


def resized(dummy: Dummy, shape: tuple[int, ...]) -> Dummy:
    """``dummy`` with images ``[T, R, B, h, w, C]`` resized to ``[T, R, B, *shape]`` (bilinear; antialiased
    when shrinking); the label logits are unchanged."""
    images = np.asarray(dummy.images)
    if images.shape[3:] == tuple(shape):
        return dummy
    return dummy._replace(images=np.asarray(jax.image.resize(images, (*images.shape[:3], *shape), "linear"),
                                            images.dtype))
