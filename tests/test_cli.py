"""``dlg-jax attack`` as a user runs it: outputs, table, exit status 2 and one line on bad input."""

import json
import os
import subprocess
import sys

import pytest

from dlg_jax.cli import main

SMALL = ["--iterations", "30", "--restarts", "2", "--quiet"]


def test_attack_writes_grid_plot_and_metrics(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", *SMALL, "--index", "4", "7", "--out", str(out)]) == 0
    assert {"reconstruction.png", "convergence.png", "metrics.json"} <= set(os.listdir(out))
    metrics = json.loads((out / "metrics.json").read_text())
    assert [t["indices"] for t in metrics["targets"]] == [[4], [7]]
    assert metrics["summary"]["targets"] == 2 and metrics["config"]["restarts"] == 2
    assert (out / "reconstruction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "PSNR" in table and "mean PSNR" in table
    written = [os.path.join(str(out), name) for name in ("reconstruction.png", "convergence.png", "metrics.json")]
    assert table.splitlines()[-1] == f"wrote: {', '.join(written)}"
    assert not [name for name in os.listdir(out) if name.startswith(".tmp")]


def test_attack_with_more_classes_and_levenberg_marquardt(tmp_path):
    """``--classes 100`` widens the model's head (DLG's CIFAR LeNet); ``--solver lm-cg`` runs the
    matrix-free least-squares solver through the same command, ``--box 0 1`` in the data range."""
    out = tmp_path / "run"
    assert main(["attack", "--iterations", "2", "--restarts", "1", "--quiet", "--classes", "100",
                 "--solver", "lm-cg", "--cg-steps", "2", "--box", "0", "1", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == 100 and metrics["config"]["solver"]["name"] == "lm-cg"
    assert metrics["config"]["box"] == [0.0, 1.0]
    assert metrics["config"]["solver"]["cg_steps"] == 2 and metrics["targets"][0]["evaluations_best"] > 2


@pytest.mark.parametrize("argv,message", [
    (["--model", "vgg"], "invalid choice: 'vgg'"),
    (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
    (["--solver", "sgd"], "invalid choice: 'sgd'"),
    (["--index", "100"], "index 100 is outside dataset 'colour'; allowed: 0 to 99"),
    (["--index", "99", "--batch-size", "2"], "index 100 is outside dataset 'colour'"),
    (["--batch-size", "0"], "expected an integer >= 1, got '0'"),
    (["--restarts", "0"], "expected an integer >= 1, got '0'"),
    (["--solver", "adam", "--learning-rate", "inf"], "argument --learning-rate: expected a finite number > 0, got 'inf'"),
    (["--tolerance", "nan"], "argument --tolerance: expected a finite number >= 0, got 'nan'"),
    (["--local-lr=-inf", "--local-steps", "2"], "argument --local-lr: expected a finite number > 0, got '-inf'"),
    (["--bn-prior", "inf"], "argument --bn-prior: expected a finite number >= 0, got 'inf'"),
    (["--dataset", "x" * 10_000], "unknown dataset 'xxxxxxxxx"),
    (["--classes", "5"], "num_classes must be >= the dataset's 10 classes, got 5"),
    (["--solver", "lm", "--damping", "nan"], "argument --damping: expected a finite number > 0, got 'nan'"),
    (["--solver", "lm", "--damping", "0"], "argument --damping: expected a finite number > 0, got '0'"),
    (["--solver", "lm-cg", "--cg-steps", "0"], "argument --cg-steps: expected an integer >= 1, got '0'"),
    (["--box", "1", "0"], "box must be (low, high) with low < high, got (1.0, 0.0)"),
    (["--box", "0", "inf"], "box bound must be a finite number, got inf"),
    (["--solver", "lm", "--memory-budget", "100MB"],
     "is below one problem's Jacobian: solver 'lm' needs 385 MB (15826 residuals x 3082 unknowns, and J^T J); "
     "raise --memory-budget or use the matrix-free --solver lm-cg"),
    (["--solver", "lm", "--attack", "ig"], "solver 'lm' solves l2 gradient matching without priors"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("keep me")
    assert main(["attack", *SMALL, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dlg-jax: error:")
    assert len(err) < 400  # a huge value is quoted by its start and its length
    assert (out / "metrics.json").read_text() == "keep me"  # nothing already there is lost


@pytest.mark.parametrize("field,value,message", [
    ("tolerance", float("inf"), "tolerance must be a finite number >= 0, got inf"),
    ("tv_weight", float("nan"), "tv_weight must be a finite number >= 0, got nan"),
    ("layer_weights", (1.0, float("inf")), "layer weight must be a finite number >= 0, got inf"),
    ("box", (0.0, float("inf")), "box bound must be a finite number, got inf"),
])
def test_attack_config_refuses_non_finite_numbers(field, value, message):
    from dlg_jax.attack.engine import AttackConfig
    from dlg_jax.attack.solvers import SolverConfig
    from dlg_jax.errors import DLGInputError

    with pytest.raises(DLGInputError, match=message):
        AttackConfig(**{field: value})
    with pytest.raises(DLGInputError, match="learning_rate must be a finite number > 0, got inf"):
        SolverConfig("adam", learning_rate=float("inf"))


def test_error_quotes_a_long_value_by_its_start_and_length():
    from dlg_jax.errors import DLGInputError, check_choice, quote

    assert quote("short") == "'short'"
    assert quote("a" * 10_000) == "'" + "a" * 59 + "... (10000 characters)"
    with pytest.raises(DLGInputError) as error:
        check_choice("dataset", "b" * 10_000, ["colour"])
    assert str(error.value) == "unknown dataset '" + "b" * 59 + "... (10000 characters); allowed: colour"


def test_progress_bar_rate_is_the_attacks_own_from_the_first_update(capsys):
    from dlg_jax.attack.engine import Progress
    from dlg_jax.cli.options import ProgressBar

    bar = ProgressBar(True)
    bar(Progress(chunk=0, chunks=2, iteration=100, iterations=300, best_loss=1.0, converged=0, failed=0,
                 problems=4, run_seconds=4.0))
    bar(Progress(chunk=1, chunks=2, iteration=100, iterations=300, best_loss=0.5, converged=1, failed=0,
                 problems=4, run_seconds=16.0))
    bar.close()
    err = capsys.readouterr().err
    assert "25.0 it/s" in err and "25.0 it/s, chunk 2/2" in err  # 100 its in 4 s, then 400 in 16 s
    assert "it/s" not in err.replace("25.0 it/s", "")


def test_output_directory_that_is_a_file(tmp_path, capsys):
    target = tmp_path / "afile"
    target.write_text("data")
    assert main(["attack", *SMALL, "--out", str(target)]) == 2
    assert "is a file" in capsys.readouterr().err
    assert target.read_text() == "data"


def test_console_script_exit_status(tmp_path):
    done = subprocess.run([sys.executable, "-m", "dlg_jax.cli", "attack", "--model", "nope"],
                          capture_output=True, text=True)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.strip().count("\n") == 0


def test_float64_run_in_a_fresh_process(tmp_path):
    out = tmp_path / "f64"
    done = subprocess.run([sys.executable, "-m", "dlg_jax.cli", "attack", "--float64", *SMALL[:4],
                           "--iterations", "10", "--quiet", "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads((out / "metrics.json").read_text())["config"]["dtype"] == "float64"
