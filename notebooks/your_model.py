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
# # Attack your own model
#
# A flax CNN of one's own, with batch norm, trained a few hundred steps on the digits, then attacked
# through the gradient one client shares, and scored. Everything the library needs from the model is
# `Model.from_flax(module, variables, input_shape, **call_kwargs)`.
#
# Full settings take a few minutes on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` (what the test suite
# sets) runs a few steps and iterations only, to check that every cell works.

# %%
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from dlg_jax import AttackConfig, Model, get_dataset, run_dlg
from dlg_jax.victim.training import VictimTraining, train_victim

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
TRAIN_STEPS = 5 if SMALL else 300
ITERATIONS = 20 if SMALL else 2000

# %% [markdown]
# ## The model: any flax.linen module that maps images `[B, H, W, C]` to logits `[B, K]`
#
# Batch norm follows flax's convention: `use_running_average=not train`. With `train=True` a client's
# step normalises with its own batch's statistics; with `train=False` the stored running statistics
# are used and held fixed.

# %%
class MyCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(8, (5, 5), strides=2, padding=((2, 2), (2, 2)))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.sigmoid(nn.Conv(8, (5, 5), padding=((2, 2), (2, 2)))(nn.sigmoid(x)))
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


data = get_dataset("digits")
module = MyCNN()
variables = module.init(jax.random.key(0), jnp.zeros((1, *data.input_shape)))
model = Model.from_flax(module, variables, data.input_shape, name="my-cnn", train=True)
print(model.num_classes, "classes; collections held fixed:", model.mutable)

# %% [markdown]
# ## Train it a few hundred steps
#
# `train_victim` runs optax (here Adam) on the images outside the attacked ones; it returns the
# parameters, and the model with its running statistics updated.

# %%
targets = np.array([[0], [1]])                                  # two clients, one image each
rest = np.setdiff1d(np.arange(data.size), targets.ravel())
trained = train_victim(model, variables["params"], *data.examples(rest),
                       VictimTraining(steps=TRAIN_STEPS, optimiser="adam", learning_rate=1e-3))
print(f"training loss {trained.loss[0]:.2f} -> {trained.loss[-1]:.2f}, accuracy {trained.train_accuracy:.0%}")

# %% [markdown]
# ## Attack the trained model, in train mode and in eval mode
#
# `run_dlg` takes the model and its parameters; the same call gives metrics, figures
# (`dlg_jax.save_run`) and threat models (`threat=ThreatModel(clients=4)`).

# %%
config = AttackConfig(restarts=2, iterations=ITERATIONS, labels="analytic")
runs = {}
for mode in ("train", "eval"):
    victim = Model.from_flax(module, {"params": trained.params, **trained.model.fixed.collections},
                             data.input_shape, name=f"my-cnn ({mode})", train=mode == "train")
    runs[mode] = run_dlg(victim, data, params=trained.params, indices=targets[:, 0], config=config)
    summary = runs[mode].metrics.summary()
    print(f"{mode}: PSNR {summary['psnr_mean']:.1f} dB, after brightness/contrast fit "
          f"{summary['affine_psnr_mean']:.1f} dB, labels {summary['label_accuracy']:.0%}")

# %%
figure, axes = plt.subplots(2, 3, figsize=(6, 4))
for row, t in enumerate(range(2)):
    axes[row, 0].imshow(runs["train"].images[t, 0, ..., 0], cmap="gray")
    for column, mode in enumerate(("train", "eval"), start=1):
        axes[row, column].imshow(np.clip(runs[mode].result.best_images[t, 0, ..., 0], 0, 1), cmap="gray")
        axes[row, column].set_title(f"{mode}: {runs[mode].metrics.psnr[t]:.1f} dB", fontsize=8)
    axes[row, 0].set_title("private", fontsize=8)
for axis in axes.ravel():
    axis.set_axis_off()
plt.show()
