"""CIFAR ResNet-20/32/56 (He et al. 2016, section 4.2), stateless for the attack.

    x [B, H, W, C] -> conv3x3(16) -> norm -> act
                   -> 3 stages of n basic blocks with 16, 32, 64 filters (stride 2 entering stages 2, 3)
                   -> global average pool -> Dense(num_classes) -> logits [B, num_classes]

depth = 6n + 2 (n = 3, 5, 9 for ResNet-20, 32, 56). A basic block is
``act(x' + norm(conv3x3(act(norm(conv3x3(x))))))`` with the paper's parameter-free "option A" shortcut
(subsampling where ``stride`` is 2, zero-padded channels where the width changes).

Options (all stateless, so the model stays a pure function of its parameters):

- ``activation``: ``"relu"`` (He et al.) or ``"sigmoid"`` (DLG's change, for a twice-differentiable model).
- ``norm``: ``"none"`` (default); ``"group"`` (GroupNorm, for training experiments); ``"batch"``
  (batch normalisation with the statistics of the batch it is applied to, :mod:`dlg_jax.models.batchnorm`:
  what a client computes in training mode, and what DLG's ResNet-56 keeps).
- ``strides``: ``True`` (He et al.); ``False`` removes the two stride-2 subsamplings (DLG: "remove
  strides"), so every layer runs at the input's resolution (about 4x the cost of the strided net per layer
  in the later stages).
- ``init_scheme`` (``build_model(init=...)``): ``"he"`` (He-normal fan-out convolutions, LeCun-normal classifier, zero biases, norm scale 1 /
  bias 0: the common CIFAR implementations) or ``"dlg"`` (every weight and bias, norm scale and bias
  included, ~ U(-0.5, 0.5): DLG's ``weights_init`` applied to every module).

``dlg_resnet(depth)`` gives the options of the network DLG attacks (sigmoid, batch norm, no strides,
DLG's init). Why the variants leak or not is measured in docs/findings/batches-and-deep-models.md.
"""

import flax.linen as nn
import jax.numpy as jnp

from dlg_jax.models.batchnorm import BatchStatNorm
from dlg_jax.models.layers import Conv2D
from dlg_jax.models.lenet import uniform_half

RESNET_DEPTHS = (20, 32, 56)
ACTIVATIONS = {"relu": nn.relu, "sigmoid": nn.sigmoid}
NORMS = ("none", "group", "batch")
RESNET_INITS = ("he", "dlg")

_he_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def dlg_resnet() -> dict:
    """The ResNet options of DLG's deep-model experiments (Zhu et al. 2019, section 4.2)."""
    return dict(activation="sigmoid", norm="batch", strides=False, init="dlg")


class _Layers:
    """Factories for one network's conv / norm / dense layers under its ``init`` and ``norm``."""

    def __init__(self, norm: str, init: str, conv_implementation: str):
        self.norm, self.init, self.conv_implementation = norm, init, conv_implementation

    def conv(self, features, stride):
        dlg = self.init == "dlg"
        return Conv2D(features, (3, 3), (stride, stride), ((1, 1), (1, 1)), use_bias=self.norm == "none",
                      kernel_init=uniform_half if dlg else _he_normal,
                      bias_init=uniform_half if dlg else nn.initializers.zeros,
                      implementation=self.conv_implementation)

    def normalise(self, x):
        if self.norm == "group":
            return nn.GroupNorm(num_groups=min(8, x.shape[-1]))(x)
        if self.norm == "batch":
            if self.init == "dlg":
                return BatchStatNorm(scale_init=uniform_half, bias_init=uniform_half)(x)
            return BatchStatNorm()(x)
        return x

    def dense(self, features):
        if self.init == "dlg":
            return nn.Dense(features, kernel_init=uniform_half, bias_init=uniform_half)
        return nn.Dense(features)


class _BasicBlock(nn.Module):
    features: int
    stride: int
    activation: str
    norm: str
    init_scheme: str
    conv_implementation: str

    @nn.compact
    def __call__(self, x):
        layers = _Layers(self.norm, self.init_scheme, self.conv_implementation)
        act = ACTIVATIONS[self.activation]
        y = act(layers.normalise(layers.conv(self.features, self.stride)(x)))
        y = layers.normalise(layers.conv(self.features, 1)(y))
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
    strides: bool = True
    init_scheme: str = "he"

    @nn.compact
    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        blocks = (self.depth - 2) // 6
        layers = _Layers(self.norm, self.init_scheme, self.conv_implementation)
        act = ACTIVATIONS[self.activation]
        x = act(layers.normalise(layers.conv(16, 1)(x)))
        for stage, features in enumerate((16, 32, 64)):
            for block in range(blocks):
                stride = 2 if self.strides and stage > 0 and block == 0 else 1
                x = _BasicBlock(features, stride, self.activation, self.norm, self.init_scheme,
                                self.conv_implementation)(x)
        x = jnp.mean(x, axis=(1, 2))
        return layers.dense(self.num_classes)(x)
