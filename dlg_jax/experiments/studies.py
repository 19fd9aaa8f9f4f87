"""The studies' reports: tables and figures of a results store, one kind per shipped study.

Every study is a grid file shipped in ``dlg_jax/experiments/specs/`` (:func:`~dlg_jax.experiments.grid.load_spec`)
run by the one sweep loop into a results store; this module turns the store's rows of the study's points
into the study's page. ``dlg-jax experiment NAME`` does all three steps.

- ``labels`` (iDLG, Zhao et al. 2020, Table 1): label accuracy of DLG's joint label optimisation vs
  iDLG's analytic rule (``labels = ["joint", "analytic"]``) on single-image gradients of DLG's LeNet.
- ``batch`` (DLG, Zhu et al. 2019, batched recovery): attack variants with ``B`` private images per
  gradient; the share of targets *fully recovered* (the restart with the lowest objective has every slot
  >= 30 dB PSNR after the optimal assignment of slots to images), iterations and seconds to recovery.
- ``compare`` (Geiping et al. 2020): DLG vs Inverting Gradients on the same targets of LeNet and ResNets,
  with the first target's reconstructions.
- ``threat``: DLG and IG when the attacker sees the mean of ``K`` clients' gradients, or one client's
  FedAvg weight change after ``S`` local steps (:mod:`dlg_jax.victim.threat_models`).
- ``resolution``: success and PSNR vs the image size ``S x S``.
- ``defenses``: attack quality vs defense strength (:mod:`dlg_jax.experiments.defense_report`).
- ``text`` (DLG's BERT masked-LM experiment): token accuracy, exact match and ROUGE-L of four decodings
  vs the sequence length, batch size, vocabulary, model size and matching distance (:mod:`dlg_jax.text`).
- ``sweep``: the generic report of any store (:mod:`dlg_jax.experiments.report`).

:func:`point_summaries` aggregates the rows of each point (rates with 95% Wilson intervals: a study
often has only a few targets per point); :func:`study_table` and :func:`study_figure` draw them;
:func:`write_study` writes ``NAME.md``, ``NAME.png`` and ``NAME.json`` atomically.
"""

import json
import os
import time
from collections import defaultdict

import numpy as np
from matplotlib.figure import Figure

from dlg_jax.experiments.defense_report import sweep_plot_figure, sweep_table
from dlg_jax.experiments.grid import Grid
from dlg_jax.experiments.tables import markdown_table
from dlg_jax.figures import subplots
from dlg_jax.files import atomic_save_figure, atomic_write_bytes, atomic_write_json, prepare_output_dir
from dlg_jax.metrics import SUCCESS_PSNR, wilson_interval
from dlg_jax.models import model_label
from dlg_jax.victim.threat_models import ThreatModel


def _median_or_none(values) -> float | None:
    return float(np.median(values)) if len(values) else None


def _by_point(rows: list[dict]) -> list[list[dict]]:
    """``rows`` grouped by point (in order of first appearance), each group sorted by target."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["point_id"]].append(row)
    return [sorted(members, key=lambda r: r["target"]) for members in groups.values()]


def point_summaries(rows: list[dict]) -> list[dict]:
    """One entry per point of ``rows`` (store rows; in order of first appearance), its settings and its
    targets' statistics:

    - settings: ``attack``, ``model`` (:func:`~dlg_jax.models.model_label`), ``dataset``, ``size`` (image
      side), ``batch_size``, ``labels``, ``defense``, ``strength``, ``threat_model``, ``clients``,
      ``local_steps``, ``classes``, ``budget`` (``"T x R x I"``), ``setting`` (what
      :mod:`~dlg_jax.experiments.defense_report` reads);
    - ``success_rate`` (targets whose best restart has every slot >= 30 dB) with its 95% Wilson interval
      ``success_low``, ``success_high``; ``oracle_rate`` (some restart has; needs the private images to
      pick); ``affine_success_rate`` (>= 30 dB up to ``a x + b``);
    - ``psnr``, ``ssim`` (per target), ``psnr_mean``, ``psnr_median``, ``affine_psnr_mean``, ``ssim_mean``,
      ``label_accuracy``, ``duplicates`` (summed);
    - ``iterations_to_recovery``: median over the recovered targets of the best restart's iterations;
      ``seconds_to_recovery``: that many lockstep iterations at the point's measured seconds per
      iteration (compilation excluded); both ``None`` when no target was recovered;
    - ``relative_objective``: median over targets of the best restart's final / initial objective;
      ``curve`` / ``curve_iterations``: the median relative objective along the run;
    - ``gradient_gap``, ``gradient_cosine`` (per target: what the attacker matched vs the target's own
      gradient), ``unknowns``, ``gradient_entries``, ``restart_iterations_per_second``, ``run_seconds``,
      ``compile_seconds``, ``wall_seconds``, ``peak_rss_mb``;
    - ``images``: the first target's private images and best reconstruction ``[B, H, W, C]`` float in [0, 1].
    """
    summaries = []
    for members in _by_point(rows):
        first, key = members[0], json.loads(members[0]["point"])
        threat = ThreatModel(**key.get("threat", {}))
        successes = sum(bool(r["success"]) for r in members)
        low, high = wilson_interval(successes, len(members))
        recovered = [r["iterations"] for r in members if r["success"]]
        lockstep = first["point_restart_iterations"] / (len(members) * first["restarts"])
        iterations = _median_or_none(recovered)
        curves = np.array([r["objective_curve"] for r in members])
        shape = tuple(first["image_shape"])
        model_options = key["model_options"]
        summaries.append({
            "point_id": first["point_id"], "attack": key["attack"], "model": model_label(key["model"], model_options),
            "dataset": key["dataset"], "size": shape[0], "batch_size": key["batch_size"],
            "labels": key["config"]["labels"], "defense": key["defense"], "strength": key["strength"],
            "setting": {"attack": key["attack"], "defense": key["defense"], "strength": key["strength"],
                        "defense_options": key["defense_options"]},
            "threat_model": threat.describe(), "clients": threat.clients, "local_steps": threat.local_steps,
            "aggregate": threat.aggregate, "local_lr": threat.local_lr, "classes": first["classes"],
            "targets": len(members), "restarts": first["restarts"], "iterations_budget": first["iterations_budget"],
            "budget": f"{len(members)} x {first['restarts']} x {first['iterations_budget']}",
            "success_rate": successes / len(members), "success_low": low, "success_high": high,
            "oracle_rate": float(np.mean([r["oracle_success"] for r in members])),
            "affine_success_rate": float(np.mean([r["affine_psnr"] >= SUCCESS_PSNR for r in members])),
            "psnr": [r["psnr"] for r in members], "psnr_mean": float(np.mean([r["psnr"] for r in members])),
            "psnr_median": float(np.median([r["psnr"] for r in members])),
            "affine_psnr_mean": float(np.mean([r["affine_psnr"] for r in members])),
            "ssim": [r["ssim"] for r in members], "ssim_mean": float(np.mean([r["ssim"] for r in members])),
            "mse_mean": float(np.mean([r["mse"] for r in members])),
            "label_accuracy": float(np.mean([r["label_accuracy"] for r in members])),
            "duplicates": int(sum(r["duplicates"] for r in members)),
            "iterations_to_recovery": iterations,
            "seconds_to_recovery": (None if iterations is None
                                    else iterations * first["point_run_seconds"] / max(lockstep, 1.0)),
            "relative_objective": float(np.median([r["relative_objective"] for r in members])),
            "curve": np.median(curves, axis=0).tolist(), "curve_iterations": list(first["curve_iterations"]),
            "gradient_gap": [r["gradient_gap"] for r in members],
            "gradient_cosine": [r["gradient_cosine"] for r in members],
            "unknowns": first["unknowns"], "gradient_entries": first["gradient_entries"],
            "restart_iterations_per_second": first["restart_iterations_per_second"],
            "run_seconds": first["point_run_seconds"], "compile_seconds": first["point_compile_seconds"],
            "wall_seconds": first["point_wall_seconds"], "peak_rss_mb": first["peak_rss_mb"],
            "images": {name: np.frombuffer(first[column], np.uint8).reshape(key["batch_size"], *shape) / 255.0
                       for name, column in (("truth", "image"), ("reconstruction", "reconstruction"))},
        })
    return summaries


TEXT_DECODINGS = ("nearest", "nearest+bag", "refined-swaps+bag", "refined+bag")


def text_summaries(rows: list[dict]) -> list[dict]:
    """One entry per text point of ``rows`` (store rows of :func:`dlg_jax.experiments.sweep.text_rows`):
    ``model``, ``length`` L, ``batch_size`` B, ``vocabulary_size`` V, ``distance``, ``targets``, ``budget``;
    per decoding the means over the targets' batches ``{decoding: {token_accuracy, exact_match, rougeL,
    bleu}}`` and summed ``duplicates``; ``relative_objective`` (median final objective over ``||dW||^2``),
    ``sentences`` / ``recovered`` (every batch's), ``wall_seconds``."""
    entries = []
    for members in _by_point(rows):
        first = members[0]
        entries.append({
            "point_id": first["point_id"], "model": first["model"], "dataset": first["dataset"],
            "length": first["length"], "batch_size": first["batch_size"], "vocabulary_size": first["vocabulary_size"],
            "distance": first["distance"], "targets": len(members),
            "budget": f"{len(members)} x {first['restarts']} x {first['iterations_budget']}",
            **{decoding: {**{key: float(np.mean([r[f"{decoding}/{key}"] for r in members]))
                             for key in ("token_accuracy", "exact_match", "rougeL", "bleu")},
                          "duplicates": int(sum(r[f"{decoding}/duplicates"] for r in members))}
               for decoding in TEXT_DECODINGS},
            "relative_objective": float(np.median([r["relative_objective"] for r in members])),
            "sentences": [list(r["sentences"]) for r in members], "recovered": [list(r["recovered"]) for r in members],
            "wall_seconds": first["point_wall_seconds"],
        })
    return entries


def _rate(entry: dict, key: str = "success_rate") -> str:
    """``"50% of 4 [15%, 85%]"``: a rate of ``entry["targets"]`` targets with its Wilson interval."""
    value = f"{entry[key]:.0%} of {entry['targets']}"
    return value + (f" [{entry['success_low']:.0%}, {entry['success_high']:.0%}]" if key == "success_rate" else "")


def _optional(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _dataset(entry: dict) -> str:
    return f"{entry['dataset']} ({entry['size']}x{entry['size']}, K={entry['classes']})"


# study -> (header, one line per point, note under the table)
_TABLES = {
    "labels": (
        ["dataset", "label rule", "budget", "label acc.", "PSNR dB (mean)", "recovered (>= 30 dB)", "run s"],
        lambda e: [_dataset(e), {"joint": "DLG (joint)", "analytic": "iDLG (analytic)"}.get(e["labels"], e["labels"]),
                   e["budget"], f"{e['label_accuracy']:.0%}", f"{e['psnr_mean']:.1f}", _rate(e),
                   f"{e['run_seconds']:.1f}"],
        "DLG optimises the label logits with the image; iDLG reads the label off the last layer's gradient "
        "before the attack. Budget: targets x restarts x iterations. Recovered: the best restart's image "
        "at >= 30 dB PSNR; rates with their 95% Wilson interval."),
    "batch": (
        ["dataset", "model", "attack", "B", "budget", "fully recovered", "any restart recovered",
         "iterations to recovery", "s to recovery", "duplicates", "PSNR dB", "PSNR dB up to a x + b", "label acc.",
         "final / initial objective", "restart-it/s"],
        lambda e: [_dataset(e), e["model"], e["attack"], e["batch_size"], e["budget"], _rate(e),
                   f"{e['oracle_rate']:.0%}", _optional(e["iterations_to_recovery"], ".0f"),
                   _optional(e["seconds_to_recovery"], ".1f"), e["duplicates"], f"{e['psnr_mean']:.1f}",
                   f"{e['affine_psnr_mean']:.1f}", f"{e['label_accuracy']:.0%}", f"{e['relative_objective']:.1e}",
                   f"{e['restart_iterations_per_second']:.0f}"],
        "Fully recovered: the lowest-objective restart has every slot >= 30 dB after the optimal assignment of "
        "slots to images (95% Wilson interval); any restart: some restart has (the attacker cannot tell which "
        "without the private images). Iterations to recovery: median over the recovered targets; seconds: "
        "that many lockstep iterations at the point's measured speed, compilation excluded."),
    "compare": (
        ["model", "attack", "budget", "PSNR dB (mean)", "PSNR dB (median)", "PSNR dB up to a x + b",
         "recovered up to a x + b", "SSIM", "label acc.", "final / initial objective", "run s"],
        lambda e: [e["model"], e["attack"], e["budget"], f"{e['psnr_mean']:.1f}", f"{e['psnr_median']:.1f}",
                   f"{e['affine_psnr_mean']:.1f}", _rate(e, "affine_success_rate"), f"{e['ssim_mean']:.3f}",
                   f"{e['label_accuracy']:.0%}", f"{e['relative_objective']:.1e}", f"{e['run_seconds']:.0f}"],
        "Up to a x + b: PSNR after the least-squares brightness/contrast fit (dlg_jax.metrics), the two numbers "
        "a batch-normalised network's gradient does not carry; recovered: >= 30 dB."),
    "threat": (
        ["attack", "threat model", "K", "S", "budget", "PSNR dB (mean)", "PSNR dB per target", "SSIM", "label acc.",
         "recovered (>= 30 dB)", "distance to target gradient", "cosine to target gradient", "run s"],
        lambda e: [e["attack"], e["threat_model"], e["clients"], e["local_steps"], e["budget"],
                   f"{e['psnr_mean']:.1f}", ", ".join(f"{v:.1f}" for v in e["psnr"]), f"{e['ssim_mean']:.3f}",
                   f"{e['label_accuracy']:.0%}", _rate(e), ", ".join(f"{v:.2g}" for v in e["gradient_gap"]),
                   ", ".join(f"{v:.2f}" for v in e["gradient_cosine"]), f"{e['run_seconds']:.1f}"],
        "K clients: the attacker sees their aggregated one-step gradients; S local steps: one client's FedAvg "
        "weight change, matched as (W - W_S) / (S lr) at W. Scores are against the target's image; distance: "
        "||seen - g|| / ||g|| per target, g the target's own gradient."),
    "resolution": (
        ["dataset", "S x S", "attack", "budget", "unknowns / gradient entries", "recovered (>= 30 dB)",
         "PSNR dB (mean)", "PSNR dB (median)", "SSIM", "label acc.", "restart-it/s"],
        lambda e: [e["dataset"], f"{e['size']}x{e['size']}", e["attack"], e["budget"],
                   f"{e['unknowns']} / {e['gradient_entries']}", _rate(e), f"{e['psnr_mean']:.1f}",
                   f"{e['psnr_median']:.1f}", f"{e['ssim_mean']:.3f}", f"{e['label_accuracy']:.0%}",
                   f"{e['restart_iterations_per_second']:.0f}"],
        "The embedded sets are stored at 32x32 (faces: LFW's crops, up-sampled), so S > 32 interpolates: more "
        "pixels to recover, no more detail. LeNet's last layer grows as 12 (S/4)^2 K."),
    "text": (
        ["model", "L", "B", "V", "distance", "budget", *TEXT_DECODINGS, "duplicates", "wall s"],
        lambda e: [e["model"], e["length"], e["batch_size"], e["vocabulary_size"], e["distance"], e["budget"],
                   *(f"{e[d]['token_accuracy']:.0%} / {e[d]['exact_match']:.0%} / {e[d]['rougeL']:.2f}"
                     for d in TEXT_DECODINGS), e["refined+bag"]["duplicates"], f"{e['wall_seconds']:.0f}"],
        "Each decoding cell: token accuracy / exact match / ROUGE-L, means over the targets' sentences. "
        "nearest: each recovered embedding's nearest token over the vocabulary; +bag: over the bag of tokens "
        "read off the embedding gradient; refined: tokens substituted (and swapped, unless -swaps) while the "
        "exact gradient distance falls. L: sequence length with [CLS] and [SEP]; V: vocabulary size."),
}


def study_table(study: str, entries: list[dict]) -> str:
    """The markdown table of ``study`` over :func:`point_summaries` ``entries``, then its note."""
    if study == "defenses":
        return sweep_table(entries) + "\n"
    header, line, note = _TABLES[study]
    return markdown_table(header, [line(e) for e in entries]) + "\n\n" + note + "\n"


def _by(entries: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for entry in entries:
        groups[tuple(entry[k] for k in keys)].append(entry)
    return groups


def _error_bars(chosen: list[dict]) -> np.ndarray:
    rates = np.array([e["success_rate"] for e in chosen])
    return np.array([rates - [e["success_low"] for e in chosen], [e["success_high"] for e in chosen] - rates])


def _bars(axis, groups: dict[tuple, list[dict]], x_key: str, value: str = "success_rate") -> None:
    """Grouped bars of ``value`` against ``x_key``, one bar series per group, Wilson error bars for rates."""
    xs = list(dict.fromkeys(e[x_key] for chosen in groups.values() for e in chosen))  # in order of appearance,
    if all(isinstance(x, (int, float)) for x in xs):                                  # numbers ascending
        xs.sort()
    width = 0.8 / max(len(groups), 1)
    for i, (label, chosen) in enumerate(groups.items()):
        chosen = sorted(chosen, key=lambda e: xs.index(e[x_key]))
        positions = np.array([xs.index(e[x_key]) for e in chosen]) + (i - (len(groups) - 1) / 2) * width
        axis.bar(positions, [e[value] for e in chosen], width, label=" ".join(map(str, label)),
                 yerr=_error_bars(chosen) if value == "success_rate" else None, capsize=2)
    axis.set_xticks(np.arange(len(xs)), [str(x) for x in xs])


def _show(axis, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    axis.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
                vmin=0.0, vmax=1.0)
    axis.set_xticks([])
    axis.set_yticks([])


def study_figure(study: str, entries: list[dict], title: str = "") -> Figure:
    """The figure of ``study`` over :func:`point_summaries` ``entries``."""
    if study == "defenses":
        return sweep_plot_figure(entries, title=title)
    if study == "compare":
        return _compare_figure(entries)
    if study == "text":
        return _text_figure(entries)
    if study == "labels":
        figure, axis = subplots(figsize=(6, 3.5), dpi=120)
        _bars(axis, _by(entries, "labels"), "dataset", "label_accuracy")
        for x, (dataset, chosen) in enumerate(sorted(_by(entries, "dataset").items())):
            axis.plot([x - 0.4, x + 0.4], [1.0 / chosen[0]["classes"]] * 2, "k-", lw=1,
                      label="chance" if x == 0 else None)
        axis.set_ylim(0, 1.05)
        axis.set_ylabel("label accuracy")
        axis.legend(fontsize=7, loc="lower right")
    elif study in ("batch", "resolution"):
        x_key = "batch_size" if study == "batch" else "size"
        datasets = list(dict.fromkeys(e["dataset"] for e in entries))
        figure, axes = subplots(1, len(datasets), figsize=(4.4 * len(datasets), 3.6), dpi=100, squeeze=False)
        for axis, dataset in zip(axes[0], datasets):
            chosen = [e for e in entries if e["dataset"] == dataset]
            _bars(axis, _by(chosen, "attack", "model") if len({e["model"] for e in chosen}) > 1
                  else _by(chosen, "attack"), x_key)
            axis.set_ylim(0, 1.05)
            axis.set_xlabel("batch size B" if study == "batch" else "image size S (S x S)")
            axis.set_title(dataset, fontsize=9)
        axes[0, 0].set_ylabel("targets recovered (>= 30 dB)")
        axes[0, 0].legend(fontsize=6)
    elif study == "threat":
        figure, axes = subplots(1, 2, figsize=(8, 3.2), dpi=110, sharey=True)
        for axis, key, other, label in ((axes[0], "clients", "local_steps", "clients K (their gradients aggregated)"),
                                        (axes[1], "local_steps", "clients", "FedAvg local steps S (one client)")):
            for (attack,), chosen in _by(entries, "attack").items():
                chosen = sorted((e for e in chosen if e[other] == 1), key=lambda e: e[key])
                for e in chosen:
                    axis.scatter([e[key]] * len(e["psnr"]), e["psnr"], color="0.6", s=12)
                axis.plot([e[key] for e in chosen], [e["psnr_mean"] for e in chosen], "o-",
                          label=f"{attack}, mean over targets")
            axis.axhline(SUCCESS_PSNR, color="k", lw=0.8, ls="--")
            values = sorted({e[key] for e in entries if e[other] == 1})
            if values:
                axis.set_xscale("log", base=2)
                axis.set_xticks(values, [str(v) for v in values])
                axis.minorticks_off()
            axis.set_xlabel(label)
        axes[0].set_ylabel("PSNR of the target (dB)")
        axes[0].legend(fontsize=7)
    else:
        raise ValueError(f"no figure for study {study!r}")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def _compare_figure(entries: list[dict]) -> Figure:
    """PSNR bars per model and attack, and each model's first target with every attack's reconstruction."""
    attacks = list(dict.fromkeys(e["attack"] for e in entries))
    models = list(dict.fromkeys(e["model"] for e in entries))
    figure = Figure(figsize=(3.0 + 1.1 * (1 + len(attacks)), max(3.0, 1.2 * len(models))), dpi=120)
    grid = figure.add_gridspec(len(models), 2 + len(attacks), width_ratios=[3.0] + [1.0] * (1 + len(attacks)))
    bars = figure.add_subplot(grid[:, 0])
    _bars(bars, _by(entries, "attack"), "model", "psnr_mean")
    bars.set_xticks(bars.get_xticks(), [t.get_text() for t in bars.get_xticklabels()], fontsize=7, rotation=20,
                    ha="right")
    bars.set_ylabel("mean PSNR (dB)")
    bars.legend(fontsize=7)
    found = {(e["model"], e["attack"]): e for e in entries}
    for row, model in enumerate(models):
        present = [found[(model, a)] for a in attacks if (model, a) in found]
        columns = [("truth", present[0]["images"]["truth"][0])] + [
            (a, found[(model, a)]["images"]["reconstruction"][0]) for a in attacks if (model, a) in found]
        for column, (name, image) in enumerate(columns):
            axis = figure.add_subplot(grid[row, 1 + column])
            _show(axis, image)
            if row == 0:
                axis.set_title(name, fontsize=7)
            if column == 0:
                axis.set_ylabel(model, fontsize=6)
    return figure


def _text_figure(entries: list[dict]) -> Figure:
    """ROUGE-L of every decoding per point (grouped bars)."""
    figure, axis = subplots(figsize=(max(5.0, 1.1 * len(entries) + 2), 3.6), dpi=110)
    width = 0.8 / len(TEXT_DECODINGS)
    for i, decoding in enumerate(TEXT_DECODINGS):
        axis.bar(np.arange(len(entries)) + (i - (len(TEXT_DECODINGS) - 1) / 2) * width,
                 [e[decoding]["rougeL"] for e in entries], width, label=decoding)
    axis.set_xticks(np.arange(len(entries)), [f"{e['model']}\nL={e['length']} B={e['batch_size']}\n"
                                              f"V={e['vocabulary_size']} {e['distance']}" for e in entries], fontsize=6)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("ROUGE-L")
    axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not over them
    figure.tight_layout()
    return figure


def _json_entry(entry: dict) -> dict:
    return {k: v for k, v in entry.items() if k not in ("images", "setting")}


def write_study(grid: Grid, rows: list[dict], out: str, name: str, *, command: str = "",
                environment: dict | None = None) -> list[str]:
    """Write study ``name``'s page ``NAME.md`` (title, command, table, budgets), figure ``NAME.png`` and
    data ``NAME.json`` (every point's summary, ``environment`` and the date) into ``out`` atomically, from
    the store ``rows`` of ``grid``'s points (in the grid's order); returns the paths. ``environment``:
    :func:`dlg_jax.environment.environment` of this process unless given."""
    if environment is None:
        from dlg_jax.environment import environment as this_environment

        environment = this_environment()
    order = {p.id: i for i, p in enumerate(grid.points)}
    chosen = sorted((r for r in rows if r["point_id"] in order), key=lambda r: (order[r["point_id"]], r["target"]))
    out = prepare_output_dir(out)
    paths = [os.path.join(out, f"{name}.{ext}") for ext in ("md", "png", "json")]
    study = grid.study or "sweep"
    if study == "sweep":
        from dlg_jax.experiments.report import tables

        text = "\n\n".join(f"### {title}\n\n{table}" for title, table in tables(chosen).items()) + "\n"
        entries = []
    else:
        entries = (text_summaries if study == "text" else point_summaries)(chosen)
        text = study_table(study, entries)
        atomic_save_figure(paths[1], study_figure(study, entries))
    date = time.strftime("%Y-%m-%d", time.gmtime())
    header = [f"# {grid.name or name}", ""]
    if command:
        header += [f"Made by `{command}` on {date}; the figure is `{name}.png`, the data `{name}.json`.", ""]
    if environment:
        loads = [r["load_average"] for r in chosen if r.get("load_average") is not None]
        finished = sorted(r["finished_at"] for r in chosen if r.get("finished_at"))
        load = (f"load average {min(loads):.1f}–{max(loads):.1f} as its points finished" if loads else
                f"load average {(environment.get('load_average_1_5_15') or [float('nan')])[0]:.1f} when written")
        first, last = (stamp.replace("T", " ")[:16] for stamp in (finished[0], finished[-1]))
        span = f"{first}–{last[11:] if last[:10] == first[:10] else last}"
        header += [f"Points run {span} UTC on {environment.get('cpu', '?')} "
                   f"({environment.get('device_kind', '?')}, {environment.get('threads', {}).get('cpu_count', '?')} "
                   f"CPUs), {load}; dlg-jax {environment['versions'].get('dlg-jax')}, "
                   f"jax {environment['versions'].get('jax')}.", ""]
    atomic_write_bytes(paths[0], ("\n".join(header) + "\n" + text).encode())
    atomic_write_json(paths[2], {"study": study, "name": grid.name, "command": command, "date": date,
                                 "environment": environment, "points": [_json_entry(e) for e in entries]})
    return paths if study != "sweep" else [paths[0], paths[2]]


__all__ = ["point_summaries", "text_summaries", "study_table", "study_figure", "write_study"]
