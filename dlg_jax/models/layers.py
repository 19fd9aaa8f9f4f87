"""Convolution that batches well under ``jax.vmap`` of a second-order gradient.

DLG's objective differentiates a gradient. ``vmap`` over restarts of the double backward of
``lax.conv_general_dilated`` turns into a grouped convolution (``feature_group_count = R``), which XLA's
CPU backend runs far below peak (docs/design.md: 257 restart-evaluations/s at R = 128 vs 1418 evals/s at
R = 1). Written as *patches + matmul* (im2col), every derivative of the layer is either a matmul with
the shared kernel or the transpose of a patch extraction with a constant one-hot filter, and vmap
only enlarges the batch dimension of those ops.

For input ``x`` of shape ``[N, H, W, C]`` and kernel ``K`` of shape ``[kh, kw, C, F]``::

    P = patches(x)                  # [N, H', W', kh * kw * C], feature order (kh, kw, C)
    y = P @ reshape(K, [kh * kw * C, F]) + b                                # [N, H', W', F]

which equals ``lax.conv_general_dilated(x, K, strides, padding)`` up to float rounding
(``tests/test_models.py`` checks it). The parameters have flax's ``nn.Conv`` names and shapes.
"""

from typing import Callable

import flax.linen as nn
import jax.numpy as jnp
from jax import lax

CONV_IMPLEMENTATIONS = ("patches", "lax")
_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def extract_patches(x, kernel_size, strides, padding) -> jnp.ndarray:
    """im2col by strided slicing: ``x [N, H, W, C] -> [N, H', W', kh * kw * C]``, feature order (kh, kw, C).

    Slices (not ``lax.conv_general_dilated_patches``, a convolution with a one-hot filter that XLA's CPU
    backend runs slowly) so that the derivatives are pads and adds. Two stages, ``kw`` slices along the
    width then ``kh`` along the height, so ``kh + kw`` slices (and, in the backward pass, pads) instead
    of ``kh * kw`` (1.2-1.35x restart-evaluations/s for LeNet's objective, measured side by side); the
    channel axis stays innermost, so every slice and pad moves contiguous rows of ``C`` values.
    """
    (kh, kw), (sh, sw) = kernel_size, strides
    x = jnp.pad(x, ((0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    columns = jnp.stack([x[:, :, j:j + sw * (out_w - 1) + 1:sw, :] for j in range(kw)], axis=3)  # [N, Hp, W', kw, C]
    patches = jnp.stack([columns[:, i:i + sh * (out_h - 1) + 1:sh] for i in range(kh)], axis=3)  # [N, H', W', kh, kw, C]
    return patches.reshape(*patches.shape[:3], -1)


def patch_conv(x, kernel, strides, padding) -> jnp.ndarray:
    """``lax.conv_general_dilated(x, kernel, strides, padding)`` (NHWC, HWIO) as patches @ matrix."""
    kh, kw, channels, features = kernel.shape
    return extract_patches(x, (kh, kw), strides, padding) @ kernel.reshape(kh * kw * channels, features)


class Conv2D(nn.Module):
    """2-D convolution, NHWC, with explicit padding ``((top, bottom), (left, right))``.

    ``implementation="patches"`` (default) is the vmap-friendly im2col form; ``"lax"`` is the plain
    ``lax.conv_general_dilated`` reference.
    """

    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros
    implementation: str = "patches"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        kh, kw = self.kernel_size
        channels = x.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (kh, kw, channels, self.features))
        if self.implementation == "lax":
            y = lax.conv_general_dilated(
                x, kernel, self.strides, self.padding, dimension_numbers=_DIMENSIONS
            )
        elif self.implementation == "patches":
            y = patch_conv(x, kernel, self.strides, self.padding)
        else:
            raise ValueError(
                f"unknown conv implementation {self.implementation!r}; allowed: {CONV_IMPLEMENTATIONS}"
            )
        if self.use_bias:
            y = y + self.param("bias", self.bias_init, (self.features,))
        return y
