"""Model registry: pure-functional flax.linen classifiers that map ``[B, H, W, C]`` to logits ``[B, K]``.

``build_model(name, input_shape, num_classes, **options)`` returns a :class:`Model`, a frozen pair of
``init(key) -> params`` and ``apply(params, x) -> logits``; params are a plain pytree shared by every
target and restart of an attack.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlg_jax.errors import DLGInputError, check_choice
from dlg_jax.models.layers import CONV_IMPLEMENTATIONS, Conv2D
from dlg_jax.models.lenet import LeNet
from dlg_jax.models.mlp import MLP
from dlg_jax.models.resnet import ACTIVATIONS, NORMS, RESNET_INITS, CifarResNet, dlg_resnet

MODEL_NAMES = ("lenet", "resnet20", "resnet32", "resnet56", "mlp")


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier: ``apply(params, x[B, *input_shape]) -> logits[B, *label_axes, num_classes]``.

    Images: ``input_shape = (H, W, C)``, ``label_axes = ()``. Text (``dlg_jax.models.bert``):
    ``input_shape = (L, E)`` word embeddings, ``label_axes = (M,)`` masked positions, ``modality = "text"``.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    label_axes: tuple[int, ...] = ()
    modality: str = "image"

    def init(self, key: jax.Array, dtype=jnp.float32) -> Any:
        """Fresh parameters (the model's own initialisation), cast to ``dtype``."""
        params = self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32))["params"]
        return jax.tree.map(lambda p: p.astype(dtype), params)

    def apply(self, params: Any, x: jnp.ndarray) -> jnp.ndarray:
        return self.module.apply({"params": params}, x)

    def check_params(self, params: Any, what: str = "params") -> None:
        """Raise :class:`DLGInputError` unless ``params`` has this model's tree and shapes."""
        reference = jax.eval_shape(self.init, jax.random.key(0))
        check_same_tree(what, params, reference, f"model {self.name!r}")


VICTIM_WEIGHTS_STREAM = 0x5EED


def victim_params(model: Model, seed: int = 0, dtype=jnp.float32) -> Any:
    """The victim's weights for ``seed``, as ``dlg-jax attack --seed SEED`` and :func:`dlg_jax.run_dlg` draw
    them: the model's own initialisation from the key ``fold_in(key(seed), 0x5EED)``, a stream apart from
    the attack's dummies (``fold_in(fold_in(key(seed), t), r)``) so that changing one never moves the other."""
    return model.init(jax.random.fold_in(jax.random.key(seed), VICTIM_WEIGHTS_STREAM), dtype=dtype)


def check_same_tree(what: str, tree: Any, reference: Any, reference_name: str) -> None:
    """Raise :class:`DLGInputError` unless ``tree`` has ``reference``'s structure and leaf shapes."""
    try:
        structure, ref_structure = jax.tree.structure(tree), jax.tree.structure(reference)
    except Exception as error:  # pragma: no cover - exotic non-pytrees
        raise DLGInputError(f"{what} is not a pytree: {error}") from None
    if structure != ref_structure:
        got = sorted("/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(tree))
        want = sorted("/".join(str(k.key) for k in path) for path, _ in jax.tree_util.tree_leaves_with_path(reference))
        raise DLGInputError(
            f"{what} does not match the tree of {reference_name}: got leaves {got[:6]}..., expected {want[:6]}..."
            if len(want) > 6 else
            f"{what} does not match the tree of {reference_name}: got leaves {got}, expected {want}"
        )
    for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(reference)):
        if tuple(jnp.shape(leaf)) != tuple(ref.shape):
            name = "/".join(str(k.key) for k in path)
            raise DLGInputError(
                f"{what} leaf {name!r} has shape {tuple(jnp.shape(leaf))}; {reference_name} expects {tuple(ref.shape)}"
            )


def build_model(
    name: str,
    input_shape: tuple[int, int, int],
    num_classes: int,
    *,
    activation: str | None = None,
    norm: str = "none",
    conv_implementation: str = "patches",
    strides: bool = True,
    init: str = "he",
) -> Model:
    """Build a registered model.

    ``activation`` defaults to each model's source (LeNet: sigmoid, fixed; ResNet: relu; MLP: sigmoid).
    ``conv_implementation`` is ``"patches"`` (fast under vmap) or ``"lax"`` (reference).
    ResNets only: ``norm`` (``none``, ``group``, ``batch``), ``strides`` (``False``: DLG's stride-free
    variant) and ``init`` (``he`` or ``dlg``); ``dlg_resnet()`` gives DLG's options
    (:mod:`dlg_jax.models.resnet`).
    """
    check_choice("model", name, MODEL_NAMES)
    check_choice("conv implementation", conv_implementation, CONV_IMPLEMENTATIONS)
    check_choice("norm", norm, NORMS)
    check_choice("init", init, RESNET_INITS)
    if activation is not None:
        check_choice("activation", activation, ACTIVATIONS)
    if len(input_shape) != 3 or min(input_shape) < 1:
        raise DLGInputError(f"input shape must be (height, width, channels) >= 1, got {input_shape!r}")
    if num_classes < 2:
        raise DLGInputError(f"num_classes must be >= 2, got {num_classes!r}")
    if not name.startswith("resnet") and (norm, strides, init) != ("none", True, "he"):
        raise DLGInputError(f"norm, strides and init are ResNet options; {name!r} takes none of them")
    if name == "lenet":
        if activation not in (None, "sigmoid"):
            raise DLGInputError(f"lenet's activation is sigmoid (as DLG); got {activation!r}")
        module = LeNet(num_classes, conv_implementation)
    elif name.startswith("resnet"):
        module = CifarResNet(num_classes, int(name[len("resnet"):]), activation or "relu", norm,
                             conv_implementation, bool(strides), init)
    else:
        module = MLP(num_classes, activation=activation or "sigmoid")
    return Model(name, module, tuple(int(d) for d in input_shape), int(num_classes))


__all__ = ["MODEL_NAMES", "Model", "build_model", "check_same_tree", "Conv2D", "LeNet", "CifarResNet", "MLP",
           "dlg_resnet"]
