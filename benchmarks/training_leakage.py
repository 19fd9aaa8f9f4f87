"""How much a trained victim leaks: DLG and IG recovery vs the victim's training steps.

For each model, batch size ``B`` and amount of training (0 steps, then steps or epochs of Adam on the
dataset's images outside the targets' batches, :func:`dlg_jax.victim.training.train_victim`) the victim shares
one gradient per target and both attacks run on it (:func:`dlg_jax.pipeline.run_dlg`). Reported per
row: the victim's training accuracy, the attacks' mean PSNR and the share of targets whose every image
reaches 30 dB (``success_rate_psnr30``), the share at 30 dB after the brightness/contrast fit
(batch-normalised models), and the label accuracy.

    python -m benchmarks.training_leakage --model lenet --dataset colour --training 0 e1 e5 100 1000 \\
        --batch-sizes 1 4 --targets 4 --restarts 2 --dlg-iterations 2000 --ig-iterations 1500

``e<N>``: N epochs; a plain number: optimiser steps. Results: ``benchmarks/results/training_leakage-<model>.json``
(``-<norm>`` appended when ``--norm`` is given; ``--name`` names it otherwise), rewritten after every row
with ``"complete": false`` so that a run stopped part-way keeps the rows it measured; ``true`` once every
row is in.
"""

import argparse
import sys
import time

import jax
import numpy as np

from benchmarks.common import RESULTS_DIR, environment, write_results
from dlg_jax.attack.engine import RunOptions
from dlg_jax.attack.presets import attack_preset
from dlg_jax.data.datasets import get_dataset
from dlg_jax.models import build_model
from dlg_jax.pipeline import run_dlg, target_indices
from dlg_jax.victim.training import VictimTraining, train_victim


def parse_training(text: str) -> dict:
    return {"epochs": int(text[1:])} if text.startswith("e") else {"steps": int(text)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="lenet")
    parser.add_argument("--norm", default=None)
    parser.add_argument("--activation", default=None)
    parser.add_argument("--dataset", default="colour")
    parser.add_argument("--training", nargs="+", default=["0", "e1", "e5", "100", "1000"])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--attacks", nargs="+", default=["dlg", "ig"])
    parser.add_argument("--targets", type=int, default=4)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--dlg-iterations", type=int, default=2000)
    parser.add_argument("--ig-iterations", type=int, default=1500)
    parser.add_argument("--optimiser", default="adam")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--out", default=RESULTS_DIR)
    parser.add_argument("--name", default=None, help="result file name (default training_leakage-<model>[-<norm>])")
    args = parser.parse_args(argv)
    source = get_dataset(args.dataset)
    options = {k: v for k, v in (("norm", args.norm), ("activation", args.activation)) if v}
    model = build_model(args.model, source.input_shape, source.num_classes, **options)
    initial = model.init(jax.random.fold_in(jax.random.key(0), 0x5EED))
    rows = []
    command = " ".join(["python -m benchmarks.training_leakage", *(argv or sys.argv[1:])])
    result_name = args.name or f"training_leakage-{args.model}{'-' + args.norm if args.norm else ''}"

    def save(complete: bool) -> str:
        payload = {"command": command, "settings": vars(args), "complete": complete, "rows": rows,
                   "environment": environment()}
        return write_results(args.out, result_name, payload)

    for batch in args.batch_sizes:
        grid = target_indices(source, batch, None, args.targets)
        rest = np.setdiff1d(np.arange(source.size), grid.reshape(-1))
        x, y = source.examples(rest)
        for amount in args.training:
            training = VictimTraining(**parse_training(amount), optimiser=args.optimiser, learning_rate=args.lr)
            started = time.perf_counter()
            trained = train_victim(model, initial, x, y, training)
            train_seconds = time.perf_counter() - started
            for name in args.attacks:
                iterations = args.dlg_iterations if name == "dlg" else args.ig_iterations
                config = attack_preset(name, restarts=args.restarts, iterations=iterations)
                started = time.perf_counter()
                run = run_dlg(trained.model, source, targets=args.targets, batch_size=batch, config=config,
                              params=trained.params, run=RunOptions(chunk_size=8))
                summary = run.metrics.summary()
                row = {"batch_size": batch, "training": amount, "steps": training.total_steps(len(rest)),
                       "train_accuracy": trained.train_accuracy, "train_seconds": train_seconds,
                       "final_loss": float(trained.loss[-1]) if len(trained.loss) else None,
                       "attack": name, "iterations": iterations, "seconds": time.perf_counter() - started,
                       **{k: summary[k] for k in ("psnr_mean", "success_rate_psnr30", "affine_psnr_mean",
                                                  "affine_success_rate_psnr30", "label_accuracy")}}
                rows.append(row)
                print(f"B={batch} {amount:>5} ({row['steps']} steps, train acc {row['train_accuracy']:.2f}) {name}: "
                      f"PSNR {row['psnr_mean']:.1f} dB, >=30 dB {row['success_rate_psnr30']:.0%}, "
                      f"affine {row['affine_psnr_mean']:.1f} dB, labels {row['label_accuracy']:.0%} "
                      f"({row['seconds']:.0f} s)", flush=True)
                save(complete=False)
    print(f"wrote {save(complete=True)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
