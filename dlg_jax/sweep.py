"""Attack-side defense sweeps: attack x defense x strength -> reconstruction quality, as JSON rows.

A *setting* is one attack (a name in :data:`ATTACKS`) against one defense at one strength. For each
setting the ``T`` targets (the first ``T`` batches of the dataset) are defended with independent keys
(:func:`dlg_jax.defenses.defended_gradients`) and attacked together by one :func:`~dlg_jax.attack.run_attack`
call (all ``T x R`` restarts in one vmapped, compiled program); the best restart per target is scored
(:func:`dlg_jax.metrics.evaluate`). The model and its weights are those of :func:`dlg_jax.pipeline.run_dlg`
(seeded by the attack's ``seed``), so ``defense none`` reproduces ``dlg-jax attack``.

:func:`run_training_sweep` is the utility side: each defense setting trains a model
(:func:`dlg_jax.training.train`). Results live in one JSON file per side, ``{"rows": [...]}``,
rewritten atomically after every setting. A row's ``setting`` (everything that determines its numbers)
is its identity: settings already in the file are skipped, so an interrupted sweep resumes where it
stopped.
"""

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, Iterable

import numpy as np

from dlg_jax.attack import AttackConfig, Progress
from dlg_jax.defenses import DEFAULT_STRENGTHS, DEFENSE_NAMES, make_defense
from dlg_jax.errors import DLGInputError, check_choice, check_positive_int
from dlg_jax.files import atomic_write_json
from dlg_jax.pipeline import run_dlg
from dlg_jax.presets import attack_preset
from dlg_jax.training import TrainConfig, train

BUDGET_FIELDS = ("restarts", "iterations", "tolerance", "chunk_size", "devices", "precision", "block", "seed", "dtype")


def _preset(name: str) -> Callable[[AttackConfig], AttackConfig]:
    return lambda budget: attack_preset(name, **{f: getattr(budget, f) for f in BUDGET_FIELDS})


# Attacks by name: ``ATTACKS[name](budget) -> AttackConfig``. ``dlg`` is the budget config itself (the
# attack options describe DLG and its variants in full); the other presets (:mod:`dlg_jax.presets`) keep
# their own method and take only the budget (BUDGET_FIELDS) from it. Add an attack by adding a factory.
ATTACKS: dict[str, Callable[[AttackConfig], AttackConfig]] = {"dlg": lambda budget: budget, "ig": _preset("ig")}


def attack_config(name: str, budget: AttackConfig = AttackConfig()) -> AttackConfig:
    """The config of attack ``name`` under ``budget`` (see :data:`ATTACKS`), without snapshots."""
    check_choice("attack", name, ATTACKS)
    return dataclasses.replace(ATTACKS[name](budget), snapshots=0)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One point of the grid: ``attack`` name, ``defense`` name, its ``strength`` and options."""

    attack: str
    defense: str
    strength: Any = None
    options: tuple[tuple[str, Any], ...] = ()


def grid(attacks: Iterable[str], defenses: Iterable[str], strengths: Iterable[Any] | None = None,
         options: dict[str, dict] | None = None) -> list[Setting]:
    """Every attack against an undefended baseline (``none``) and every defense at every strength
    (``strengths`` for all defenses, else each defense's :data:`~dlg_jax.defenses.DEFAULT_STRENGTHS`).
    ``options[defense]``: that defense's options (e.g. ``{"prune": {"scope": "global"}}``). All settings
    are validated (by building their defense) before anything runs."""
    options = options or {}
    attacks, defenses = list(attacks), [d for d in defenses if d != "none"]
    for name in attacks:
        check_choice("attack", name, ATTACKS)
    for name in defenses:
        check_choice("defense", name, DEFENSE_NAMES)
    settings = []
    for attack in attacks:
        settings.append(Setting(attack, "none"))
        for defense in defenses:
            for strength in (DEFAULT_STRENGTHS[defense] if strengths is None else strengths):
                built = make_defense(defense, strength, **options.get(defense, {}))
                settings.append(Setting(attack, defense, built.strength, built.options))
    return settings


def _jsonable(value):
    return json.loads(json.dumps(value, default=lambda v: v.tolist() if hasattr(v, "tolist") else str(v)))


def setting_key(setting: Setting, config: AttackConfig, model: str, dataset: str, targets: int,
                batch_size: int, model_options: dict, data_options: dict) -> dict:
    """Everything that determines a row's numbers, as plain JSON data (the row's identity)."""
    return _jsonable({
        "attack": setting.attack, "defense": setting.defense, "strength": setting.strength,
        "defense_options": dict(setting.options), "model": model, "model_options": model_options,
        "dataset": dataset, "data_options": data_options, "targets": targets, "batch_size": batch_size,
        "config": dataclasses.asdict(config),
    })


def load_rows(path: str | os.PathLike) -> list[dict]:
    """The rows of a results file (``[]`` if it does not exist)."""
    if not os.path.exists(path):
        return []
    try:
        with open(path) as handle:
            return list(json.load(handle)["rows"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DLGInputError(
            f"results file {os.fspath(path)!r} is not a results file this tool wrote: {error}") from None


def attack_setting(setting: Setting, config: AttackConfig, *, model: str = "lenet", dataset: str = "colour",
                   targets: int = 4, batch_size: int = 1, model_options: dict | None = None,
                   data_options: dict | None = None, progress: Callable[[Progress], None] | None = None) -> dict:
    """Run one setting with :func:`~dlg_jax.pipeline.run_dlg`: defend the first ``targets`` batches,
    attack them all at once, score them.

    Returns a row (without its ``setting``, see :func:`setting_key`): the metric summary over targets (``psnr_mean``,
    ``ssim_mean``, ``mse_mean``, ``label_accuracy``, ``success_rate_psnr30``, ...), per-target ``psnr``,
    ``ssim``, ``label_accuracy`` lists and timings.
    """
    defense = make_defense(setting.defense, setting.strength, **dict(setting.options))
    started = time.perf_counter()
    run = run_dlg(model, dataset, targets=targets, batch_size=batch_size, config=config,
                  model_options=model_options, defense=defense, progress=progress, **(data_options or {}))
    result, metrics = run.result, run.metrics
    return {
        **metrics.summary(),
        "psnr": metrics.psnr.tolist(), "ssim": metrics.ssim.tolist(),
        "target_label_accuracy": metrics.label_accuracy.tolist(),
        "wall_seconds": time.perf_counter() - started, "compile_seconds": result.compile_seconds,
        "run_seconds": result.run_seconds, "restart_iterations": result.restart_iterations,
    }


def run_resumable(results_path: str | os.PathLike, jobs: list[tuple[dict, Callable[[], dict]]],
                  on_row: Callable[[dict, bool], None] | None = None) -> list[dict]:
    """For each ``(key, compute)`` job: reuse the row of ``results_path`` whose ``setting`` equals
    ``key``, or run ``compute()`` (a row without ``setting``), store it under ``key`` and rewrite the
    file atomically. ``on_row(row, reused)`` is called in order. Returns the jobs' rows in order."""
    rows = load_rows(results_path)
    done = []
    for key, compute in jobs:
        row = next((r for r in rows if r.get("setting") == key), None)
        reused = row is not None
        if row is None:
            row = {"setting": key, **compute()}
            rows.append(row)
            atomic_write_json(results_path, {"rows": rows})
        if on_row is not None:
            on_row(row, reused)
        done.append(row)
    return done


def run_sweep(settings: list[Setting], results_path: str | os.PathLike, budget: AttackConfig = AttackConfig(),
              *, model: str = "lenet", dataset: str = "colour", targets: int = 4, batch_size: int = 1,
              model_options: dict | None = None, data_options: dict | None = None,
              progress: Callable[[Progress], None] | None = None,
              on_row: Callable[[dict, bool], None] | None = None) -> list[dict]:
    """Attack every setting not yet in ``results_path`` (:func:`attack_setting`), resumably.

    ``budget`` is the attack options: each attack's config is :func:`attack_config` of it. Returns the
    rows of ``settings`` in order.
    """
    targets = check_positive_int("targets", targets)
    batch_size = check_positive_int("batch size", batch_size)
    model_options, data_options = model_options or {}, data_options or {}
    jobs = []
    for setting in settings:
        config = attack_config(setting.attack, budget)
        key = setting_key(setting, config, model, dataset, targets, batch_size, model_options, data_options)
        jobs.append((key, functools.partial(attack_setting, setting, config, model=model, dataset=dataset,
                                            targets=targets, batch_size=batch_size, model_options=model_options,
                                            data_options=data_options, progress=progress)))
    return run_resumable(results_path, jobs, on_row)


def run_training_sweep(settings: list[Setting], results_path: str | os.PathLike, config: TrainConfig,
                       on_row: Callable[[dict, bool], None] | None = None) -> list[dict]:
    """Train with each distinct defense setting of ``settings`` (:func:`dlg_jax.training.train`),
    resumably. A row holds ``test_accuracy`` / ``train_accuracy`` per run, their means, the mean
    minibatch loss over the last 10% of steps and the seconds taken."""
    jobs, seen = [], set()
    for setting in settings:
        defense = make_defense(setting.defense, setting.strength, **dict(setting.options))
        key = _jsonable({"defense": setting.defense, "strength": setting.strength,
                         "defense_options": dict(setting.options), "train": dataclasses.asdict(config)})
        if json.dumps(key, sort_keys=True) in seen:
            continue
        seen.add(json.dumps(key, sort_keys=True))
        jobs.append((key, functools.partial(_training_row, config, defense)))
    return run_resumable(results_path, jobs, on_row)


def _training_row(config: TrainConfig, defense) -> dict:
    result = train(config, defense)
    tail = max(1, result.loss.shape[1] // 10)
    return {"test_accuracy": result.test_accuracy.tolist(), "train_accuracy": result.train_accuracy.tolist(),
            "test_accuracy_mean": float(result.test_accuracy.mean()),
            "train_accuracy_mean": float(result.train_accuracy.mean()),
            "final_loss": float(np.mean(result.loss[:, -tail:])), "seconds": result.seconds}
