"""Experiments that reproduce the shapes of the DLG, iDLG and Inverting Gradients results on the embedded data.

- ``labels`` (iDLG, Zhao et al. 2020, Table 1): label accuracy of DLG's joint label optimisation vs iDLG's
  analytic rule on single-image gradients of DLG's LeNet, for every embedded dataset. iDLG reads the label
  off the final layer's gradient (instant); DLG's label is ``argmax`` of its optimised label logits after
  a modest attack budget (stated in the output).
- ``batch`` (DLG, Zhu et al. 2019, batched recovery): attack methods (:data:`METHODS`) on LeNet (or other
  models: ``models``, e.g. a batch-norm ResNet for ``ig-gi``, GradInversion's priors) with ``B``
  private images per gradient, per dataset; the share of targets *fully recovered* (the restart with the
  lowest objective has every slot >= 30 dB PSNR after the optimal assignment of slots to images),
  iterations and wall time to recovery, duplicate (collapsed) slots, throughput and peak memory.
- ``compare`` (Geiping et al. 2020): PSNR of DLG vs Inverting Gradients on the same targets of LeNet and
  ResNets (``"resnet20-sigmoid"``, DLG's variant ``"resnet20-dlg"``: :func:`parse_model`).
- ``threat`` (the threat models of :mod:`dlg_jax.victim.threat_models`): DLG's PSNR on LeNet when the attacker sees
  the mean of ``K`` clients' gradients, and when it sees one client's FedAvg weight change after ``S``
  local steps.
- ``resolution``: success rate and PSNR of DLG and Inverting Gradients on LeNet vs the image size
  ``S x S`` (16 to 128) of the faces and colour sets (resized: :func:`dlg_jax.data.datasets.resize_image`).

Each experiment runs with a standard budget (``STANDARD``) or a smoke-test one (``QUICK``); either can be
overridden per call. :func:`run_experiment` returns an :class:`ExperimentResult` (a JSON-able payload)
and :func:`save_experiment` writes ``<name>.json``, ``<name>.png`` and ``<name>.md`` atomically.
"""

import dataclasses
import itertools
import os
import resource
import time
from typing import Any, Callable, Sequence

import jax
import numpy as np
from matplotlib.figure import Figure

from dlg_jax.attack.engine import Progress
from dlg_jax.attack.labels import recover_labels
from dlg_jax.attack.presets import PRESET_NAMES, attack_preset
from dlg_jax.data.datasets import get_dataset
from dlg_jax.errors import check_choice, check_positive_int
from dlg_jax.experiments.tables import markdown_table
from dlg_jax.figures import subplots
from dlg_jax.files import (
    atomic_save_figure,
    atomic_write_bytes,
    atomic_write_json,
    prepare_output_dir,
)
from dlg_jax.metrics import SUCCESS_PSNR, evaluate
from dlg_jax.models import MODEL_NAMES, dlg_resnet
from dlg_jax.pipeline import DLGRun, run_dlg
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.victim.threat_models import ThreatModel

EXPERIMENT_NAMES = ("labels", "batch", "compare", "threat", "resolution")
EMBEDDED = ("digits", "colour", "faces")
COMPARE_MODELS = ("lenet", "resnet20-sigmoid", "resnet20-relu")
CURVE_POINTS = 200
GI_BN_PRIOR = 0.01             # ig-gi's weights (cosine distance ~ 0..1; R_bn ~ 30 at a random dummy on
GI_GROUP_CONSISTENCY = 0.1     # resnet20-sigmoid-bn/digits, 0.5 at the private batch)

# Attack methods: a preset (dlg_jax.attack.presets) plus AttackConfig overrides, as plain data.
METHODS = {
    "dlg": ("dlg", {}),                                                     # DLG as published
    "dlg-cyclic": ("dlg", {"batch_update": "cyclic"}),                      # DLG's slot i mod B update
    "dlg-uniform": ("dlg", {"dummy_init": "uniform"}),                      # dummy images ~ U(0, 1)
    "dlg-count-uniform": ("dlg", {"labels": "count", "dummy_init": "uniform"}),  # + labels off the gradient
    "ig": ("ig", {}),                                                       # Inverting Gradients
    # GradInversion's BN-statistics prior (batch-norm models only) and group consistency (restarts >= 2)
    "ig-bn": ("ig", {"bn_prior": GI_BN_PRIOR}),
    "ig-group": ("ig", {"group_consistency": GI_GROUP_CONSISTENCY}),
    "ig-gi": ("ig", {"bn_prior": GI_BN_PRIOR, "group_consistency": GI_GROUP_CONSISTENCY}),
    "dlg-bn": ("dlg", {"bn_prior": GI_BN_PRIOR}),
    "dlg-group": ("dlg", {"group_consistency": GI_GROUP_CONSISTENCY}),
    "dlg-gi": ("dlg", {"bn_prior": GI_BN_PRIOR, "group_consistency": GI_GROUP_CONSISTENCY}),
}
BATCH_METHODS = ("dlg", "dlg-cyclic", "dlg-uniform", "dlg-count-uniform", "ig")
QUICK_BATCH = {"batch_sizes": (1, 2), "methods": ("dlg", "dlg-count-uniform")}  # --quick's smaller grid
BATCH_DATASETS = ("colour", "digits")
RESOLUTION_GRID = {"sizes": (16, 32, 64, 128), "datasets": ("faces", "colour"), "methods": ("dlg", "ig")}
THREAT_GRID = {"clients": (1, 2, 4, 8), "local_steps": (1, 2, 5, 10)}  # threat: K (S = 1) and S (K = 1)
# Model spec tokens after the name (parse_model): activation, or DLG's ResNet options.
MODEL_TOKENS = {"relu": {"activation": "relu"}, "sigmoid": {"activation": "sigmoid"},
                "bn": {"norm": "batch"}, "nostride": {"strides": False}, "dlginit": {"init": "dlg"},
                "dlg": dlg_resnet()}


@dataclasses.dataclass(frozen=True)
class Budget:
    """Attack budget of one experiment: ``targets`` per setting, ``restarts`` and ``iterations`` per target."""

    targets: int
    restarts: int
    iterations: int

    def __post_init__(self):
        for name in ("targets", "restarts", "iterations"):
            check_positive_int(name, getattr(self, name))

    def replace(self, **overrides) -> "Budget":
        """This budget with the non-``None`` ``overrides``."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


# ``compare`` has one budget for LeNet/MLP and one for the ResNets (~35x slower per iteration on a CPU).
STANDARD = {
    "labels": Budget(targets=100, restarts=1, iterations=300),
    "batch": Budget(targets=2, restarts=2, iterations=3000),
    "compare": {"lenet": Budget(targets=4, restarts=2, iterations=3000),
                "resnet": Budget(targets=2, restarts=1, iterations=500)},
    "threat": Budget(targets=4, restarts=2, iterations=1500),
    "resolution": Budget(targets=4, restarts=4, iterations=1000),
}
QUICK = {
    "labels": Budget(targets=20, restarts=1, iterations=100),
    "batch": Budget(targets=1, restarts=1, iterations=300),
    "compare": {"lenet": Budget(targets=2, restarts=1, iterations=300),
                "resnet": Budget(targets=1, restarts=1, iterations=50)},
    "threat": Budget(targets=1, restarts=1, iterations=200),
    "resolution": Budget(targets=1, restarts=1, iterations=100),
}


@dataclasses.dataclass
class ExperimentResult:
    """``payload``: the JSON-able record (``experiment``, ``budget``, ``rows``, ...). ``images``: for the
    figure only (``compare``): ``{"truth" or attack name: one [H, W, C] image per model}``, the first
    target's private image and each attack's reconstruction of it."""

    name: str
    payload: dict
    images: dict[str, list[np.ndarray]] | None = None


Log = Callable[[str], None]


def parse_model(spec: str) -> tuple[str, dict]:
    """A model spec ``name[-token...]`` -> ``(name, build_model options)``. Tokens (:data:`MODEL_TOKENS`):
    ``relu``/``sigmoid`` (activation), ``bn`` (batch norm from the batch), ``nostride``, ``dlginit``
    (U(-0.5, 0.5)), ``dlg`` (all of DLG's ResNet options). ``"resnet20-relu" -> ("resnet20",
    {"activation": "relu"})``, ``"resnet56-dlg"``: DLG's ResNet-56, ``"lenet" -> ("lenet", {})``."""
    name, *tokens = spec.split("-")
    check_choice("model", name, MODEL_NAMES)
    options = {}
    for token in tokens:
        check_choice("model option", token, MODEL_TOKENS)
        options.update(MODEL_TOKENS[token])
    return name, options


def _config(method: str, budget: Budget, seed: int, **extra):
    check_choice("attack method", method, METHODS)
    preset, overrides = METHODS[method]
    return attack_preset(preset, restarts=budget.restarts, iterations=budget.iterations, seed=seed,
                         snapshots=0, block=min(budget.iterations, 250), **{**overrides, **extra})


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def label_experiment(datasets: Sequence[str] = EMBEDDED, budget: Budget = STANDARD["labels"], *, seed: int = 0,
                     log: Log | None = None, progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Label accuracy of DLG (joint labels, ``budget``) vs iDLG (analytic) on the first ``budget.targets``
    single images of each dataset, LeNet. One row per dataset."""
    sources = [get_dataset(name) for name in datasets]
    for source in sources:
        source.check_indices(np.arange(budget.targets))
    rows = []
    for name, source in zip(datasets, sources):
        if log:
            log(f"labels: {name}, DLG on {budget.targets} images")
        run = run_dlg("lenet", name, targets=budget.targets, config=_config("dlg", budget, seed), progress=progress)
        started = time.perf_counter()
        analytic = recover_labels("analytic", run.model, run.params, run.shared_grads, 1)
        analytic_seconds = time.perf_counter() - started
        summary = run.metrics.summary()
        rows.append({
            "dataset": name, "targets": int(len(run.labels)), "classes": source.num_classes,
            "chance": 1.0 / source.num_classes,
            "dlg_label_accuracy": summary["label_accuracy"], "dlg_psnr_mean": summary["psnr_mean"],
            "dlg_seconds": run.result.run_seconds + run.result.compile_seconds,
            "idlg_label_accuracy": float(np.mean(analytic == run.labels)), "idlg_seconds": analytic_seconds,
        })
    return ExperimentResult("labels", {"experiment": "labels", "model": "lenet", "attack": "dlg",
                                       "budget": dataclasses.asdict(budget), "seed": seed, "rows": rows})


def _relative_curve(run: DLGRun) -> tuple[list[float], list[int]]:
    """Median over targets of the best restart's objective after ``i`` iterations divided by its initial
    value, at up to ``CURVE_POINTS`` evenly spaced ``i`` (returned second)."""
    result = run.result
    best = result.loss_history[np.arange(len(result.best_restart)), result.best_restart]
    relative = best / np.maximum(best[:, :1], np.finfo(np.float64).tiny)
    points = np.unique(np.linspace(0, relative.shape[1] - 1, min(CURVE_POINTS, relative.shape[1])).astype(int))
    return np.median(relative[:, points], axis=0).tolist(), points.tolist()


def recovery(run: DLGRun, psnr: float = SUCCESS_PSNR) -> dict:
    """Per-target recovery of a batch attack: ``full [T]`` (the lowest-objective restart has every slot
    >= ``psnr`` dB after the optimal assignment), ``oracle [T]`` (some restart has; the attacker cannot
    tell which without the private images), ``iterations [T]`` (the best restart's iterations: where it
    converged, else the budget it ran) and ``restarts_full [T]`` (restarts with every slot >= ``psnr``)."""
    result = run.result
    targets, restarts = result.loss.shape
    every = np.stack([evaluate(result.images[:, r], run.images, result.labels[:, r], run.labels).slot_psnr.min(axis=1)
                      for r in range(restarts)], axis=1)  # [T, R] worst slot per restart
    full = run.metrics.slot_psnr.min(axis=1) >= psnr
    return {"full": full, "oracle": (every >= psnr).any(axis=1), "restarts_full": (every >= psnr).sum(axis=1),
            "iterations": result.iterations[np.arange(targets), result.best_restart]}


def batch_experiment(batch_sizes: Sequence[int] = (1, 2, 4, 8), budget: Budget = STANDARD["batch"], *,
                     datasets: Sequence[str] = BATCH_DATASETS, methods: Sequence[str] = BATCH_METHODS,
                     models: Sequence[str] = ("lenet",), seed: int = 0, settings: dict | None = None, num_classes: int | None = None,
                     log: Log | None = None, progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Each method of :data:`METHODS` on each model spec of ``models`` (:func:`parse_model`; default LeNet)
    with ``B`` images per gradient, for each dataset and each ``B`` in ``batch_sizes``; targets are the first
    ``budget.targets`` consecutive batches. One row per (dataset, model, method, B). ``num_classes``: the model's outputs (default: the dataset's; DLG's code uses 100).
    ``settings``: extra :class:`~dlg_jax.attack.engine.AttackConfig` fields for every run (``dtype``, ``tolerance``,
    ``chunk_size``).

    ``fully_recovered``: share of targets whose lowest-objective restart has every slot >= 30 dB after the
    optimal assignment (:func:`recovery`). ``iterations_to_recovery``: median over recovered targets of the
    best restart's iterations (converged restarts stop; others count the whole budget).
    ``seconds_to_recovery``: that many iterations at the run's measured wall time per lockstep iteration
    (``run_seconds`` over the iterations run; all restarts of the run advance together; compile time excluded).
    ``duplicates``: slots collapsed onto another slot's image (:mod:`dlg_jax.metrics`), summed over targets.
    A restart *converges* once its objective is within the attack's tolerance.
    ``peak_rss_mb``: the process's peak resident memory so far (``ru_maxrss``), so it only grows.
    """
    for method in methods:
        check_choice("attack method", method, METHODS)
    specs = [(spec, *parse_model(spec)) for spec in models]
    batch_sizes = [check_positive_int("batch size", b) for b in batch_sizes]
    for dataset in datasets:
        get_dataset(dataset).check_indices(np.arange(budget.targets * max(batch_sizes)))
    rows = []
    for dataset in datasets:
        for (spec, name, options), method, batch_size in itertools.product(specs, methods, batch_sizes):
            if log:
                log(f"batch: {dataset}, {spec}, {method}, B={batch_size}, {budget.targets} targets")
            run = run_dlg(name, dataset, targets=budget.targets, batch_size=batch_size,
                          config=_config(method, budget, seed, **(settings or {})), progress=progress,
                          num_classes=num_classes, model_options=options)
            result, summary, found = run.result, run.metrics.summary(), recovery(run)
            converged = result.converged
            curve, points = _relative_curve(run)
            throughput = result.restart_iterations / max(result.run_seconds, 1e-9)
            lockstep = result.restart_iterations / (budget.targets * budget.restarts)
            its = found["iterations"][found["full"]]
            median_its = float(np.median(its)) if its.size else None
            rows.append({
                "dataset": dataset, "model": spec, "method": method, "batch_size": batch_size,
                "classes": run.model.num_classes,
                "targets": int(converged.shape[0]), "restarts": int(converged.shape[1]),
                "fully_recovered": float(found["full"].mean()), "oracle_recovered": float(found["oracle"].mean()),
                "restarts_recovered": int(found["restarts_full"].sum()),
                "iterations_to_recovery": median_its,
                "seconds_to_recovery": (median_its * result.run_seconds / max(lockstep, 1.0)
                                        if median_its is not None else None),
                "converged_restarts": int(converged.sum()),
                "psnr_mean": summary["psnr_mean"], "worst_slot_psnr": run.metrics.slot_psnr.min(axis=1).tolist(),
                "affine_psnr_mean": summary["affine_psnr_mean"],
                "ssim_mean": summary["ssim_mean"], "label_accuracy": summary["label_accuracy"],
                "duplicates": summary["duplicates"], "relative_loss_final": curve[-1], "curve": curve,
                "curve_iterations": points, "run_seconds": result.run_seconds,
                "compile_seconds": result.compile_seconds, "restart_iterations_per_second": throughput,
                "peak_rss_mb": _peak_rss_mb(),
            })
    return ExperimentResult("batch", {"experiment": "batch", "models": list(models), "datasets": list(datasets),
                                      "methods": {m: {"preset": METHODS[m][0], **METHODS[m][1]} for m in methods},
                                      "budget": dataclasses.asdict(budget), "dtype": run.result.images.dtype.name,
                                      "settings": settings or {}, "seed": seed, "recovered_psnr": SUCCESS_PSNR, "rows": rows})


def compare_experiment(models: Sequence[str] = COMPARE_MODELS, budgets: dict[str, Budget] = STANDARD["compare"], *,
                       attacks: Sequence[str] = PRESET_NAMES, dataset: str = "colour", seed: int = 0,
                       settings: dict | None = None, log: Log | None = None,
                       progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Each attack method (:data:`METHODS`) on the same ``targets`` single images of each model (a spec,
    :func:`parse_model`); ``budgets["lenet"]`` for LeNet/MLP, ``budgets["resnet"]`` for the ResNets. One row
    per (model, attack).

    Every restart runs its full budget (tolerance 0): on ResNet-20 with sigmoids DLG's objective falls
    below the default relative tolerance (1e-8 |dW|^2) within ~20 iterations, and to ~1e-14 of its
    initial value in 500, while the image is still noise: that model's gradient barely depends on its
    input. ``relative_objective``: median over targets of the best restart's final / initial objective."""
    specs = [(spec, *parse_model(spec)) for spec in models]
    for attack in attacks:
        check_choice("attack method", attack, METHODS)
    source = get_dataset(dataset)
    source.check_indices(np.arange(max(budget.targets for budget in budgets.values())))
    rows, images = [], {"truth": [], **{attack: [] for attack in attacks}}
    budget_rows = {}
    for spec, name, options in specs:
        budget = budgets["resnet" if name.startswith("resnet") else "lenet"]
        budget_rows[spec] = dataclasses.asdict(budget)
        for attack in attacks:
            if log:
                log(f"compare: {spec}, {attack} on {budget.targets} targets")
            config = _config(attack, budget, seed, **{**(settings or {}), "tolerance": 0.0})
            run = run_dlg(name, dataset, targets=budget.targets, config=config, model_options=options,
                          progress=progress)
            summary = run.metrics.summary()
            rows.append({
                "model": spec, "attack": attack, "targets": summary["targets"], "psnr_mean": summary["psnr_mean"],
                "psnr_median": summary["psnr_median"], "ssim_mean": summary["ssim_mean"],
                "label_accuracy": summary["label_accuracy"], "success_rate_psnr30": summary["success_rate_psnr30"],
                "affine_psnr_mean": summary["affine_psnr_mean"],
                "affine_success_rate_psnr30": summary["affine_success_rate_psnr30"],
                "run_seconds": run.result.run_seconds, "compile_seconds": run.result.compile_seconds,
                "relative_objective": float(np.median(run.result.best_loss / run.result.loss_history[
                    np.arange(summary["targets"]), run.result.best_restart, 0])),
            })
            images[attack].append(np.clip(run.result.best_images[0, 0], 0.0, 1.0))
        images["truth"].append(run.images[0, 0])
    payload = {"experiment": "compare", "dataset": dataset, "attacks": list(attacks), "budget": budget_rows,
               "settings": settings or {}, "seed": seed, "rows": rows}
    return ExperimentResult("compare", payload, images)


def _gradient_comparison(run: DLGRun) -> tuple[np.ndarray, np.ndarray]:
    """How what the attacker matched, ``d_t``, compares with target ``t``'s own one-step gradient ``g_t`` at
    ``W``: ``[T]`` relative distances ``||d_t - g_t|| / ||g_t||`` (0 for DLG's single client) and ``[T]``
    cosines ``<d_t, g_t> / (||d_t|| ||g_t||)`` (1 when ``d_t`` is ``g_t`` rescaled)."""
    own = shared_gradients(run.model, run.params, run.images, run.labels)
    seen, mine = [np.concatenate([np.asarray(leaf, np.float64).reshape(len(run.labels), -1)
                                  for leaf in jax.tree.leaves(tree)], axis=1) for tree in (run.shared_grads, own)]
    norms = np.linalg.norm(seen, axis=1) * np.linalg.norm(mine, axis=1)
    return np.linalg.norm(seen - mine, axis=1) / np.linalg.norm(mine, axis=1), np.sum(seen * mine, 1) / norms


def threat_experiment(clients: Sequence[int] = THREAT_GRID["clients"],
                      local_steps: Sequence[int] = THREAT_GRID["local_steps"], budget: Budget = STANDARD["threat"], *,
                      methods: Sequence[str] = ("dlg",), dataset: str = "colour", aggregate: str = "mean",
                      local_lr: float = 0.1, seed: int = 0, settings: dict | None = None, log: Log | None = None,
                      progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Each attack method (:data:`METHODS`) on LeNet, the first ``budget.targets`` single images of
    ``dataset``, under each threat model (:mod:`dlg_jax.victim.threat_models`): ``K`` clients in ``clients``
    aggregated by ``aggregate``, one step each; then one client after ``S`` in ``local_steps`` FedAvg steps
    of size ``local_lr`` (``K = S = 1``, DLG's own setting, runs once). The other clients' images are drawn
    from ``seed``. One row per (method, threat model); PSNR, SSIM and labels are scored against the target's
    image. ``gradient_gap`` and ``gradient_cosine``: per target, what the attacker matched against the
    target's own gradient (:func:`_gradient_comparison`)."""
    for method in methods:
        check_choice("attack method", method, METHODS)
    threats = [ThreatModel(clients=k, aggregate=aggregate, local_lr=local_lr) for k in clients]
    threats += [ThreatModel(local_steps=s, aggregate=aggregate, local_lr=local_lr) for s in local_steps
                if s != 1 or 1 not in clients]
    get_dataset(dataset).check_indices(np.arange(budget.targets))
    rows = []
    for method in methods:
        for threat in threats:
            if log:
                log(f"threat: {method}, {threat.describe()}, {budget.targets} targets")
            config = _config(method, budget, seed, **(settings or {}))
            run = run_dlg("lenet", dataset, targets=budget.targets, config=config, threat=threat, progress=progress)
            summary = run.metrics.summary()
            gap, cosine = _gradient_comparison(run)
            rows.append({
                "method": method, "clients": threat.clients, "local_steps": threat.local_steps,
                "threat_model": threat.describe(), "targets": summary["targets"], "psnr_mean": summary["psnr_mean"],
                "psnr": run.metrics.psnr.tolist(), "ssim_mean": summary["ssim_mean"],
                "label_accuracy": summary["label_accuracy"], "success_rate_psnr30": summary["success_rate_psnr30"],
                "gradient_gap": gap.tolist(), "gradient_cosine": cosine.tolist(),
                "other_clients_indices": run.client_indices.tolist(), "run_seconds": run.result.run_seconds,
                "compile_seconds": run.result.compile_seconds,
            })
    payload = {"experiment": "threat", "model": "lenet", "dataset": dataset,
               "methods": {m: {"preset": METHODS[m][0], **METHODS[m][1]} for m in methods},
               "aggregate": aggregate, "local_lr": local_lr, "budget": dataclasses.asdict(budget),
               "settings": settings or {}, "seed": seed, "rows": rows}
    return ExperimentResult("threat", payload)


def resolution_experiment(sizes: Sequence[int] = RESOLUTION_GRID["sizes"], budget: Budget = STANDARD["resolution"],
                          *, datasets: Sequence[str] = RESOLUTION_GRID["datasets"],
                          methods: Sequence[str] = RESOLUTION_GRID["methods"], seed: int = 0,
                          settings: dict | None = None, log: Log | None = None,
                          progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Each method on LeNet (DLG's, its classifier sized to the input) and the first ``budget.targets``
    single images of each dataset resized to ``S x S`` for ``S`` in ``sizes``. One row per (dataset,
    method, S). The embedded sets are stored at 32x32 (faces: LFW's 25x25 crops, already up-sampled), so
    ``S > 32`` interpolates: more pixels to recover, no more detail. ``unknowns``: ``S * S * C`` values per
    image; ``gradient_entries``: LeNet's parameter count (its last layer grows as ``12 (S/4)^2 K``).
    ``success_rate_psnr30``: share of targets whose best restart reaches 30 dB."""
    for method in methods:
        check_choice("attack method", method, METHODS)
    sources = {(name, size): get_dataset(name, image_size=size) for name in datasets for size in sizes}
    for source in sources.values():
        source.check_indices(np.arange(budget.targets))
    rows = []
    for (dataset, size), source in sources.items():
        for method in methods:
            if log:
                log(f"resolution: {dataset} at {size}x{size}, {method}, {budget.targets} targets")
            run = run_dlg("lenet", dataset, targets=budget.targets, image_size=size,
                          config=_config(method, budget, seed, **(settings or {})), progress=progress)
            summary, result = run.metrics.summary(), run.result
            rows.append({
                "dataset": dataset, "size": size, "method": method, "targets": summary["targets"],
                "unknowns": int(np.prod(source.input_shape)),
                "gradient_entries": int(sum(np.size(leaf) for leaf in jax.tree.leaves(run.params))),
                "success_rate_psnr30": summary["success_rate_psnr30"], "psnr_mean": summary["psnr_mean"],
                "psnr_median": summary["psnr_median"], "psnr": run.metrics.psnr.tolist(),
                "ssim_mean": summary["ssim_mean"], "label_accuracy": summary["label_accuracy"],
                "run_seconds": result.run_seconds, "compile_seconds": result.compile_seconds,
                "restart_iterations_per_second": result.restart_iterations / max(result.run_seconds, 1e-9),
            })
    payload = {"experiment": "resolution", "model": "lenet", "datasets": list(datasets), "sizes": list(sizes),
               "methods": {m: {"preset": METHODS[m][0], **METHODS[m][1]} for m in methods},
               "budget": dataclasses.asdict(budget), "settings": settings or {}, "seed": seed, "rows": rows}
    return ExperimentResult("resolution", payload)


def run_experiment(name: str, *, quick: bool = False, targets: int | None = None, restarts: int | None = None,
                   iterations: int | None = None, datasets: Sequence[str] | None = None,
                   batch_sizes: Sequence[int] | None = None, methods: Sequence[str] | None = None,
                   models: Sequence[str] | None = None, seed: int = 0, dtype: str = "float32",
                   num_classes: int | None = None, tolerance: float | None = None, chunk_size: int | None = None,
                   memory_budget: int | None = None, clients: Sequence[int] | None = None, local_steps: Sequence[int] | None = None,
                   aggregate: str = "mean", local_lr: float = 0.1, sizes: Sequence[int] | None = None,
                   log: Log | None = None, progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Experiment ``name`` with the ``QUICK`` or ``STANDARD`` budget, ``targets`` / ``restarts`` /
    ``iterations`` overriding it (for every model of ``compare``). ``datasets`` (labels, batch, compare:
    its first), ``batch_sizes`` (batch), ``methods`` (batch, compare: :data:`METHODS`) and ``models``
    (batch: default LeNet; compare), ``clients`` and ``local_steps`` (threat: :data:`THREAT_GRID`, with ``aggregate`` and
    ``local_lr``), ``sizes`` (resolution: :data:`RESOLUTION_GRID`) select the settings; ``num_classes``
    widens LeNet's classifier (batch); ``dtype``, ``tolerance``, ``chunk_size`` and ``memory_budget`` go into every
    attack's config (compare keeps tolerance 0). Adds ``wall_seconds`` to the payload."""
    check_choice("experiment", name, EXPERIMENT_NAMES)
    settings = {k: v for k, v in dict(dtype=dtype, tolerance=tolerance, chunk_size=chunk_size,
                                      memory_budget=memory_budget).items() if v is not None}
    budgets = QUICK if quick else STANDARD
    override = dict(targets=targets, restarts=restarts, iterations=iterations)
    started = time.perf_counter()
    if name == "labels":
        result = label_experiment(datasets or EMBEDDED, budgets["labels"].replace(**override), seed=seed,
                                  log=log, progress=progress)
    elif name == "batch":
        grid = QUICK_BATCH if quick else {"batch_sizes": (1, 2, 4, 8), "methods": BATCH_METHODS}
        result = batch_experiment(batch_sizes or grid["batch_sizes"], budgets["batch"].replace(**override),
                                  datasets=datasets or BATCH_DATASETS, methods=methods or grid["methods"],
                                  models=models or ("lenet",),
                                  seed=seed, settings=settings, num_classes=num_classes, log=log, progress=progress)
    elif name == "threat":
        result = threat_experiment(clients or THREAT_GRID["clients"], local_steps or THREAT_GRID["local_steps"],
                                   budgets["threat"].replace(**override), methods=methods or ("dlg",),
                                   dataset=(datasets or ["colour"])[0],
                                   aggregate=aggregate, local_lr=local_lr, seed=seed, settings=settings, log=log,
                                   progress=progress)
    elif name == "resolution":
        result = resolution_experiment(sizes or RESOLUTION_GRID["sizes"], budgets["resolution"].replace(**override),
                                       datasets=datasets or RESOLUTION_GRID["datasets"],
                                       methods=methods or RESOLUTION_GRID["methods"], seed=seed, settings=settings,
                                       log=log, progress=progress)
    else:
        compare_budgets = {key: budget.replace(**override) for key, budget in budgets["compare"].items()}
        result = compare_experiment(models or COMPARE_MODELS, compare_budgets, attacks=methods or PRESET_NAMES,
                                    dataset=(datasets or ["colour"])[0], seed=seed, settings=settings, log=log,
                                    progress=progress)
    result.payload.update(quick=quick, wall_seconds=time.perf_counter() - started)
    return result


def experiment_table(result: ExperimentResult) -> str:
    """The experiment's rows as a markdown table (what ``<name>.md`` and the docs show)."""
    rows = result.payload["rows"]
    if result.name == "labels":
        budget = result.payload["budget"]
        header = ["dataset", "targets", "classes", "DLG label acc.", "DLG PSNR dB", "iDLG label acc.",
                  "DLG s (with compile)", "iDLG s"]
        lines = [[r["dataset"], r["targets"], r["classes"], f"{r['dlg_label_accuracy']:.0%}",
                  f"{r['dlg_psnr_mean']:.1f}", f"{r['idlg_label_accuracy']:.0%}", f"{r['dlg_seconds']:.1f}",
                  f"{r['idlg_seconds']:.3f}"] for r in rows]
        note = (f"DLG budget: {budget['restarts']} restart(s) x up to {budget['iterations']} L-BFGS iterations "
                "per image; LeNet, one image per gradient.")
    elif result.name == "batch":
        budget = result.payload["budget"]
        header = ["dataset", "model", "method", "B", "fully recovered", "any restart recovered", "iterations to recovery",
                  "s to recovery", "duplicates", "PSNR dB", "PSNR dB up to a x + b", "label acc.",
                  "final loss / initial", "restart-it/s"]

        def optional(value, spec):
            return "–" if value is None else format(value, spec)

        lines = [[f"{r['dataset']} (K={r['classes']})", r.get("model", "lenet"), r["method"], r["batch_size"],
                  f"{r['fully_recovered']:.0%} of {r['targets']}",
                  f"{r['oracle_recovered']:.0%}", optional(r["iterations_to_recovery"], ".0f"),
                  optional(r["seconds_to_recovery"], ".1f"), r["duplicates"], f"{r['psnr_mean']:.1f}",
                  optional(r.get("affine_psnr_mean"), ".1f"),
                  f"{r['label_accuracy']:.0%}", f"{r['relative_loss_final']:.1e}",
                  f"{r['restart_iterations_per_second']:.0f}"] for r in rows]
        note = (f"{', '.join(_batch_models(result.payload))}, {result.payload['dtype']}; {budget['targets']} target(s) x {budget['restarts']} restart(s) x "
                f"{budget['iterations']} iterations per row. Fully recovered: the lowest-objective restart has every "
                f"slot >= {result.payload['recovered_psnr']:.0f} dB after the optimal assignment; any restart: some "
                "restart has (needs the private images to pick). Methods: " + "; ".join(
                    f"{m} = {v}" for m, v in result.payload["methods"].items()) + ".")
    elif result.name == "resolution":
        budget = result.payload["budget"]
        header = ["dataset", "S x S", "method", "unknowns / gradient entries", "recovered (>= 30 dB)",
                  "PSNR dB (mean)", "PSNR dB (median)", "SSIM", "label acc.", "restart-it/s"]
        lines = [[r["dataset"], f"{r['size']}x{r['size']}", r["method"], f"{r['unknowns']} / {r['gradient_entries']}",
                  f"{r['success_rate_psnr30']:.0%} of {r['targets']}", f"{r['psnr_mean']:.1f}",
                  f"{r['psnr_median']:.1f}", f"{r['ssim_mean']:.3f}", f"{r['label_accuracy']:.0%}",
                  f"{r['restart_iterations_per_second']:.0f}"] for r in rows]
        note = (f"LeNet; {budget['targets']} target(s) x {budget['restarts']} restart(s) x {budget['iterations']} "
                "iterations per row; images resized from the stored 32x32 (larger sizes interpolate). Methods: "
                + "; ".join(f"{m} = {v}" for m, v in result.payload["methods"].items()) + ".")
    elif result.name == "threat":
        budget = result.payload["budget"]
        header = ["method", "threat model", "K", "S", "PSNR dB (mean)", "PSNR dB per target", "SSIM", "label acc.",
                  "success (>= 30 dB)", "distance to target gradient", "cosine to target gradient", "run s"]
        lines = [[r["method"], r["threat_model"], r["clients"], r["local_steps"], f"{r['psnr_mean']:.1f}",
                  ", ".join(f"{v:.1f}" for v in r["psnr"]), f"{r['ssim_mean']:.3f}", f"{r['label_accuracy']:.0%}",
                  f"{r['success_rate_psnr30']:.0%}", ", ".join(f"{v:.2g}" for v in r["gradient_gap"]),
                  ", ".join(f"{v:.2f}" for v in r["gradient_cosine"]), f"{r['run_seconds']:.1f}"] for r in rows]
        note = (f"LeNet, {result.payload['dataset']}, one image per client; {budget['targets']} target(s) x "
                f"{budget['restarts']} restart(s) x {budget['iterations']} iterations per row. K clients: the "
                f"{result.payload['aggregate']} of their one-step gradients; S local steps: one client's FedAvg "
                f"weight change at lr {result.payload['local_lr']:g}, matched as (W - W_S) / (S lr) at W. "
                "Scores are against the target's image; distance: ||seen - g|| / ||g|| per target. Methods: "
                + "; ".join(f"{m} = {v}" for m, v in result.payload["methods"].items()) + ".")
    else:
        header = ["model", "attack", "targets", "PSNR dB (mean)", "PSNR dB (median)", "PSNR dB up to a x + b",
                  "recovered up to a x + b", "SSIM", "label acc.", "final / initial objective", "run s"]
        lines = [[r["model"], r["attack"], r["targets"], f"{r['psnr_mean']:.1f}", f"{r['psnr_median']:.1f}",
                  f"{r['affine_psnr_mean']:.1f}", f"{r['affine_success_rate_psnr30']:.0%}",
                  f"{r['ssim_mean']:.3f}", f"{r['label_accuracy']:.0%}", f"{r['relative_objective']:.1e}",
                  f"{r['run_seconds']:.0f}"] for r in rows]
        note = "Budgets (targets x restarts x iterations): " + "; ".join(
            f"{model} {b['targets']}x{b['restarts']}x{b['iterations']}"
            for model, b in result.payload["budget"].items()) + (
            ". Up to a x + b: PSNR after the least-squares brightness/contrast fit (dlg_jax.metrics), the two "
            "numbers a batch-normalised network's gradient does not carry; recovered: >= 30 dB.")
    return markdown_table(header, lines) + "\n\n" + note + "\n"


def _batch_models(payload: dict) -> list[str]:
    """The model specs of a batch experiment's payload (earlier payloads: LeNet only)."""
    return list(payload.get("models", [payload.get("model", "lenet")]))


def _show(axis, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                vmin=0.0, vmax=1.0)
    axis.set_xticks([])
    axis.set_yticks([])


def plot_experiment(result: ExperimentResult):
    """The experiment's figure (a matplotlib ``Figure``): grouped label-accuracy bars (labels), median
    relative objective vs iteration per batch size (batch), PSNR bars and first-target reconstructions
    (compare)."""
    rows = result.payload["rows"]
    if result.name == "labels":
        figure, axis = subplots(figsize=(6, 3.5), dpi=120)
        x = np.arange(len(rows))
        axis.bar(x - 0.2, [r["dlg_label_accuracy"] for r in rows], 0.4, label="DLG (joint labels)")
        axis.bar(x + 0.2, [r["idlg_label_accuracy"] for r in rows], 0.4, label="iDLG (analytic)")
        axis.scatter(x, [r["chance"] for r in rows], marker="_", s=400, color="k", label="chance", zorder=3)
        axis.set_xticks(x, [f"{r['dataset']} ({r['targets']})" for r in rows])
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("label accuracy")
        budget = result.payload["budget"]
        axis.set_title(f"Label accuracy, LeNet (DLG: {budget['restarts']} restart x {budget['iterations']} it)",
                       fontsize=9)
        axis.legend(fontsize=7, loc="lower right")
        return figure
    if result.name == "batch":
        datasets = result.payload["datasets"]
        figure, axes = subplots(1, len(datasets), figsize=(4.2 * len(datasets), 3.6), dpi=100, squeeze=False)
        models = _batch_models(result.payload)
        methods = [(model, method) for model in models for method in result.payload["methods"]]
        sizes = sorted({r["batch_size"] for r in rows})
        width = 0.8 / len(methods)
        for axis, dataset in zip(axes[0], datasets):
            for i, (model, method) in enumerate(methods):
                values = [next((r["fully_recovered"] for r in rows if (r["dataset"], r.get("model", "lenet"),
                                r["method"], r["batch_size"]) == (dataset, model, method, b)), 0.0) for b in sizes]
                axis.bar(np.arange(len(sizes)) + (i - (len(methods) - 1) / 2) * width, values, width,
                         label=method if len(models) == 1 else f"{method} ({model})")
            axis.set_xticks(np.arange(len(sizes)), [f"B={b}" for b in sizes])
            axis.set_ylim(0, 1.05)
            axis.set_ylabel("targets fully recovered (>= 30 dB)")
            axis.set_title(f"{', '.join(models)}, {dataset}", fontsize=9)
        axes[0, 0].legend(fontsize=6)
        figure.tight_layout()
        return figure
    if result.name == "resolution":
        datasets = result.payload["datasets"]
        figure, axes = subplots(1, len(datasets), figsize=(4.0 * len(datasets), 3.2), dpi=110, sharey=True,
                                    squeeze=False)
        for axis, dataset in zip(axes[0], datasets):
            for method in result.payload["methods"]:
                chosen = [r for r in rows if (r["dataset"], r["method"]) == (dataset, method)]
                axis.plot([r["size"] for r in chosen], [r["psnr_mean"] for r in chosen], "o-", label=method)
            axis.axhline(SUCCESS_PSNR, color="k", lw=0.8, ls="--")
            axis.set_xscale("log", base=2)
            axis.set_xlabel("image size S (S x S)")
            axis.set_title(f"LeNet, {dataset}", fontsize=9)
        axes[0, 0].set_ylabel("mean PSNR of the best restart (dB)")
        axes[0, 0].legend(fontsize=7)
        figure.tight_layout()
        return figure
    if result.name == "threat":
        figure, axes = subplots(1, 2, figsize=(8, 3.2), dpi=110, sharey=True)
        for axis, key, other, label in ((axes[0], "clients", "local_steps",
                                         f"clients K ({result.payload['aggregate']} of their gradients)"),
                                        (axes[1], "local_steps", "clients",
                                         f"FedAvg local steps S at lr {result.payload['local_lr']:g} (one client)")):
            for method in result.payload["methods"]:
                chosen = [r for r in rows if r[other] == 1 and r["method"] == method]
                for r in chosen:
                    axis.scatter([r[key]] * len(r["psnr"]), r["psnr"], color="0.6", s=12)
                axis.plot([r[key] for r in chosen], [r["psnr_mean"] for r in chosen], "o-",
                          label=f"{method}, mean over targets")
            axis.axhline(SUCCESS_PSNR, color="k", lw=0.8, ls="--")
            values = sorted({r[key] for r in rows if r[other] == 1})
            if values:
                axis.set_xscale("log", base=2)
                axis.set_xticks(values, [str(v) for v in values])
                axis.minorticks_off()
            axis.set_xlabel(label)
        axes[0].set_ylabel("PSNR of the target (dB)")
        axes[0].legend(fontsize=7)
        figure.suptitle(f"LeNet, {result.payload['dataset']}: what the attacker sees", fontsize=9)
        figure.tight_layout()
        return figure
    attacks = result.payload["attacks"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    figure = Figure(figsize=(3.0 + 1.1 * (1 + len(attacks)), max(3.0, 1.2 * len(models))), dpi=120)
    grid = figure.add_gridspec(len(models), 2 + len(attacks), width_ratios=[3.0] + [1.0] * (1 + len(attacks)))
    bars = figure.add_subplot(grid[:, 0])
    x = np.arange(len(models))
    width = 0.8 / len(attacks)
    for i, attack in enumerate(attacks):
        values = [next(r["psnr_mean"] for r in rows if r["model"] == m and r["attack"] == attack) for m in models]
        bars.bar(x + (i - (len(attacks) - 1) / 2) * width, values, width, label=attack.upper())
    bars.set_xticks(x, models, fontsize=7, rotation=20, ha="right")
    bars.set_ylabel("mean PSNR (dB)")
    bars.set_title("DLG vs Inverting Gradients", fontsize=9)
    bars.legend(fontsize=7)
    for row, model in enumerate(models):
        for column, key in enumerate(["truth", *attacks]):
            axis = figure.add_subplot(grid[row, 1 + column])
            _show(axis, result.images[key][row])
            if row == 0:
                axis.set_title(key if key == "truth" else key.upper(), fontsize=7)
            if column == 0:
                axis.set_ylabel(model, fontsize=6)
    return figure


def save_experiment(result: ExperimentResult, out: str | os.PathLike, extra: dict[str, Any] | None = None) -> list[str]:
    """Write ``<name>.json`` (payload plus ``extra``), ``<name>.png`` and ``<name>.md`` into ``out``
    atomically; return the paths."""
    out = prepare_output_dir(out)
    paths = [os.path.join(out, f"{result.name}.{ext}") for ext in ("json", "png", "md")]
    atomic_write_json(paths[0], {**result.payload, **(extra or {})})
    figure = plot_experiment(result)
    atomic_save_figure(paths[1], figure)
    atomic_write_bytes(paths[2], experiment_table(result).encode())
    return paths


__all__ = ["EXPERIMENT_NAMES", "METHODS", "Budget", "recovery", "ExperimentResult", "STANDARD", "QUICK", "run_experiment",
           "label_experiment", "batch_experiment", "compare_experiment", "threat_experiment", "resolution_experiment",
           "experiment_table",
           "plot_experiment", "save_experiment", "parse_model"]
