"""Sweeps: run the points of a grid (:mod:`dlg_jax.experiments.grid`) into a results store (:mod:`dlg_jax.experiments.store`).

:func:`run_points` is the one sweep loop: it skips the points whose part is already in the store, runs
the others on an executor (:mod:`dlg_jax.experiments.executors`) and stores each point's rows as soon as they
arrive. Attack points (:func:`attack_rows`) and training points of the privacy-utility trade-off
(:func:`training_rows`) both go through it, and ``dlg-jax sweep`` as well as ``dlg-jax defend``.

An attack point is one :func:`~dlg_jax.pipeline.run_dlg` call: its ``T`` targets (the first ``T``
batches of the dataset) are defended with independent keys and attacked together (all ``T x R``
restarts in one vmapped, compiled program). It gives one row per target: the point's settings, the best
restart's metrics (PSNR, SSIM, MSE, label accuracy, PSNR up to ``a x + b``, ``success`` = every slot at
PSNR >= 30 dB after the optimal assignment of slots to images), every restart's final loss, iterations,
evaluations and worst-slot PSNR (``oracle_success``: some restart succeeded), the best restart's
objective curve relative to its start, how what the attacker matched compares with the target's own
gradient, the private and reconstructed images (uint8), the point's timings, and the versions, precision
and device that produced it.
"""

import dataclasses
import functools
import json
import os
import resource
import time
from typing import Any, Callable, Iterable

import jax
import numpy as np

from dlg_jax.attack.engine import Progress
from dlg_jax.environment import environment
from dlg_jax.errors import DLGInputError
from dlg_jax.experiments.grid import Point, key_id
from dlg_jax.experiments.store import Store
from dlg_jax.metrics import SUCCESS_PSNR, evaluate
from dlg_jax.pipeline import DLGRun, run_dlg
from dlg_jax.victim.defenses import format_strength, make_defense
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.victim.threat_models import ThreatModel
from dlg_jax.victim.training import TrainConfig, train

# Columns that describe how and where a row was computed rather than what: they differ between two
# runs of the same point; every other column is the same on every run (same seed, same numbers).
RUN_COLUMNS = ("point_wall_seconds", "point_compile_seconds", "point_run_seconds", "restart_iterations_per_second",
               "finished_at", "host", "dlg_jax_version", "jax_version", "jaxlib_version", "device", "device_count",
               "backend", "chunk_memory_budget", "peak_rss_mb", "load_average")
CURVE_POINTS = 100  # points of the stored objective curve (evenly spaced iterations)


def _json(value) -> str:
    """``value`` as JSON with sorted keys: arrays as lists, bytes (images) as hex."""
    return json.dumps(value, sort_keys=True, default=lambda v: v.hex() if isinstance(v, bytes)
                      else v.tolist() if hasattr(v, "tolist") else str(v))


def run_environment() -> dict:
    """The columns of :data:`RUN_COLUMNS` that describe this process (from :func:`dlg_jax.environment.environment`)."""
    env = environment()
    return {"dlg_jax_version": env["versions"]["dlg-jax"] or "unknown", "jax_version": env["versions"]["jax"],
            "jaxlib_version": env["versions"]["jaxlib"], "backend": env["backend"],
            "device": f"{env['devices'][0].split(':')[0]}:{env['device_kind']}",
            "device_count": len(env["devices"]), "host": env["host"]}


def _uint8(images: np.ndarray) -> bytes:
    """Images in [0, 1] (clipped) as uint8 bytes, C order."""
    return np.round(np.clip(np.asarray(images, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8).tobytes()


def _relative_curve(run: DLGRun, t: int) -> tuple[list[float], list[int]]:
    """Target ``t``'s best restart's objective after ``i`` iterations over its initial value, at up to
    :data:`CURVE_POINTS` evenly spaced ``i`` (returned second)."""
    history = run.result.loss_history[t, run.result.best_restart[t]]
    points = np.unique(np.linspace(0, len(history) - 1, min(CURVE_POINTS, len(history))).astype(int))
    return (history[points] / max(float(history[0]), np.finfo(np.float64).tiny)).astype(float).tolist(), points.tolist()


def _gradient_comparison(run: DLGRun) -> tuple[np.ndarray, np.ndarray]:
    """How what the attacker matched, ``d_t``, compares with target ``t``'s own one-step gradient ``g_t`` at
    ``W``: ``[T]`` relative distances ``||d_t - g_t|| / ||g_t||`` (0 for one client's undefended step) and
    ``[T]`` cosines ``<d_t, g_t> / (||d_t|| ||g_t||)`` (1 when ``d_t`` is ``g_t`` rescaled)."""
    own = shared_gradients(run.model, run.params, run.images, run.labels)
    seen, mine = [np.concatenate([np.asarray(leaf, np.float64).reshape(len(run.labels), -1)
                                  for leaf in jax.tree.leaves(tree)], axis=1) for tree in (run.shared_grads, own)]
    norms = np.maximum(np.linalg.norm(seen, axis=1) * np.linalg.norm(mine, axis=1), np.finfo(np.float64).tiny)
    return np.linalg.norm(seen - mine, axis=1) / np.linalg.norm(mine, axis=1), np.sum(seen * mine, 1) / norms


def attack_rows(point: Point, progress: Callable[[Progress], None] | None = None) -> list[dict]:
    """Run one attack point; one row per target (see the module docstring)."""
    defense = make_defense(point.defense, point.strength, **dict(point.defense_options))
    config = point.config
    threat = ThreatModel(**dict(point.threat))
    model_options = dict(point.model_options)
    num_classes = model_options.pop("num_classes", None)
    started = time.perf_counter()
    run = run_dlg(point.model, point.dataset, targets=point.targets, batch_size=point.batch_size, config=config,
                  model_options=model_options, num_classes=num_classes, defense=defense, threat=threat,
                  run=point.run, progress=progress, **dict(point.data_options))
    wall = time.perf_counter() - started
    result, metrics = run.result, run.metrics
    restarts = result.loss.shape[1]
    restart_worst = np.stack([evaluate(result.images[:, r], run.images, result.labels[:, r], run.labels,
                                       lpips=False).slot_psnr.min(axis=1) for r in range(restarts)], axis=1)
    gap, cosine = _gradient_comparison(run)
    strength = point.strength
    shared = {
        "point_id": point.id, "kind": "image", "attack": point.attack, "model": point.model,
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
        "chunk_memory_budget": point.run.memory_budget, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_average": os.getloadavg()[0],
        "classes": run.model.num_classes, "image_shape": list(run.images.shape[2:]),
        "unknowns": int(np.prod(run.images.shape[2:])) * point.batch_size,
        "gradient_entries": int(sum(np.size(leaf) for leaf in jax.tree.leaves(run.params))),
        **run_environment(),
    }
    rows = []
    for t in range(point.targets):
        best = int(result.best_restart[t])
        curve, curve_iterations = _relative_curve(run, t)
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
            "affine_psnr": float(metrics.slot_affine_psnr[t].mean()),
            "restart_worst_slot_psnr": restart_worst[t].astype(float).tolist(),
            "oracle_success": bool(restart_worst[t].max() >= SUCCESS_PSNR),
            "relative_objective": curve[-1], "objective_curve": curve, "curve_iterations": curve_iterations,
            "gradient_gap": float(gap[t]), "gradient_cosine": float(cosine[t]),
            "other_clients_indices": ([] if run.client_indices is None
                                      else np.asarray(run.client_indices[t]).reshape(-1).tolist()),
            "image": _uint8(run.images[t]), "reconstruction": _uint8(result.best_images[t]),
        })
    return rows


def text_rows(point: Point, progress: Callable[[Progress], None] | None = None) -> list[dict]:
    """Run one text point (:func:`dlg_jax.text.attack_batches` on the first ``targets`` batches of its
    sentence set, every decoding compared; the model option ``dummy``, default ``"embeddings"``); one row per target: per decoding ``D`` the batch's mean
    ``D/token_accuracy``, ``D/exact_match``, ``D/bleu``, ``D/rouge1``, ``D/rougeL``, ``D/duplicates`` and
    ``D/relative_distance`` (its exact gradient distance over ``||dW||^2``), the continuous objective
    over ``||dW||^2``, the sentences and their recoveries, the point's timings and environment."""
    from dlg_jax.data.sentences import sentence_batches
    from dlg_jax.text import attack_batches, text_run_options

    batches = sentence_batches(point.dataset, point.targets, point.batch_size)
    options = dict(point.model_options)
    placement = {k: getattr(point.run, k) for k in ("chunk_size", "devices", "memory_budget")}
    started = time.perf_counter()
    # a text point runs DLG's free-embedding dummy unless its model option says otherwise ("bag")
    run = attack_batches(batches, point.model, point.config, compare=True, progress=progress,
                         vocabulary_size=options.get("vocabulary_size"), dummy=options.get("dummy", "embeddings"),
                         run=text_run_options(point.config.iterations, **placement))
    wall = time.perf_counter() - started
    shared = {
        "point_id": point.id, "point": _json(point.key()), "kind": "text", "attack": point.attack,
        "model": point.model, "model_options": _json(options), "dataset": point.dataset,
        "batch_size": point.batch_size, "targets": point.targets, "length": int(run.batches[0].original.shape[1]),
        "vocabulary_size": run.batches[0].vocab.size, "distance": point.config.distance, "seed": point.config.seed,
        "restarts": point.config.restarts, "iterations_budget": point.config.iterations,
        "config": _json(dataclasses.asdict(point.config)), "point_wall_seconds": wall,
        "point_compile_seconds": sum(r.compile_seconds for r in run.results),
        "point_run_seconds": sum(r.run_seconds for r in run.results),
        "point_restart_iterations": int(sum(r.restart_iterations for r in run.results)),
        "restart_iterations_per_second": (sum(r.restart_iterations for r in run.results)
                                          / max(sum(r.run_seconds for r in run.results), 1e-9)),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "load_average": os.getloadavg()[0], **run_environment(),
    }
    rows = []
    for t, batch in enumerate(run.batches):
        row = {**shared, "target": t, "sentences": batch.texts, "recovered": batch.recovered_texts,
               "orderings": batch.orderings, "relative_objective": batch.loss / batch.gradient_norm2}
        for decoding, found in batch.decodings.items():
            scores = found["scores"]
            row.update({f"{decoding}/{key}": float(scores[key])
                        for key in ("token_accuracy", "exact_match", "bleu", "rouge1", "rougeL")})
            row[f"{decoding}/duplicates"] = int(scores["duplicates"])
            row[f"{decoding}/relative_distance"] = float(found["distance"] / batch.gradient_norm2)
        rows.append(row)
    return rows


def point_outcome(rows: list[dict]) -> str:
    """One line on a finished point's rows: recovered targets and mean PSNR (images), or the refined
    decoding's token accuracy and ROUGE-L (text)."""
    if rows[0].get("kind") == "text":
        return (f"refined+bag token accuracy {np.mean([r['refined+bag/token_accuracy'] for r in rows]):.0%}, "
                f"ROUGE-L {np.mean([r['refined+bag/rougeL'] for r in rows]):.2f} ({rows[0]['point_wall_seconds']:.0f} s)")
    return (f"recovered {sum(r['success'] for r in rows)}/{len(rows)}, PSNR {np.mean([r['psnr'] for r in rows]):.1f} dB "
            f"({rows[0]['point_wall_seconds']:.1f} s)")


def point_rows(point: Point, progress: Callable[[Progress], None] | None = None) -> list[dict]:
    """The rows of one grid point: :func:`text_rows` for a text point, else :func:`attack_rows`."""
    return (text_rows if point.text else attack_rows)(point, progress)


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
        points = [dataclasses.replace(p, run=dataclasses.replace(p.run, memory_budget=memory_budget)) for p in points]
    compute = point_rows if progress is None else functools.partial(point_rows, progress=progress)
    return run_points(store, points, compute, executor, on_point)


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
