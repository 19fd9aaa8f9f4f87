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
# # Defenses: the privacy–utility trade-off
#
# A defense perturbs the gradient a client shares: noise, lower precision, pruning of small entries,
# DP-SGD. Each is an `optax.GradientTransformation`, so the *same object* (1) defends the shared
# gradient the attacker sees and (2) chains into the training optimiser, where it costs accuracy.
# A good defense stops the attack (low PSNR: privacy) and keeps the model accurate (utility).
#
# This is a small version of `dlg-jax defend tradeoff` (docs/defenses.md). Full settings take
# a few minutes on 2 CPU cores; `DLG_NOTEBOOK_SMALL=1` runs a few iterations of two settings.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np
import optax

from dlg_jax import AttackConfig, RunOptions, build_model, get_dataset, run_dlg, shared_gradients
from dlg_jax.victim.defenses import make_defense
from dlg_jax.victim.training import TrainConfig, train

SMALL = os.environ.get("DLG_NOTEBOOK_SMALL") == "1"
ITERATIONS = 20 if SMALL else 1500
TRAIN = TrainConfig(steps=10, runs=1) if SMALL else TrainConfig(steps=300, runs=2)
SETTINGS = ([("none", None), ("prune", 0.3)] if SMALL else
            [("none", None), ("gaussian", 1e-6), ("gaussian", 1e-4), ("prune", 0.1), ("prune", 0.3),
             ("precision", "float16"), ("precision", "int4")])

# %% [markdown]
# ## A defense is a gradient transformation
#
# Applied to one client's shared gradient (DLG's LeNet on one colour image): how far the defended
# gradient moves from the true one (relative L2 distance) and how many entries it zeroes.

# %%
data = get_dataset("colour")
images, labels = data.examples([0])
model = build_model("lenet", data.input_shape, data.num_classes)
params = model.init(jax.random.key(0))
grads = shared_gradients(model, params, images[:, None], labels[:, None])
for name, strength in SETTINGS[1:]:
    defense = make_defense(name, strength)
    assert isinstance(defense.transform, optax.GradientTransformation)
    defended = defense(grads, jax.random.key(1))
    distance = optax.tree.norm(jax.tree.map(lambda a, b: a - b, defended, grads)) / optax.tree.norm(grads)
    zeros = sum(int((leaf == 0).sum()) for leaf in jax.tree.leaves(defended))
    total = sum(leaf.size for leaf in jax.tree.leaves(defended))
    print(f"{name:9s} {strength!s:8s}: relative change {float(distance):.2e}, zero entries {zeros / total:.0%}")

# %% [markdown]
# ## Privacy: the attack against each defended gradient
#
# `run_dlg(..., defense=...)` defends each target's gradient on the client side before the attack
# sees it. 2 targets × 2 restarts per setting; every setting reuses the same compiled attack.

# %%
attacks = {}
for name, strength in SETTINGS:
    run = run_dlg(model="lenet", dataset="colour", targets=2, defense=make_defense(name, strength),
                  config=AttackConfig(restarts=2, iterations=ITERATIONS), run=RunOptions(snapshots=0))
    attacks[name, strength] = run
    print(f"{name:9s} {strength!s:8s}: PSNR {run.metrics.summary()['psnr_mean']:5.1f} dB, "
          f"SSIM {run.metrics.summary()['ssim_mean']:.2f}, labels {run.metrics.summary()['label_accuracy']:.0%}")

figure, axes = plt.subplots(2, len(SETTINGS) + 1, figsize=(0.95 * (len(SETTINGS) + 1), 2.3))
for t in range(2):
    axes[t, 0].imshow(attacks[SETTINGS[0]].images[t, 0])
    axes[0, 0].set_title("private", fontsize=6)
    for column, setting in enumerate(SETTINGS, start=1):
        run = attacks[setting]
        axes[t, column].imshow(np.clip(run.result.best_images[t, 0], 0, 1))
        axes[0, column].set_title(f"{setting[0]}\n{setting[1] if setting[1] is not None else ''}", fontsize=6)
for axis in axes.ravel():
    axis.axis("off")
plt.show()

# %% [markdown]
# ## Utility: a model trained with each defense
#
# `dlg_jax.victim.training.train` trains LeNet on 80% of the colour images with
# `optax.chain(defense.transform, optax.sgd(...))`, i.e. the defense sees every training gradient,
# and reports the accuracy on the held-out 20% (mean over independent runs).

# %%
accuracy = {}
for name, strength in SETTINGS:
    trained = train(TRAIN, make_defense(name, strength))
    accuracy[name, strength] = float(trained.test_accuracy.mean())
    print(f"{name:9s} {strength!s:8s}: test accuracy {accuracy[name, strength]:.0%} "
          f"({TRAIN.runs} runs, {TRAIN.steps} steps, {trained.seconds:.1f} s)")

# %% [markdown]
# ## The trade-off
#
# Bottom right is what a defense wants: the attack fails (low PSNR) and the model still learns.
# The grey line is 30 dB, above which the image is recovered. On 20 test images and a few hundred
# steps, accuracy differences under ~10 points are noise.

# %%
figure, axis = plt.subplots(figsize=(4.5, 3))
for (name, strength), run in attacks.items():
    x, y = accuracy[name, strength], run.metrics.summary()["psnr_mean"]
    axis.scatter(x, y, marker="*" if name == "none" else "o", s=60 if name == "none" else 20,
                 color={"none": "k", "gaussian": "C0", "prune": "C2", "precision": "C3"}.get(name, "C4"))
    axis.annotate(name if strength is None else f"{name} {strength}", (x, y), fontsize=6, xytext=(3, 3),
                  textcoords="offset points")
axis.axhline(30, color="0.6", lw=0.6)
axis.set_xlabel("test accuracy (utility)")
axis.set_ylabel("attack PSNR dB (privacy: lower is better)")
plt.tight_layout()
plt.show()

# %%
if not SMALL:  # at full settings: undefended leaks, pruning 30% of the gradient stops the attack
    psnr = {setting: run.metrics.summary()["psnr_mean"] for setting, run in attacks.items()}
    assert psnr["none", None] > psnr["prune", 0.3] + 10, psnr
