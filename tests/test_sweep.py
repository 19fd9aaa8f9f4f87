"""Sweeps: grid files, the results store, kill-safe resume, the Ray executor, memory-aware chunking and
``dlg-jax report``.

The end-to-end tests run ``python -m dlg_jax.cli sweep`` in subprocesses over one small grid (LeNet on
the embedded 28x28 digits, 2 targets x 2 restarts x 20 iterations per point; the points differ by seed,
so they share one compiled program) and a shared JAX compilation cache, so that each process compiles
at most once.
"""

import dataclasses
import json
import os
import random
import subprocess
import sys
import time

import numpy as np
import pytest

from dlg_jax.attack.memory import chunk_for_budget, parse_bytes
from dlg_jax.cli import main
from dlg_jax.errors import DLGInputError
from dlg_jax.experiments.grid import parse_grid
from dlg_jax.experiments.store import Store
from dlg_jax.experiments.sweep import RUN_COLUMNS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEEDS = 8
GRID = f"""name = "kill test"
[budget]
targets = 2
restarts = 2
iterations = 20

[axes]
dataset = "digits"
seed = {list(range(SEEDS))}
"""


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("compile-cache"))


@pytest.fixture(scope="module")
def grid_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("grid") / "grid.toml"
    path.write_text(GRID)
    return str(path)


def _sweep(grid_file, store, cache, *extra) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "RAY_AUTH_MODE": "disabled"}
    return subprocess.Popen([sys.executable, "-m", "dlg_jax.cli", "sweep", grid_file, "--store", str(store), "--quiet",
                             "--compile-cache", cache, *extra], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finished(store) -> int:
    """Finished parts, as the store counts them (a part killed mid-write is a ``.tmp-*`` file, not one)."""
    parts = os.path.join(store, "parts")
    return len([n for n in os.listdir(parts) if n.endswith(".parquet") and not n.startswith(".")]) \
        if os.path.isdir(parts) else 0


def _comparable(rows: list[dict]) -> str:
    """Rows without the columns that describe how and where they ran, sorted, as JSON (NaN == NaN)."""
    kept = [{k: v for k, v in row.items() if k not in RUN_COLUMNS} for row in rows]
    return json.dumps(sorted(kept, key=lambda r: (r["point_id"], r["target"])), sort_keys=True,
                      default=lambda v: v.hex())  # the images are bytes


@pytest.fixture(scope="module")
def baseline(tmp_path_factory, grid_file, cache):
    """The store of an uninterrupted run of the grid."""
    store = tmp_path_factory.mktemp("baseline") / "store"
    process = _sweep(grid_file, store, cache)
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return store


def test_sigkill_twice_then_resume_equals_an_uninterrupted_run(tmp_path, grid_file, cache, baseline):
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    store = tmp_path / "store"
    for kill in range(2):
        process = _sweep(grid_file, store, cache, "--resume")
        wanted = _finished(store) + rng.randint(1, 2)  # kill after one or two more points, at a random moment
        while _finished(store) < wanted and process.poll() is None:
            time.sleep(0.02)
        # a random moment within the next point (cached compiles make points short: stop waiting once it
        # has finished, so that some points are always left for the resume)
        deadline = time.monotonic() + rng.uniform(0.0, 0.3)
        while time.monotonic() < deadline and _finished(store) <= wanted and process.poll() is None:
            time.sleep(0.005)
        assert process.poll() is None, f"sweep finished before kill {kill + 1} (seed {seed})"
        process.kill()  # SIGKILL
        process.wait()
    interrupted = _finished(store)
    assert 2 <= interrupted < SEEDS, f"seed {seed}"
    process = _sweep(grid_file, store, cache, "--resume")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    assert f"{SEEDS - interrupted} points run, {interrupted} already stored" in out
    rows, expected = Store(store).rows(), Store(baseline).rows()
    assert len(rows) == SEEDS * 2 and len({(r["point_id"], r["target"]) for r in rows}) == SEEDS * 2
    assert _comparable(rows) == _comparable(expected), f"seed {seed}"
    assert not [n for n in os.listdir(store / "parts") if not n.endswith(".parquet")]


def test_store_rows_hold_metrics_losses_timings_versions(baseline):
    rows = Store(baseline).rows()
    row = rows[0]
    assert len(row["restart_losses"]) == 2 and len(row["restart_iterations"]) == 2
    assert row["best_loss"] == min(row["restart_losses"])
    assert 0 <= row["best_restart"] < 2 and row["iterations_budget"] == 20
    assert row["point_run_seconds"] > 0 and row["point_restart_iterations"] == 2 * 2 * 20
    assert row["jax_version"] and row["device"].startswith("cpu") and row["precision"]
    assert row["success"] == (min(row["slot_psnr"]) >= 30.0)
    assert sorted({r["seed"] for r in rows}) == list(range(SEEDS))
    # identical targets, different seeds: different dummies, so different losses
    assert len({r["restart_losses"][0] for r in rows if r["target"] == 0}) == SEEDS


def test_resume_needed_for_a_store_holding_the_grid(baseline, grid_file, capsys):
    before = sorted(os.listdir(baseline / "parts"))
    assert main(["sweep", grid_file, "--store", str(baseline), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"already holds {SEEDS} of this grid's {SEEDS} points; pass --resume" in err and err.count("\n") == 1
    assert main(["sweep", grid_file, "--store", str(baseline), "--quiet", "--resume", "--compile-cache", "none"]) == 0
    assert f"0 points run, {SEEDS} already stored" in capsys.readouterr().out
    assert sorted(os.listdir(baseline / "parts")) == before


def test_report_writes_tables_and_figures(baseline, tmp_path, capsys):
    assert main(["report", str(baseline), "--out", str(tmp_path / "report")]) == 0
    out = capsys.readouterr().out
    assert "## Success rate vs batch size" in out and "## Throughput per device" in out
    assert f"| dlg | lenet | 1 | {SEEDS} | {2 * SEEDS} |" in out
    for name in ("report.md", "success_vs_batch_size.png", "success_vs_defense.png", "success_vs_model.png",
                 "throughput.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_ray_executor_writes_the_same_rows(tmp_path, grid_file, cache, baseline):
    pytest.importorskip("ray")
    small = tmp_path / "grid.toml"
    small.write_text(GRID.replace(f"seed = {list(range(SEEDS))}", "seed = [0, 1]"))
    process = _sweep(str(small), tmp_path / "store", cache, "--executor", "ray", "--ray-num-cpus", "2")
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    rows = Store(tmp_path / "store").rows()
    expected = [r for r in Store(baseline).rows() if r["seed"] in (0, 1)]
    assert len(rows) == 4 and _comparable(rows) == _comparable(expected)


# ---------------------------------------------------------------------------------------------------
# Grid files.

def test_grid_expands_the_product_of_its_axes():
    grid = parse_grid("""
[budget]
restarts = 3
[axes]
attack = ["dlg", "ig"]
batch_size = [1, 2]
defense = ["none", {name = "gaussian", strength = [1e-4, 1e-2]}, {name = "prune", strength = 0.3, scope = "global"}]
labels = "analytic"
""")
    points = grid.points
    assert len(points) == 2 * 2 * 4
    assert {(p.defense, p.strength) for p in points} == {("none", None), ("gaussian", 1e-4), ("gaussian", 1e-2),
                                                        ("prune", 0.3)}
    assert all(p.config.restarts == 3 and p.config.labels == "analytic" and p.run.snapshots == 0 for p in points)
    ig = next(p for p in points if p.attack == "ig")
    assert ig.config.distance == "cosine" and ig.config.solver.signed  # the preset, with the grid on top
    assert len({p.id for p in points}) == len(points)
    assert parse_grid("[axes]\nbatch_size = [1, 2]").points[0].id == parse_grid("[axes]\nbatch_size = 1").points[0].id
    assert len(parse_grid("[axes]\ndefense = 'prune'").points) == 5  # every default pruning ratio


def test_threat_model_axes_compose_with_defenses_and_keep_one_step_points_as_they_were():
    grid = parse_grid("[axes]\ndefense = ['none', {name = 'dp', strength = 0.1}]\nclients = [1, 4]\nlocal_steps = [1, 2]")
    assert len(grid.points) == 2 * 2 * 2
    assert {dict(p.threat).get("clients", 1) * 10 + dict(p.threat).get("local_steps", 1) for p in grid.points} == {
        11, 12, 41, 42}
    one_step = next(p for p in grid.points if not p.threat and p.defense == "none")
    assert one_step.id == parse_grid("[axes]\ndefense = 'none'").points[0].id  # stored points are found again
    # attack options added later (coarse stages) leave the keys of points without them as they were
    assert "coarse" not in one_step.key()["config"]
    with_coarse = dataclasses.replace(one_step, config=dataclasses.replace(one_step.config, coarse=(2,)))
    assert with_coarse.key()["config"]["coarse"] == [2] and with_coarse.id != one_step.id
    with pytest.raises(DLGInputError, match="axes.clients: must be an integer >= 1, got 0"):
        parse_grid("[axes]\nclients = [0]")
    with pytest.raises(DLGInputError, match="aggregate"):
        parse_grid("[axes]\naggregate = 'median'")


def test_a_threat_model_point_attacks_what_the_federation_sends():
    from dlg_jax.experiments.sweep import attack_rows
    from dlg_jax.pipeline import run_dlg
    from dlg_jax.victim.defenses import make_defense
    from dlg_jax.victim.threat_models import ThreatModel

    point = parse_grid("[budget]\niterations = 3\nrestarts = 2\n[axes]\nmodel = 'mlp'\ndataset = 'digits'\n"
                       "defense = {name = 'gaussian', strength = 1e-4}\nclients = 2\nlocal_steps = 2").points[0]
    rows = attack_rows(point)
    assert (rows[0]["clients"], rows[0]["local_steps"], rows[0]["aggregate"]) == (2, 2, "mean")
    direct = run_dlg("mlp", "digits", targets=1, batch_size=1, config=point.config,
                     defense=make_defense("gaussian", 1e-4), threat=ThreatModel(clients=2, local_steps=2))
    assert rows[0]["restart_losses"] == direct.result.loss[0].astype(float).tolist()


def test_a_point_is_what_it_computes_not_how_it_runs():
    # chunks, devices, memory budget and host checks change no number: a stored point is found again
    base = parse_grid("[budget]\niterations = 50").points[0]
    for how in ("chunk_size = 3", "devices = 1", "memory_budget = '64MiB'", "block = 7"):
        point = parse_grid(f"[budget]\niterations = 50\n{how}").points[0]
        assert point.id == base.id and point.run != base.run, how
    for what in ("tolerance = 1e-6", "restarts = 3", "history_size = 50"):
        assert parse_grid(f"[budget]\niterations = 50\n{what}").points[0].id != base.id, what


@pytest.mark.parametrize("text,message", [
    ("[budget]\nrestarts = 2\nrestart = 3\n", "grid line 3: budget.restart: unknown key 'restart'"),
    ("[axes]\nseed = [0]\nbatch_size = [1, 'two']\n", "grid line 3: axes.batch_size: must be an integer >= 1, got 'two'"),
    ("[axes]\ndefense = [{name = 'gaussian', strength = -1}]\n", "grid line 2: axes.defense: noise variance must be"),
    ("[axes]\nmodel = 'lenet5'\n", "grid line 2: axes.model: unknown model 'lenet5'"),
    ("[axes]\nlabels = ['joint', 'guess']\n", "grid line 2: axes.labels: unknown label strategy 'guess'"),
    ("name = 'x'\n\n[axis]\nseed = 1\n", "grid line 3: axis: unknown key 'axis'; allowed: name, study, budget, axes, quick, grids"),
    ("[axes]\nbatch_size = [1,\n", "grid: not valid TOML"),
    ("budget.iterations = 0\n", "grid line 1: budget.iterations: must be an integer >= 1, got 0"),
    ("[axes]\nseed = []\n", "grid line 2: axes.seed: is an empty list"),
    ("[budget]\nsolver = 'adam'\nlearning_rate = inf\n", "grid line 3: budget.learning_rate: must be a finite number, got inf"),
    ("[axes]\ntolerance = [1e-8, nan]\n", "grid line 2: axes.tolerance: must be a finite number, got nan"),
    ("[axes]\ndefense = [{name = 'gaussian', strength = inf}]\n", "noise variance must be a finite number >= 0, got inf"),
    ("study = 'everything'\n", "grid line 1: study: unknown study 'everything'"),
    ("grids = 3\n", "grid line 1: grids: must be an array of tables [[grids]], got 3"),
    ("[[grids]]\naxes = {batch_sise = 2}\n", "grids.axes.batch_sise: unknown key 'batch_sise'"),
    ("[axes]\nmodel = 'bert-tiny'\n", "model 'bert-tiny' cannot read dataset 'colour'"),
    ("[axes]\nmodel = 'lenet-c1'\n", "axes.model: unknown model option 'c1'"),
    ("[quick]\nbudget = {restarts = 0}\n", "must be an integer >= 1, got 0"),
])
def test_grid_errors_name_the_line_and_key(text, message):
    with pytest.raises(DLGInputError) as error:
        parse_grid(text)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_cli_bad_grid_is_one_line_exit_2_and_creates_no_store(tmp_path, capsys):
    grid = tmp_path / "bad.toml"
    grid.write_text("[budget]\niterations = 20\n\n[axes]\nbatch_size = [1, 0]\n")
    assert main(["sweep", str(grid), "--store", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err
    assert err == f"dlg-jax: error: grid file {grid} line 5: axes.batch_size: must be an integer >= 1, got 0\n"
    assert not (tmp_path / "store").exists()


# ---------------------------------------------------------------------------------------------------
# The store.

def test_store_parts_are_atomic_and_temporaries_ignored(tmp_path):
    store = Store(tmp_path / "s")
    store.write("a", [{"point_id": "a", "x": 1.0, "losses": [1.0, float("nan")]}])
    store.write("b", [{"point_id": "b", "x": 2.0, "losses": [3.0]}, {"point_id": "b", "x": None, "losses": []}])
    (tmp_path / "s" / "parts" / ".tmp-xyzc.parquet").write_bytes(b"half a file")  # a killed writer's leftover
    store.write("a", [{"point_id": "a", "x": 5.0, "losses": [1.0]}])  # a rerun replaces, never duplicates
    reopened = Store(tmp_path / "s")
    assert reopened.finished() == {"a", "b"}
    assert [r["x"] for r in reopened.rows()] == [5.0, 2.0, None]


def test_incompatible_or_foreign_stores_are_refused_untouched(tmp_path, capsys):
    store = Store(tmp_path / "s")
    store.write("a", [{"point_id": "a", "x": 1.0}])
    manifest = tmp_path / "s" / "manifest.json"
    manifest.write_text(json.dumps({"format": "dlg-jax results store", "version": 99}))
    grid = tmp_path / "g.toml"
    grid.write_text("[budget]\niterations = 1\n")
    for argv in (["sweep", str(grid), "--store", str(tmp_path / "s"), "--resume"], ["report", str(tmp_path / "s")]):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "was written by an incompatible version ('dlg-jax results store' version 99" in err
        assert err.count("\n") == 1
    assert sorted(os.listdir(tmp_path / "s" / "parts")) == ["a.parquet"]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    assert main(["sweep", str(grid), "--store", str(tmp_path / "other")]) == 2
    assert "is not a dlg-jax results store" in capsys.readouterr().err
    assert os.listdir(tmp_path / "other") == ["notes.txt"]


# ---------------------------------------------------------------------------------------------------
# Memory-aware chunking.

@pytest.mark.parametrize("text,size", [("8GB", 8 * 10**9), ("512MiB", 512 * 2**20), ("1.5 GB", 1_500_000_000),
                                       ("1000", 1000), (4096, 4096)])
def test_parse_bytes(text, size):
    assert parse_bytes(text) == size


@pytest.mark.parametrize("bad", ["8 parsecs", "-1GB", "", True, 0])
def test_parse_bytes_rejects(bad):
    with pytest.raises(DLGInputError, match="memory budget"):
        parse_bytes(bad)


def test_chunk_for_budget_fits_and_verifies():
    measured = []

    def linear(n):
        measured.append(n)
        return 1000 + 100 * n

    assert chunk_for_budget(2000, 64, linear) == 10 and measured[-1] == 10  # verified at the chosen size
    assert chunk_for_budget(10**9, 64, linear) == 64  # never more than the problems
    superlinear = lambda n: 1000 + 100 * n + 10 * n * n  # noqa: E731 - the fit from n = 1, 2 is optimistic
    chunk = chunk_for_budget(3000, 64, superlinear)
    assert superlinear(chunk) <= 3000 < superlinear(chunk + 2)  # fits, and close to the largest (10)
    with pytest.raises(DLGInputError, match=r"memory budget 1 kB is too small for one problem.*needs 1.1 kB"):
        chunk_for_budget(1000, 64, linear)


def test_memory_budget_chunks_the_attack_without_changing_results():
    import jax

    from dlg_jax import (
        AttackConfig,
        RunOptions,
        SolverConfig,
        build_model,
        get_dataset,
        run_attack,
        shared_gradients,
    )
    from dlg_jax.attack.engine import lower_attack_step
    from dlg_jax.attack.memory import compiled_bytes

    data = get_dataset("digits")
    images, labels = data.examples([0, 1])
    model = build_model("mlp", data.input_shape, data.num_classes)
    params = model.init(jax.random.key(0))
    grads = shared_gradients(model, params, images[:, None], labels[:, None])
    config = AttackConfig(restarts=3, iterations=10, solver=SolverConfig("adam"))
    one, two, three = (compiled_bytes(lower_attack_step(model, params, grads, 1, config, run=RunOptions(
        chunk_size=n, snapshots=0), steps=config.iterations).compile()) for n in (1, 2, 3))
    assert one < two < three  # each problem adds its dummy and solver state
    budget = three + (two - one) // 2  # room for 3 problems, not 4
    chunked = run_attack(model, params, grads, 1, config, run=RunOptions(memory_budget=budget, snapshots=0))
    whole = run_attack(model, params, grads, 1, config, run=RunOptions(snapshots=0))
    np.testing.assert_allclose(chunked.loss, whole.loss, rtol=1e-5)
    with pytest.raises(DLGInputError, match="too small for one problem"):
        run_attack(model, params, grads, 1, config, run=RunOptions(memory_budget=one - 1))


def test_cli_memory_budget_too_small_is_one_line_exit_2(tmp_path, capsys):
    grid = tmp_path / "g.toml"
    grid.write_text("[budget]\niterations = 2\nsolver = 'adam'\n[axes]\nmodel = 'mlp'\ndataset = 'digits'\n")
    assert main(["sweep", str(grid), "--store", str(tmp_path / "s"), "--memory-budget", "1kB", "--quiet",
                 "--compile-cache", "none"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlg-jax: error: memory budget 1 kB is too small for one problem") and err.count("\n") == 1
    assert Store(tmp_path / "s").finished() == set()


@pytest.mark.parametrize("command", [["attack"], ["attack-text", "a sentence"], ["experiment", "batch"], ["defend", "sweep"], ["defend", "tradeoff"],
                                     ["sweep", "grid.toml", "--store", "store"]])
def test_every_attacking_command_takes_a_memory_budget(command, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--memory-budget", "lots"]) == 2
    err = capsys.readouterr().err
    assert err == ("dlg-jax: error: argument --memory-budget: memory budget must be a size such as 8GB, 512MiB or a "
                   "byte count, got 'lots'\n")
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------
# Stores that cannot be written, and damaged parts.

class _Point:
    def __init__(self, name, rows=2):
        self.id, self.expected_rows = name, rows


def _counting(computed):
    def compute(point):
        computed.append(point.id)
        return [{"point_id": point.id, "target": t, "x": float(t)} for t in range(point.expected_rows)]
    return compute


def test_unwritable_store_is_refused_before_any_point_is_computed(tmp_path, monkeypatch):
    from dlg_jax.experiments import store as store_module
    from dlg_jax.experiments.sweep import run_points

    store = Store(tmp_path / "s")

    def refuse(path, data):
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(store_module, "atomic_write_bytes", refuse)  # what a read-only parts/ does to a writer
    computed = []
    with pytest.raises(DLGInputError) as error:
        run_points(store, [_Point("a"), _Point("b")], _counting(computed))
    assert computed == []
    assert str(error.value) == (f"store {store.path!r} cannot be written (Permission denied in {store.parts!r}); "
                                "make it writable or give another --store")


def test_a_computed_point_the_store_cannot_take_is_kept(tmp_path, monkeypatch):
    from dlg_jax.experiments.sweep import run_points

    store = Store(tmp_path / "s")
    write = Store.write

    def fill_up(self, point_id, rows):
        if point_id == "b":
            raise OSError(28, "No space left on device")
        write(self, point_id, rows)

    monkeypatch.setattr(Store, "write", fill_up)
    computed = []
    with pytest.raises(DLGInputError) as error:
        run_points(store, [_Point("a"), _Point("b"), _Point("c")], _counting(computed))
    assert computed == ["a", "b"] and store.finished() == {"a"}
    message = str(error.value)
    assert message.startswith(f"store {store.path!r}: cannot write the part of point b (No space left on device); "
                              "its rows are saved in ") and "\n" not in message
    kept = message.rsplit(" its rows are saved in ", 1)[1].strip("'")
    assert json.loads(open(kept).read()) == [{"point_id": "b", "target": t, "x": float(t)} for t in range(2)]
    os.remove(kept)


def test_damaged_parts_are_set_aside_and_rerun(tmp_path, capsys):
    from dlg_jax.experiments.sweep import run_points

    store = Store(tmp_path / "s")
    points = [_Point("a"), _Point("b"), _Point("c"), _Point("d")]
    computed = []
    assert run_points(store, points, _counting(computed)) == 4
    parts = tmp_path / "s" / "parts"
    whole = (parts / "a.parquet").read_bytes()
    (parts / "a.parquet").write_bytes(whole[: len(whole) // 2])  # truncated copy
    (parts / "b.parquet").write_bytes((parts / "c.parquet").read_bytes())  # another point's rows
    store.write("c", [{"point_id": "c", "target": 0, "x": 0.0}])  # one row of the point's two
    capsys.readouterr()
    computed.clear()
    assert run_points(store, points, _counting(computed)) == 3
    assert sorted(computed) == ["a", "b", "c"]
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 3 and all(line.startswith("dlg-jax: warning: store ") for line in err)
    assert "part a.parquet is damaged (unreadable" in err[0]
    assert "part b.parquet is damaged (holds another point's rows)" in err[1]
    assert "part c.parquet is damaged (holds 1 rows, its point has 2)" in err[2]
    assert len(os.listdir(tmp_path / "s" / "damaged")) == 3
    assert len(store.rows()) == 8 and store.finished({p.id: 2 for p in points}) == {"a", "b", "c", "d"}


def test_report_on_a_store_with_a_damaged_part_reports_the_rest(baseline, tmp_path, capsys):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(baseline, store)
    first = sorted((store / "parts").iterdir())[0]
    first.write_bytes(first.read_bytes()[:100])
    assert main(["report", str(store), "--out", str(tmp_path / "report")]) == 0
    captured = capsys.readouterr()
    assert f"part {first.name} is damaged (unreadable" in captured.err
    assert f"| dlg | lenet | 1 | {SEEDS - 1} | {2 * (SEEDS - 1)} |" in captured.out
