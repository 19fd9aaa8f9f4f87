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
# # dlg-jax quickstart: a private image out of a shared gradient
#
# A client computes the gradient of DLG's LeNet on one private image and shares it. The attacker,
# who knows the model and its weights, optimises random dummy images and labels until their gradient
# matches the shared one. All restarts run together in one compiled, vmapped program.

# %%
import os

import jax
import matplotlib.pyplot as plt
import numpy as np

from dlg_jax import AttackConfig, build_model, evaluate, get_dataset, run_attack, shared_gradients

ITERATIONS = int(os.environ.get("DLG_NOTEBOOK_ITERATIONS", "2000"))  # the test runs a short version

# %% [markdown]
# ## The victim: one private image and its shared gradient

# %%
data = get_dataset("colour")
images, labels = data.examples([0, 13])                       # [2, 32, 32, 3], [2]
model = build_model("lenet", data.input_shape, data.num_classes)
params = model.init(jax.random.key(0))
grads = shared_gradients(model, params, images[:, None], labels[:, None])   # 2 targets, batch size 1
print({name: leaf.shape for name, leaf in jax.tree_util.tree_flatten_with_path(grads)[0][:2]})

# %% [markdown]
# ## The attack: 4 restarts per target, L-BFGS, best restart by final matching loss

# %%
result = run_attack(model, params, grads, batch_size=1,
                    config=AttackConfig(restarts=4, iterations=ITERATIONS))
scores = evaluate(result.best_images, images[:, None], result.best_labels, labels[:, None])
print(scores.summary())
print("restart-iterations/s:", round(result.restart_iterations / result.run_seconds))

# %%
figure, axes = plt.subplots(2, 2, figsize=(4, 4))
for t in range(2):
    axes[t, 0].imshow(images[t])
    axes[t, 0].set_title("private")
    axes[t, 1].imshow(np.clip(result.best_images[t, 0], 0, 1))
    axes[t, 1].set_title(f"recovered, {scores.psnr[t]:.1f} dB")
for axis in axes.ravel():
    axis.axis("off")
plt.show()
