"""Gradient-matching objectives: the distance between the dummy's gradient and the shared one, plus priors.

For one restart, with shared model parameters ``W``, shared gradient ``dW`` and the dummy
``z = (x' [B, H, W, C], y' [B, K])``::

    g(z)  = grad_W loss(F(x'; W), targets(z))                     # victim.soft_cross_entropy
    J(z)  = D(g(z), dW) + tv_weight * TV(x') + bn_prior * R_bn(x') + group_consistency * R_group(x')

with ``targets(z) = softmax(y')`` (DLG's joint labels) or fixed one-hot targets (analytic labels), and
``D`` one of

    l2:      sum_l w_l * ||g_l - dW_l||^2                                   (DLG)
    cosine:  1 - sum_l w_l <g_l, dW_l> / (sqrt(sum_l w_l ||g_l||^2) sqrt(sum_l w_l ||dW_l||^2))   (IG)
    tag:     sum_l w_l * (||g_l - dW_l||^2 + TAG_L1 * ||g_l - dW_l||_1)        (TAG, Deng et al. 2021)

over the parameter leaves ``l`` (``w_l = 1`` unless layer weights are given).

**Residual form.** The l2 distance is a sum of squares: ``D(g(z), dW) = ||r(z)||^2`` with

    r(z) = concat_l sqrt(w_l) * (g_l(z) - dW_l).ravel()        [m], m = number of weights

(:func:`make_residual`), which least-squares solvers (Gauss–Newton, Levenberg–Marquardt) use directly.

**GradInversion's priors** (Yin et al., CVPR 2021, eq. 7 and 10):

    R_bn(x')    = sum_l ||mu_l(x') - mu_l*||_2 + ||var_l(x') - var_l*||_2
    R_group(x') = mean over the B*H*W*C pixels of (x' - E)^2

``mu_l(x'), var_l(x') [C_l]``: the per-channel batch statistics of batch-norm layer ``l``'s input on the
dummy batch (:func:`dlg_jax.models.batchnorm.batchnorm_statistics`); ``mu_l*, var_l*``: the statistics
"stored in the model" (``Context.bn_statistics``; our victims keep no running statistics, so the attack
takes them from a reference set of images: :func:`dlg_jax.models.batchnorm.reference_statistics`).
``E [B, H, W, C]``: the mean of the restarts of the same target (``Context.group``, held constant within
the objective; the attack recomputes it between blocks of iterations: :mod:`dlg_jax.attack.engine`).

**The second-order term.** ``grad_z J`` needs the derivative of a gradient. Instead of differentiating
through the backward pass (reverse-over-reverse), :func:`make_objective` uses the identity

    grad_z D(g(z), dW) = grad_z < grad_W loss(W, z), v >  = grad_z [ d/de loss(W + e v, z) ]_{e=0},
    v = grad_g D(g, dW)  (held fixed)

i.e. reverse-mode over a forward-mode ``jvp`` in the parameters (reverse-over-forward). It is wrapped in
``jax.custom_vjp`` so that every solver (optax's and jaxopt's line searches included) gets this gradient
from plain ``jax.grad``. ``second_order="reverse"`` keeps ordinary grad-of-grad as the reference; the tests
check that both agree.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from dlg_jax.errors import DLGInputError, check_choice, check_number
from dlg_jax.models import Model
from dlg_jax.models.batchnorm import batchnorm_statistics
from dlg_jax.victim.gradients import batch_loss

DISTANCES = ("l2", "cosine", "tag")
TAG_L1 = 1e-2  # TAG's weight of the L1 term (our choice; the paper tunes it per model)
SECOND_ORDER_MODES = ("reverse_over_forward", "reverse")


class Dummy(NamedTuple):
    """What the attacker optimises for one restart: ``images``, the attacked input array (images
    ``[B, H, W, C]`` or word embeddings ``[B, L, E]``) and, with joint labels, label logits
    ``[B, *label_axes, K]`` (``[B, K]``; masked-LM ``[B, M, V]``; ``None`` when the labels are fixed)."""

    images: jnp.ndarray
    label_logits: jnp.ndarray | None


class GroupMean(NamedTuple):
    """Group consistency's anchor for one restart: ``images [B, H, W, C]``, the mean of its target's
    restarts, and ``on`` (scalar 0 or 1: whether the term is active yet)."""

    images: jnp.ndarray
    on: jnp.ndarray


class Context(NamedTuple):
    """What the objective holds constant for one restart: the model parameters (shared), the shared
    gradient ``dW`` of its target, fixed soft targets ``[B, *label_axes, K]`` (ignored with joint labels),
    the reference batch-norm statistics (shared; the tree of
    :func:`~dlg_jax.models.batchnorm.batchnorm_statistics`; only with the BN prior) and the group mean
    (:class:`GroupMean`; only with group consistency)."""

    params: Any
    target_grad: Any
    fixed_targets: jnp.ndarray
    bn_statistics: Any = None
    group: GroupMean | None = None


def _tree_vdot(a: Any, b: Any, weights: Any) -> jnp.ndarray:
    return sum(w * jnp.vdot(x, y) for x, y, w in zip(jax.tree.leaves(a), jax.tree.leaves(b), weights))


def l2_distance(grad: Any, target: Any, weights: Any) -> jnp.ndarray:
    """``sum_l w_l ||grad_l - target_l||^2`` (DLG)."""
    diff = jax.tree.map(jnp.subtract, grad, target)
    return _tree_vdot(diff, diff, weights)


def tag_distance(grad: Any, target: Any, weights: Any) -> jnp.ndarray:
    """``sum_l w_l (||grad_l - target_l||^2 + TAG_L1 ||grad_l - target_l||_1)`` (TAG: L2 plus L1)."""
    diff = jax.tree.map(jnp.subtract, grad, target)
    return _tree_vdot(diff, diff, weights) + TAG_L1 * sum(
        w * jnp.sum(jnp.abs(d)) for d, w in zip(jax.tree.leaves(diff), weights))


def cosine_distance(grad: Any, target: Any, weights: Any) -> jnp.ndarray:
    """``1 - <grad, target>_w / (|grad|_w |target|_w)`` over all leaves jointly (Geiping et al. 2020)."""
    dot = _tree_vdot(grad, target, weights)
    norm_grad = jnp.sqrt(_tree_vdot(grad, grad, weights))
    norm_target = jnp.sqrt(_tree_vdot(target, target, weights))
    tiny = jnp.finfo(dot.dtype).tiny
    return 1.0 - dot / jnp.maximum(norm_grad * norm_target, tiny)


def total_variation(images: jnp.ndarray) -> jnp.ndarray:
    """Anisotropic TV of ``images [B, H, W, C]``: mean |x[i+1, j] - x[i, j]| + mean |x[i, j+1] - x[i, j]|."""
    dy = jnp.abs(images[:, 1:, :, :] - images[:, :-1, :, :])
    dx = jnp.abs(images[:, :, 1:, :] - images[:, :, :-1, :])
    return jnp.mean(dy) + jnp.mean(dx)


def _norm(x: jnp.ndarray) -> jnp.ndarray:
    """``||x||_2`` with a zero (not NaN) gradient at ``x = 0``."""
    return jnp.sqrt(jnp.maximum(jnp.vdot(x, x), jnp.finfo(x.dtype).tiny))


def bn_statistics_prior(statistics: Any, reference: Any) -> jnp.ndarray:
    """GradInversion's ``R_bn``: ``sum_l ||mu_l - mu_l*||_2 + ||var_l - var_l*||_2`` over the leaves of two
    trees of batch-norm statistics (:func:`~dlg_jax.models.batchnorm.batchnorm_statistics`)."""
    return sum(_norm(a - b) for a, b in zip(jax.tree.leaves(statistics), jax.tree.leaves(reference)))


def group_consistency_prior(images: jnp.ndarray, group: GroupMean) -> jnp.ndarray:
    """GradInversion's ``R_group`` (as a mean): ``on * mean((images - group.images)^2)``."""
    return group.on * jnp.mean(jnp.square(images - group.images))


def check_prior_weights(**weights: float) -> None:
    """Raise :class:`DLGInputError` unless every prior weight (``name=value``) is a finite number >= 0."""
    for name, value in weights.items():
        check_number(name, value, low=0.0)


def soft_targets(dummy: Dummy, context: Context) -> jnp.ndarray:
    """``softmax(y')`` with joint labels, else the fixed targets."""
    if dummy.label_logits is None:
        return context.fixed_targets
    return jax.nn.softmax(dummy.label_logits, axis=-1)


def _victim_loss(model: Model, params, dummy: Dummy, context: Context) -> jnp.ndarray:
    return batch_loss(model, params, dummy.images, soft_targets(dummy, context))


def _dummy_gradient(model: Model, dummy: Dummy, context: Context) -> Any:
    """``g(z) = grad_W loss(F(x'; W), targets(z))``, the gradient the dummy would share."""
    return jax.grad(lambda params: _victim_loss(model, params, dummy, context))(context.params)


def make_residual(model: Model, *, layer_weights: tuple[float, ...] | None = None
                  ) -> Callable[[Dummy, Context], jnp.ndarray]:
    """The l2 objective's residual ``r(dummy, context) -> [m]``, ``concat_l sqrt(w_l) (g_l - dW_l)``
    (module docstring), with ``||r||^2`` equal to :func:`make_objective`'s ``l2`` value without priors."""

    def residual(dummy: Dummy, context: Context) -> jnp.ndarray:
        grad = _dummy_gradient(model, dummy, context)
        leaves, targets = jax.tree.leaves(grad), jax.tree.leaves(context.target_grad)
        weights = (1.0,) * len(leaves) if layer_weights is None else layer_weights
        return jnp.concatenate([(jnp.sqrt(jnp.asarray(w, g.dtype)) * (g - t)).ravel()
                                for g, t, w in zip(leaves, targets, weights)])

    return residual


def make_objective(
    model: Model,
    distance: str = "l2",
    *,
    tv_weight: float = 0.0,
    bn_prior: float = 0.0,
    group_consistency: float = 0.0,
    layer_weights: tuple[float, ...] | None = None,
    second_order: str = "reverse_over_forward",
) -> Callable[[Dummy, Context], jnp.ndarray]:
    """The objective ``J(dummy, context) -> scalar`` for one restart; differentiable in ``dummy`` only
    (the context acts as a constant: its cotangent is zero, as under ``stop_gradient``). With
    ``bn_prior`` the context must hold ``bn_statistics``, with ``group_consistency`` a ``group``."""
    check_choice("distance", distance, DISTANCES)
    check_choice("second-order mode", second_order, SECOND_ORDER_MODES)
    check_prior_weights(tv_weight=tv_weight, bn_prior=bn_prior, group_consistency=group_consistency)
    measure = {"l2": l2_distance, "cosine": cosine_distance, "tag": tag_distance}[distance]

    def leaf_weights(tree):
        count = len(jax.tree.leaves(tree))
        return (1.0,) * count if layer_weights is None else layer_weights

    def victim_loss(params, dummy, context):
        return _victim_loss(model, params, dummy, context)

    def dummy_gradient(dummy, context):
        return _dummy_gradient(model, dummy, context)

    def prior(dummy, context):
        value = tv_weight * total_variation(dummy.images) if tv_weight else 0.0
        if bn_prior:
            if context.bn_statistics is None:
                raise DLGInputError("the BN prior needs reference statistics in the context (bn_statistics)")
            statistics = batchnorm_statistics(model, context.params, dummy.images)
            value = value + bn_prior * bn_statistics_prior(statistics, context.bn_statistics)
        if group_consistency:
            if context.group is None:
                raise DLGInputError("group consistency needs the group mean in the context (group)")
            value = value + group_consistency * group_consistency_prior(dummy.images, context.group)
        return value

    has_prior = bool(tv_weight or bn_prior or group_consistency)

    def objective(dummy: Dummy, context: Context) -> jnp.ndarray:
        grad = dummy_gradient(dummy, context)
        return measure(grad, context.target_grad, leaf_weights(grad)) + prior(dummy, context)

    if second_order == "reverse":
        return objective

    def value_and_dummy_grad(dummy, context):
        grad = dummy_gradient(dummy, context)
        value, direction = jax.value_and_grad(measure)(grad, context.target_grad, leaf_weights(grad))
        direction = jax.lax.stop_gradient(direction)

        def directional_derivative(d):
            return jax.jvp(lambda p: victim_loss(p, d, context), (context.params,), (direction,))[1]

        dummy_grad = jax.grad(directional_derivative)(dummy)
        if has_prior:
            prior_value, prior_grad = jax.value_and_grad(prior)(dummy, context)
            value = value + prior_value
            dummy_grad = jax.tree.map(jnp.add, dummy_grad, prior_grad)
        return value, dummy_grad

    @jax.custom_vjp
    def fast_objective(dummy: Dummy, context: Context) -> jnp.ndarray:
        return objective(dummy, context)

    def forward(dummy, context):
        value, dummy_grad = value_and_dummy_grad(dummy, context)
        return value, (dummy_grad, context)

    def backward(residual, cotangent):
        dummy_grad, context = residual
        return jax.tree.map(lambda g: cotangent * g, dummy_grad), jax.tree.map(jnp.zeros_like, context)

    fast_objective.defvjp(forward, backward)
    return fast_objective
