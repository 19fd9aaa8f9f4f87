"""Does Soteria's ranking matter against DLG? Zero the same number of rows of LeNet's representation-layer
kernel gradient, chosen three ways, and attack each defended gradient with DLG at one budget:

- ``soteria``: the ``floor(p D)`` smallest scores ``s_i`` (:func:`dlg_jax.victim.soteria.feature_scores`), the
  defense itself;
- ``inverted``: the ``floor(p D)`` largest scores (the other end of the ranking);
- ``random``: ``floor(p D)`` rows drawn uniformly (seed 0).

Targets: the first ``--targets`` colour images, one per client; weights as ``dlg-jax defend`` draws them
(seed 0); 2 restarts, 1500 L-BFGS iterations. Prints the PSNR per target and the mean per setting.

    python -m benchmarks.soteria_ranking [--targets 2] [--ratios 0.01 0.1]
"""

import argparse
import math

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
from dlg_jax.data.datasets import get_dataset
from dlg_jax.metrics import evaluate
from dlg_jax.models import build_model, victim_params
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.victim.soteria import defended_layer, feature_scores

CHOICES = ("soteria", "inverted", "random")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=2)
    parser.add_argument("--ratios", nargs="+", type=float, default=[0.01, 0.1])
    args = parser.parse_args(argv)
    ratios = args.ratios
    source = get_dataset("colour")
    model = build_model("lenet", source.input_shape, source.num_classes)
    params = victim_params(model, seed=0)  # as dlg-jax attack
    images, labels = source.examples(list(range(args.targets)))
    images, labels = images[:, None], labels[:, None]  # [T, 1, H, W, C], [T, 1]
    clean = shared_gradients(model, params, images, labels)
    layer = defended_layer(model, params, images[0])[0]
    rng = np.random.default_rng(0)
    defended, settings, owners = [], [], []
    for t in range(args.targets):
        order = np.argsort(np.asarray(feature_scores(model, params, images[t])), kind="stable")
        for ratio in ratios:
            k = int(math.floor(ratio * order.size))
            rows = {"soteria": order[:k], "inverted": order[::-1][:k],
                    "random": rng.choice(order.size, k, replace=False)}
            for choice in CHOICES:
                keep = np.ones(order.size, np.float32)
                keep[rows[choice]] = 0
                grads = jax.tree.map(lambda g: g[t], clean)
                grads[layer]["kernel"] = grads[layer]["kernel"] * keep[:, None]
                defended.append(grads)
                settings.append((choice, ratio))
                owners.append(t)
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *defended)
    result = run_attack(model, params, stacked, 1, AttackConfig(restarts=2, iterations=1500),
                        run=RunOptions(snapshots=0))
    psnr = evaluate(result.best_images, images[owners], result.best_labels, labels[owners]).psnr
    print("| rows zeroed | fraction | PSNR dB per target | mean |\n|---|---|---|---|")
    for setting in dict.fromkeys(settings):
        values = [float(v) for s, v in zip(settings, psnr) if s == setting]
        print(f"| {setting[0]} | {setting[1]:g} | {' / '.join(f'{v:.1f}' for v in values)} | {np.mean(values):.1f} |")


if __name__ == "__main__":
    main()
