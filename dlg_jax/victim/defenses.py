"""Defenses: transforms of the shared gradient, each an ``optax.GradientTransformation``.

A defense maps the gradient pytree ``g`` a client is about to share to the perturbed ``g~`` it actually
shares. Each factory returns an ``(init, update)`` pair like any optax transform, so the *same object*
defends the shared gradient of the attack experiment and chains (``optax.chain(defense, optimiser)``)
into the training step of the utility experiment. Random defenses keep a PRNG key in their state (a
field named ``rng_key``, as optax's own noise transforms); :func:`with_key` re-keys any state, so one
transform serves many targets with independent noise (:func:`apply_defense`).

=================  ===========================================  ====================================
defense            g~ (elementwise unless stated)               strength
=================  ===========================================  ====================================
``gaussian``       g + N(0, s)                                  variance s >= 0
``laplacian``      g + Laplace(0, b), b = sqrt(s / 2)           variance s = 2 b^2 >= 0
``precision``      decode(encode(g)) in a narrower format       format name (``float16``, ``int8``...)
``prune``          g * [|g| among the top (1 - p) n of |g|]     ratio p of entries zeroed, 0 <= p < 1
``dp``             (sum_i clip_C(g_i) + N(0, (sigma C)^2)) / B  noise multiplier sigma >= 0
``soteria``        the representation layer's kernel gradient,  ratio p of features pruned,
                   rows of the floor(p D) features with the     0 <= p < 1
                   smallest reconstruction score s_i zeroed
``none``           g                                            --
=================  ===========================================  ====================================

The first four are DLG's defenses (Zhu, Liu & Han, NeurIPS 2019, section 5: noise of variance 1e-4 to
1e-1, half precision and int8, pruning ratios 1% to 70%). ``dp`` is DP-SGD's aggregation (Abadi et al.,
CCS 2016): it needs *per-example* gradients ``g_i`` (leading batch axis ``B``), so its
:class:`Defense` is marked ``per_example``; :func:`defended_gradients` computes them with ``jax.vmap``.
Gaussian noise and DP aggregation reuse ``optax.add_noise`` (with ``gamma = 0``, i.e. no annealing) and
``optax.contrib.differentially_private_aggregate``.

``soteria`` (Sun et al., CVPR 2021) needs more than the gradient: the client's model, parameters and
private inputs, from which it ranks the representation's features (:mod:`dlg_jax.victim.soteria`). It is an
``optax.GradientTransformationExtraArgs`` that takes them as optax extra arguments,
``update(grads, state, params, model=model, inputs=x)`` (``optax.chain`` forwards them, and ignores them
for the other transforms); its :class:`Defense` is marked ``needs_inputs``, and
:func:`defended_gradients` and the training step (:mod:`dlg_jax.victim.training`) pass each client's own batch.

Bad arguments raise :class:`~dlg_jax.errors.DLGInputError` when the transform is built.
"""

import dataclasses
import itertools
import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from optax.contrib import differentially_private_aggregate

from dlg_jax.errors import DLGInputError, check_choice, check_number
from dlg_jax.victim.gradients import shared_gradient, shared_gradients
from dlg_jax.victim.soteria import defended_layer, feature_scores

DEFENSE_NAMES = ("none", "gaussian", "laplacian", "precision", "prune", "dp", "soteria")
FLOAT_PRECISIONS = ("float16", "bfloat16", "float8_e4m3fn", "float8_e5m2")
INT_PRECISIONS = tuple(f"int{bits}" for bits in (16, 8, 4, 2))
PRUNE_SCOPES = ("tensor", "global")

# The strengths a sweep uses when none are given: DLG's grid (noise 1e-4..1e-1, extended down to 1e-6,
# where the attack still works here; pruning 10%..70%), its number formats, and DP noise multipliers
# (0: clipping alone), and Soteria's fractions of representation features pruned.
DEFAULT_STRENGTHS = {
    "gaussian": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    "laplacian": (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    "precision": ("float16", "bfloat16", "int8", "int4"),
    "prune": (0.1, 0.2, 0.3, 0.5, 0.7),
    "dp": (0.0, 0.01, 0.1, 1.0),
    "soteria": (0.1, 0.2, 0.4, 0.6, 0.8),
    "none": (None,),
}


# ---------------------------------------------------------------------------------------------------
# The transforms.


def gaussian_noise(variance: float, key: jax.Array | int = 0) -> optax.GradientTransformation:
    """``g~ = g + n``, ``n ~ N(0, variance)`` i.i.d. per entry (DLG section 5.1, "Gaussian noise").

    This is ``optax.add_noise(eta=variance, gamma=0)`` (optax anneals the variance as
    ``eta / (1 + step)^gamma``; ``gamma = 0`` keeps it fixed). State: ``optax.AddNoiseState(count, rng_key)``.
    """
    variance = check_number("noise variance", variance, low=0.0)
    return optax.add_noise(eta=variance, gamma=0.0, key=key)


class LaplaceNoiseState(NamedTuple):
    """The key of the next draw."""

    rng_key: jax.Array


def laplacian_noise(variance: float, key: jax.Array | int = 0) -> optax.GradientTransformation:
    """``g~ = g + n``, ``n ~ Laplace(0, b)`` i.i.d. per entry with ``variance = 2 b^2`` (DLG section 5.1).

    The Laplace density is ``exp(-|n| / b) / (2 b)``; the strength is the variance, as in the paper.
    """
    variance = check_number("noise variance", variance, low=0.0)
    scale = math.sqrt(variance / 2.0)

    def init(params):
        del params
        return LaplaceNoiseState(jax.random.key(key) if isinstance(key, int) else key)

    def update(updates, state, params=None):
        del params
        next_key, sample_key = jax.random.split(state.rng_key)
        noise = optax.tree.random_like(sample_key, updates, jax.random.laplace)
        return jax.tree.map(lambda g, n: g + scale * n, updates, noise), LaplaceNoiseState(next_key)

    return optax.GradientTransformation(init, update)


def _float_round_trip(dtype):
    def encode_decode(g):
        return g.astype(dtype).astype(g.dtype)

    return encode_decode


def _int_round_trip(bits: int):
    levels = 2 ** (bits - 1) - 1

    def encode_decode(g):
        scale = jnp.max(jnp.abs(g)) / levels
        safe = jnp.where(scale > 0, scale, 1.0)
        return (jnp.clip(jnp.round(g / safe), -levels, levels) * scale).astype(g.dtype)

    return encode_decode


def _check_precision(precision: str):
    """The encode-decode function of ``precision``; :class:`DLGInputError` for an unknown name or a
    format this backend cannot round-trip (every format must represent 0 and +-1 exactly)."""
    if not isinstance(precision, str):
        raise DLGInputError(f"precision must be a format name, got {precision!r}; "
                            f"allowed: {', '.join(FLOAT_PRECISIONS + INT_PRECISIONS)}")
    match = re.fullmatch(r"int(\d+)", precision)
    if match:
        bits = int(match.group(1))
        if not 2 <= bits <= 16:
            raise DLGInputError(f"integer precision {precision!r} needs 2 to 16 bits, e.g. int8")
        return _int_round_trip(bits)
    dtype = getattr(jnp, precision, None) if precision.startswith(("float", "bfloat")) else None
    try:
        known = dtype is not None and jnp.issubdtype(dtype, jnp.floating)
    except TypeError:
        known = False
    if not known:
        raise DLGInputError(f"unknown precision {precision!r}; allowed: "
                            f"{', '.join(FLOAT_PRECISIONS + INT_PRECISIONS)} (any int2..int16)")
    if jnp.finfo(dtype).bits >= 32:
        raise DLGInputError(f"precision {precision!r} is not narrower than float32; allowed: "
                            f"{', '.join(FLOAT_PRECISIONS + INT_PRECISIONS)}")
    probe = np.array([0.0, 1.0, -1.0], np.float32)
    try:
        back = np.asarray(jax.jit(_float_round_trip(dtype))(probe))
    except Exception as error:  # the backend has no conversion for this format
        raise DLGInputError(f"precision {precision!r} is not supported by the {jax.default_backend()} "
                            f"backend: {str(error).splitlines()[0]}") from None
    if not np.array_equal(back, probe):
        raise DLGInputError(f"precision {precision!r} cannot represent 0 and +-1 on the "
                            f"{jax.default_backend()} backend (round trip gave {back.tolist()}); "
                            f"allowed: {', '.join(FLOAT_PRECISIONS + INT_PRECISIONS)}")
    return _float_round_trip(dtype)


def low_precision(precision: str) -> optax.GradientTransformation:
    """Share the gradient in a narrower number format: ``g~ = decode(encode(g))``, returned in ``g``'s dtype.

    - float formats (``float16``, ``bfloat16``, ``float8_e4m3fn``, ...): ``g~ = float32(fmt(g))``, i.e.
      round to nearest in ``fmt`` (values beyond its range overflow to +-inf or saturate, as the cast does).
    - ``intN`` (2 <= N <= 16): symmetric linear quantisation with one scale per tensor,
      ``s = max|g| / (2^(N-1) - 1)``, ``g~ = s * clip(round(g / s), -(2^(N-1) - 1), 2^(N-1) - 1)``, so
      ``|g~ - g| <= s / 2`` entrywise (an all-zero tensor stays zero).

    DLG section 5.2 ("half precision", "int-8"). Stateless.
    """
    encode_decode = _check_precision(precision)

    def update(updates, state, params=None):
        del params
        return jax.tree.map(encode_decode, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def _top_k_mask(magnitudes: jnp.ndarray, ratio: float) -> jnp.ndarray:
    """Boolean mask over the 1-D ``magnitudes [n]`` keeping the ``n - floor(ratio n)`` largest
    (ties go to the lower index, as ``lax.top_k``)."""
    n = magnitudes.shape[0]
    keep = n - int(math.floor(ratio * n))
    if keep == n:
        return jnp.ones((n,), bool)
    _, kept = jax.lax.top_k(magnitudes, keep)
    return jnp.zeros((n,), bool).at[kept].set(True)


def prune(ratio: float, scope: str = "tensor") -> optax.GradientTransformation:
    """Magnitude pruning: zero the ``floor(ratio * n)`` smallest-magnitude entries, keep the rest exactly.

    ``g~ = g * m`` with ``m`` the indicator of the ``k = n - floor(ratio * n)`` largest ``|g|``;
    ``scope="tensor"``: ``n`` and the ranking are per leaf; ``scope="global"``: over all leaves together.
    DLG section 5.3 (gradient compression / sparsification, Lin et al. 2018's deep gradient compression):
    ratios above 20% defeat the attack. ``0 <= ratio < 1``. Stateless.
    """
    ratio = check_number("pruning ratio", ratio, low=0.0, high=1.0)
    check_choice("pruning scope", scope, PRUNE_SCOPES)

    def update(updates, state, params=None):
        del params
        leaves, treedef = jax.tree.flatten(updates)
        if scope == "tensor":
            pruned = [g * _top_k_mask(jnp.abs(g).reshape(-1), ratio).reshape(g.shape) for g in leaves]
        else:
            mask = _top_k_mask(jnp.concatenate([jnp.abs(g).reshape(-1) for g in leaves]), ratio)
            offsets = np.cumsum([0] + [g.size for g in leaves])
            pruned = [g * mask[a:b].reshape(g.shape) for g, a, b in zip(leaves, offsets[:-1], offsets[1:])]
        return jax.tree.unflatten(treedef, pruned), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def dp_aggregate(noise_multiplier: float, clip: float = 1.0,
                 key: jax.Array | int = 0) -> optax.GradientTransformation:
    """DP-SGD's aggregation of per-example gradients ``g_i`` (leading batch axis ``B`` on every leaf):

        g~ = (1 / B) * ( sum_i g_i * min(1, C / ||g_i||_2)  +  N(0, (sigma C)^2 I) )

    where ``||g_i||_2`` is the global norm of example ``i``'s gradient over all leaves, ``C = clip`` and
    ``sigma = noise_multiplier``. This is ``optax.contrib.differentially_private_aggregate`` (Abadi et al.
    2016); its output has no batch axis. Chain it first: later transforms see the aggregate.
    """
    noise_multiplier = check_number("DP noise multiplier", noise_multiplier, low=0.0)
    clip = check_number("DP clipping norm", clip, low=0.0, low_inclusive=False)
    return differentially_private_aggregate(l2_norm_clip=clip, noise_multiplier=noise_multiplier,
                                            key=jax.random.key(key) if isinstance(key, int) else key)


def soteria(ratio: float) -> optax.GradientTransformationExtraArgs:
    """Soteria (Sun et al., CVPR 2021): prune the representation features whose removal moves a
    reconstruction the most (the largest ``|r_i| / ||d r_i / d x||``).

    With the representation ``r = f(x) [B, D]`` feeding the defended Dense layer (kernel ``W [D, K]``,
    flax layout: row ``i`` multiplies ``r_i``) and the scores ``s [D]`` of
    :func:`dlg_jax.victim.soteria.feature_scores` on the client's batch ``x``::

        m_i = [s_i is not among the floor(ratio D) smallest]      (ties: the lower index is kept)
        dW~[i, :] = m_i * dW[i, :],   every other leaf (the bias too) unchanged

    ``update(grads, state, params, *, model, inputs)``: ``params`` the client's weights, ``model`` its
    :class:`~dlg_jax.models.Model`, ``inputs [B, *input_shape]`` its private batch (optax extra arguments;
    a leading per-example axis on ``grads`` is kept). ``0 <= ratio < 1``. Stateless.
    """
    if isinstance(ratio, (int, float)) and 1 <= ratio < 100:
        raise DLGInputError(f"Soteria pruning ratio is the fraction of representation features pruned, "
                            f">= 0 and < 1, got {ratio!r} (for {ratio:g}% use {ratio / 100:g})")
    ratio = check_number("Soteria pruning ratio", ratio, low=0.0, high=1.0)

    def update(updates, state, params=None, *, model=None, inputs=None, **extra_args):
        del extra_args
        if model is None or inputs is None or params is None:
            raise DLGInputError("defense 'soteria' needs the client's params, model and inputs: "
                                "update(grads, state, params, model=..., inputs=...)")
        kernel = (*defended_layer(model, params, inputs), "kernel")
        keep = _top_k_mask(feature_scores(model, params, inputs), ratio)

        def mask(path, g):
            if tuple(getattr(k, "key", None) for k in path) != kernel:
                return g
            return g * keep[:, None].astype(g.dtype)

        return jax.tree_util.tree_map_with_path(mask, updates), state

    return optax.GradientTransformationExtraArgs(lambda params: optax.EmptyState(), update)


# ---------------------------------------------------------------------------------------------------
# Named defenses, keys and application to stacked targets.


@dataclasses.dataclass(frozen=True)
class Defense:
    """A named defense: its optax ``transform``, whether that transform takes per-example gradients
    (leading batch axis) rather than the batch's mean gradient, and whether it needs the client's
    ``params``, ``model`` and ``inputs`` (``soteria``: passed as optax extra arguments).

    Calling it, ``defense(grads, key)``, defends the stacked shared gradients ``grads`` (leading ``T``
    axis) with independent keys per target (not a ``needs_inputs`` one); :func:`defended_gradients` (what
    :func:`dlg_jax.pipeline.run_dlg` uses) also feeds per-example defenses their per-example gradients.
    """

    name: str
    strength: Any
    options: tuple[tuple[str, Any], ...]
    transform: optax.GradientTransformation
    per_example: bool = False
    needs_inputs: bool = False

    def __call__(self, grads: Any, key: jax.Array) -> Any:
        return apply_defense(self, grads, key)


def format_strength(strength: Any) -> str:
    """``1e-04``-style text for numbers, the name for formats, ``-`` for none."""
    if strength is None:
        return "-"
    if isinstance(strength, float):
        return f"{strength:g}"
    if isinstance(strength, tuple):
        return "+".join(map(format_strength, strength))
    return str(strength)


_OPTIONS = {"none": (), "gaussian": (), "laplacian": (), "precision": (), "prune": ("scope",), "dp": ("clip",),
            "soteria": ()}


def make_defense(name: str, strength: Any = None, **options) -> Defense:
    """The registered defense ``name`` at ``strength`` (see the module table).

    Options: ``prune``: ``scope`` (``"tensor"`` or ``"global"``); ``dp``: ``clip`` (the norm ``C``,
    default 1.0). ``none`` takes no strength. Unknown names, options or out-of-range strengths raise
    :class:`DLGInputError`.
    """
    check_choice("defense", name, DEFENSE_NAMES)
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        allowed = ", ".join(_OPTIONS[name]) or "none"
        raise DLGInputError(f"unknown option {unknown[0]!r} for defense {name!r}; allowed: {allowed}")
    if name == "none":
        if strength not in (None, 0, 0.0):
            raise DLGInputError(f"defense 'none' takes no strength, got {strength!r}")
        return Defense("none", None, (), optax.identity())
    if strength is None:
        raise DLGInputError(f"defense {name!r} needs a strength, e.g. {DEFAULT_STRENGTHS[name][0]!r}")
    if name == "gaussian":
        transform = gaussian_noise(strength)
    elif name == "laplacian":
        transform = laplacian_noise(strength)
    elif name == "precision":
        transform = low_precision(strength)
    elif name == "prune":
        transform = prune(strength, **options)
    elif name == "soteria":
        transform = soteria(strength)
    else:
        transform = dp_aggregate(strength, **options)
    if name != "precision":
        strength = float(strength)
    return Defense(name, strength, tuple(sorted(options.items())), transform, per_example=name == "dp",
                   needs_inputs=name == "soteria")


def compose(*defenses: Defense) -> Defense:
    """Apply ``defenses`` in order (``optax.chain``); a per-example one (``dp``) may only come first."""
    if not defenses:
        raise DLGInputError("compose needs at least one defense")
    late = [d.name for d in defenses[1:] if d.per_example]
    if late:
        raise DLGInputError(f"defense {late[0]!r} takes per-example gradients, so it must come first in a chain")
    return Defense(
        "+".join(d.name for d in defenses), tuple(d.strength for d in defenses),
        tuple((f"{i}.{k}", v) for i, d in enumerate(defenses) for k, v in d.options),
        optax.chain(*(d.transform for d in defenses)), defenses[0].per_example,
        any(d.needs_inputs for d in defenses),
    )


def with_key(state: Any, key: jax.Array) -> Any:
    """``state`` with its ``i``-th ``rng_key`` field (in tree order) replaced by ``fold_in(key, i)``.

    Works for any optax state tree, chains included: every keyed transform gets its own stream.
    """
    counter = itertools.count()

    def replace(path, leaf):
        if path and isinstance(path[-1], jax.tree_util.GetAttrKey) and path[-1].name == "rng_key":
            new = jax.random.fold_in(key, next(counter))
            return new if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key) else jax.random.key_data(new)
        return leaf

    return jax.tree_util.tree_map_with_path(replace, state)


def _as_typed_key(key) -> jax.Array:
    if isinstance(key, int):
        return jax.random.key(key)
    if jax.dtypes.issubdtype(jnp.asarray(key).dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def _apply_per_target(transform: optax.GradientTransformation, inputs: Any, key: jax.Array, model=None,
                      params: Any = None, images: jnp.ndarray | None = None) -> Any:
    """``update`` of a fresh state keyed ``fold_in(key, t)`` on each target's slice ``t`` of ``inputs``;
    with ``model``, the update also gets ``params`` and target ``t``'s ``images[t]`` (as ``inputs=``)."""
    targets = jax.tree.leaves(inputs)[0].shape[0]
    transform = optax.with_extra_args_support(transform)

    def one(target_inputs, target_key, target_images):
        state = with_key(transform.init(target_inputs), target_key)
        extra = {} if model is None else {"model": model, "inputs": target_images}
        return transform.update(target_inputs, state, params, **extra)[0]

    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(targets))
    return jax.vmap(one, in_axes=(0, 0, None if images is None else 0))(inputs, keys, images)


_apply_jit = jax.jit(_apply_per_target, static_argnums=(0, 3))


def apply_defense(defense: Defense | optax.GradientTransformation, grads: Any, key: jax.Array | int) -> Any:
    """Defend the stacked shared gradients ``grads`` (every leaf ``[T, ...]``), target ``t`` with its own
    key ``fold_in(key, t)``; returns the same shapes.

    ``grads`` are each client's *batch-mean* gradients. A per-example defense (``dp``) then sees each
    target's gradient as a batch of one example: exact DP-SGD for batch size 1, client-level clipping
    (the whole batch as one example) otherwise; :func:`defended_gradients` does per-example DP-SGD.
    """
    key = _as_typed_key(key)
    if isinstance(defense, Defense):
        if defense.needs_inputs:
            raise DLGInputError(f"defense {defense.name!r} needs the clients' model, params and images: use "
                                "defended_gradients(defense, model, params, images, labels, key)")
        if defense.per_example:
            batched = jax.tree.map(lambda g: g[:, None], grads)
            return _apply_jit(defense.transform, batched, key)
        defense = defense.transform
    return _apply_jit(defense, grads, key)


def per_example_gradients(model, params: Any, images: jnp.ndarray, labels: jnp.ndarray) -> Any:
    """Per-example gradients of ``T`` clients: ``images [T, B, H, W, C]``, ``labels [T, B]`` give a
    parameter-shaped pytree with leading ``[T, B]`` axes (``jax.vmap`` over both); their mean over ``B``
    is :func:`dlg_jax.victim.gradients.shared_gradients`."""
    return _per_example_gradients(model, params, jnp.asarray(images), jnp.asarray(labels))


@jax.jit(static_argnums=0)
def _per_example_gradients(model, params, images, labels):
    one = lambda x, y: shared_gradient(model, params, x[None], y[None])  # noqa: E731
    return jax.vmap(jax.vmap(one))(images, labels)


def defended_gradients(defense: Defense, model, params: Any, images: jnp.ndarray, labels: jnp.ndarray,
                       key: jax.Array | int) -> Any:
    """What ``T`` defended clients share for ``images [T, B, H, W, C]``, ``labels [T, B]`` (leading ``T``
    axis on every leaf). Per-example defenses get per-example gradients (true DP-SGD for any ``B``);
    the others get the batch-mean gradient, as :func:`apply_defense`. A ``needs_inputs`` defense
    (``soteria``) also gets ``model``, ``params`` and each client's own ``images[t]``."""
    if not defense.per_example and not defense.needs_inputs:
        return apply_defense(defense, shared_gradients(model, params, images, labels), key)
    grads = (per_example_gradients(model, params, images, labels) if defense.per_example
             else shared_gradients(model, params, images, labels))
    if not defense.needs_inputs:
        return _apply_jit(defense.transform, grads, _as_typed_key(key))
    return _apply_jit(defense.transform, grads, _as_typed_key(key), model, params, jnp.asarray(images))
