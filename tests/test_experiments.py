"""Attack presets (DLG, Inverting Gradients), signed Adam, batch scoring with permuted and collapsed slots,
and the ``dlg-jax experiment`` command in its tiny configuration."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlg_jax.attack.engine import AttackConfig
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
    with pytest.raises(DLGInputError, match="unknown attack preset 'gan'; allowed: dlg, ig"):
        attack_preset("gan")
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
    run = run_dlg("lenet", "digits", indices=[0, 5, 11], config=attack_preset("ig", restarts=1, iterations=400,
                                                                               snapshots=0))
    assert run.result.label_logits is None and np.all(run.metrics.label_accuracy == 1.0)
    black = 10 * np.log10(1.0 / np.mean(run.images**2, axis=(1, 2, 3, 4)))
    assert np.all(run.metrics.psnr > 17.0) and np.all(run.metrics.psnr > black + 8.0)


TINY = ["--targets", "1", "--restarts", "1", "--iterations", "10", "--quiet"]


def test_experiment_command_writes_json_plots_and_tables(tmp_path, capsys):
    # every run here is one colour image, one restart, 10 iterations: the three share DLG's compiled program
    out = tmp_path / "exp"
    assert main(["experiment", "labels", "--quick", *TINY, "--datasets", "colour", "--out", str(out)]) == 0
    labels = json.loads((out / "labels.json").read_text())
    assert labels["budget"] == {"targets": 1, "restarts": 1, "iterations": 10} and labels["quick"]
    assert labels["rows"][0]["idlg_label_accuracy"] == 1.0 and labels["rows"][0]["dataset"] == "colour"
    assert "environment" in labels
    assert main(["experiment", "batch", "--quick", *TINY, "--batch-sizes", "1", "--datasets", "colour",
                 "--methods", "dlg", "--out", str(out)]) == 0
    batch = json.loads((out / "batch.json").read_text())
    assert [(row["dataset"], row["method"], row["batch_size"]) for row in batch["rows"]] == [("colour", "dlg", 1)]
    assert len(batch["rows"][0]["curve"]) == 10 and batch["rows"][0]["peak_rss_mb"] > 0
    assert batch["rows"][0]["fully_recovered"] == 0.0 and batch["rows"][0]["iterations_to_recovery"] is None
    assert main(["experiment", "compare", "--quick", *TINY, "--models", "lenet", "--out", str(out)]) == 0
    compare = json.loads((out / "compare.json").read_text())
    assert [(row["model"], row["attack"]) for row in compare["rows"]] == [("lenet", "dlg"), ("lenet", "ig")]
    assert main(["experiment", "resolution", *TINY, "--sizes", "16", "--datasets", "faces", "--methods", "dlg",
                 "--out", str(out)]) == 0
    resolution = json.loads((out / "resolution.json").read_text())
    assert [(row["dataset"], row["size"], row["unknowns"]) for row in resolution["rows"]] == [("faces", 16, 256)]
    for name in ("labels", "batch", "compare", "resolution"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (out / f"{name}.md").read_text().startswith("| ")
    assert not [name for name in os.listdir(out) if name.startswith(".tmp")]
    printed = capsys.readouterr().out
    assert "iDLG label acc." in printed and "fully recovered" in printed and "| lenet | ig |" in printed


@pytest.mark.parametrize("argv,message", [
    (["labels", "--datasets", "imagenet"], "unknown dataset 'imagenet'"),
    (["labels", "--datasets", "colour", "--targets", "101"], "index 100 is outside dataset 'colour'"),
    (["batch", "--batch-sizes", "2", "0"], "expected an integer >= 1, got '0'"),
    (["compare", "--models", "vgg"], "unknown model 'vgg'"),
    (["batch", "--methods", "dlg", "gan"], "unknown attack method 'gan'"),
    (["compare", "--models", "resnet20-tanh"], "unknown model option 'tanh'"),
    (["fastest"], "invalid choice: 'fastest'"),
    (["resolution", "--sizes", "16", "300"], "image size for an embedded dataset must be an integer from 8 to 256, got 300"),
])
def test_experiment_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["experiment", *argv, "--quiet", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
