# ---
# jupyter:
#   jupytext:
#     formats: py:percent,ipynb
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Labels and batches
#
# 1. **Labels.** DLG optimises dummy label logits jointly with the image (`labels="joint"`). iDLG
#    noticed that for one image per gradient the label can be read off the final layer's gradient
#    directly (`labels="analytic"`): the column sum of the last kernel's gradient is negative for the
#    true class only. The attack then holds the label fixed and only solves for the image.
# 2. **Batches.** A client's gradient is usually the mean over a batch of `B` images. The attack then
#    reconstructs `B` slots in no particular order: the metrics match slots to private images by an
#    optimal assignment (Hungarian method) and count *duplicate* slots, two slots that collapsed onto
#    the same image.
#
# Full settings take a few minutes on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` runs a few iterations.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from dlg_jax import (
    AttackConfig,
    RunOptions,
    build_model,
    evaluate,
    get_dataset,
    run_dlg,
    shared_gradients,
)
from dlg_jax.attack.labels import recover_labels
from dlg_jax.attack.presets import attack_preset

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
ITERATIONS = 20 if SMALL else 1000
DATASETS = ("digits",) if SMALL else ("digits", "colour", "faces")

# %% [markdown]
# ## iDLG: labels straight from the gradient (no optimisation)
#
# 50 targets of each embedded set (`DATASETS`), one image per gradient, DLG's LeNet with random weights.

# %%
for name in DATASETS:
    data = get_dataset(name)
    images, labels = data.examples(np.arange(50))
    model = build_model("lenet", data.input_shape, data.num_classes)
    params = model.init(jax.random.key(0))
    grads = shared_gradients(model, params, images[:, None], labels[:, None])
    recovered = recover_labels("analytic", model, params, grads, batch_size=1)      # [50, 1]
    print(f"{name:7s}: iDLG label accuracy {np.mean(recovered[:, 0] == labels):.0%} on 50 targets")

# %% [markdown]
# ## DLG (joint) vs iDLG (analytic) inside the attack
#
# The same 4 colour targets, 2 restarts each, attacked with both label strategies.

# %%
runs = {}
for strategy in ("joint", "analytic"):
    runs[strategy] = run_dlg(model="lenet", dataset="colour", targets=4,
                             config=AttackConfig(restarts=2, iterations=ITERATIONS, labels=strategy),
                             run=RunOptions(snapshots=0))
    s = runs[strategy].metrics.summary()
    print(f"{strategy:8s}: label accuracy {s['label_accuracy']:.0%}, PSNR {s['psnr_mean']:.1f} dB "
          f"(per target {np.round(runs[strategy].metrics.psnr, 1)}), run {runs[strategy].result.run_seconds:.1f} s")

figure, axes = plt.subplots(3, 4, figsize=(4, 3.2))
for t in range(4):
    axes[0, t].imshow(runs["joint"].images[t, 0])
    axes[0, t].set_title("private", fontsize=6)
    for row, strategy in ((1, "joint"), (2, "analytic")):
        run = runs[strategy]
        axes[row, t].imshow(np.clip(run.result.best_images[t, 0], 0, 1))
        axes[row, t].set_title(f"{strategy} {run.metrics.psnr[t]:.0f} dB", fontsize=6)
for axis in axes.ravel():
    axis.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## A batch of four: optimal assignment and per-slot scores
#
# One client shares the mean gradient of 4 handwritten digits. DLG itself does not finish a batch
# of 2 within 3000 iterations (docs/findings/batches-and-deep-models.md), so this uses the Inverting
# Gradients preset (`attack_preset("ig")`: cosine matching, a TV prior, sign-Adam, images boxed in
# [0, 1]) with the labels counted from the bias gradient (`labels="auto"` → `count` for B > 1).
# `metrics.assignment[t, b]` is the slot matched to private image `b`.

# %%
batch = run_dlg(model="lenet", dataset="digits", indices=[0], batch_size=4,
                config=attack_preset("ig", restarts=2, iterations=ITERATIONS), run=RunOptions(snapshots=0))
metrics = batch.metrics
order = metrics.assignment[0]
print("true labels", batch.labels[0], "| recovered (slot order)", batch.result.best_labels[0])
print("assignment (private image b -> slot)", order, "| slot PSNR", np.round(metrics.slot_psnr[0], 1),
      "| duplicates", metrics.duplicates[0])

figure, axes = plt.subplots(2, 4, figsize=(4, 2.2))
for b in range(4):
    axes[0, b].imshow(batch.images[0, b, ..., 0], cmap="gray")
    axes[0, b].set_title(f"private {b}", fontsize=7)
    axes[1, b].imshow(np.clip(batch.result.best_images[0, order[b], ..., 0], 0, 1), cmap="gray")
    axes[1, b].set_title(f"slot {order[b]}: {metrics.slot_psnr[0, b]:.0f} dB", fontsize=7)
for axis in axes.ravel():
    axis.axis("off")
plt.tight_layout()
plt.show()

# %% [markdown]
# ## What a duplicate looks like
#
# A constructed reconstruction makes the rule visible: the slots hold the private images shuffled,
# except that image 0 appears twice and image 1 is missing. The assignment still gives every private
# image its own slot, and the two slots that are copies of each other (PSNR ≥ 30 dB between them)
# while being assigned to different private images are both counted as duplicates.

# %%
truth = batch.images[:1]                                    # [1, 4, 28, 28, 1]
constructed = truth[:, [2, 0, 0, 3]]                        # slots: image 2, image 0, image 0, image 3
scores = evaluate(constructed, truth, np.array([[2, 0, 0, 3]]), batch.labels[:1])
print("assignment", scores.assignment[0], "| slot PSNR", np.round(scores.slot_psnr[0], 1),
      "| duplicates", scores.duplicates[0], "| label accuracy", scores.label_accuracy[0])
assert scores.duplicates[0] == 2
assert sorted(scores.assignment[0]) == [0, 1, 2, 3]
