"""Soteria's measurements on a model: the data representation and how reconstructable each feature is.

Soteria (Sun et al., "Provable defense against privacy leakage in federated learning from representation
perspective", CVPR 2021) perturbs the gradient of the fully-connected layer that takes the data
representation ``r = f(x)``; the transform itself is :func:`dlg_jax.victim.defenses.soteria`. This module gives
what it needs from the model.

**How the victim exposes the representation** (no change to any model): the *defended layer* is the
model's last ``flax.linen.Dense`` call, found by intercepting the module calls of one forward pass
(``flax.linen.intercept_methods``). Its input ``r [B, D]`` is the representation, and its output must be
the logits the model returns (nothing may follow it). LeNet: ``r`` = the flattened conv features
(768 wide at 32x32), the layer is ``Dense_0``; the MLP: the last hidden layer; the ResNets: the pooled
features. A model without such a layer (the text models' decoder takes ``[B, L, E]``), or a batch-norm
ResNet on a batch of more than one example (its examples interact, so the per-example Jacobian below is
not what one backward pass gives), raises :class:`~dlg_jax.errors.DLGInputError`.

**The score** of feature ``i`` on a batch ``x [B, *input_shape]`` (Sun et al., section 4: removing
``r_i`` moves the input that explains the representation by about ``|r_i| / ||d r_i / d x||``)::

    s_i = sum_b ||d r[b, i] / d x[b]||_2 / |r[b, i]|          (0 where the Jacobian row is 0; inf if r = 0)

A *small* ``s_i`` is a large ``|r_i| / ||d r_i / d x||``: the feature whose removal perturbs the
reconstruction the most. Soteria zeroes the features with the smallest scores (the batch sum of the
inverse ratio, as the authors' released code ranks them). The Jacobian rows come from ``D`` reverse-mode
products with the one-hot cotangents ``e_i`` on every example at once (exact because the examples of the
batch do not interact), ``chunk`` features per vectorised batch.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlg_jax.errors import DLGInputError
from dlg_jax.models import Model

# Features per vectorised batch of Jacobian rows: bounds memory at chunk x B x the model's activations.
FEATURE_CHUNK = 16


def _dense_calls(model: Model, params: Any, x: jnp.ndarray) -> tuple[jnp.ndarray, list]:
    """The logits of ``x`` and every ``nn.Dense`` call of the forward pass as ``(path, input, output)``."""
    calls = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            calls.append((tuple(context.module.scope.path), args[0], out))
        return out

    with nn.intercept_methods(record):
        logits = model.apply(params, x)
    return logits, calls


def defended_layer(model: Model, params: Any, x: jnp.ndarray) -> tuple[str, ...]:
    """The parameter path of the Dense layer that takes the representation (e.g. ``("Dense_0",)``);
    :class:`DLGInputError` when ``model`` has none (see the module docstring)."""
    if getattr(model.module, "norm", None) == "batch" and x.shape[0] > 1:
        raise DLGInputError(f"defense 'soteria' needs per-example representations, but model {model.name!r} "
                            f"uses batch norm, which mixes the {x.shape[0]} examples of a batch; use batch size 1 "
                            "or a model without batch norm")
    checked = {}

    def probe(params, x):
        logits, calls = _dense_calls(model, params, x)
        checked["last"] = calls[-1] if calls else None
        checked["is_logits"] = bool(calls) and calls[-1][2] is logits
        return logits

    jax.eval_shape(probe, params, x)  # shapes only: params may be jax.ShapeDtypeStruct
    last = checked["last"]
    if last is None or not checked["is_logits"] or last[1].ndim != 2:
        found = ("no dense layer" if last is None else "a last dense layer whose output is not the logits"
                 if not checked["is_logits"] else f"a last dense layer on {tuple(last[1].shape)}")
        raise DLGInputError(f"defense 'soteria' needs a model whose logits come from a dense layer on a flat "
                            f"representation [B, D]; model {model.name!r} has {found}")
    return last[0]


def feature_scores(model: Model, params: Any, x: jnp.ndarray, chunk: int = FEATURE_CHUNK) -> jnp.ndarray:
    """``s [D]``: ``s_i = sum_b ||d r[b, i] / d x[b]|| / |r[b, i]|`` for ``x [B, *input_shape]``."""
    defended_layer(model, params, x)
    r, pullback = jax.vjp(lambda x: _dense_calls(model, params, x)[1][-1][1], x)
    batch, width = r.shape

    def row_norms(i):  # ||d r[b, i] / d x[b]|| for every b: [B]
        (rows,) = pullback(jnp.zeros_like(r).at[:, i].set(1))
        return jnp.sqrt(jnp.sum(jnp.square(rows.reshape(batch, -1)), axis=1))

    norms = jax.lax.map(row_norms, jnp.arange(width), batch_size=min(chunk, width)).T  # [B, D]
    magnitude = jnp.abs(r)
    ratio = jnp.where(norms == 0, 0.0, norms / jnp.where(magnitude == 0, 1.0, magnitude))
    ratio = jnp.where((magnitude == 0) & (norms > 0), jnp.inf, ratio)
    return jnp.sum(ratio, axis=0)
