"""The affine ambiguity of a batch-norm ResNet and what the BN prior makes of it (README, GradInversion).

resnet20-sigmoid-bn (He init, the seed-0 weights of ``run_dlg``), the first private batch of the digits set
(B = 2). For the true batch ``x`` and copies ``a x + b``: the DLG (l2, relative to |dW|^2) and IG (cosine)
gradient-matching objectives, GradInversion's R_bn against the reference statistics of the other 98
digits (all layers, and the first layer alone), and the PSNR of the copy.

    python docs/experiments/gradinversion/affine_ambiguity.py   # from the repository root
"""

import sys

sys.path.insert(0, ".")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dlg_jax.attack.engine import AttackConfig  # noqa: E402
from dlg_jax.data.datasets import get_dataset  # noqa: E402
from dlg_jax.metrics import evaluate  # noqa: E402
from dlg_jax.models import build_model  # noqa: E402
from dlg_jax.models.batchnorm import batchnorm_statistics  # noqa: E402
from dlg_jax.attack.objectives import Context, Dummy, bn_statistics_prior, make_objective  # noqa: E402
from dlg_jax.pipeline import bn_reference  # noqa: E402
from dlg_jax.victim.gradients import one_hot, shared_gradients  # noqa: E402

source = get_dataset("digits")
model = build_model("resnet20", source.input_shape, source.num_classes, activation="sigmoid", norm="batch")
params = model.init(jax.random.fold_in(jax.random.key(0), 0x5EED))
grid = np.arange(2)[None]
images, labels = source.examples(grid.reshape(-1))
grads = shared_gradients(model, params, images[None], labels[None])
stored = bn_reference(model, params, source, grid, AttackConfig(bn_prior=1.0))
context = Context(params, jax.tree.map(lambda g: g[0], grads), one_hot(jnp.asarray(labels), source.num_classes),
                  stored)
l2, cosine = jax.jit(make_objective(model, "l2")), jax.jit(make_objective(model, "cosine"))
norm = float(sum(jnp.vdot(g, g) for g in jax.tree.leaves(context.target_grad)))
print("| a | b | DLG l2 / ‖dW‖² | IG cosine | R_bn | R_bn, first layer | PSNR dB |\n|---|---|---|---|---|---|---|")
for a, b in [(1.0, 0.0), (0.5, 0.0), (2.0, 0.0), (0.5, 0.2), (0.8, 0.1), (2.0, -0.5)]:
    copy = jnp.asarray(a * images + b)
    stats = batchnorm_statistics(model, params, copy)
    first = bn_statistics_prior(stats["BatchStatNorm_0"], stored["BatchStatNorm_0"])
    psnr = float(evaluate(np.clip(np.asarray(copy), 0, 1)[None], images[None], labels[None], labels[None]).psnr[0])
    print(f"| {a} | {b} | {float(l2(Dummy(copy, None), context)) / norm:.1e} | "
          f"{float(cosine(Dummy(copy, None), context)):.1e} | {float(bn_statistics_prior(stats, stored)):.3f} | "
          f"{float(first):.3f} | {psnr:.1f} |")
