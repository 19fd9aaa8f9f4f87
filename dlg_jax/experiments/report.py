"""Tables and plots of a results store (:mod:`dlg_jax.experiments.store`): what ``dlg-jax report`` writes.

Rows are the store's (one per point and target, :func:`dlg_jax.experiments.sweep.attack_rows`). The success rate
of a group is the fraction of its targets whose every slot was reconstructed at PSNR >= 30 dB;
throughput per device is the restart-iterations of its points divided by their run seconds
(compilation excluded).

- success rate vs batch size (one line per attack and model),
- success rate vs defense strength (one panel per defense, one line per attack),
- success rate vs model (bars per attack),
- throughput per device (bars per device and model).

Rates carry 95% Wilson intervals (error bars in the figures, brackets in the tables): a study often has
only a few targets per group.
"""

import os
from collections import defaultdict

import numpy as np

from dlg_jax.experiments.tables import markdown_table
from dlg_jax.figures import subplots
from dlg_jax.files import atomic_save_figure, atomic_write_bytes
from dlg_jax.metrics import SUCCESS_PSNR, wilson_interval

FIGURES = ("success_vs_batch_size.png", "success_vs_defense.png", "success_vs_model.png", "throughput.png")


def group(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    """Success statistics of ``rows`` grouped by the columns ``keys`` (sorted by them): ``points``,
    ``targets``, ``success_rate`` with its 95% Wilson interval ``success_low``, ``success_high``
    (:func:`dlg_jax.metrics.wilson_interval`), ``psnr_mean``, ``ssim_mean``, ``label_accuracy``."""
    groups = defaultdict(list)
    for row in rows:
        groups[tuple(row[k] for k in keys)].append(row)
    out = []
    for values in sorted(groups, key=lambda v: tuple((x is None, str(type(x)), x) for x in v)):
        members = groups[values]
        successes = sum(bool(r["success"]) for r in members)
        low, high = wilson_interval(successes, len(members))
        out.append({**dict(zip(keys, values)), "points": len({r["point_id"] for r in members}),
                    "targets": len(members), "success_rate": successes / len(members),
                    "success_low": low, "success_high": high,
                    "psnr_mean": float(np.mean([r["psnr"] for r in members])),
                    "ssim_mean": float(np.mean([r["ssim"] for r in members])),
                    "label_accuracy": float(np.mean([r["label_accuracy"] for r in members]))})
    return out


def throughput(rows: list[dict]) -> list[dict]:
    """Per (device, model): ``points``, ``restart_iterations``, ``run_seconds``, ``compile_seconds``
    and ``restart_iterations_per_second`` (each point counted once)."""
    points = {r["point_id"]: r for r in rows}.values()
    groups = defaultdict(list)
    for point in points:
        groups[(point["device"], point["model"])].append(point)
    out = []
    for (device, model), members in sorted(groups.items()):
        iterations = sum(p["point_restart_iterations"] for p in members)
        seconds = sum(p["point_run_seconds"] for p in members)
        out.append({"device": device, "model": model, "points": len(members), "restart_iterations": iterations,
                    "run_seconds": seconds, "compile_seconds": sum(p["point_compile_seconds"] for p in members),
                    "restart_iterations_per_second": iterations / max(seconds, 1e-9)})
    return out


def markdown(entries: list[dict], columns: tuple[str, ...]) -> str:
    """A markdown table of ``entries`` (dicts) with ``columns``; rates as percentages, a success rate with
    its 95% Wilson interval."""
    def cell(name, entry):
        value = entry[name]
        if name == "success_rate" and "success_low" in entry:
            return f"{value:.0%} ({entry['success_low']:.0%}–{entry['success_high']:.0%})"
        if name == "label_accuracy":
            return f"{value:.0%}"
        if isinstance(value, float):
            return f"{value:.3g}" if name != "psnr_mean" else f"{value:.1f}"
        return str(value)

    return markdown_table(columns, [[cell(c, entry) for c in columns] for entry in entries])


_STATS = ("points", "targets", "success_rate", "psnr_mean", "ssim_mean", "label_accuracy")


def tables(rows: list[dict]) -> dict[str, str]:
    """The report's markdown tables by title."""
    return {
        "Success rate vs batch size": markdown(group(rows, ("attack", "model", "batch_size")),
                                               ("attack", "model", "batch_size", *_STATS)),
        "Success rate vs defense strength": markdown(group(rows, ("attack", "defense", "defense_strength")),
                                                     ("attack", "defense", "defense_strength", *_STATS)),
        "Success rate vs model": markdown(group(rows, ("attack", "model", "dataset")),
                                          ("attack", "model", "dataset", *_STATS)),
        "Throughput per device": markdown(throughput(rows), ("device", "model", "points", "restart_iterations",
                                                            "run_seconds", "compile_seconds",
                                                            "restart_iterations_per_second")),
    }


def _rates(entries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Success rates ``[n]`` of :func:`group` entries and their Wilson error bars ``[2, n]`` (below, above),
    as matplotlib's ``yerr`` takes them."""
    rates = np.array([e["success_rate"] for e in entries])
    return rates, np.array([rates - [e["success_low"] for e in entries], [e["success_high"] for e in entries] - rates])


def _lines(axis, entries, x_key, line_keys, x_values=None) -> None:
    for line in dict.fromkeys(tuple(e[k] for k in line_keys) for e in entries):
        chosen = [e for e in entries if tuple(e[k] for k in line_keys) == line]
        x = [x_values.index(e[x_key]) for e in chosen] if x_values else [e[x_key] for e in chosen]
        rates, error = _rates(chosen)
        axis.errorbar(x, rates, yerr=error, marker="o", capsize=3, label=" ".join(map(str, line)))
    axis.set_ylim(-0.05, 1.05)
    axis.set_ylabel(f"success rate (PSNR >= {SUCCESS_PSNR:.0f} dB)")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)


def figures(rows: list[dict], out: str) -> list[str]:
    """Write the four figures of the module docstring into ``out``; returns their paths."""
    paths = [os.path.join(out, name) for name in FIGURES]

    figure, axis = subplots(figsize=(5.5, 3.8), dpi=110)
    _lines(axis, group(rows, ("attack", "model", "batch_size")), "batch_size", ("attack", "model"))
    axis.set_xscale("log", base=2)
    axis.set_xlabel("batch size B (images per shared gradient)")
    axis.set_title("Success rate vs batch size", fontsize=10)
    _save(figure, paths[0])

    defended = [r for r in rows if r["defense"] != "none"]
    defenses = sorted({r["defense"] for r in defended}) or ["none"]
    figure, axes = subplots(1, len(defenses), figsize=(4.2 * len(defenses), 3.8), dpi=110, squeeze=False)
    for axis, defense in zip(axes[0], defenses):
        entries = group([r for r in rows if r["defense"] == defense], ("attack", "defense_strength_value",
                                                                      "defense_strength"))
        numeric = all(e["defense_strength_value"] is not None for e in entries)
        names = None if numeric else list(dict.fromkeys(e["defense_strength"] for e in entries))
        _lines(axis, entries, "defense_strength_value" if numeric else "defense_strength", ("attack",), names)
        for baseline in group([r for r in rows if r["defense"] == "none"], ("attack",)):
            axis.axhline(baseline["success_rate"], color="k", ls="--", lw=0.8)
        if names:
            axis.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        elif entries and min(e["defense_strength_value"] for e in entries) > 0:
            axis.set_xscale("log")
        axis.set_xlabel(f"{defense} strength (dashed: no defense)")
        axis.set_title(f"Success rate vs {defense} strength", fontsize=10)
    _save(figure, paths[1])

    figure, axis = subplots(figsize=(5.5, 3.8), dpi=110)
    entries = group(rows, ("model", "attack"))
    models, attacks = sorted({e["model"] for e in entries}), sorted({e["attack"] for e in entries})
    width = 0.8 / len(attacks)
    for a, attack in enumerate(attacks):
        chosen = [e for e in entries if e["attack"] == attack]
        rates, error = _rates(chosen)
        axis.bar([models.index(e["model"]) + a * width for e in chosen], rates, width, yerr=error, capsize=3,
                 label=attack)
    axis.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
    axis.set_ylim(0, 1.05)
    axis.set_ylabel(f"success rate (PSNR >= {SUCCESS_PSNR:.0f} dB)")
    axis.set_title("Success rate vs model", fontsize=10)
    axis.legend(fontsize=7)
    _save(figure, paths[2])

    figure, axis = subplots(figsize=(5.5, 3.8), dpi=110)
    entries = throughput(rows)
    axis.barh([f"{e['device']}\n{e['model']}" for e in entries], [e["restart_iterations_per_second"] for e in entries])
    axis.set_xlabel("restart-iterations per second (compilation excluded)")
    axis.set_title("Throughput per device", fontsize=10)
    _save(figure, paths[3])
    return paths


def _save(figure, path) -> None:
    figure.tight_layout()
    atomic_save_figure(path, figure)


def write_report(rows: list[dict], out: str, title: str) -> str:
    """Write ``report.md`` (the tables) and the figures into ``out``; returns the markdown."""
    text = "\n\n".join([f"# {title}", *(f"## {name}\n\n{table}" for name, table in tables(rows).items())]) + "\n"
    figures(rows, out)
    atomic_write_bytes(os.path.join(out, "report.md"), text.encode())
    return text
