"""The attack end to end: recovery, vmap equivalence, NaN isolation, determinism, solvers, bad input."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import psnr, recovery_chunk

from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
from dlg_jax.attack.solvers import SolverConfig
from dlg_jax.errors import DLGInputError

QUICK = AttackConfig(restarts=3, iterations=40)
QUICK_RUN = RunOptions(block=20, snapshots=3, chunk_size=6)


@pytest.mark.recovery
def test_dlg_recovers_a_32x32_image_and_its_label(colour, lenet, two_targets):
    """Both targets typically converge after 1800-2600 iterations (the count moves by hundreds with the
    CPU's instruction set and the chunk size); the budget is twice that, and the run stops once every
    restart has converged, so the margin costs nothing where it is not needed."""
    model, params = lenet
    images, labels, grads = two_targets
    config = AttackConfig(restarts=2, iterations=6000)
    options = RunOptions(chunk_size=recovery_chunk(4), block=250)
    result = run_attack(model, params, grads, 1, config, run=options)
    for t in range(2):
        assert psnr(result.best_images[t], images[t]) >= 30.0
        assert result.best_labels[t, 0] == labels[t, 0]
    assert result.images.shape == (2, 2, 1, 32, 32, 3) and result.loss_history.shape[:2] == (2, 2)
    assert result.snapshots.shape == (2, options.snapshots, 1, 32, 32, 3)
    assert result.converged.any(axis=1).all()  # the tolerance was reached within the budget
    # every restart's objective went down by orders of magnitude
    assert np.all(result.loss_history[..., -1] < 1e-3 * result.loss_history[..., 0])


@pytest.mark.parametrize("solver,iterations,rtol", [("lbfgs", 12, 1e-2), ("adam", 40, 1e-3)])
def test_vmapped_restarts_equal_each_restart_run_alone(lenet, two_targets, solver, iterations, rtol):
    """Six problems in one vmapped chunk vs each in a chunk of its own. (Batched and single matmuls
    round differently, and L-BFGS amplifies rounding over many iterations, hence the short runs.)"""
    model, params = lenet
    _, _, grads = two_targets
    config = dataclasses.replace(QUICK, iterations=iterations, solver=SolverConfig(solver, history_size=10))
    together = run_attack(model, params, grads, 1, config, run=QUICK_RUN)
    alone = run_attack(model, params, grads, 1, config, run=dataclasses.replace(QUICK_RUN, chunk_size=1))
    np.testing.assert_allclose(together.loss_history, alone.loss_history, rtol=rtol)
    np.testing.assert_allclose(together.images, alone.images, atol=10 * rtol)  # restarts differ by O(1)
    np.testing.assert_array_equal(together.best_restart, alone.best_restart)


def test_same_seed_same_result_and_other_seed_differs(lenet, two_targets):
    model, params = lenet
    _, _, grads = two_targets
    first = run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN)
    second = run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN)
    np.testing.assert_array_equal(first.images, second.images)
    np.testing.assert_array_equal(first.loss_history, second.loss_history)
    other = run_attack(model, params, grads, 1, dataclasses.replace(QUICK, seed=1), run=QUICK_RUN)
    assert not np.allclose(first.images, other.images)


def test_a_given_start_is_where_the_restarts_begin(lenet, two_targets):
    """``start`` = the dummies the seed would draw gives the same run; ``continue_from`` a run starts the
    next one at its end (its first objective value is the first run's final one)."""
    from dlg_jax.attack.engine import continue_from, initial_dummy
    from dlg_jax.attack.objectives import Dummy

    model, params = lenet
    _, _, grads = two_targets
    drawn = run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN)
    starts = [[initial_dummy(QUICK.seed, t, r, 1, model.input_shape, model.num_classes, True, np.float32)
               for r in range(QUICK.restarts)] for t in range(2)]
    given = Dummy(*(np.array([[getattr(d, leaf) for d in row] for row in starts]) for leaf in Dummy._fields))
    np.testing.assert_array_equal(run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN, start=given).images,
                                  drawn.images)
    continued = run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN, start=continue_from(drawn))
    np.testing.assert_allclose(continued.loss_history[..., 0], drawn.loss, rtol=1e-5)
    assert np.all(continued.loss <= drawn.loss)
    with pytest.raises(DLGInputError, match=r"start.images must have shape \(2, 3, 1, 32, 32, 3\)"):
        run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN, start=Dummy(given.images[:, :2], given.label_logits))


def test_a_failing_restart_is_frozen_and_does_not_poison_the_others(lenet, two_targets):
    """Target 0's gradient overflows the objective (inf) for all its restarts; target 1 is unaffected."""
    model, params = lenet
    _, _, grads = two_targets
    poisoned = jax.tree.map(lambda g: g.at[0].multiply(3e19), grads)
    mixed = run_attack(model, params, poisoned, 1, QUICK, run=QUICK_RUN)
    clean = run_attack(model, params, grads, 1, QUICK, run=QUICK_RUN)
    assert mixed.failed[0].all() and not mixed.failed[1].any()
    assert np.all(np.isfinite(mixed.images))
    np.testing.assert_allclose(mixed.loss_history[1], clean.loss_history[1], rtol=1e-3, atol=1e-6)
    np.testing.assert_allclose(mixed.images[1], clean.images[1], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("solver", ["lbfgs", "optax-lbfgs", "jaxopt-lbfgs", "adam", "lm-cg"])
def test_every_solver_reduces_the_objective_under_vmap(lenet, two_targets, solver):
    model, params = lenet
    _, _, grads = two_targets
    config = dataclasses.replace(QUICK, restarts=2, iterations=30, solver=SolverConfig(solver, history_size=10))
    result = run_attack(model, params, grads, 1, config, run=RunOptions(block=30, snapshots=0, chunk_size=6))
    assert np.all(result.loss < 0.5 * result.loss_history[..., 0])
    assert np.all(result.evaluations >= result.iterations)


def test_batch_of_two_reconstructs_jointly(colour, lenet):
    from dlg_jax.victim.gradients import shared_gradients

    model, params = lenet
    images, labels = colour.examples([2, 3])
    grads = shared_gradients(model, params, images[None], labels[None])
    result = run_attack(model, params, grads, 2, dataclasses.replace(QUICK, restarts=1, iterations=20), run=QUICK_RUN)
    assert result.images.shape == (1, 1, 2, 32, 32, 3) and result.labels.shape == (1, 1, 2)


def test_bad_attack_input(lenet, two_targets):
    model, params = lenet
    _, _, grads = two_targets
    with pytest.raises(DLGInputError, match="restarts must be an integer >= 1, got 0"):
        AttackConfig(restarts=0)
    with pytest.raises(DLGInputError, match="unknown solver 'bfgs'"):
        SolverConfig("bfgs")
    with pytest.raises(DLGInputError, match="batch size must be an integer >= 1, got 0"):
        run_attack(model, params, grads, 0, QUICK, run=QUICK_RUN)
    with pytest.raises(DLGInputError, match="model params"):
        run_attack(model, {"Dense_0": params["Dense_0"]}, grads, 1, QUICK, run=QUICK_RUN)
    with pytest.raises(DLGInputError, match="float64"):
        AttackConfig(dtype="float64")


def test_snapshots_say_which_iteration_they_show_when_the_run_stops_early(lenet, two_targets, tmp_path,
                                                                            monkeypatch):
    """A loose tolerance stops every restart long before the budget: the later snapshots show the final
    image, and say so (its iteration), and the figure leaves out the columns that repeat it."""
    from dlg_jax import figures as report

    model, params = lenet
    images, _, grads = two_targets
    config = AttackConfig(restarts=2, iterations=3000, tolerance=1e-2)
    result = run_attack(model, params, grads, 1, config, run=RunOptions(block=10, snapshots=4, chunk_size=4))
    stopped = result.iterations[np.arange(2), result.best_restart]
    assert np.all(stopped < 1000)  # budget 3000: snapshots scheduled at 0, 1000, 2000, 3000
    np.testing.assert_array_equal(result.snapshot_iterations, np.minimum([0, 1000, 2000, 3000], stopped[:, None]))
    titles = []

    def keep_titles(path, figure):
        titles.extend(axis.get_title() for axis in figure.axes)

    monkeypatch.setattr(report, "atomic_save_figure", keep_titles)
    metrics_order = np.zeros((2, 1), int)
    report.reconstruction_grid(tmp_path / "grid.png", images, result.snapshots, result.snapshot_iterations,
                               result.best_images, metrics_order, np.zeros((2, 1)))
    iteration_titles = [t for t in titles if t.startswith("iter ")]
    assert iteration_titles == ["iter 0", f"iter {stopped[0]}", "iter 0", f"iter {stopped[1]}"]


def test_compiled_programs_are_bounded_and_recompile_to_the_same_result(lenet, two_targets, monkeypatch):
    from dlg_jax.attack import engine

    model, params = lenet
    grads = two_targets[2]
    monkeypatch.setattr(engine, "COMPILED_LIMIT", 2)
    engine.clear_compiled()
    config = AttackConfig(restarts=2, iterations=3)
    runs = [RunOptions(block=3, snapshots=0, chunk_size=c) for c in (1, 2, 4)]
    first = run_attack(model, params, grads, 1, config, run=runs[0])
    for options in runs[1:]:  # other chunk sizes: other executables
        run_attack(model, params, grads, 1, config, run=options)
    assert 0 < len(engine._COMPILED) <= 2
    again = run_attack(model, params, grads, 1, config, run=runs[0])  # evicted, compiled again
    np.testing.assert_array_equal(again.loss, first.loss)
