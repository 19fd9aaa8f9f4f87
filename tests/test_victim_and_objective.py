"""The shared gradient and the matching objective against independent computations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.objectives import Context, Dummy, make_objective
from dlg_jax.errors import DLGInputError
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import (
    check_shared_gradients,
    shared_gradient,
    shared_gradients,
)


def test_lenet_gradient_matches_finite_differences(colour):
    """Central differences of the loss (no autodiff) against the shared gradient, on the largest entries."""
    model = build_model("lenet", colour.input_shape, colour.num_classes, conv_implementation="lax")
    params = model.init(jax.random.key(0))
    images, labels = colour.examples([5, 6])
    grad = shared_gradient(model, params, images, labels)
    targets = jax.nn.one_hot(labels, colour.num_classes)

    def loss(p):
        logits = np.asarray(model.apply(p, images), np.float64)
        logp = logits - logits.max(1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
        return float(np.mean(np.sum(-np.asarray(targets) * logp, axis=1)))

    for (path, leaf) in jax.tree_util.tree_leaves_with_path(grad):
        leaf = np.asarray(leaf)
        for flat_index in np.argsort(np.abs(leaf).ravel())[-3:]:
            index = np.unravel_index(flat_index, leaf.shape)
            step = 1e-2

            def shifted(delta):
                return jax.tree_util.tree_map_with_path(
                    lambda q, p: p.at[index].add(delta) if q == path else p, params)

            numeric = (loss(shifted(step)) - loss(shifted(-step))) / (2 * step)
            assert numeric == pytest.approx(float(leaf[index]), rel=2e-2, abs=1e-4), (path, index)


def test_patch_model_gradient_equals_lax_model_gradient(colour):
    fast = build_model("lenet", colour.input_shape, colour.num_classes)
    reference = build_model("lenet", colour.input_shape, colour.num_classes, conv_implementation="lax")
    params = fast.init(jax.random.key(1))
    images, labels = colour.examples([0, 1, 2])
    a = shared_gradients(fast, params, images[:, None], labels[:, None])
    b = shared_gradients(reference, params, images[:, None], labels[:, None])
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("distance,tv_weight,joint", [("l2", 0.0, True), ("cosine", 1e-2, False)])
def test_fast_second_order_equals_grad_of_grad_on_lax_conv(colour, distance, tv_weight, joint):
    """The vmapped fast path (patches + reverse-over-forward) equals plain grad-of-grad through lax.conv."""
    fast_model = build_model("lenet", colour.input_shape, colour.num_classes)
    lax_model = build_model("lenet", colour.input_shape, colour.num_classes, conv_implementation="lax")
    params = fast_model.init(jax.random.key(0))
    images, labels = colour.examples([3])
    target = shared_gradient(fast_model, params, images, labels)
    restarts = 4
    keys = jax.random.split(jax.random.key(7), restarts)
    dummies = Dummy(jax.vmap(lambda k: jax.random.normal(k, (1, 32, 32, 3)))(keys),
                    jax.vmap(lambda k: jax.random.normal(k, (1, 10)))(keys) if joint else None)
    context = Context(params, target, jax.nn.one_hot(labels, 10))
    axes = (0, None)
    fast = make_objective(fast_model, distance, tv_weight=tv_weight)
    slow = make_objective(lax_model, distance, tv_weight=tv_weight, second_order="reverse")
    value_fast, grad_fast = jax.jit(jax.vmap(jax.value_and_grad(fast), in_axes=axes))(dummies, context)
    value_slow, grad_slow = jax.jit(jax.vmap(jax.value_and_grad(slow), in_axes=axes))(dummies, context)
    np.testing.assert_allclose(value_fast, value_slow, rtol=1e-4)
    for a, b in zip(jax.tree.leaves(grad_fast), jax.tree.leaves(grad_slow)):
        np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-4 * float(jnp.abs(b).max()))


def test_resnet_reverse_over_forward_equals_reverse():
    model = build_model("resnet20", (16, 16, 3), 10, activation="sigmoid")
    params = model.init(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 16, 16, 3))
    target = shared_gradient(model, params, x, jnp.array([1, 2]))
    dummy = Dummy(jax.random.normal(jax.random.key(2), (2, 16, 16, 3)),
                  jax.random.normal(jax.random.key(3), (2, 10)))
    context = Context(params, target, jnp.zeros((2, 10)))
    v1, g1 = jax.value_and_grad(make_objective(model))(dummy, context)
    v2, g2 = jax.value_and_grad(make_objective(model, second_order="reverse"))(dummy, context)
    np.testing.assert_allclose(v1, v2, rtol=1e-5)
    for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-4 * float(jnp.abs(b).max()))


def test_shared_gradient_checks(lenet, two_targets):
    model, params = lenet
    _, _, grads = two_targets
    assert check_shared_gradients(model, params, grads) == 2
    bad_shape = jax.tree.map(lambda g: g[:, :1] if g.ndim > 2 else g, grads)
    with pytest.raises(DLGInputError, match="has shape"):
        check_shared_gradients(model, params, bad_shape)
    with pytest.raises(DLGInputError, match="shared gradient lacks leaf 'Conv2D_0/"):
        check_shared_gradients(model, params, {"Dense_0": grads["Dense_0"]})
    poisoned = jax.tree.map(lambda g: g, grads)
    poisoned["Dense_0"]["bias"] = poisoned["Dense_0"]["bias"].at[0, 3].set(jnp.nan)
    with pytest.raises(DLGInputError, match="non-finite value"):
        check_shared_gradients(model, params, poisoned)


def test_the_python_api_and_the_cli_attack_the_same_victim_weights():
    """``victim_params(model, seed)`` (the README's example) gives the weights ``run_dlg`` / ``dlg-jax attack
    --seed`` use, and another seed other weights."""
    from dlg_jax import AttackConfig, RunOptions, run_dlg, victim_params

    run = run_dlg("lenet", "digits", indices=[0], config=AttackConfig(restarts=1, iterations=1, seed=3),
                  run=RunOptions(snapshots=0))
    for ours, theirs in zip(jax.tree.leaves(victim_params(run.model, seed=3)), jax.tree.leaves(run.params)):
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    other = jax.tree.leaves(victim_params(run.model, seed=4))[0]
    assert not np.allclose(np.asarray(other), np.asarray(jax.tree.leaves(run.params)[0]))
