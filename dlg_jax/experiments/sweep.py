"""Sweeps: run the points of a grid (:mod:`dlg_jax.experiments.grid`) into a results store (:mod:`dlg_jax.experiments.store`).

:func:`run_points` is the one sweep loop: it skips the points whose part is already in the store, runs
the others on an executor (:mod:`dlg_jax.experiments.executors`) and stores each point's rows as soon as they
arrive. Attack points (:func:`attack_rows`) and training points of the privacy-utility trade-off
(:func:`training_rows`) both go through it, and ``dlg-jax sweep`` as well as ``dlg-jax defend``.

An attack point is one :func:`~dlg_jax.pipeline.run_dlg` call: its ``T`` targets (the first ``T``
batches of the dataset) are defended with independent keys and attacked together (all ``T x R``
restarts in one vmapped, compiled program). It gives one row per target: the point's settings, the best
restart's metrics (PSNR, SSIM, MSE, label accuracy, ``success`` = every slot at PSNR >= 30 dB), every
restart's final loss, iterations and evaluations, the point's timings, and the versions, precision and
device that produced it.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterable

import numpy as np

from dlg_jax.attack.engine import Progress
from dlg_jax.environment import environment
from dlg_jax.errors import DLGInputError
from dlg_jax.experiments.grid import Point, key_id
from dlg_jax.experiments.store import Store
from dlg_jax.metrics import SUCCESS_PSNR
from dlg_jax.pipeline import run_dlg
from dlg_jax.victim.defenses import format_strength, make_defense
from dlg_jax.victim.threat_models import ThreatModel
from dlg_jax.victim.training import TrainConfig, train

# Columns that describe how and where a row was computed rather than what: they differ between two
# runs of the same point; every other column is the same on every run (same seed, same numbers).
RUN_COLUMNS = ("point_wall_seconds", "point_compile_seconds", "point_run_seconds", "restart_iterations_per_second",
               "finished_at", "host", "dlg_jax_version", "jax_version", "jaxlib_version", "device", "device_count",
               "backend", "chunk_memory_budget")


def _json(value) -> str:
    return json.dumps(value, sort_keys=True, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v))


def run_environment() -> dict:
    """The columns of :data:`RUN_COLUMNS` that describe this process (from :func:`dlg_jax.environment.environment`)."""
    env = environment()
    return {"dlg_jax_version": env["versions"]["dlg-jax"] or "unknown", "jax_version": env["versions"]["jax"],
            "jaxlib_version": env["versions"]["jaxlib"], "backend": env["backend"],
            "device": f"{env['devices'][0].split(':')[0]}:{env['device_kind']}",
            "device_count": len(env["devices"]), "host": env["host"]}


def attack_rows(point: Point, progress: Callable[[Progress], None] | None = None) -> list[dict]:
    """Run one attack point; one row per target (see the module docstring)."""
    defense = make_defense(point.defense, point.strength, **dict(point.defense_options))
    config = point.config
    threat = ThreatModel(**dict(point.threat))
    started = time.perf_counter()
    run = run_dlg(point.model, point.dataset, targets=point.targets, batch_size=point.batch_size, config=config,
                  model_options=dict(point.model_options), defense=defense, threat=threat, progress=progress,
                  **dict(point.data_options))
    wall = time.perf_counter() - started
    result, metrics = run.result, run.metrics
    strength = point.strength
    shared = {
        "point_id": point.id, "attack": point.attack, "model": point.model,
        "model_options": _json(dict(point.model_options)), "dataset": point.dataset,
        "data_options": _json(dict(point.data_options)), "batch_size": point.batch_size, "targets": point.targets,
        "labels": config.labels, "defense": point.defense, "defense_strength": format_strength(strength),
        "defense_strength_value": float(strength) if isinstance(strength, (int, float)) else None,
        "defense_options": _json(dict(point.defense_options)), "clients": threat.clients,
        "aggregate": threat.aggregate, "local_steps": threat.local_steps, "local_lr": threat.local_lr,
        "seed": config.seed, "restarts": config.restarts,
        "iterations_budget": config.iterations, "solver": config.solver.name, "dtype": config.dtype,
        "precision": config.precision,
        "config": _json(dataclasses.asdict(config)), "point": _json(point.key()),
        "point_wall_seconds": wall, "point_compile_seconds": result.compile_seconds,
        "point_run_seconds": result.run_seconds, "point_restart_iterations": int(result.restart_iterations),
        "restart_iterations_per_second": result.restart_iterations / max(result.run_seconds, 1e-9),
        "chunk_memory_budget": config.memory_budget, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **run_environment(),
    }
    rows = []
    for t in range(point.targets):
        best = int(result.best_restart[t])
        rows.append({
            **shared, "target": t, "target_indices": run.indices[t].tolist(),
            "true_labels": np.asarray(run.labels[t]).tolist(), "recovered_labels": result.best_labels[t].tolist(),
            "psnr": float(metrics.psnr[t]), "ssim": float(metrics.ssim[t]), "mse": float(metrics.mse[t]),
            "label_accuracy": float(metrics.label_accuracy[t]),
            "success": bool(metrics.slot_psnr[t].min() >= SUCCESS_PSNR), "slot_psnr": metrics.slot_psnr[t].tolist(),
            "duplicates": int(metrics.duplicates[t]), "best_restart": best, "best_loss": float(result.loss[t, best]),
            "restart_losses": result.loss[t].astype(float).tolist(),
            "restart_iterations": result.iterations[t].astype(int).tolist(),
            "restart_evaluations": result.evaluations[t].astype(int).tolist(),
            "converged_restarts": int(result.converged[t].sum()), "failed_restarts": int(result.failed[t].sum()),
            "iterations": int(result.iterations[t, best]), "evaluations": int(result.evaluations[t, best]),
        })
    return rows


def run_points(store: Store, points: Iterable[Any], compute: Callable[[Any], list[dict]], executor=None,
               on_point: Callable[[Any, list[dict] | None], None] | None = None) -> int:
    """Run ``compute(point)`` for every point (anything with an ``id`` and ``expected_rows``) whose part
    is not intact in ``store`` yet, on ``executor`` (default: in this process, in order), and store each
    point's rows as they arrive. ``on_point(point, rows)`` is called for each stored point, and with
    ``rows=None`` for each point found finished. Returns the number of points run.

    The store is checked to be writable before anything is computed; if a part still cannot be written
    later (the disk filled, permissions changed), the point's rows are saved as JSON in the temporary
    directory and the error names that file, so no computed point is lost."""
    from dlg_jax.experiments.executors import LocalExecutor

    points = list({p.id: p for p in points}.values())
    finished = store.finished({p.id: p.expected_rows for p in points})
    todo = [p for p in points if p.id not in finished]
    for point in points:
        if point.id in finished and on_point is not None:
            on_point(point, None)
    if todo:
        store.check_writable()
    for point, rows in (executor or LocalExecutor()).map(compute, todo):
        try:
            store.write(point.id, rows)
        except OSError as error:
            kept = _keep_unsaved(point.id, rows)
            raise DLGInputError(f"store {store.path!r}: cannot write the part of point {point.id} "
                                f"({error.strerror or error}); its rows are saved in {kept!r}") from None
        if on_point is not None:
            on_point(point, rows)
    return len(todo)


def _keep_unsaved(point_id: str, rows: list[dict]) -> str:
    """Save a computed point's rows where the store could not take them; returns the file's path."""
    import tempfile

    from dlg_jax.files import atomic_write_bytes

    path = os.path.join(tempfile.gettempdir(), f"dlg-jax-unsaved-{point_id}.json")
    atomic_write_bytes(path, (_json(rows) + "\n").encode())
    return path


def check_resume(points: list[Point], store: Store, resume: bool) -> None:
    """Without ``resume``, a store that already holds some of ``points`` is an error."""
    done = store.finished({p.id: p.expected_rows for p in points}) & {p.id for p in points}
    if done and not resume:
        raise DLGInputError(f"store {store.path!r} already holds {len(done)} of this grid's {len(points)} points; "
                            "pass --resume to run the rest, or give a new --store")


def run_grid(points: list[Point], store: Store, *, resume: bool = False, executor=None,
             memory_budget: int | None = None, progress: Callable[[Progress], None] | None = None,
             on_point: Callable[[Point, list[dict] | None], None] | None = None) -> int:
    """Run a grid's attack points into ``store``. Without ``resume``, a store that already holds some of
    these points is an error (nothing is touched). ``memory_budget`` (bytes) sets every point's chunk by
    memory (:mod:`dlg_jax.attack.memory`); it is not part of a point's identity. Returns the points run."""
    check_resume(points, store, resume)
    if memory_budget is not None:
        points = [dataclasses.replace(p, config=dataclasses.replace(p.config, memory_budget=memory_budget))
                  for p in points]
    compute = attack_rows if progress is None else functools.partial(attack_rows, progress=progress)
    return run_points(store, points, compute, executor, on_point)


def point_summaries(rows: list[dict]) -> list[dict]:
    """One entry per point of ``rows`` (store rows, in order of first appearance): its ``setting``
    (``attack``, ``defense``, ``strength``, ``defense_options``), per-target ``psnr`` / ``ssim`` lists
    and their means, ``mse_mean``, ``label_accuracy`` and ``wall_seconds``."""
    by_point: dict[str, list[dict]] = {}
    for row in rows:
        by_point.setdefault(row["point_id"], []).append(row)
    summaries = []
    for targets in by_point.values():
        targets = sorted(targets, key=lambda r: r["target"])
        key = json.loads(targets[0]["point"])
        summaries.append({
            "setting": {"attack": key["attack"], "defense": key["defense"], "strength": key["strength"],
                        "defense_options": key["defense_options"]},
            "psnr": [r["psnr"] for r in targets], "ssim": [r["ssim"] for r in targets],
            "psnr_mean": float(np.mean([r["psnr"] for r in targets])),
            "ssim_mean": float(np.mean([r["ssim"] for r in targets])),
            "mse_mean": float(np.mean([r["mse"] for r in targets])),
            "label_accuracy": float(np.mean([r["label_accuracy"] for r in targets])),
            "wall_seconds": targets[0]["point_wall_seconds"],
        })
    return summaries


# ---------------------------------------------------------------------------------------------------
# The utility side of the privacy-utility trade-off: a model trained with each defense.

@dataclasses.dataclass(frozen=True)
class TrainingPoint:
    """Train with ``defense`` at ``strength`` (:func:`dlg_jax.victim.training.train` under ``config``)."""

    defense: str
    strength: Any
    defense_options: tuple[tuple[str, Any], ...]
    config: TrainConfig

    def key(self) -> dict:
        return json.loads(_json({"defense": self.defense, "strength": self.strength,
                                 "defense_options": dict(self.defense_options), "train": dataclasses.asdict(self.config)}))

    @property
    def id(self) -> str:
        return "train-" + key_id(self.key())

    @property
    def expected_rows(self) -> int:
        """Rows of a finished point: one."""
        return 1


def training_rows(point: TrainingPoint) -> list[dict]:
    """One row: test / train accuracy of every run, their means, the mean minibatch loss over the last
    10% of steps, the seconds taken."""
    result = train(point.config, make_defense(point.defense, point.strength, **dict(point.defense_options)))
    tail = max(1, result.loss.shape[1] // 10)
    return [{"point_id": point.id, "point": _json(point.key()), "defense": point.defense,
             "defense_strength": format_strength(point.strength),
             "test_accuracy": result.test_accuracy.tolist(), "train_accuracy": result.train_accuracy.tolist(),
             "test_accuracy_mean": float(result.test_accuracy.mean()),
             "train_accuracy_mean": float(result.train_accuracy.mean()),
             "final_loss": float(np.mean(result.loss[:, -tail:])), "seconds": result.seconds}]
