"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2), stateless for the attack.

    x [B, H, W, C] -> conv3x3(16) -> act
                   -> 3 stages of n basic blocks with 16, 32, 64 filters (stride 2 entering stages 2, 3)
                   -> global average pool -> Dense(num_classes) -> logits [B, num_classes]

depth = 6n + 2 (n = 3, 5, 9 for ResNet-20, 32, 56). A basic block is
``act(x' + conv3x3(act(conv3x3(x))))`` with the paper's parameter-free "option A" shortcut
(stride-2 subsampling and zero-padded channels) where the shape changes.

There is no batch-norm: a gradient-matching attack wants a model without running statistics
(``norm="none"``, the default). ``norm="group"`` inserts GroupNorm (stateless, so still a pure function
of the parameters) for training experiments. ``activation`` is ``"relu"`` (the paper) or ``"sigmoid"``
(what DLG uses to keep the model twice differentiable). Convolutions use He-normal init
(fan-out, as the common CIFAR implementations), the classifier LeCun-normal, biases zero.
"""

import flax.linen as nn
import jax.numpy as jnp

from dlg_jax.models.layers import Conv2D

RESNET_DEPTHS = (20, 32, 56)
ACTIVATIONS = {"relu": nn.relu, "sigmoid": nn.sigmoid}
NORMS = ("none", "group")

_he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _BasicBlock(nn.Module):
    features: int
    stride: int
    activation: str
    norm: str
    conv_implementation: str

    def _conv(self, x, stride):
        return Conv2D(
            self.features, (3, 3), (stride, stride), ((1, 1), (1, 1)), use_bias=self.norm == "none",
            kernel_init=_he_normal, implementation=self.conv_implementation,
        )(x)

    def _norm(self, x):
        return nn.GroupNorm(num_groups=min(8, self.features))(x) if self.norm == "group" else x

    @nn.compact
    def __call__(self, x):
        act = ACTIVATIONS[self.activation]
        y = act(self._norm(self._conv(x, self.stride)))
        y = self._norm(self._conv(y, 1))
        shortcut = x
        if self.stride != 1 or x.shape[-1] != self.features:
            shortcut = x[:, :: self.stride, :: self.stride, :]
            extra = self.features - x.shape[-1]
            shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
        return act(y + shortcut)


class CifarResNet(nn.Module):
    num_classes: int
    depth: int = 20
    activation: str = "relu"
    norm: str = "none"
    conv_implementation: str = "patches"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        blocks = (self.depth - 2) // 6
        act = ACTIVATIONS[self.activation]
        x = Conv2D(16, (3, 3), padding=((1, 1), (1, 1)), use_bias=self.norm == "none",
                   kernel_init=_he_normal, implementation=self.conv_implementation)(x)
        if self.norm == "group":
            x = nn.GroupNorm(num_groups=8)(x)
        x = act(x)
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = _BasicBlock(features, stride, self.activation, self.norm,
                                self.conv_implementation)(x)
        x = jnp.mean(x, axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
