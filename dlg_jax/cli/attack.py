"""``dlg-jax attack``: run DLG on dataset images and write the grid, the convergence plot and metrics.json."""

import argparse
import os
import time

from dlg_jax.cli.options import (
    ProgressBar,
    TrainingBar,
    add_compilation_cache,
    add_memory_budget,
    nonnegative_float,
    nonnegative_int,
    positive_float,
    positive_int,
    wrote,
)
from dlg_jax.environment import environment


def add_attack_options(parser: argparse.ArgumentParser) -> None:
    """The options shared by every command that runs attacks (model, data, solver, budget, seed)."""
    from dlg_jax.attack.engine import BATCH_UPDATES, DUMMY_INITS, AttackConfig
    from dlg_jax.attack.precision import PRECISIONS
    from dlg_jax.attack.presets import attack_preset
    from dlg_jax.attack.solvers import SOLVER_NAMES
    from dlg_jax.models import ACTIVATIONS, MODEL_NAMES

    defaults = AttackConfig()
    dlg, ig = attack_preset("dlg"), attack_preset("ig")
    parser.add_argument("--model", default="lenet", choices=MODEL_NAMES, help="network (default: lenet, DLG's)")
    parser.add_argument("--activation", default=None, choices=tuple(ACTIVATIONS),
                        help="resnet/mlp activation (default: the model's own)")
    parser.add_argument("--dataset", default="colour",
                        help="embedded: colour, digits, faces; prepared tfds: mnist, cifar10, cifar100, "
                             "svhn_cropped, lfw; or a path: a folder of images with one sub-folder per class, or an "
                             ".npz with arrays x [N, H, W, C] and y [N] (default: colour)")
    parser.add_argument("--split", default=None, help="dataset split (tfds sets; default: the test split)")
    parser.add_argument("--data-dir", default=None, help="tfds data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="resize to S x S (lfw: 32 or 64; embedded sets: 8 to 256, interpolated from 32x32 or 28x28)")
    parser.add_argument("--batch-size", type=positive_int, default=1, help="private images per shared gradient")
    parser.add_argument("--restarts", type=positive_int, default=None,
                        help=f"random restarts per target (default: the attack's, dlg {dlg.restarts}, ig {ig.restarts})")
    parser.add_argument("--iterations", type=positive_int, default=None,
                        help=f"iteration budget per restart (default: dlg {dlg.iterations}, ig {ig.iterations})")
    parser.add_argument("--solver", default=None, choices=SOLVER_NAMES,
                        help=f"inner optimiser (default: dlg {dlg.solver.name}, ig signed {ig.solver.name})")
    parser.add_argument("--history-size", type=positive_int, default=None,
                        help=f"L-BFGS memory (default: {defaults.solver.history_size})")
    parser.add_argument("--learning-rate", type=positive_float, default=None,
                        help=f"adam step size (default: {defaults.solver.learning_rate})")
    parser.add_argument("--damping", type=positive_float, default=None,
                        help=f"lm/lm-cg: initial Levenberg-Marquardt damping lambda, finite and > 0 "
                             f"(default: {defaults.solver.damping})")
    parser.add_argument("--cg-steps", type=positive_int, default=None,
                        help=f"lm-cg: conjugate-gradient steps per damped solve, >= 1 "
                             f"(default: {defaults.solver.cg_steps})")
    parser.add_argument("--tolerance", type=nonnegative_float, default=None,
                        help=f"a restart has converged once its objective is <= this x |dW|^2 (l2) "
                             f"(default: {defaults.tolerance})")
    parser.add_argument("--chunk-size", type=positive_int, default=None,
                        help="problems (targets x restarts) per device in one vmapped batch "
                             "(default: 16 on CPU, 1024 on GPU/TPU)")
    parser.add_argument("--devices", type=positive_int, default=None,
                        help="shard the problems over this many local devices (default: all)")
    parser.add_argument("--precision", default=defaults.precision, choices=PRECISIONS,
                        help="matmul/convolution precision of the victim's gradient and the attack; "
                             "'highest' = full float32, which DLG needs on GPUs (TF32 otherwise) "
                             f"(default: {defaults.precision})")
    add_compilation_cache(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights and the dummies")
    parser.add_argument("--float64", action="store_true", help="run in double precision")
    parser.add_argument("--batch-update", default=None, choices=BATCH_UPDATES,
                        help="joint: every slot each iteration (default); cyclic: slot i mod B at iteration i (DLG)")
    parser.add_argument("--dummy-init", default=None, choices=DUMMY_INITS,
                        help="dummy images ~ N(0, 1) (default, DLG) or ~ U(0, 1)")
    parser.add_argument("--box", type=float, nargs=2, metavar=("LOW", "HIGH"), default=None,
                        help="keep the dummy images in [LOW, HIGH], e.g. the data range 0 1: L-BFGS and Adam clip "
                             "after every step, Levenberg-Marquardt takes free-variable steps (default: the "
                             "preset's; dlg: none, ig: 0 1)")
    parser.add_argument("--bn-prior", type=nonnegative_float, default=None,
                        help="weight of GradInversion's batch-norm statistics prior (models with batch norm; "
                             "reference statistics from the dataset's other images) (default: 0)")
    parser.add_argument("--group-consistency", type=nonnegative_float, default=None,
                        help="weight of GradInversion's group consistency: each restart pulled toward the mean "
                             "of its target's restarts, updated every 100 iterations; needs --restarts >= 2 "
                             "(default: 0)")


def _register_common_attack(subparsers):
    from dlg_jax.attack.labels import LABEL_STRATEGIES
    from dlg_jax.attack.presets import ATTACK_NAMES
    from dlg_jax.models import NORMS
    from dlg_jax.victim.threat_models import AGGREGATES
    from dlg_jax.victim.training import VICTIM_OPTIMISERS

    parser = subparsers.add_parser("attack", help="reconstruct private images from their shared gradient",
                                   description="Run DLG (or Inverting Gradients) on dataset images and write "
                                               "reconstruction.png, convergence.png and metrics.json to --out.")
    add_attack_options(parser)
    parser.add_argument("--attack", default="dlg", choices=ATTACK_NAMES, metavar="ATTACK",
                        help="dlg (Zhu et al. 2019), ig (Inverting Gradients, Geiping et al. 2020) or a variant: "
                             f"{', '.join(ATTACK_NAMES[2:])} (default: dlg)")
    parser.add_argument("--norm", default=None, choices=NORMS,
                        help="resnet normalisation (default: none); batch: batch norm from the batch's own "
                             "statistics, as a client computes its gradient in training mode")
    parser.add_argument("--labels", default=None, choices=LABEL_STRATEGIES,
                        help="label strategy (default: the attack's, dlg joint, ig auto)")
    parser.add_argument("--coarse", type=positive_int, nargs="+", metavar="F", default=None,
                        help="continuation from low resolution: first attack images of 1/F the height and width "
                             "(upsampled for the model), then each next factor, then the full size; strictly "
                             "decreasing factors >= 2 that divide the image size, e.g. 4 2 (default: none)")
    parser.add_argument("--coarse-iterations", type=positive_int, default=None,
                        help="iterations of each coarse stage (default: 1000)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--index", type=int, nargs="+", default=None,
                       help="dataset index of each target's first image (default: 0)")
    which.add_argument("--targets", type=positive_int, default=None,
                       help="attack the first N batches of the dataset")
    threat = parser.add_argument_group(
        "threat model", "what the attacker sees (default: the target's own gradient of one step); "
                        "docs/findings/threat-models.md")
    threat.add_argument("--clients", type=int, default=1,
                        help="K >= 1: the attacker sees the aggregate of K clients' shares, the target's and "
                             "K-1 other batches of the dataset (default: 1)")
    threat.add_argument("--aggregate", default="mean", choices=AGGREGATES,
                        help="how the K clients' shares are combined (default: mean, as FedAvg / all-reduce)")
    threat.add_argument("--local-steps", type=int, default=1,
                        help="S >= 1: FedAvg, each client runs S SGD steps on its batch and shares its weights; "
                             "the attacker matches (W - W_S) / (S * lr) at the original W (default: 1, FedSGD)")
    threat.add_argument("--local-lr", type=positive_float, default=0.1,
                        help="the clients' local SGD learning rate lr > 0 (default: 0.1; used when S > 1)")
    parser.add_argument("--classes", type=positive_int, default=None,
                        help="the model's outputs K, at least the dataset's classes (default: the dataset's; "
                             "DLG's CIFAR LeNet has 100)")
    add_memory_budget(parser)
    victim = parser.add_argument_group(
        "victim weights", "the attacked model's weights (default: freshly initialised from --seed)")
    victim.add_argument("--checkpoint", default=None,
                        help="load the weights: a .msgpack file (flax; what training writes), an orbax checkpoint "
                             "directory, or a .pt/.pth PyTorch state_dict of the model's twin (lenet, resnets)")
    amount = victim.add_mutually_exclusive_group()
    amount.add_argument("--train-steps", type=nonnegative_int, default=None,
                        help="train the victim N optimiser steps on the dataset's images outside the targets' "
                             "batches before the attack; writes victim.msgpack to --out")
    amount.add_argument("--train-epochs", type=nonnegative_int, default=None,
                        help="as --train-steps, in passes over those images")
    victim.add_argument("--train-optimizer", default="sgd", choices=VICTIM_OPTIMISERS,
                        help="training optimiser (default: sgd with momentum 0.9)")
    victim.add_argument("--train-lr", type=positive_float, default=0.05, help="training learning rate (default: 0.05)")
    victim.add_argument("--train-batch-size", type=positive_int, default=32,
                        help="training minibatch size (default: 32)")
    parser.add_argument("--out", default="dlg-out", help="output directory (default: dlg-out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run)
    return parser


register = _register_common_attack


def attack_config_from_args(args, **overrides):
    """The :class:`AttackConfig` of the preset ``args.attack`` (``dlg`` where a command has no
    ``--attack``) with the options given on the command line, then ``overrides``, on top."""
    import dataclasses

    import jax

    from dlg_jax.attack.compile_cache import enable_compilation_cache
    from dlg_jax.attack.presets import attack_preset
    from dlg_jax.attack.solvers import SolverConfig

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    if not args.no_compilation_cache:
        enable_compilation_cache()
    options = {name: getattr(args, name, None) for name in ("restarts", "iterations", "tolerance", "labels",
                                                   "batch_update", "dummy_init", "bn_prior", "group_consistency",
                                                   "coarse", "coarse_iterations")}
    options = {name: value for name, value in options.items() if value is not None}
    if getattr(args, "box", None) is not None:
        options["box"] = tuple(args.box)
    options.update(precision=args.precision, seed=args.seed, dtype="float64" if args.float64 else "float32")
    options.update(overrides)
    config = attack_preset(getattr(args, "attack", "dlg"), **options)
    solver_options = {name: getattr(args, name, None) for name in ("history_size", "learning_rate", "damping",
                                                                    "cg_steps")}
    solver_options = {name: value for name, value in solver_options.items() if value is not None}
    if "solver" in overrides or (args.solver is None and not solver_options):
        return config
    if args.solver is not None and args.solver != config.solver.name:
        solver = SolverConfig(args.solver, **solver_options)
    else:
        solver = dataclasses.replace(config.solver, **solver_options)
    return dataclasses.replace(config, solver=solver)


def run_options_from_args(args, config):
    """How the attack ``config`` runs: the command line's chunk size, devices and memory budget; a
    least-squares solver checks for convergence after every iteration (each costs a Jacobian)."""
    from dlg_jax.attack.engine import RunOptions

    return RunOptions(chunk_size=args.chunk_size, devices=args.devices, memory_budget=args.memory_budget,
                      **({"block": 1} if config.solver.least_squares else {}))


def run(args) -> int:
    import dataclasses

    from dlg_jax.files import prepare_output_dir
    from dlg_jax.models.checkpoints import save_checkpoint
    from dlg_jax.pipeline import run_dlg, save_run
    from dlg_jax.victim.threat_models import ThreatModel
    from dlg_jax.victim.training import VictimTraining

    threat = ThreatModel(clients=args.clients, aggregate=args.aggregate, local_steps=args.local_steps,
                         local_lr=args.local_lr)
    config = attack_config_from_args(args)
    training = None
    if args.train_steps is not None or args.train_epochs is not None:
        training = VictimTraining(steps=args.train_steps, epochs=args.train_epochs, batch_size=args.train_batch_size,
                                  learning_rate=args.train_lr, optimiser=args.train_optimizer, seed=args.seed)
    out = prepare_output_dir(args.out)
    model_options = {name: getattr(args, name) for name in ("activation", "norm") if getattr(args, name)}
    bar, training_bar = ProgressBar(not args.quiet), TrainingBar(not args.quiet)
    started = time.perf_counter()
    try:
        result = run_dlg(args.model, args.dataset, indices=args.index, targets=args.targets,
                         batch_size=args.batch_size, config=config, run=run_options_from_args(args, config),
                         model_options=model_options,
                         split=args.split, data_dir=args.data_dir, image_size=args.image_size, progress=bar,
                         threat=threat, num_classes=args.classes, checkpoint=args.checkpoint, training=training,
                         training_progress=training_bar)
    finally:
        training_bar.close()
        bar.close()
    wall = time.perf_counter() - started
    attack = result.result
    victim = {"checkpoint": args.checkpoint, "training": None}
    if training is not None:
        save_checkpoint(os.path.join(out, "victim.msgpack"), result.model, result.params)
        victim["training"] = {**dataclasses.asdict(training), "description": training.describe(),
                              "steps_run": int(len(result.training_loss)),
                              "final_loss": float(result.training_loss[-1]) if len(result.training_loss) else None,
                              "checkpoint": "victim.msgpack"}
    payload = save_run(result, out, {
        "command": "attack", "model": args.model, "dataset": args.dataset, "classes": result.model.num_classes,
        "victim": victim,
        "timing": {"wall_seconds": wall, "compile_seconds": attack.compile_seconds,
                   "run_seconds": attack.run_seconds, "restart_iterations": attack.restart_iterations,
                   "restart_iterations_per_second": attack.restart_iterations / max(attack.run_seconds, 1e-9)},
        "environment": environment(),
    })
    _print_table(payload["targets"], payload)
    wrote([os.path.join(out, name) for name in ("reconstruction.png", "convergence.png", "metrics.json")]
          + ([os.path.join(out, "victim.msgpack")] if training is not None else []))
    return 0


def _print_table(rows, payload) -> None:
    print(f"{'target':>6} {'indices':>10} {'label':>9} {'PSNR dB':>8} {'SSIM':>6} {'MSE':>9} "
          f"{'loss':>9} {'conv/fail':>9}")
    for t, row in enumerate(rows):
        indices = ",".join(map(str, row["indices"]))
        labels = f"{','.join(map(str, row['recovered_labels']))}/{','.join(map(str, row['true_labels']))}"
        print(f"{t:>6} {indices:>10} {labels:>9} {row['psnr']:>8.2f} {row['ssim']:>6.3f} {row['mse']:>9.2e} "
              f"{row['best_loss']:>9.2e} {row['converged_restarts']:>4}/{row['failed_restarts']:<4}")
    summary, timing = payload["summary"], payload["timing"]
    print(f"threat model: {payload['threat_model']['description']}")
    print(f"mean PSNR {summary['psnr_mean']:.2f} dB, label accuracy {summary['label_accuracy']:.0%}, "
          f"success (PSNR >= 30 dB) {summary['success_rate_psnr30']:.0%}; wall {timing['wall_seconds']:.1f} s "
          f"(compile {timing['compile_seconds']:.1f} s, {timing['restart_iterations_per_second']:.0f} "
          f"restart-iterations/s)")
