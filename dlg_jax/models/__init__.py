"""Model registry: pure-functional flax.linen classifiers that map ``[B, H, W, C]`` to logits ``[B, K]``.

``build_model(name, input_shape, num_classes, **options)`` returns a :class:`Model`, a frozen pair of
``init(key) -> params`` and ``apply(params, x) -> logits``; params are a plain pytree shared by every
target and restart of an attack. ``Model.from_flax(module, variables, input_shape)`` wraps any
``flax.linen`` classifier of one's own, batch norm included (see :meth:`Model.from_flax`).
:func:`parse_model_spec` reads the short model specs of the experiments (``"resnet20-sigmoid-bn"``).
"""

import dataclasses
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.errors import DLGInputError, check_choice
from dlg_jax.models.layers import CONV_IMPLEMENTATIONS, Conv2D
from dlg_jax.models.lenet import LeNet
from dlg_jax.models.mlp import MLP
from dlg_jax.models.resnet import (
    ACTIVATIONS,
    NORMS,
    RESNET_INITS,
    CifarResNet,
    dlg_resnet,
)

MODEL_NAMES = ("lenet", "resnet20", "resnet32", "resnet56", "mlp")
# Model spec tokens after the name (parse_model_spec) and the build_model options each one sets.
MODEL_TOKENS = {"relu": {"activation": "relu"}, "sigmoid": {"activation": "sigmoid"},
                "bn": {"norm": "batch"}, "gn": {"norm": "group"}, "nostride": {"strides": False},
                "dlginit": {"init": "dlg"}, "dlg": dlg_resnet()}


class FixedCollections:
    """The non-``params`` flax collections of a victim (e.g. ``batch_stats``), held fixed during an attack.

    Compared and hashed by identity, so a :class:`Model` holding them stays a valid static argument of
    ``jax.jit`` (two models with different statistics never share a compiled program)."""

    def __init__(self, collections: dict):
        self.collections = {name: jax.tree.map(jnp.asarray, tree) for name, tree in collections.items()}

    def names(self) -> tuple[str, ...]:
        return tuple(sorted(self.collections))

    def __repr__(self) -> str:
        return f"FixedCollections({', '.join(self.names())})"


@dataclasses.dataclass(frozen=True)
class Model:
    """A classifier: ``apply(params, x[B, *input_shape]) -> logits[B, *label_axes, num_classes]``.

    Images: ``input_shape = (H, W, C)``, ``label_axes = ()``. Text (``dlg_jax.models.bert``):
    ``input_shape = (L, E)`` word embeddings, ``label_axes = (M,)`` masked positions, ``modality = "text"``.

    ``fixed``: collections besides ``params`` (batch norm's ``batch_stats``), passed to every call and
    never differentiated; ``call_kwargs``: keyword arguments of every call of the module (e.g.
    ``(("train", True),)``). Only ``params`` are the shared weights the gradient is taken of.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, ...]
    num_classes: int
    label_axes: tuple[int, ...] = ()
    modality: str = "image"
    fixed: FixedCollections | None = None
    call_kwargs: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_flax(cls, module: nn.Module, variables: Any, input_shape: tuple[int, ...], *,
                  name: str | None = None, **call_kwargs) -> "Model":
        """Wrap a ``flax.linen`` classifier of one's own as the victim.

        ``variables``: what ``module.init`` returns, ``{"params": ..., "batch_stats": ..., ...}`` (or the
        ``params`` alone for a module without other collections); ``input_shape``: one example's shape,
        ``(H, W, C)``; ``call_kwargs``: passed to every call, e.g. ``train=True``. The module must map
        ``x [B, *input_shape]`` to logits ``[B, K]``; ``K`` becomes ``num_classes``.

        Batch norm (``nn.BatchNorm``), the two states a client can compute its gradient in:

        - *train mode* (``use_running_average=False``): each call normalises with the statistics of the
          batch it is applied to, ``(x - mean_B x) / sqrt(var_B x + eps)``; the victim's gradient uses the
          private batch's, the attack's dummy gradient the dummy batch's. The running averages the call
          would update are discarded: the attacker matches one step, nothing is stored.
        - *eval mode* (``use_running_average=True``): the stored ``batch_stats`` (``mean``, ``var``) from
          ``variables`` normalise every call, held fixed (constants, not differentiated).

        Which one a call uses is the module's own choice (its ``use_running_average``, usually set from a
        ``train`` argument: pass ``train=True`` or ``train=False`` here). Raises :class:`DLGInputError`
        when the module cannot be applied to ``[1, *input_shape]`` or its output is not logits ``[B, K]``.
        """
        if not isinstance(module, nn.Module):
            raise DLGInputError(f"from_flax needs a flax.linen Module, got {type(module).__name__}")
        if hasattr(variables, "items") and "params" in variables:
            params = variables["params"]
            others = {key: value for key, value in variables.items() if key != "params"}
        else:
            params, others = variables, {}
        shape = tuple(int(d) for d in np.atleast_1d(input_shape))
        if not shape or min(shape) < 1:
            raise DLGInputError(f"input shape must be a tuple of sizes >= 1, e.g. (32, 32, 3); got {input_shape!r}")
        model = cls(name or type(module).__name__, module, shape, 0, fixed=FixedCollections(others) if others else None,
                    call_kwargs=tuple(sorted(call_kwargs.items())))
        probe = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
        try:
            out = jax.eval_shape(model.apply, params, probe)
        except DLGInputError:
            raise
        except Exception as error:
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise DLGInputError(f"module {model.name!r} cannot be applied to inputs [B, {', '.join(map(str, shape))}] "
                                f"with the given variables: {first}") from None
        if not hasattr(out, "shape") or len(out.shape) != 2 or out.shape[0] != 2 \
                or not jnp.issubdtype(out.dtype, jnp.floating) or out.shape[1] < 2:
            got = (f"shape {tuple(out.shape)} {out.dtype}" if hasattr(out, "shape")
                   else f"a {type(out).__name__}")
            raise DLGInputError(f"module {model.name!r} must return float logits [B, K] with K >= 2 classes for "
                                f"inputs [B, {', '.join(map(str, shape))}]; for B = 2 it returned {got}")
        return dataclasses.replace(model, num_classes=int(out.shape[1]))

    @property
    def mutable(self) -> tuple[str, ...]:
        """The non-``params`` collections a call may update (and whose updates it discards)."""
        return () if self.fixed is None else self.fixed.names()

    def variables(self, params: Any) -> dict:
        """``{"params": params, **fixed collections}``: what ``module.apply`` takes."""
        return {"params": params, **({} if self.fixed is None else self.fixed.collections)}

    def init(self, key: jax.Array, dtype=jnp.float32) -> Any:
        """Fresh parameters (the model's own initialisation), cast to ``dtype``."""
        variables = self.module.init(key, jnp.zeros((1, *self.input_shape), jnp.float32), **dict(self.call_kwargs))
        return jax.tree.map(lambda p: p.astype(dtype), variables["params"])

    def apply(self, params: Any, x: jnp.ndarray) -> jnp.ndarray:
        return self.apply_collecting(params, x)[0]

    def apply_collecting(self, params: Any, x: jnp.ndarray, collections: tuple[str, ...] = (),
                         **flax_kwargs) -> tuple[jnp.ndarray, dict]:
        """``(logits, state)``: the module applied with the collections ``collections`` (e.g.
        ``("intermediates",)``) made mutable and returned in ``state``, besides the fixed ones (whose
        updates, e.g. batch norm's running averages in train mode, are returned too and otherwise
        dropped). ``flax_kwargs`` go to ``module.apply`` (e.g. ``capture_intermediates=True``)."""
        mutable = list(dict.fromkeys((*self.mutable, *collections)))
        if not mutable:
            return self.module.apply(self.variables(params), x, **dict(self.call_kwargs), **flax_kwargs), {}
        return self.module.apply(self.variables(params), x, mutable=mutable, **dict(self.call_kwargs), **flax_kwargs)

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
        got = dict(_named_leaves(tree))
        want = dict(_named_leaves(reference))
        missing = [name for name in want if name not in got]
        unexpected = [name for name in got if name not in want]
        if missing:
            raise DLGInputError(f"{what} lacks leaf {missing[0]!r} (shape {tuple(jnp.shape(want[missing[0]]))}) "
                                f"of {reference_name}" + (f"; it has {unexpected[0]!r} instead" if unexpected else ""))
        if unexpected:
            raise DLGInputError(f"{what} has leaf {unexpected[0]!r}, which {reference_name} does not have")
        raise DLGInputError(f"{what} does not match the tree of {reference_name}: got {structure}, expected "
                            f"{ref_structure}")
    for (path, leaf), ref in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(reference)):
        if tuple(jnp.shape(leaf)) != tuple(ref.shape):
            name = "/".join(str(k.key) for k in path)
            raise DLGInputError(
                f"{what} leaf {name!r} has shape {tuple(jnp.shape(leaf))}; {reference_name} expects {tuple(ref.shape)}"
            )


def _named_leaves(tree: Any) -> list[tuple[str, Any]]:
    return [("/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path), leaf)
            for path, leaf in jax.tree_util.tree_leaves_with_path(tree)]


def parse_model_spec(spec: str) -> tuple[str, dict]:
    """A model spec ``name[-token...]`` -> ``(name, build_model options)``. Tokens (:data:`MODEL_TOKENS`):
    ``relu``/``sigmoid`` (activation), ``bn``/``gn`` (batch / group norm), ``nostride``, ``dlginit``
    (U(-0.5, 0.5)), ``dlg`` (all of DLG's ResNet options), ``c<N>`` (``N`` outputs, e.g. ``lenet-c100``:
    DLG's CIFAR-100 head; default: the dataset's classes). ``"resnet20-relu" -> ("resnet20",
    {"activation": "relu"})``, ``"resnet56-dlg"``: DLG's ResNet-56, ``"lenet" -> ("lenet", {})``."""
    name, *tokens = str(spec).split("-")
    check_choice("model", name, MODEL_NAMES)
    options = {}
    for token in tokens:
        classes = re.fullmatch(r"c([0-9]+)", token)
        if classes and int(classes.group(1)) >= 2:
            options["num_classes"] = int(classes.group(1))
            continue
        check_choice("model option", token, [*MODEL_TOKENS, "c<N> (N >= 2 classes)"])
        options.update(MODEL_TOKENS[token])
    return name, options


def model_label(name: str, options: dict) -> str:
    """The short name of model ``name`` with ``options``: its spec (``"resnet20-sigmoid-bn"``, ``"resnet56-dlg"``,
    ``"lenet-c100"``) and any option no token names in brackets; inverse of :func:`parse_model_spec`."""
    options = dict(options)
    if all(options.get(k) == v for k, v in dlg_resnet().items()):
        tokens = ["dlg"]
        options = {k: v for k, v in options.items() if k not in dlg_resnet()}
    else:
        tokens = [token for token, sets in MODEL_TOKENS.items()
                  if token != "dlg" and all(options.get(k) == v for k, v in sets.items())]
        options = {k: v for k, v in options.items() if not any(k in MODEL_TOKENS[t] for t in tokens)}
    if "num_classes" in options:
        tokens.append(f"c{options.pop('num_classes')}")
    rest = ", ".join(f"{k}={v}" for k, v in sorted(options.items()))
    return "-".join([name, *tokens]) + (f" ({rest})" if rest else "")


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


__all__ = ["MODEL_NAMES", "MODEL_TOKENS", "FixedCollections", "Model", "build_model", "parse_model_spec", "model_label", "check_same_tree", "Conv2D", "LeNet", "CifarResNet", "MLP",
           "dlg_resnet"]
