"""Figures and tables of defense experiments (matplotlib; tables as markdown text).

- :func:`sweep_plot_figure`: attack quality vs defense strength, in the shape of DLG's defense figure: one panel
  per kind of strength (noise variance, pruning ratio, number format, DP noise multiplier, Soteria's
  fraction of representation features pruned), one line per
  defense and attack, the undefended attack as a dashed level. Top row PSNR (mean over targets, band =
  min..max), bottom row SSIM.
- :func:`tradeoff_plot`: utility (test accuracy of a model trained with the defense) against privacy
  (attack PSNR) per defense and strength.

Rows are per defense setting: :func:`dlg_jax.experiments.studies.point_summaries` of a results store, and training
rows (:func:`dlg_jax.experiments.sweep.training_rows`) with their ``setting``.
"""

import numpy as np

from dlg_jax.experiments.tables import markdown_table
from dlg_jax.figures import subplots
from dlg_jax.files import atomic_save_figure
from dlg_jax.metrics import SUCCESS_PSNR
from dlg_jax.victim.defenses import FLOAT_PRECISIONS, INT_PRECISIONS, format_strength

# (panel title, defenses drawn in it, x scale)
PANELS = (
    ("noise variance", ("gaussian", "laplacian"), "log"),
    ("pruning ratio (fraction zeroed)", ("prune",), "linear"),
    ("number format", ("precision",), "category"),
    ("DP noise multiplier sigma", ("dp",), "log"),
    ("Soteria: fraction of features pruned", ("soteria",), "linear"),
)
_PRECISION_ORDER = FLOAT_PRECISIONS + INT_PRECISIONS
_COLOURS = {"gaussian": "C0", "laplacian": "C1", "prune": "C2", "precision": "C3", "dp": "C4", "soteria": "C5"}
_STYLES = ("-", "--", ":", "-.")


def _setting(row):
    return row["setting"]


def _strength_order(strength):
    if isinstance(strength, str):
        return (_PRECISION_ORDER.index(strength) if strength in _PRECISION_ORDER else len(_PRECISION_ORDER), strength)
    return (0, strength)


def _series(rows, attack, defense):
    """The rows of one (attack, defense) line, sorted by strength."""
    chosen = [r for r in rows if _setting(r)["attack"] == attack and _setting(r)["defense"] == defense]
    return sorted(chosen, key=lambda r: _strength_order(_setting(r)["strength"]))


def _strengths_in(rows: list[dict], defenses) -> list:
    return [_setting(r)["strength"] for r in rows if _setting(r)["defense"] in defenses]


def sweep_plot_figure(rows: list[dict], *, title: str | None = None):
    """The defense sweep figure of ``rows`` (see the module docstring)."""
    attacks = list(dict.fromkeys(_setting(r)["attack"] for r in rows))
    present = {_setting(r)["defense"] for r in rows}
    panels = [p for p in PANELS if present & set(p[1])]
    figure, axes = subplots(2, max(len(panels), 1), figsize=(3.6 * max(len(panels), 1), 5.6), dpi=120,
                                squeeze=False, sharey="row")
    for column, (panel_title, defenses, scale) in enumerate(panels):
        top, bottom = axes[0, column], axes[1, column]
        strengths_here = _strengths_in(rows, defenses)
        categories = sorted(set(strengths_here), key=_strength_order) if scale == "category" else None
        for a, attack in enumerate(attacks):
            style = _STYLES[a % len(_STYLES)]
            baseline = [r for r in rows if _setting(r)["attack"] == attack and _setting(r)["defense"] == "none"]
            for axis, metric in ((top, "psnr"), (bottom, "ssim")):
                if baseline:
                    axis.axhline(np.mean(baseline[0][metric]), color="k", ls=style, lw=0.9,
                                 label=f"{attack}: no defense" if axis is top else None)
            for defense in defenses:
                series = _series(rows, attack, defense)
                if not series:
                    continue
                strengths = [_setting(r)["strength"] for r in series]
                x = (np.array([categories.index(s) for s in strengths], float) if categories
                     else np.array(strengths, float))
                for axis, metric in ((top, "psnr"), (bottom, "ssim")):
                    values = [np.asarray(r[metric]) for r in series]
                    axis.plot(x, [v.mean() for v in values], style, marker="o", ms=4, color=_COLOURS.get(defense),
                              label=f"{attack}: {defense}" if axis is top else None)
                    axis.fill_between(x, [v.min() for v in values], [v.max() for v in values],
                                      color=_COLOURS.get(defense), alpha=0.12, lw=0)
        for axis in (top, bottom):
            if scale == "log" and min(strengths_here) > 0:
                axis.set_xscale("log")
            elif scale == "log":  # 0 (e.g. DP clipping without noise) is on the axis: linear near 0
                axis.set_xscale("symlog", linthresh=min([s for s in strengths_here if s > 0], default=1.0))
            if categories:
                axis.set_xticks(range(len(categories)), [str(c) for c in categories], rotation=30, fontsize=7)
            axis.grid(alpha=0.3)
        top.axhline(SUCCESS_PSNR, color="0.6", lw=0.6)
        top.set_title(panel_title, fontsize=9)
        top.legend(fontsize=6)
        bottom.set_xlabel(panel_title, fontsize=8)
    axes[0, 0].set_ylabel("attack PSNR (dB)  [grey: 30 dB]")
    axes[1, 0].set_ylabel("attack SSIM")
    figure.suptitle(title or "Attack quality vs defense strength (mean over targets, band: min..max)", fontsize=10)
    figure.tight_layout()
    return figure


def _defense_key(setting: dict) -> tuple:
    return setting["defense"], setting["strength"], tuple(sorted(setting["defense_options"].items()))


def join_tradeoff(sweep_rows: list[dict], training_rows: list[dict]) -> list[dict]:
    """One entry per (attack, defense setting) found in both: ``attack, defense, strength, options,
    test_accuracy`` (mean over runs), ``test_accuracy_std``, ``psnr`` / ``ssim`` (attack means)."""
    accuracy = {_defense_key(_setting(r)): r for r in training_rows}
    joined = []
    for row in sweep_rows:
        setting = _setting(row)
        trained = accuracy.get(_defense_key(setting))
        if trained is None:
            continue
        joined.append({
            "attack": setting["attack"], "defense": setting["defense"], "strength": setting["strength"],
            "options": setting["defense_options"],
            "test_accuracy": float(np.mean(trained["test_accuracy"])),
            "test_accuracy_std": float(np.std(trained["test_accuracy"])),
            "psnr": float(np.mean(row["psnr"])), "ssim": float(np.mean(row["ssim"])),
        })
    return joined


def tradeoff_plot(path, joined: list[dict], *, title: str | None = None) -> None:
    """Attack PSNR (privacy: lower is better) against test accuracy (utility: higher is better), one
    line per defense and attack through its strengths, each point labelled with its strength."""
    figure, axis = subplots(figsize=(6.4, 4.6), dpi=120)
    attacks = list(dict.fromkeys(j["attack"] for j in joined))
    for a, attack in enumerate(attacks):
        style = _STYLES[a % len(_STYLES)]
        for defense in dict.fromkeys(j["defense"] for j in joined):
            points = sorted((j for j in joined if j["attack"] == attack and j["defense"] == defense),
                            key=lambda j: _strength_order(j["strength"]))
            if not points:
                continue
            x = [p["test_accuracy"] for p in points]
            y = [p["psnr"] for p in points]
            if defense == "none":
                axis.plot(x, y, "*", ms=12, color="k", label=f"{attack}: no defense")
                continue
            axis.errorbar(x, y, xerr=[p["test_accuracy_std"] for p in points], fmt=style, marker="o", ms=4,
                          lw=1, elinewidth=0.5, capsize=1.5, color=_COLOURS.get(defense), label=f"{attack}: {defense}")
            for p in points:
                axis.annotate(format_strength(p["strength"]), (p["test_accuracy"], p["psnr"]), fontsize=6,
                              xytext=(3, 3), textcoords="offset points", color=_COLOURS.get(defense))
    axis.axhline(SUCCESS_PSNR, color="0.6", lw=0.6)
    axis.set_xlabel("test accuracy of the model trained with the defense (utility, higher is better)")
    axis.set_ylabel("attack PSNR dB (privacy, lower is better)")
    axis.set_title(title or "Privacy-utility trade-off", fontsize=10)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.tight_layout()
    atomic_save_figure(path, figure)


def sweep_table(rows: list[dict]) -> str:
    """Markdown table: attack, defense, strength, PSNR (mean and min..max), SSIM, MSE, label accuracy."""
    lines = []
    for row in rows:
        s = _setting(row)
        psnr = np.asarray(row["psnr"])
        options = "".join(f" {k}={v}" for k, v in s["defense_options"].items())
        lines.append([s["attack"], f"{s['defense']}{options}", format_strength(s["strength"]),
                      f"{psnr.mean():.1f} ({psnr.min():.1f}..{psnr.max():.1f})", f"{row['ssim_mean']:.3f}",
                      f"{row['mse_mean']:.2e}", f"{row['label_accuracy']:.0%}"])
    return markdown_table(["attack", "defense", "strength", "PSNR dB (min..max)", "SSIM", "MSE", "label acc"], lines)


def tradeoff_table(joined: list[dict]) -> str:
    """Markdown table: attack, defense, strength, test accuracy (mean +- std over runs), attack PSNR, SSIM."""
    lines = [[j["attack"], j["defense"] + "".join(f" {k}={v}" for k, v in j["options"].items()),
              format_strength(j["strength"]), f"{j['test_accuracy']:.1%} ± {j['test_accuracy_std']:.1%}",
              f"{j['psnr']:.1f}", f"{j['ssim']:.3f}"] for j in joined]
    return markdown_table(["attack", "defense", "strength", "test accuracy", "attack PSNR dB", "attack SSIM"], lines)
