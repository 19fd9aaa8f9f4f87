"""Experiments that reproduce the shapes of the DLG, iDLG and Inverting Gradients results on the embedded data.

- ``labels`` (iDLG, Zhao et al. 2020, Table 1): label accuracy of DLG's joint label optimisation vs iDLG's
  analytic rule on single-image gradients of DLG's LeNet, for every embedded dataset. iDLG reads the label
  off the final layer's gradient (instant); DLG's label is ``argmax`` of its optimised label logits after
  a modest attack budget (stated in the output).
- ``batch`` (DLG, Zhu et al. 2019, batched recovery): DLG on LeNet with ``B`` private images per
  gradient; how many iterations a restart needs until its objective is within the tolerance, how many
  converge within the budget, the reconstruction quality (slots matched to images by the Hungarian
  assignment, collapsed slots counted as duplicates), throughput and peak memory.
- ``compare`` (Geiping et al. 2020): PSNR of DLG vs Inverting Gradients (:mod:`dlg_jax.presets`) on the
  same targets of LeNet and ResNet-20 (sigmoid and ReLU).

Each experiment runs with a standard budget (``STANDARD``) or a smoke-test one (``QUICK``); either can be
overridden per call. :func:`run_experiment` returns an :class:`ExperimentResult` (a JSON-able payload)
and :func:`save_experiment` writes ``<name>.json``, ``<name>.png`` and ``<name>.md`` atomically.
"""

import dataclasses
import os
import resource
import time
from typing import Any, Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dlg_jax.attack import Progress  # noqa: E402
from dlg_jax.data import get_dataset  # noqa: E402
from dlg_jax.errors import check_choice, check_positive_int  # noqa: E402
from dlg_jax.files import atomic_save_figure, atomic_write_bytes, atomic_write_json, prepare_output_dir  # noqa: E402
from dlg_jax.labels import recover_labels  # noqa: E402
from dlg_jax.models import MODEL_NAMES  # noqa: E402
from dlg_jax.pipeline import DLGRun, run_dlg  # noqa: E402
from dlg_jax.presets import PRESET_NAMES, attack_preset  # noqa: E402

EXPERIMENT_NAMES = ("labels", "batch", "compare")
EMBEDDED = ("digits", "colour", "faces")
COMPARE_MODELS = ("lenet", "resnet20-sigmoid", "resnet20-relu")
CURVE_POINTS = 200


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
}
QUICK = {
    "labels": Budget(targets=20, restarts=1, iterations=100),
    "batch": Budget(targets=1, restarts=1, iterations=300),
    "compare": {"lenet": Budget(targets=2, restarts=1, iterations=300),
                "resnet": Budget(targets=1, restarts=1, iterations=50)},
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


def parse_model(spec: str) -> tuple[str, str | None]:
    """``"resnet20-relu" -> ("resnet20", "relu")``, ``"lenet" -> ("lenet", None)``."""
    name, _, activation = spec.partition("-")
    check_choice("model", name, MODEL_NAMES)
    if activation:
        check_choice("activation", activation, ("relu", "sigmoid"))
    return name, activation or None


def _config(attack: str, budget: Budget, seed: int, **extra):
    return attack_preset(attack, restarts=budget.restarts, iterations=budget.iterations, seed=seed,
                         snapshots=0, block=min(budget.iterations, 250), **extra)


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


def batch_experiment(batch_sizes: Sequence[int] = (1, 2, 4, 8), budget: Budget = STANDARD["batch"], *,
                     dataset: str = "colour", attack: str = "dlg", seed: int = 0, log: Log | None = None,
                     progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """``attack`` on LeNet with ``B`` images per gradient for each ``B`` in ``batch_sizes``; targets are
    the first ``budget.targets`` consecutive batches. One row per ``B``.

    A restart *converges* once its objective is within the attack's tolerance; ``iterations_median`` is
    the median number of iterations the converged restarts took (``None`` when none converged).
    ``peak_rss_mb``: the process's peak resident memory so far (``ru_maxrss``), so it only grows.
    """
    check_choice("attack", attack, PRESET_NAMES)
    batch_sizes = [check_positive_int("batch size", b) for b in batch_sizes]
    get_dataset(dataset).check_indices(np.arange(budget.targets * max(batch_sizes)))
    rows = []
    for batch_size in batch_sizes:
        if log:
            log(f"batch: B={batch_size}, {attack} on {budget.targets} targets")
        run = run_dlg("lenet", dataset, targets=budget.targets, batch_size=batch_size,
                      config=_config(attack, budget, seed), progress=progress)
        result, summary = run.result, run.metrics.summary()
        converged = result.converged
        curve, points = _relative_curve(run)
        throughput = result.restart_iterations / max(result.run_seconds, 1e-9)
        rows.append({
            "batch_size": batch_size, "targets": int(converged.shape[0]), "restarts": int(converged.shape[1]),
            "converged_restarts": int(converged.sum()), "converged_fraction": float(converged.mean()),
            "targets_converged": int(converged.any(axis=1).sum()),
            "iterations_median": float(np.median(result.iterations[converged])) if converged.any() else None,
            "psnr_mean": summary["psnr_mean"], "ssim_mean": summary["ssim_mean"],
            "label_accuracy": summary["label_accuracy"], "duplicates": summary["duplicates"],
            "relative_loss_final": curve[-1], "curve": curve, "curve_iterations": points,
            "run_seconds": result.run_seconds, "compile_seconds": result.compile_seconds,
            "restart_iterations_per_second": throughput, "image_iterations_per_second": throughput * batch_size,
            "peak_rss_mb": _peak_rss_mb(),
        })
    return ExperimentResult("batch", {"experiment": "batch", "model": "lenet", "dataset": dataset, "attack": attack,
                                      "budget": dataclasses.asdict(budget), "seed": seed, "rows": rows})


def compare_experiment(models: Sequence[str] = COMPARE_MODELS, budgets: dict[str, Budget] = STANDARD["compare"], *,
                       attacks: Sequence[str] = PRESET_NAMES, dataset: str = "colour", seed: int = 0,
                       log: Log | None = None, progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Each attack preset on the same ``targets`` single images of each model (``"name[-activation]"``);
    ``budgets["lenet"]`` for LeNet/MLP, ``budgets["resnet"]`` for the ResNets. One row per (model, attack).

    Every restart runs its full budget (tolerance 0): on ResNet-20 with sigmoids DLG's objective falls
    below the default relative tolerance (1e-8 |dW|^2) within ~20 iterations, and to ~1e-14 of its
    initial value in 500, while the image is still noise: that model's gradient barely depends on its
    input. ``relative_objective``: median over targets of the best restart's final / initial objective."""
    specs = [(spec, *parse_model(spec)) for spec in models]
    for attack in attacks:
        check_choice("attack", attack, PRESET_NAMES)
    source = get_dataset(dataset)
    source.check_indices(np.arange(max(budget.targets for budget in budgets.values())))
    rows, images = [], {"truth": [], **{attack: [] for attack in attacks}}
    budget_rows = {}
    for spec, name, activation in specs:
        budget = budgets["resnet" if name.startswith("resnet") else "lenet"]
        budget_rows[spec] = dataclasses.asdict(budget)
        options = {"activation": activation} if activation else None
        for attack in attacks:
            if log:
                log(f"compare: {spec}, {attack} on {budget.targets} targets")
            config = _config(attack, budget, seed, tolerance=0.0)
            run = run_dlg(name, dataset, targets=budget.targets, config=config, model_options=options,
                          progress=progress)
            summary = run.metrics.summary()
            rows.append({
                "model": spec, "attack": attack, "targets": summary["targets"], "psnr_mean": summary["psnr_mean"],
                "psnr_median": summary["psnr_median"], "ssim_mean": summary["ssim_mean"],
                "label_accuracy": summary["label_accuracy"], "success_rate_psnr30": summary["success_rate_psnr30"],
                "run_seconds": run.result.run_seconds, "compile_seconds": run.result.compile_seconds,
                "relative_objective": float(np.median(run.result.best_loss / run.result.loss_history[
                    np.arange(summary["targets"]), run.result.best_restart, 0])),
            })
            images[attack].append(np.clip(run.result.best_images[0, 0], 0.0, 1.0))
        images["truth"].append(run.images[0, 0])
    payload = {"experiment": "compare", "dataset": dataset, "attacks": list(attacks), "budget": budget_rows,
               "seed": seed, "rows": rows}
    return ExperimentResult("compare", payload, images)


def run_experiment(name: str, *, quick: bool = False, targets: int | None = None, restarts: int | None = None,
                   iterations: int | None = None, datasets: Sequence[str] | None = None,
                   batch_sizes: Sequence[int] | None = None, attack: str = "dlg",
                   models: Sequence[str] | None = None, seed: int = 0, log: Log | None = None,
                   progress: Callable[[Progress], None] | None = None) -> ExperimentResult:
    """Experiment ``name`` with the ``QUICK`` or ``STANDARD`` budget, ``targets`` / ``restarts`` /
    ``iterations`` overriding it (for every model of ``compare``). ``datasets`` (labels), ``batch_sizes``
    and ``attack`` (batch) and ``models`` (compare) select the settings. Adds ``wall_seconds`` to the payload."""
    check_choice("experiment", name, EXPERIMENT_NAMES)
    budgets = QUICK if quick else STANDARD
    override = dict(targets=targets, restarts=restarts, iterations=iterations)
    started = time.perf_counter()
    if name == "labels":
        result = label_experiment(datasets or EMBEDDED, budgets["labels"].replace(**override), seed=seed,
                                  log=log, progress=progress)
    elif name == "batch":
        result = batch_experiment(batch_sizes or (1, 2, 4, 8), budgets["batch"].replace(**override),
                                  attack=attack, seed=seed, log=log, progress=progress)
    else:
        compare_budgets = {key: budget.replace(**override) for key, budget in budgets["compare"].items()}
        result = compare_experiment(models or COMPARE_MODELS, compare_budgets, seed=seed, log=log,
                                    progress=progress)
    result.payload.update(quick=quick, wall_seconds=time.perf_counter() - started)
    return result


def markdown_table(result: ExperimentResult) -> str:
    """The experiment's rows as a markdown table (what the README and ``<name>.md`` show)."""
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
        header = ["B", "converged restarts", "median iterations to converge", "PSNR dB", "SSIM", "label acc.",
                  "duplicates", "final loss / initial", "restart-it/s", "peak RSS MB"]
        lines = [[r["batch_size"], f"{r['converged_restarts']}/{r['targets'] * r['restarts']}",
                  f"{r['iterations_median']:.0f}" if r["iterations_median"] is not None
                  else f"> {budget['iterations']}",
                  f"{r['psnr_mean']:.1f}", f"{r['ssim_mean']:.3f}", f"{r['label_accuracy']:.0%}", r["duplicates"],
                  f"{r['relative_loss_final']:.1e}", f"{r['restart_iterations_per_second']:.0f}",
                  f"{r['peak_rss_mb']:.0f}"] for r in rows]
        note = (f"{result.payload['attack']} on LeNet, {result.payload['dataset']}; {budget['targets']} target(s) x "
                f"{budget['restarts']} restart(s) x {budget['iterations']} iterations per batch size.")
    else:
        header = ["model", "attack", "targets", "PSNR dB (mean)", "PSNR dB (median)", "SSIM", "label acc.",
                  "final / initial objective", "run s"]
        lines = [[r["model"], r["attack"], r["targets"], f"{r['psnr_mean']:.1f}", f"{r['psnr_median']:.1f}",
                  f"{r['ssim_mean']:.3f}", f"{r['label_accuracy']:.0%}", f"{r['relative_objective']:.1e}",
                  f"{r['run_seconds']:.0f}"] for r in rows]
        note = "Budgets (targets x restarts x iterations): " + "; ".join(
            f"{model} {b['targets']}x{b['restarts']}x{b['iterations']}"
            for model, b in result.payload["budget"].items())
    text = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    text += ["| " + " | ".join(str(cell) for cell in line) + " |" for line in lines]
    return "\n".join(text) + "\n\n" + note + "\n"


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
        figure, axis = plt.subplots(figsize=(6, 3.5), dpi=120)
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
        figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
        for r in rows:
            axis.plot(r["curve_iterations"], np.maximum(r["curve"], 1e-30),
                      label=f"B={r['batch_size']} ({r['converged_restarts']}/{r['targets'] * r['restarts']} converged)")
        axis.set_yscale("log")
        axis.set_xlabel("iteration")
        axis.set_ylabel("objective / initial objective (median)")
        axis.set_title(f"{result.payload['attack'].upper()} on LeNet: convergence vs batch size", fontsize=9)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
        return figure
    attacks = result.payload["attacks"]
    models = list(dict.fromkeys(r["model"] for r in rows))
    figure = plt.figure(figsize=(3.0 + 1.1 * (1 + len(attacks)), max(3.0, 1.2 * len(models))), dpi=120)
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
    plt.close(figure)
    atomic_write_bytes(paths[2], markdown_table(result).encode())
    return paths


__all__ = ["EXPERIMENT_NAMES", "Budget", "ExperimentResult", "STANDARD", "QUICK", "run_experiment",
           "label_experiment", "batch_experiment", "compare_experiment", "markdown_table", "plot_experiment",
           "save_experiment", "parse_model"]
