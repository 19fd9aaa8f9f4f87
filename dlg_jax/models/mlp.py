"""A fully connected network: flatten -> [Dense(width) -> act] * depth -> Dense(num_classes).

Weights and biases use PyTorch's ``nn.Linear`` default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
Input ``[B, ...]``, logits ``[B, num_classes]``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlg_jax.models.resnet import ACTIVATIONS


def _torch_linear_init(fan_in: int):
    bound = 1.0 / jnp.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


class MLP(nn.Module):
    num_classes: int
    width: int = 256
    depth: int = 2
    activation: str = "sigmoid"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.reshape(x.shape[0], -1)
        widths = (self.width,) * self.depth + (self.num_classes,)
        for layer, width in enumerate(widths):
            fan_in = x.shape[-1]
            x = nn.Dense(width, kernel_init=_torch_linear_init(fan_in),
                         bias_init=_torch_linear_init(fan_in))(x)
            if layer < self.depth:
                x = ACTIVATIONS[self.activation](x)
        return x
