"""GradInversion's priors (Yin et al. 2021): the batch-norm statistics prior and group consistency."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.engine import AttackConfig, RunOptions, group_means, run_attack
from dlg_jax.attack.objectives import (
    Context,
    Dummy,
    bn_statistics_prior,
    make_objective,
)
from dlg_jax.attack.solvers import SolverConfig
from dlg_jax.cli import main
from dlg_jax.errors import DLGInputError
from dlg_jax.models import Model, build_model
from dlg_jax.models.batchnorm import (
    BATCH_NORM_EPS,
    BatchStatNorm,
    batchnorm_statistics,
    reference_statistics,
)
from dlg_jax.victim.gradients import one_hot, shared_gradients

SHAPE, CLASSES = (6, 6, 1), 3


class _TinyBN(nn.Module):
    """conv(4) -> BN -> sigmoid -> conv(4) -> BN -> sigmoid -> flatten -> dense(3)."""

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.Conv(4, (3, 3), padding="SAME", use_bias=False)(x)
            x = nn.sigmoid(BatchStatNorm(scale_init=nn.initializers.uniform(1.0))(x))
        return nn.Dense(CLASSES)(x.reshape(x.shape[0], -1))


TINY = Model("tiny-bn", _TinyBN(), SHAPE, CLASSES)


def _by_hand(params, x):
    """The two BN layers' input statistics, recomputed with lax.conv and explicit means."""
    stats = []
    for conv, norm in (("Conv_0", "BatchStatNorm_0"), ("Conv_1", "BatchStatNorm_1")):
        h = jax.lax.conv_general_dilated(x, params[conv]["kernel"], (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        mean = h.sum(axis=(0, 1, 2)) / (h.shape[0] * h.shape[1] * h.shape[2])
        var = ((h - mean) ** 2).sum(axis=(0, 1, 2)) / (h.shape[0] * h.shape[1] * h.shape[2])
        stats.append((mean, var))
        x = jax.nn.sigmoid(params[norm]["scale"] * (h - mean) / jnp.sqrt(var + BATCH_NORM_EPS) + params[norm]["bias"])
    return stats


def _reference_prior(params, x, reference):
    return sum(jnp.linalg.norm(m - rm) + jnp.linalg.norm(v - rv)
               for (m, v), (rm, rv) in zip(_by_hand(params, x), _by_hand(params, reference)))


def _problem(seed=0, targets=1, batch=2):
    params = TINY.init(jax.random.key(seed))
    images = jax.random.uniform(jax.random.key(seed + 1), (targets, batch, *SHAPE))
    labels = jnp.arange(targets * batch).reshape(targets, batch) % CLASSES
    return params, images, labels, shared_gradients(TINY, params, images, labels)


@pytest.mark.parametrize("second_order", ["reverse_over_forward", "reverse"])
def test_bn_prior_value_and_gradient_match_a_by_hand_reference(second_order):
    params, images, labels, grads = _problem()
    reference_images = jax.random.uniform(jax.random.key(7), (16, *SHAPE))
    stored = reference_statistics(TINY, params, reference_images, batch_size=16)
    context = Context(params, jax.tree.map(lambda g: g[0], grads), one_hot(labels[0], CLASSES), stored)
    dummy = Dummy(jax.random.normal(jax.random.key(3), images[0].shape), None)
    weight = 0.3
    with_prior = make_objective(TINY, tv_weight=0.01, bn_prior=weight, second_order=second_order)
    without = make_objective(TINY, tv_weight=0.01, second_order=second_order)
    value, grad = jax.value_and_grad(with_prior)(dummy, context)
    base_value, base_grad = jax.value_and_grad(without)(dummy, context)
    expected, expected_grad = jax.value_and_grad(_reference_prior, argnums=1)(params, dummy.images, reference_images)
    np.testing.assert_allclose(value - base_value, weight * expected, rtol=1e-5)
    np.testing.assert_allclose(grad.images - base_grad.images, weight * expected_grad, rtol=1e-4, atol=1e-6)
    # And a finite difference of the by-hand prior along a random direction.
    direction = jax.random.normal(jax.random.key(4), dummy.images.shape)
    step = 1e-3
    fd = (_reference_prior(params, dummy.images + step * direction, reference_images)
          - _reference_prior(params, dummy.images - step * direction, reference_images)) / (2 * step)
    np.testing.assert_allclose(jnp.vdot(expected_grad, direction), fd, rtol=2e-2)


def test_reference_statistics_average_the_minibatch_statistics():
    params = TINY.init(jax.random.key(0))
    images = jax.random.uniform(jax.random.key(1), (10, *SHAPE))
    averaged = reference_statistics(TINY, params, images, batch_size=4)  # batches of 4, 4, 2
    parts = [batchnorm_statistics(TINY, params, images[s:s + 4]) for s in (0, 4, 8)]
    expected = jax.tree.map(lambda a, b, c: (4 * a + 4 * b + 2 * c) / 10, *parts)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), averaged, expected)
    first = _by_hand(params, images[:4])[0]
    np.testing.assert_allclose(parts[0]["BatchStatNorm_0"]["mean"], first[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(parts[0]["BatchStatNorm_0"]["var"], first[1], rtol=1e-5)


def test_group_means_are_per_target_and_skip_excluded_restarts():
    images = np.arange(6, dtype=np.float32).reshape(6, 1) ** 2  # problems of targets 0, 0, 0, 1, 1, 1
    means = group_means(images, np.array([0, 0, 0, 1, 1, 1]), np.array([1, 1, 0, 1, 1, 1]))
    np.testing.assert_allclose(means[:, 0], [0.5, 0.5, 0.5, 50 / 3, 50 / 3, 50 / 3])
    none_left = group_means(images[:2], np.array([0, 0]), np.array([0, 0]))
    np.testing.assert_allclose(none_left[:, 0], [0.5, 0.5])


def _spread(result):
    """Mean distance of each restart's images to its target's restart mean, and between the targets' means."""
    means = result.images.mean(axis=1, keepdims=True)
    within = float(np.sqrt(((result.images - means) ** 2).sum(axis=(2, 3, 4, 5))).mean())
    between = float(np.sqrt(((means[0] - means[1]) ** 2).sum()))
    return within, between


@pytest.mark.parametrize("solver", ["adam", "lbfgs"])
def test_group_consistency_pulls_restarts_of_each_target_together(solver):
    params, images, labels, grads = _problem(targets=2)
    config = AttackConfig(restarts=3, iterations=40, group_every=10, tolerance=0.0, labels="analytic",
                          solver=SolverConfig(solver, learning_rate=0.05), box=(0.0, 1.0), dummy_init="uniform")
    options = RunOptions(block=40, snapshots=0, chunk_size=4)  # rounded to whole targets: 3
    fixed = np.asarray(labels)
    plain = run_attack(TINY, params, grads, 2, config, fixed_labels=fixed, run=options)
    grouped = run_attack(TINY, params, grads, 2, dataclasses.replace(config, group_consistency=50.0),
                         fixed_labels=fixed, run=options)
    (plain_within, plain_between), (group_within, group_between) = _spread(plain), _spread(grouped)
    assert group_within < 0.5 * plain_within
    assert group_between > 0.5 * plain_between  # the targets' means are not pulled onto one another
    assert np.all(grouped.evaluations >= grouped.iterations) and np.all(grouped.iterations > 0)
    if solver == "lbfgs":
        return  # one chunk of both targets vs chunks of one: checked once (a compile each)
    again = run_attack(TINY, params, grads, 2, dataclasses.replace(config, group_consistency=50.0),
                       fixed_labels=fixed, run=dataclasses.replace(options, chunk_size=6))
    np.testing.assert_allclose(again.images, grouped.images, atol=2e-3)  # chunk rounding only


def test_bn_prior_attack_runs_and_bad_inputs_are_one_clear_line():
    params, images, labels, grads = _problem()
    stored = reference_statistics(TINY, params, jax.random.uniform(jax.random.key(9), (8, *SHAPE)))
    config = AttackConfig(restarts=2, iterations=3, bn_prior=0.1)
    result = run_attack(TINY, params, grads, 2, config, bn_statistics=stored, run=RunOptions(block=3, snapshots=0))
    assert np.all(np.isfinite(result.loss))
    with pytest.raises(DLGInputError, match="needs bn_statistics"):
        run_attack(TINY, params, grads, 2, config)
    with pytest.raises(DLGInputError, match=r"bn_statistics lacks leaf 'BatchStatNorm_1/mean' \(shape \(4,\)\)"):
        run_attack(TINY, params, grads, 2, config, bn_statistics={"BatchStatNorm_0": stored["BatchStatNorm_0"]})
    lenet = build_model("lenet", SHAPE, CLASSES)  # refused before its params or gradients are looked at
    with pytest.raises(DLGInputError, match="needs a model with batch normalisation; model 'lenet' has none"):
        run_attack(lenet, params, grads, 2, config, bn_statistics=stored)
    for field, value in (("bn_prior", -0.1), ("group_consistency", -1.0), ("bn_prior", float("nan"))):
        with pytest.raises(DLGInputError, match=f"{field} must be a finite number >= 0"):
            AttackConfig(**{field: value})
    with pytest.raises(DLGInputError, match="group_consistency needs restarts >= 2"):
        AttackConfig(restarts=1, group_consistency=0.1)


@pytest.mark.parametrize("argv, message", [
    (["--bn-prior", "0.1"], "model 'lenet' has none"),
    (["--bn-prior", "-1"], "argument --bn-prior: expected a finite number >= 0, got '-1'"),
    (["--group-consistency", "-2"], "argument --group-consistency: expected a finite number >= 0"),
    (["--group-consistency", "1", "--restarts", "1"], "group_consistency needs restarts >= 2"),
])
def test_cli_bad_prior_input_exits_2(tmp_path, capsys, argv, message):
    assert main(["attack", "--dataset", "digits", "--iterations", "2", "--quiet", "--out", str(tmp_path),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dlg-jax: error:")


def test_bn_prior_removes_the_scale_ambiguity_of_batch_norm():
    """With batch norm from the batch (no conv bias before it) the gradient barely sees ``x -> a x``; the
    BN prior does: the true batch scores better than its rescaled copies."""
    params, images, labels, grads = _problem(batch=4)
    stored = reference_statistics(TINY, params, jax.random.uniform(jax.random.key(11), (64, *SHAPE)))
    context = Context(params, jax.tree.map(lambda g: g[0], grads), one_hot(labels[0], CLASSES), stored)
    matching = make_objective(TINY, "l2")
    scale = float(sum(jnp.vdot(g, g) for g in jax.tree.leaves(context.target_grad)))
    prior = {a: float(bn_statistics_prior(batchnorm_statistics(TINY, params, a * images[0]), stored))
             for a in (0.25, 0.5, 1.0, 2.0, 4.0)}
    for a in prior:
        assert matching(Dummy(a * images[0], None), context) <= 1e-6 * scale
    assert min(prior, key=prior.get) == 1.0 and prior[0.5] > 2 * prior[1.0] and prior[2.0] > 2 * prior[1.0]
