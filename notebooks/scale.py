# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Scale: many targets × restarts in one compiled call, and how fast that is against PyTorch
#
# Every problem (one restart of one target) is independent, so dlg-jax stacks them on one axis and
# runs the whole optimisation loop, `jax.vmap`ped over problems, as one compiled XLA program. This
# notebook attacks 8 private images × 8 restarts in one call, then reads the project's recorded
# benchmarks (JAX against PyTorch on the same machine: CPU, and GPU where a run was recorded).
#
# Full settings take a few minutes on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` runs a few iterations.

# %%
import json
import os
import pathlib

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import Markdown, display

from dlg_jax import AttackConfig, RunOptions, run_dlg

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
TARGETS, RESTARTS = (2, 2) if SMALL else (8, 8)
ITERATIONS = 20 if SMALL else 1500

# %% [markdown]
# ## 8 targets × 8 restarts = 64 problems, one call
#
# `run_dlg` builds DLG's LeNet, computes each target's shared gradient and attacks all of them.
# Problems run in chunks of `RunOptions.chunk_size` (16 on CPU, where small chunks stay in cache;
# 1024 on a GPU); each chunk is one vmapped `lax.scan` over iterations, compiled once and reused.

# %%
run = run_dlg(model="lenet", dataset="colour", targets=TARGETS,
              config=AttackConfig(restarts=RESTARTS, iterations=ITERATIONS), run=RunOptions(snapshots=0))
result = run.result
print(f"images {result.images.shape}  (targets, restarts, batch, H, W, C)")
print(f"{TARGETS * RESTARTS} problems: compile {result.compile_seconds:.1f} s, run {result.run_seconds:.1f} s, "
      f"{result.restart_iterations / result.run_seconds:.0f} restart-iterations/s")
print(run.metrics.summary())

# %%
figure, axes = plt.subplots(2, TARGETS, figsize=(0.9 * TARGETS, 2.1))
for t in range(TARGETS):
    axes[0, t].imshow(run.images[t, 0])
    axes[1, t].imshow(np.clip(result.best_images[t, 0], 0, 1))
    axes[1, t].set_title(f"{run.metrics.psnr[t]:.0f} dB", fontsize=7)
for axis in axes.ravel():
    axis.axis("off")
figure.suptitle("private (top) and best of 8 restarts (bottom)", fontsize=8)
plt.show()

figure, axis = plt.subplots(figsize=(4.5, 2.2))
for t in range(TARGETS):
    axis.semilogy(result.loss_history[t].T, color=f"C{t}", lw=0.6)
axis.set_xlabel("iteration")
axis.set_ylabel("matching loss")
axis.set_title("every restart of every target (colour = target)", fontsize=8)
plt.show()

# %% [markdown]
# ## Against PyTorch: the recorded benchmarks
#
# `python -m benchmarks.summary --rerun` measures JAX and PyTorch side by side in one process on the
# CPU and writes `benchmarks/results/*.json`; `python -m benchmarks.accelerator` does the same on a
# GPU (`accelerator-<device>.json`). The cells below only read those files (each key may be absent
# in an older or newer file; missing numbers are shown as such), so they run anywhere.

# %%
def results_dir() -> pathlib.Path | None:
    """``benchmarks/results`` of this checkout, from the notebook's folder or the repository root."""
    for folder in (pathlib.Path.cwd(), *pathlib.Path.cwd().parents):
        candidate = folder / "benchmarks" / "results"
        if candidate.is_dir():
            return candidate
    return None


def load(name: str) -> dict:
    path = None if RESULTS is None else RESULTS / name
    try:
        return json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}


def number(value, digits=0) -> str:
    return f"{value:,.{digits}f}" if isinstance(value, (int, float)) else "–"


RESULTS = results_dir()
print("results:", RESULTS, sorted(p.name for p in RESULTS.glob("*.json")) if RESULTS else "not found")

# %% [markdown]
# ### CPU: the objective (gradient-matching loss and its gradient), restart-evaluations per second

# %%
summary = load("summary.json")
objective = load("objective_throughput.json") or summary.get("results", {}).get("objective_throughput", {})
environment = objective.get("environment", {})
print("measured", environment.get("date", "?"), "on", environment.get("cpu", "?"),
      f"({environment.get('threads', {}).get('cpu_count', '?')} cores)", environment.get("versions", {}))
by_candidate: dict[str, dict[int, float]] = {}
for row in objective.get("rows", []):
    if "candidate" in row and "restarts" in row and "restart_evaluations_per_second" in row:
        by_candidate.setdefault(row["candidate"], {})[row["restarts"]] = row["restart_evaluations_per_second"]
sizes = sorted({r for values in by_candidate.values() for r in values})
if by_candidate:
    lines = ["| candidate | " + " | ".join(f"R = {r}" for r in sizes) + " |", "|---" * (len(sizes) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(number(values.get(r)) for r in sizes) + " |"
              for name, values in by_candidate.items()]
    display(Markdown("\n".join(lines)))
    figure, axis = plt.subplots(figsize=(4.5, 2.4))
    for name, values in by_candidate.items():
        axis.plot(sorted(values), [values[r] for r in sorted(values)], marker="o", ms=3, lw=1,
                  ls="--" if name.startswith("torch") else "-", label=name)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("restarts R in one batch")
    axis.set_ylabel("restart-evals/s")
    axis.legend(fontsize=6)
    plt.show()
else:
    print("no objective benchmark recorded")

# %%
headlines = {name: (load(f"{name}.json") or summary.get("results", {}).get(name, {})).get("headline", {})
             for name in ("objective_throughput", "attack_throughput", "time_to_recovery", "scaling")}
lines = ["| benchmark | headline | value |", "|---|---|---|"]
for name, headline in headlines.items():
    flat = {f"{key} {inner}": value for key, entry in headline.items() if isinstance(entry, dict)
            for inner, value in entry.items()}           # e.g. scaling: {"lenet_B1": {"speedup_vs_...": x}}
    for key, value in {**headline, **flat}.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            lines.append(f"| {name} | {key} | {number(value, 2)} |")
display(Markdown("\n".join(lines) if len(lines) > 2 else "no headline figures recorded"))

# %% [markdown]
# ### GPU: every recorded accelerator check
#
# On a GPU both sides run full float32 (JAX's `precision="highest"`, PyTorch's TF32 off); the
# objective is compared with `torch.func` and `torch.compile` of it, and the whole attack with DLG's
# own PyTorch procedure (`torch.optim.LBFGS`, one restart at a time).

# %%
accelerators = sorted(RESULTS.glob("accelerator-*.json")) if RESULTS else []
for path in accelerators:
    check = load(path.name)
    name = check.get("device_kind") or check.get("device") or path.stem
    print(f"== {name} (measured {check.get('environment', {}).get('date', '?')}, "
          f"jax {check.get('environment', {}).get('versions', {}).get('jax', '?')})")
    lines = ["| attack | targets × restarts × iterations | precision | recovered | PSNR dB | restart-it/s |",
             "|---|---|---|---|---|---|"]
    for row in check.get("attacks", []):
        lines.append(f"| {row.get('row', '?')} | {row.get('targets', '?')} × {row.get('restarts', '?')} × "
                     f"{row.get('iterations', '?')} | {row.get('precision', '?')} | "
                     f"{row.get('recovered', '?')}/{row.get('targets', '?')} | {number(row.get('psnr_mean'), 1)} | "
                     f"{number(row.get('restart_iterations_per_second'))} |")
    display(Markdown("\n".join(lines)))
    sections = {size: entry for size, entry in check.get("objective", {}).items() if isinstance(entry, dict)}
    candidates = sorted({c for entry in sections.values() for c, v in entry.items()
                         if isinstance(v, dict) and "restart_evaluations_per_second" in v})
    if sections and candidates:
        figure, axis = plt.subplots(figsize=(4.5, 2.4))
        width = 0.8 / len(sections)
        for i, (size, entry) in enumerate(sections.items()):
            speeds = [entry.get(c, {}).get("restart_evaluations_per_second", np.nan) for c in candidates]
            axis.bar(np.arange(len(candidates)) + i * width, speeds, width, label=f"R = {size}")
        axis.set_xticks(np.arange(len(candidates)) + width * (len(sections) - 1) / 2, candidates, fontsize=7,
                        rotation=20)
        axis.set_yscale("log")
        axis.set_ylabel("restart-evals/s")
        axis.set_title(f"objective on {name}", fontsize=8)
        axis.legend(fontsize=7)
        plt.show()
    speedup = check.get("attack_speedup_vs_torch_dlg", {})
    torch_dlg = check.get("torch_dlg", {})
    for mode, value in speedup.items():
        torch_speed = torch_dlg.get(mode, {}).get("restart_iterations_per_second")
        print(f"whole attack vs PyTorch's DLG procedure ({mode}, {number(torch_speed)} it/s): {number(value)}×")
if not accelerators:
    print("no accelerator check recorded (run `python -m benchmarks.accelerator` on a GPU)")
