"""Accelerator settings: full-precision programs, sharding over devices, the persistent compilation cache."""

import json
import os
import re
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from dlg_jax.attack.engine import AttackConfig, lower_attack_step
from dlg_jax.attack.precision import matmul_precision
from dlg_jax.cli import main
from dlg_jax.errors import DLGInputError
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import _shared_gradients

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONTRACTIONS = re.compile(r"stablehlo\.(dot_general|dot|convolution)\b")


PRECISION = re.compile(r"\b(HIGHEST|HIGH|DEFAULT)\b")


def _contractions(text: str) -> list[str]:
    return [line for line in text.splitlines() if CONTRACTIONS.search(line)]


def _operand_precisions(line: str) -> list[str]:
    """The precision of each operand of a dot/convolution line (``[]``: none given, i.e. DEFAULT)."""
    return PRECISION.findall(line)


@pytest.mark.parametrize("conv", ["patches", "lax"])
def test_highest_precision_reaches_every_dot_and_convolution_of_the_attack(colour, two_targets, conv):
    """The lowered attack step (objective, its second derivative, L-BFGS) and the victim's gradient carry
    HIGHEST on every contraction when ``highest`` is asked; ``default`` leaves them at DEFAULT."""
    images, labels, _ = two_targets
    model = build_model("lenet", colour.input_shape, colour.num_classes, conv_implementation=conv)
    params = model.init(jax.random.key(0))
    with matmul_precision("highest"):
        grads = _shared_gradients(model, params, images, labels)
        victim = _contractions(_shared_gradients.lower(model, params, images, labels).as_text())
    step = _contractions(lower_attack_step(model, params, grads, 1, AttackConfig(restarts=2)).as_text())
    assert step and victim
    assert any("convolution" in line for line in step + victim) == (conv == "lax")
    for line in step + victim:
        assert _operand_precisions(line) == ["HIGHEST", "HIGHEST"], line
    default = _contractions(lower_attack_step(model, params, grads, 1,
                                              AttackConfig(restarts=2, precision="default")).as_text())
    assert default and all("HIGHEST" not in _operand_precisions(line) for line in default)


def test_unknown_precision_and_too_many_devices_are_rejected(tmp_path, capsys):
    with pytest.raises(DLGInputError, match="unknown precision 'tf32'; allowed: highest, high, default"):
        AttackConfig(precision="tf32")
    assert main(["attack", "--precision", "tf32", "--out", str(tmp_path / "a")]) == 2
    assert "invalid choice: 'tf32'" in capsys.readouterr().err
    present = len(jax.local_devices())
    assert main(["attack", "--devices", str(present + 1), "--quiet", "--out", str(tmp_path / "b")]) == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"dlg-jax: error: devices {present + 1} is more than the {present} local cpu device(s) "
                     f"present; allowed: 1..{present}")


SHARDED = textwrap.dedent("""
    import dataclasses, json, sys
    import jax, numpy as np
    from dlg_jax import build_model, get_dataset, shared_gradients
    from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
    from dlg_jax.errors import DLGInputError
    data = get_dataset("digits")
    images, labels = data.examples([0, 1])
    model = build_model("lenet", data.input_shape, data.num_classes)
    params = model.init(jax.random.key(0))
    grads = shared_gradients(model, params, images[:, None], labels[:, None])
    short = AttackConfig(restarts=4, iterations=12)
    one, four = (run_attack(model, params, grads, 1, short, run=RunOptions(block=6, snapshots=2, chunk_size=2, devices=d))
                 for d in (1, 4))
    long = run_attack(model, params, grads, 1, AttackConfig(restarts=2, iterations=1500),
                      run=RunOptions(chunk_size=1, devices=4))
    mse = np.mean((np.clip(long.best_images[:, 0], 0, 1) - images) ** 2, axis=(1, 2, 3))
    try:
        run_attack(model, params, grads, 1, AttackConfig(restarts=1), run=RunOptions(devices=4))
        error = None
    except DLGInputError as e:
        error = str(e)
    np.savez(sys.argv[1], one_history=one.loss_history, four_history=four.loss_history, one_images=one.images,
             four_images=four.images, one_best=one.best_restart, four_best=four.best_restart,
             devices=len(jax.devices()), psnr=10 * np.log10(1 / mse), labels_ok=long.best_labels[:, 0] == labels,
             error=str(error))
""")


@pytest.mark.recovery
def test_problems_sharded_over_four_devices_match_one_device_and_recover(tmp_path):
    """Four forced host devices: the same problems give the same result as on one device (up to the float
    rounding that differently compiled batched matmuls give, as in the vmap test), and recover the images."""
    out = tmp_path / "sharded.npz"
    env = dict(os.environ, PYTHONPATH=REPO,  # keep any rounding perturbation of the caller's XLA_FLAGS
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=4".strip())
    subprocess.run([sys.executable, "-c", SHARDED, str(out)], check=True, env=env, cwd=REPO, timeout=600)
    got = np.load(out)
    assert int(got["devices"]) == 4
    np.testing.assert_allclose(got["one_history"], got["four_history"], rtol=1e-2)
    np.testing.assert_allclose(got["one_images"], got["four_images"], atol=0.1)
    np.testing.assert_array_equal(got["one_best"], got["four_best"])
    assert np.all(got["psnr"] >= 30.0) and got["labels_ok"].all()
    assert str(got["error"]) == ("devices 4 is more than the 2 problems (targets x restarts) to share among "
                                 "them; use at most 2 devices")


def test_second_run_loads_every_program_from_the_compilation_cache(tmp_path):
    """Two identical CLI runs with a cache folder: the first fills it, the second adds nothing (every
    program is a cache hit) and gives the same result. The CLI's --no-compilation-cache writes nothing."""
    cache = tmp_path / "cache"
    env = dict(os.environ, DLG_JAX_COMPILATION_CACHE=str(cache), PYTHONPATH=REPO)
    argv = [sys.executable, "-m", "dlg_jax.cli", "attack", "--dataset", "digits", "--iterations", "20",
            "--restarts", "2", "--quiet"]

    def run(name, *extra):
        subprocess.run([*argv, "--out", str(tmp_path / name), *extra], check=True, env=env, cwd=REPO,
                       timeout=600, stdout=subprocess.DEVNULL)
        return json.loads((tmp_path / name / "metrics.json").read_text())

    first = run("first")
    entries = sorted(os.listdir(cache))
    assert len(entries) >= 3
    second = run("second")
    assert sorted(os.listdir(cache)) == entries
    assert second["targets"][0]["restart_losses"] == first["targets"][0]["restart_losses"]
    assert first["config"]["precision"] == "highest"
    env["DLG_JAX_COMPILATION_CACHE"] = str(tmp_path / "unused")
    run("third", "--no-compilation-cache")
    assert not (tmp_path / "unused").exists()
