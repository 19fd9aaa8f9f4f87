"""Attack presets (DLG, Inverting Gradients), signed Adam, batch scoring with permuted and collapsed slots,
the shipped studies and the ``dlg-jax experiment`` command in its tiny configuration."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlg_jax.attack.engine import AttackConfig, RunOptions
from dlg_jax.attack.presets import attack_preset, ig_decay_steps
from dlg_jax.attack.solvers import SolverConfig, make_solver
from dlg_jax.cli import build_parser, main
from dlg_jax.cli.attack import attack_config_from_args
from dlg_jax.data.datasets import get_dataset
from dlg_jax.errors import DLGInputError
from dlg_jax.metrics import evaluate
from dlg_jax.pipeline import run_dlg


def test_presets():
    assert attack_preset("dlg") == AttackConfig()
    assert attack_preset("dlg", restarts=2).restarts == 2
    ig = attack_preset("ig", iterations=800)
    assert (ig.distance, ig.labels, ig.box, ig.tv_weight > 0) == ("cosine", "auto", (0.0, 1.0), True)
    assert ig.solver == SolverConfig("adam", learning_rate=0.1, lr_decay_steps=(300, 500, 700), signed=True)
    assert ig_decay_steps(8000) == (3000, 5000, 7000)
    assert attack_preset("ig", solver=SolverConfig("lbfgs")).solver.name == "lbfgs"
    with pytest.raises(DLGInputError, match="unknown attack 'gan'; allowed: dlg, ig, dlg-cyclic"):
        attack_preset("gan")
    assert attack_preset("ig-gi", iterations=10) == attack_preset("ig", iterations=10, bn_prior=0.01,
                                                                  group_consistency=0.1)
    assert attack_preset("dlg-cyclic", batch_update="joint").batch_update == "joint"
    with pytest.raises(DLGInputError, match="unknown attack setting 'lr'"):
        attack_preset("ig", lr=0.1)


def test_attack_options_go_through_the_presets():
    def config(*argv):
        return attack_config_from_args(build_parser().parse_args(["attack", *argv]))

    assert config() == AttackConfig()
    ig = config("--attack", "ig", "--iterations", "800", "--labels", "count")
    assert (ig.labels, ig.distance, ig.solver.lr_decay_steps, ig.solver.signed) == ("count", "cosine", (300, 500, 700), True)
    assert config("--attack", "ig", "--learning-rate", "0.05").solver.learning_rate == 0.05
    assert config("--attack", "ig", "--solver", "lbfgs").solver == SolverConfig("lbfgs")
    assert config("--restarts", "3", "--labels", "analytic").labels == "analytic"


def _reference_adam(objective, z, learning_rate, decay_steps, steps, signed):
    """Adam (optionally on sign(grad)) written out with optax, as the reference for the solver."""
    schedule = optax.piecewise_constant_schedule(learning_rate, {s: 0.1 for s in decay_steps})
    optimizer = optax.adam(schedule)
    state = optimizer.init(z)
    for _ in range(steps):
        grad = jax.grad(objective)(z, None)
        updates, state = optimizer.update(jnp.sign(grad) if signed else grad, state, z)
        z = optax.apply_updates(z, updates)
    return z


def test_signed_adam_follows_the_sign_of_the_gradient_and_the_schedule():
    def quartic(z, context):
        return jnp.sum(jnp.array([1.0, 10.0, 100.0]) * z**4)

    z0 = jnp.array([1.0, -0.5, 0.25])
    for signed in (True, False):
        solver = make_solver(quartic, SolverConfig("adam", learning_rate=0.05, lr_decay_steps=(3,), signed=signed))
        z, state = z0, solver.init(z0, None)
        for _ in range(6):
            z, state, _ = solver.step(z, state, None)
        np.testing.assert_allclose(z, _reference_adam(quartic, z0, 0.05, (3,), 6, signed), rtol=1e-6)
        assert int(solver.evaluations(state)) == 6
    signed_z = _reference_adam(quartic, z0, 0.05, (3,), 6, True)
    assert not np.allclose(signed_z, _reference_adam(quartic, z0, 0.05, (3,), 6, False))

    def linear(z, context):  # constant gradient: signed Adam moves exactly lr_t per step
        return jnp.sum(jnp.array([3.0, -0.01]) * z)

    solver = make_solver(linear, SolverConfig("adam", learning_rate=0.1, lr_decay_steps=(2, 4), signed=True))
    z, state, moves = jnp.zeros(2), solver.init(jnp.zeros(2), None), []
    for _ in range(5):
        new, state, _ = solver.step(z, state, None)
        moves.append(np.asarray(new - z))
        z = new
    np.testing.assert_allclose(np.abs(np.stack(moves))[:, 0], [0.1, 0.1, 0.01, 0.01, 0.001], rtol=1e-4)
    assert np.all(np.sign(np.stack(moves)) == [-1, 1])
    with pytest.raises(DLGInputError, match="signed gradients need solver 'adam', got 'lbfgs'"):
        SolverConfig("lbfgs", signed=True)


@pytest.mark.parametrize("batch", [4, 32])
def test_assignment_undoes_a_permutation_of_the_slots(batch):
    images, labels = get_dataset("digits").examples(np.arange(batch))
    truths, true_labels = images[None], labels[None]
    order = np.random.default_rng(batch).permutation(batch)
    noisy = truths[:, order] + 0.003 * np.random.default_rng(0).standard_normal(truths[:, order].shape)
    metrics = evaluate(noisy.astype(np.float32), truths, true_labels[:, order], true_labels)
    np.testing.assert_array_equal(metrics.assignment[0], np.argsort(order))  # slot holding private image b
    assert metrics.label_accuracy[0] == 1.0 and metrics.duplicates[0] == 0 and metrics.slot_psnr.min() > 40


def test_collapsed_slots_are_flagged_as_duplicates():
    images, labels = get_dataset("colour").examples([0, 1, 2, 3])
    collapsed = images[[2, 0, 0, 3]][None]  # slots 1 and 2 both show image 0; image 1 is lost
    metrics = evaluate(collapsed, images[None], labels[None], labels[None])
    assert metrics.duplicates[0] == 2
    assert sorted(metrics.slot_psnr[0] > 60) == [False, True, True, True]
    # two near-identical private images reconstructed as one and the same image: not a collapse
    twins = np.stack([images[0], np.clip(images[0] + 0.001, 0, 1), images[2]])[None]
    recon = twins[:, [2, 0, 0]]
    assert evaluate(recon, twins, np.zeros((1, 3)), np.zeros((1, 3))).duplicates[0] == 0


@pytest.mark.recovery
def test_inverting_gradients_recovers_recognisable_digits():
    # measured: 19.4, 27.7, 22.2 dB after 400 signed-Adam iterations (one restart); a black image scores ~9 dB
    run = run_dlg("lenet", "digits", indices=[0, 5, 11], config=attack_preset("ig", restarts=1, iterations=400),
                  run=RunOptions(snapshots=0))
    assert run.result.label_logits is None and np.all(run.metrics.label_accuracy == 1.0)
    black = 10 * np.log10(1.0 / np.mean(run.images**2, axis=(1, 2, 3, 4)))
    assert np.all(run.metrics.psnr > 17.0) and np.all(run.metrics.psnr > black + 8.0)


TINY = ["--targets", "1", "--restarts", "1", "--iterations", "10", "--quiet"]


def test_experiment_command_runs_shipped_studies_into_one_store(tmp_path, capsys):
    # every point here is one colour image, one restart, 10 iterations: they share DLG's compiled program
    out = tmp_path / "exp"
    assert main(["experiment", "labels", "--quick", *TINY, "--dataset", "colour", "--out", str(out)]) == 0
    labels = json.loads((out / "labels.json").read_text())
    assert [(p["labels"], p["budget"], p["label_accuracy"]) for p in labels["points"]] == [
        ("joint", "1 x 1 x 10", 1.0), ("analytic", "1 x 1 x 10", 1.0)]  # iDLG's rule is exact for B = 1
    assert labels["study"] == "labels" and "environment" in labels
    assert main(["experiment", "batch", "--quick", *TINY, "--batch-size", "1", "--dataset", "colour",
                 "--attack", "dlg", "--out", str(out)]) == 0
    [batch] = json.loads((out / "batch.json").read_text())["points"]
    assert (batch["dataset"], batch["attack"], batch["batch_size"], batch["curve_iterations"][-1]) == ("colour", "dlg", 1, 9)
    assert batch["success_rate"] == 0.0 and batch["iterations_to_recovery"] is None and batch["peak_rss_mb"] > 0
    assert batch["point_id"] == labels["points"][0]["point_id"]  # the same point: run once, found in the store
    assert main(["experiment", "compare", "--quick", *TINY, "--model", "lenet", "--out", str(out)]) == 0
    compare = json.loads((out / "compare.json").read_text())["points"]
    assert [(p["model"], p["attack"]) for p in compare] == [("lenet", "dlg"), ("lenet", "ig")]
    assert main(["experiment", "resolution", *TINY, "--image-size", "16", "--dataset", "faces", "--attack", "dlg",
                 "--out", str(out)]) == 0
    [resolution] = json.loads((out / "resolution.json").read_text())["points"]
    assert (resolution["dataset"], resolution["size"], resolution["unknowns"]) == ("faces", 16, 256)
    for name in ("labels", "batch", "compare", "resolution"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        page = (out / f"{name}.md").read_text()
        assert page.startswith("# ") and "\n| " in page and "dlg-jax experiment" in page
    assert len(os.listdir(out / "store" / "parts")) == 5  # labels 2 (one shared with batch), compare 2, resolution 1
    assert not [name for name in os.listdir(out) if name.startswith(".tmp")]
    printed = capsys.readouterr().out
    assert "iDLG (analytic)" in printed and "fully recovered" in printed and "| lenet | ig |" in printed


def test_shipped_studies_expand_with_their_quick_budgets():
    from dlg_jax.experiments.grid import load_spec, spec_names

    assert set(spec_names()) == {"labels", "batch", "compare", "threat", "resolution", "defenses", "text"}
    for name in spec_names():
        standard, quick = load_spec(name), load_spec(name, quick=True)
        assert standard.study == name and standard.points and quick.points
        cost = [sum(p.targets * p.config.restarts * p.config.iterations * p.batch_size for p in grid.points)
                for grid in (standard, quick)]
        assert cost[1] < cost[0] / 4, name  # --quick is a smoke test
    compare = load_spec("compare")
    budgets = {(p.model, dict(p.model_options).get("activation"), p.targets, p.config.iterations)
               for p in compare.points}
    assert budgets == {("lenet", None, 4, 3000), ("resnet20", "sigmoid", 2, 500), ("resnet20", "relu", 2, 500)}
    threat = load_spec("threat")
    assert {tuple(sorted(dict(p.threat).items())) for p in threat.points} == {
        (), (("clients", 2),), (("clients", 4),), (("clients", 8),), (("local_steps", 2),), (("local_steps", 5),),
        (("local_steps", 10),)}


@pytest.mark.parametrize("argv,message", [
    (["labels", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["labels", "--dataset", "colour", "--targets", "101"], "index 100 is outside dataset 'colour'"),
    (["batch", "--batch-size", "2", "0"], "batch_size: must be an integer >= 1, got 0"),
    (["compare", "--model", "vgg"], "unknown model 'vgg'"),
    (["batch", "--attack", "dlg", "gan"], "unknown attack 'gan'"),
    (["compare", "--model", "resnet20-tanh"], "unknown model option 'tanh'"),
    (["fastest"], "invalid choice: 'fastest'"),
    (["resolution", "--image-size", "16", "300"], "image size for an embedded dataset must be an integer from 8 to 256, got 300"),
    (["threat", "--local-lr=-1"], "local_lr"),
])
def test_experiment_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["experiment", *argv, "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()  # nothing written before the input is checked
