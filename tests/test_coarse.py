"""Continuation from low resolution: the coarse victim sees its dummies upsampled, and a coarse start
leads L-BFGS to a colour batch of two that it does not recover from a random start."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import recovery_chunk

from dlg_jax.attack.coarse import coarse_problem, resized
from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
from dlg_jax.attack.objectives import Dummy
from dlg_jax.errors import DLGInputError
from dlg_jax.metrics import evaluate
from dlg_jax.victim.gradients import shared_gradients


def test_the_coarse_victim_has_the_gradient_of_its_upsampled_images(colour, lenet):
    model, params = lenet
    images, labels = colour.examples([0, 1])
    small = np.asarray(jax.image.resize(images, (2, 8, 8, 3), "linear"))
    coarse, coarse_params, _ = coarse_problem(model, params, None, 4)
    assert coarse.input_shape == (8, 8, 3) and coarse_params == {"inner": params}
    upsampled = np.asarray(jax.image.resize(small, (2, 32, 32, 3), "linear"))
    want = shared_gradients(model, params, upsampled[None], labels[None])
    got = shared_gradients(coarse, coarse_params, small[None], labels[None])
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-7), got, {"inner": want})
    dummy = resized(Dummy(small[None, None], None), (32, 32, 3))
    np.testing.assert_allclose(dummy.images[0, 0], upsampled, rtol=1e-6, atol=1e-6)


@pytest.mark.recovery
def test_a_coarse_start_leads_a_colour_batch_closer_than_three_times_the_iterations_from_a_random_one(colour, lenet):
    """Colour images 0 and 1 in one gradient, one restart from U(0, 1): 300 L-BFGS iterations at 8 x 8,
    300 at 16 x 16 and 500 at 32 x 32 end with both slots at ~25 dB (this CPU, also single-threaded on
    AVX2); 3000 iterations at 32 x 32 from the random start converge (3e-8 of ||dW||^2) to another batch,
    ~19 dB from the private one."""
    model, params = lenet
    images, labels = colour.examples([0, 1])
    grads = shared_gradients(model, params, images[None], labels[None])
    flat = AttackConfig(restarts=1, iterations=3000, dummy_init="uniform")
    coarse = dataclasses.replace(flat, iterations=500, coarse=(4, 2), coarse_iterations=300)
    options = RunOptions(chunk_size=recovery_chunk(1), block=100, snapshots=0)
    worst = {}
    for name, config in (("flat", flat), ("coarse", coarse)):
        result = run_attack(model, params, grads, 2, config, run=options)
        metrics = evaluate(np.clip(result.best_images, 0, 1), images[None], result.best_labels, labels[None])
        worst[name] = float(metrics.slot_psnr.min())
        assert metrics.label_accuracy[0] == 1.0
    # the coarse stages' evaluations count: more than the full-resolution stage's iterations
    assert result.evaluations[0, 0] > result.iterations[0, 0] + 600
    assert worst["coarse"] >= 22.0 and worst["coarse"] >= worst["flat"] + 3.0, worst


def test_bad_coarse_factors(lenet, two_targets):
    model, params = lenet
    _, _, grads = two_targets
    for factors in ((2, 4), (1,), (2, 2), (2.0,)):
        with pytest.raises(DLGInputError, match="coarse must be strictly decreasing integer factors >= 2"):
            AttackConfig(coarse=factors)
    with pytest.raises(DLGInputError, match="coarse factor 3 must divide the image size 32 x 32"):
        run_attack(model, params, grads, 1, AttackConfig(restarts=1, iterations=2, coarse=(3,)))
