"""PyTorch twins of our LeNet and CIFAR ResNets, and their weights <-> flax params.

:func:`twin` builds the ``torch.nn.Module`` twin of a :class:`dlg_jax.models.Model` (DLG's LeNet, or a
CIFAR ResNet without normalisation) holding a copy of the flax weights; :func:`params_from_state_dict`
and :func:`state_dict_from_params` convert a PyTorch ``state_dict`` of the twin to the flax params and
back, so a checkpoint trained in PyTorch is attacked here. Layout: conv kernels go from flax HWIO
``[kh, kw, in, out]`` to torch OIHW ``[out, in, kh, kw]``; LeNet's ``Linear`` weight is permuted because
flax flattens ``[h, w, c]`` (NHWC) and torch ``[c, h, w]`` (NCHW):
``W_torch[k, c*h'*w' + i*w' + j] = W_flax[i*w'*C + j*C + c, k]``; a plain ``Linear`` is transposed.

Needs PyTorch (imported with this module).
"""

from typing import Any, Callable, NamedTuple

import numpy as np
import torch

from dlg_jax.errors import DLGInputError

nn = torch.nn
F = torch.nn.functional


class _Layout(NamedTuple):
    """One torch parameter, the path of its flax twin, and the two array conversions."""

    parameter: Any
    path: tuple[str, ...]
    to_torch: Callable[[np.ndarray], np.ndarray]
    to_flax: Callable[[np.ndarray], np.ndarray]


def _same(a: np.ndarray) -> np.ndarray:
    return a


def _conv_to_torch(kernel: np.ndarray) -> np.ndarray:
    """HWIO ``[kh, kw, in, out]`` -> OIHW ``[out, in, kh, kw]``."""
    return np.transpose(kernel, (3, 2, 0, 1))


def _conv_to_flax(weight: np.ndarray) -> np.ndarray:
    return np.transpose(weight, (2, 3, 1, 0))


def _conv_layout(conv, path) -> list[_Layout]:
    return [_Layout(conv.weight, (*path, "kernel"), _conv_to_torch, _conv_to_flax),
            _Layout(conv.bias, (*path, "bias"), _same, _same)]


def _dense_layout(linear, path, features: tuple[int, int, int] | None) -> list[_Layout]:
    """``features = (h, w, c)``: the NHWC shape flattened into the layer (``None``: a plain vector)."""
    if features is None:
        to_torch, to_flax = np.transpose, np.transpose
    else:
        h, w, c = features

        def to_torch(kernel):  # [h*w*c, K] -> [K, c*h*w]
            return kernel.reshape(h, w, c, -1).transpose(3, 2, 0, 1).reshape(kernel.shape[1], -1)

        def to_flax(weight):  # [K, c*h*w] -> [h*w*c, K]
            return weight.reshape(-1, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, weight.shape[0])

    return [_Layout(linear.weight, (*path, "kernel"), to_torch, to_flax),
            _Layout(linear.bias, (*path, "bias"), _same, _same)]


def _conv_out(size: int, kernel: int, stride: int, pad: int) -> int:
    return (size + 2 * pad - kernel) // stride + 1


class TorchLeNet(nn.Module):
    """DLG's LeNet: three ``Conv2d(., 12, 5, padding=2)`` (strides 2, 2, 1), each followed by a sigmoid,
    then ``Linear(12 h' w', K)``; ``x [N, C, H, W] -> logits [N, K]``."""

    def __init__(self, num_classes: int, input_shape: tuple[int, int, int]):
        super().__init__()
        height, width, channels = input_shape
        self.convs = nn.ModuleList([
            nn.Conv2d(channels, 12, 5, stride=2, padding=2),
            nn.Conv2d(12, 12, 5, stride=2, padding=2),
            nn.Conv2d(12, 12, 5, stride=1, padding=2),
        ])
        for conv in self.convs:
            height, width = (_conv_out(n, 5, conv.stride[0], 2) for n in (height, width))
        self.features = (height, width, 12)
        self.fc = nn.Linear(height * width * 12, num_classes)

    def forward(self, x):
        for conv in self.convs:
            x = torch.sigmoid(conv(x))
        return self.fc(x.flatten(1))

    def layout(self) -> list[_Layout]:
        rows = [row for i, conv in enumerate(self.convs) for row in _conv_layout(conv, (f"Conv2D_{i}",))]
        return rows + _dense_layout(self.fc, ("Dense_0",), self.features)


class _TorchBasicBlock(nn.Module):
    """``act(conv3x3(act(conv3x3(x))) + shortcut(x))`` with the parameter-free option-A shortcut."""

    def __init__(self, in_features: int, features: int, stride: int, activation: Callable):
        super().__init__()
        self.conv0 = nn.Conv2d(in_features, features, 3, stride=stride, padding=1)
        self.conv1 = nn.Conv2d(features, features, 3, stride=1, padding=1)
        self.stride, self.extra, self.activation = stride, features - in_features, activation

    def forward(self, x):
        y = self.conv1(self.activation(self.conv0(x)))
        shortcut = x
        if self.stride != 1 or self.extra:
            shortcut = x[:, :, ::self.stride, ::self.stride]
            shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
        return self.activation(y + shortcut)


class TorchCifarResNet(nn.Module):
    """The twin of :class:`dlg_jax.models.resnet.CifarResNet` with ``norm="none"``:
    ``x [N, C, H, W] -> logits [N, K]``."""

    def __init__(self, num_classes: int, depth: int, activation: str, in_channels: int):
        super().__init__()
        act = {"relu": torch.relu, "sigmoid": torch.sigmoid}[activation]
        self.activation = act
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1)
        blocks, previous = [], 16
        for stage, features in enumerate((16, 32, 64)):
            for index in range((depth - 2) // 6):
                stride = 2 if stage > 0 and index == 0 else 1
                blocks.append(_TorchBasicBlock(previous, features, stride, act))
                previous = features
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = self.activation(self.stem(x))
        for block in self.blocks:
            x = block(x)
        return self.fc(x.mean(dim=(2, 3)))

    def layout(self) -> list[_Layout]:
        rows = _conv_layout(self.stem, ("Conv2D_0",))
        for i, block in enumerate(self.blocks):
            rows += _conv_layout(block.conv0, (f"_BasicBlock_{i}", "Conv2D_0"))
            rows += _conv_layout(block.conv1, (f"_BasicBlock_{i}", "Conv2D_1"))
        return rows + _dense_layout(self.fc, ("Dense_0",), None)


def empty_twin(model) -> nn.Module:
    """The PyTorch twin of ``model`` (a :class:`dlg_jax.models.Model`) with torch's own initial weights;
    :class:`DLGInputError` for a model that has none."""
    from dlg_jax.models import CifarResNet, LeNet

    module = model.module
    if isinstance(module, LeNet):
        net = TorchLeNet(model.num_classes, model.input_shape)
    elif isinstance(module, CifarResNet) and module.norm == "none":
        net = TorchCifarResNet(model.num_classes, module.depth, module.activation, model.input_shape[-1])
    else:
        raise DLGInputError(
            f"no PyTorch twin of model {model.name!r}; allowed: lenet, resnet20/32/56 with norm 'none'"
        )
    layout = net.layout()
    if [row.parameter for row in layout] != list(net.parameters()):
        raise AssertionError("layout order must be net.parameters() order")
    return net


def twin(model, params, device="cpu") -> nn.Module:
    """The PyTorch twin of ``model`` (a :class:`dlg_jax.models.Model`) holding a copy of ``params``, on
    ``device``."""
    net = empty_twin(model)
    layout = net.layout()
    with torch.no_grad():
        for row in layout:
            leaf = params
            for key in row.path:
                leaf = leaf[key]
            row.parameter.copy_(torch.tensor(row.to_torch(np.asarray(leaf, np.float32))))
    return net.eval().to(device)


def to_flax(net: nn.Module, tensors) -> dict:
    """Tensors in ``net.parameters()`` order (e.g. gradients) as numpy arrays in the flax pytree layout."""
    tree: dict = {}
    for row, tensor in zip(net.layout(), tensors):
        node = tree
        for key in row.path[:-1]:
            node = node.setdefault(key, {})
        node[row.path[-1]] = row.to_flax(tensor.detach().cpu().numpy())
    return tree



def state_dict_from_params(model, params) -> dict:
    """The ``state_dict`` (name -> tensor) of ``model``'s PyTorch twin holding ``params``."""
    return {name: tensor.detach().clone() for name, tensor in twin(model, params).state_dict().items()}


def params_from_state_dict(model, state_dict: dict) -> dict:
    """The flax params of ``model`` from a ``state_dict`` of its PyTorch twin (:func:`twin`'s layout).
    Raises :class:`DLGInputError` naming the first missing, unexpected or wrongly shaped tensor."""
    net = empty_twin(model)
    names = {id(parameter): name for name, parameter in net.named_parameters()}
    expected = dict(net.named_parameters())
    unexpected = sorted(set(state_dict) - set(expected))
    if unexpected:
        raise DLGInputError(f"state_dict entry {unexpected[0]!r} is not a parameter of the PyTorch twin of model "
                            f"{model.name!r}; expected {', '.join(list(expected)[:4])}, ...")
    for name, parameter in expected.items():
        if name not in state_dict:
            raise DLGInputError(f"state_dict lacks {name!r} of the PyTorch twin of model {model.name!r} "
                                f"(shape {tuple(parameter.shape)})")
        if tuple(state_dict[name].shape) != tuple(parameter.shape):
            raise DLGInputError(f"state_dict entry {name!r} has shape {tuple(state_dict[name].shape)}; the PyTorch "
                                f"twin of model {model.name!r} expects {tuple(parameter.shape)}")
    return to_flax(net, [torch.as_tensor(state_dict[names[id(row.parameter)]]) for row in net.layout()])
