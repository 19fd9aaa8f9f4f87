"""Batch normalisation computed from the batch itself, as a pure function (no running statistics).

For activations ``x [B, H, W, C]`` and per-channel parameters ``scale, bias [C]``::

    mu_c  = mean_{b,h,w} x[b, h, w, c]          var_c = mean_{b,h,w} (x[b, h, w, c] - mu_c)^2
    y     = scale_c * (x - mu_c) / sqrt(var_c + eps) + bias_c

This is PyTorch's ``BatchNorm2d`` in training mode, the state in which a client computes the gradient it
shares (DLG, Zhu et al. 2019, attack ResNet-56 with batch normalisation). The statistics come from the
batch the model is applied to, so in the attack they come from the *dummy* batch and the victim's
gradient from the private batch: no state, nothing but the parameters shared. With ``B = 1`` the
statistics are over the ``H * W`` positions of the one image.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp

BATCH_NORM_EPS = 1e-5


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
        return (x - mean) * (scale / jnp.sqrt(var + self.eps)) + bias
