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
# # Sweeps: a grid of experiments, a results store, a table and a plot
#
# `dlg-jax sweep GRID.toml --store DIR` runs every point of a grid (the product of its axes); each
# point is one vmapped attack over its targets × restarts and writes one Parquet part with a row per
# target. This notebook runs a small grid from Python with the same machinery
# (`dlg_jax.experiments.grid`, `dlg_jax.experiments.sweep`, `dlg_jax.experiments.store`), resumes it, and queries the store.
#
# Full settings take a few minutes on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` runs a few iterations.

# %%
import os
import pathlib
import tempfile

import matplotlib.pyplot as plt
import pyarrow.compute as pc
from IPython.display import Markdown, display

from dlg_jax.experiments.grid import load_grid
from dlg_jax.experiments.report import group, markdown
from dlg_jax.experiments.store import Store
from dlg_jax.experiments.sweep import run_grid

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
ITERATIONS = 20 if SMALL else 1000
WORK = pathlib.Path(tempfile.mkdtemp(prefix="dlg-sweep-"))

# %% [markdown]
# ## The grid
#
# Two label strategies × three defense settings on the embedded digits: 6 points, each attacking the
# first 2 images with 2 restarts. `[budget]` applies to every point; `[axes]` lists are multiplied.

# %%
grid_file = WORK / "grid.toml"
grid_file.write_text(f"""
name = "labels x pruning on digits"

[budget]
targets = 2
restarts = 2
iterations = {ITERATIONS}

[axes]
dataset = "digits"
labels = ["joint", "analytic"]
defense = ["none", {{name = "prune", strength = [0.1, 0.3]}}]
""")
grid = load_grid(grid_file)
print(grid.name, "-", len(grid.points), "points")
for point in grid.points:
    print(point.id, point.config.labels, point.defense, point.strength)

# %% [markdown]
# ## Run it into a store
#
# Every finished point is one file `parts/<point id>.parquet`, written atomically: kill the sweep at
# any moment and `resume=True` (CLI: `--resume`) runs only the missing points.

# %%
store = Store(WORK / "store")
ran = run_grid(list(grid.points), store,
               on_point=lambda point, rows: print(f"{point.config.labels:8s} {point.defense:5s} "
                                                  f"{point.strength!s:4s}: PSNR "
                                                  f"{sum(r['psnr'] for r in rows) / len(rows):5.1f} dB, "
                                                  f"{rows[0]['point_wall_seconds']:.1f} s"))
print("points run:", ran, "| parts:", sorted(p.name for p in (WORK / "store" / "parts").iterdir()))

# %%
again = run_grid(list(grid.points), store, resume=True)
print("points run on resume:", again)
assert again == 0 and len(store.finished()) == len(grid.points)

# %% [markdown]
# ## Query the store
#
# `Store(path).table()` is a `pyarrow.Table` of every row (any Parquet reader works: DuckDB, polars,
# pandas). Here pyarrow's own group-by, then the same summary as `dlg-jax report`.

# %%
table = store.table()
print(table.num_rows, "rows,", table.num_columns, "columns:", ", ".join(table.column_names[:12]), "...")
summary = (table.append_column("success_rate", pc.cast(table["success"], "float64"))
           .group_by(["labels", "defense", "defense_strength"])
           .aggregate([("psnr", "mean"), ("label_accuracy", "mean"), ("success_rate", "mean")])
           .sort_by([("labels", "ascending"), ("defense_strength", "ascending")]))
display(Markdown(markdown(summary.to_pylist(), tuple(summary.column_names))))

# %%
rows = table.to_pylist()
entries = group(rows, ("labels", "defense", "defense_strength"))
figure, axis = plt.subplots(figsize=(4, 2.5))
for labels in ("joint", "analytic"):
    points = [e for e in entries if e["labels"] == labels]
    ratios = [0.0 if e["defense"] == "none" else float(e["defense_strength"]) for e in points]
    order = sorted(range(len(points)), key=ratios.__getitem__)
    axis.plot([ratios[i] for i in order], [points[i]["psnr_mean"] for i in order], "o-", ms=4, label=labels)
axis.axhline(30, color="0.6", lw=0.6)
axis.set_xlabel("pruning ratio (0: no defense)")
axis.set_ylabel("attack PSNR dB")
axis.legend(fontsize=7, title="labels", title_fontsize=7)
plt.tight_layout()
plt.show()
