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
# # dlg-jax quickstart: a private image out of a shared gradient
#
# A client computes the gradient of DLG's LeNet on one private image and shares it. The attacker,
# who knows the model and its weights, optimises random dummy images and labels until their gradient
# matches the shared one. All restarts run together in one compiled, vmapped program.
#
# Full settings take a few minutes on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` (what the test suite
# sets) runs a few iterations only, to check that every cell works.

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
    run_attack,
    shared_gradients,
)

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
ITERATIONS = 20 if SMALL else 2000      # L-BFGS iterations per restart (DLG needs 1000-3000)
MANY = 4 if SMALL else 64               # restarts of the second attack

# %% [markdown]
# ## The victim: one private image and its shared gradient
#
# `shared_gradients` takes a stack of `T` private batches (`[T, B, H, W, C]`, labels `[T, B]`) and
# returns the parameter pytree with a leading `T` axis: what each of `T` clients would share.

# %%
data = get_dataset("colour")
images, labels = data.examples([0])                            # [1, 32, 32, 3], [1]
model = build_model("lenet", data.input_shape, data.num_classes)
params = model.init(jax.random.key(0))                         # DLG's U(-0.5, 0.5) init
grads = shared_gradients(model, params, images[:, None], labels[:, None])   # 1 target, batch size 1
for path, leaf in jax.tree_util.tree_flatten_with_path(grads)[0]:
    print(jax.tree_util.keystr(path), leaf.shape)

# %% [markdown]
# ## One reconstruction, watched as it converges
#
# Four restarts (independent random dummies) run in lockstep; the best one is the restart with the
# lowest final matching loss. `AttackConfig` says what is solved; `RunOptions` how it runs: its
# `snapshots` keeps the best restart's image at evenly spaced iterations (5 here, so that they fall on
# the attack's blocks of 100 iterations: each distinct block length is one more compiled program).

# %%
result = run_attack(model, params, grads, batch_size=1,
                    config=AttackConfig(restarts=4, iterations=ITERATIONS), run=RunOptions(snapshots=5))
scores = evaluate(result.best_images, images[:, None], result.best_labels, labels[:, None])
print(scores.summary())
print(f"compile {result.compile_seconds:.1f} s, run {result.run_seconds:.1f} s, "
      f"{result.restart_iterations / result.run_seconds:.0f} restart-iterations/s")

# %%
steps = result.snapshot_iterations[0]  # the iterations target 0's snapshots show
figure, axes = plt.subplots(1, len(steps) + 1, figsize=(1.1 * (len(steps) + 1), 1.5))
axes[0].imshow(images[0])
axes[0].set_title("private", fontsize=8)
for axis, image, step in zip(axes[1:], result.snapshots[0], steps):
    axis.imshow(image[0])
    axis.set_title(f"it {step}", fontsize=8)
for axis in axes:
    axis.axis("off")
plt.show()

figure, axis = plt.subplots(figsize=(4, 2.2))
for r in range(result.loss_history.shape[1]):
    best = r == result.best_restart[0]
    axis.semilogy(result.loss_history[0, r], lw=1.5 if best else 0.7, label="best restart" if best else None)
axis.set_xlabel("iteration")
axis.set_ylabel("matching loss")
axis.legend(fontsize=7)
plt.show()

# %% [markdown]
# ## Many restarts, the best one picked
#
# DLG's optimisation can get stuck, so attackers restart it. Here `MANY` restarts of the same target
# run in one call. The attacker cannot compute the PSNR (it does not have the private image), so it
# picks the restart whose gradient matches best; below, each restart's final loss against the PSNR it
# actually reached shows that the lowest loss is a good choice.

# %%
many = run_attack(model, params, grads, batch_size=1,
                  config=AttackConfig(restarts=MANY, iterations=ITERATIONS), run=RunOptions(snapshots=0))
per_restart = evaluate(many.images[0], np.repeat(images[:, None], MANY, axis=0),   # restarts as targets
                       many.labels[0], np.repeat(labels[:, None], MANY, axis=0))
best = int(many.best_restart[0])
print(f"{MANY} restarts: {int(many.converged.sum())} converged, {int(many.failed.sum())} failed; "
      f"best restart {best}: loss {many.loss[0, best]:.2e}, PSNR {per_restart.psnr[best]:.1f} dB; "
      f"restarts at >= 30 dB: {int((per_restart.psnr >= 30).sum())}")

figure, (left, right) = plt.subplots(1, 2, figsize=(6, 2.4), gridspec_kw={"width_ratios": [2, 1]})
left.scatter(np.maximum(many.loss[0], 1e-30), per_restart.psnr, s=10)
left.scatter(max(many.loss[0, best], 1e-30), per_restart.psnr[best], s=60, facecolors="none", edgecolors="C3",
             label="picked (lowest loss)")
left.set_xscale("log")
left.set_xlabel("final matching loss")
left.set_ylabel("PSNR dB")
left.legend(fontsize=7)
right.imshow(np.clip(many.best_images[0, 0], 0, 1))
right.set_title(f"picked: {per_restart.psnr[best]:.1f} dB", fontsize=8)
right.axis("off")
plt.tight_layout()
plt.show()

# %%
if not SMALL:  # at full settings the attack recovers the image and the lowest loss is a recovered restart
    assert scores.psnr[0] >= 30, scores.psnr
    assert per_restart.psnr[best] >= 30, per_restart.psnr[best]
