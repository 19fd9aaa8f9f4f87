"""DLG's LeNet (Zhu, Liu & Han 2019, the network of their CIFAR/MNIST/LFW experiments).

    x [B, H, W, C] -> Conv(12, 5x5, stride 2, pad 2) -> sigmoid
                   -> Conv(12, 5x5, stride 2, pad 2) -> sigmoid
                   -> Conv(12, 5x5, stride 1, pad 2) -> sigmoid
                   -> flatten (NHWC order) -> Dense(num_classes) -> logits [B, num_classes]

Every weight and bias is drawn from U(-0.5, 0.5), as the DLG code does. Padding is explicit
``(2, 2)`` on every side (flax's ``'SAME'`` would pad the stride-2 layers ``(1, 2)``, PyTorch ``(2, 2)``).
Any input size works: 32x32 gives a 768-wide flatten, 28x28 gives 588.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlg_jax.models.layers import Conv2D


def uniform_half(key, shape, dtype=jnp.float32):
    """U(-0.5, 0.5), DLG's initialisation for every LeNet parameter."""
    return jax.random.uniform(key, shape, dtype, minval=-0.5, maxval=0.5)


class LeNet(nn.Module):
    num_classes: int
    conv_implementation: str = "patches"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        pad = ((2, 2), (2, 2))
        for stride in (2, 2, 1):
            x = Conv2D(
                12, (5, 5), (stride, stride), pad,
                kernel_init=uniform_half, bias_init=uniform_half,
                implementation=self.conv_implementation,
            )(x)
            x = nn.sigmoid(x)
        x = x.reshape(x.shape[0], -1)
        return nn.Dense(self.num_classes, kernel_init=uniform_half, bias_init=uniform_half)(x)
