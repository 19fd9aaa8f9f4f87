"""``dlg-jax defend``: defenses against gradient leakage and the privacy-utility trade-off.

    dlg-jax defend sweep     attack x defense x strength -> sweep.json, defense_sweep.png, summary.md
    dlg-jax defend tradeoff  the sweep, plus a model trained with each defense -> training.json, tradeoff.png

Both are resumable: settings already in ``--out``'s JSON files are reused, not rerun.
"""

import argparse
import itertools
import os
import sys

from dlg_jax.commands.attack import ProgressBar, _positive_int, add_attack_options, attack_config_from_args

# Budgets when neither the option nor --quick is given, and with --quick (a smoke run of a few minutes).
STANDARD = {"restarts": 4, "iterations": 2000, "targets": 4, "train_steps": 500, "train_runs": 3,
            "defense": "gaussian,laplacian,prune,precision,dp"}
QUICK = {"restarts": 2, "iterations": 1500, "targets": 2, "train_steps": 100, "train_runs": 2,
         "defense": "gaussian,prune,precision"}
QUICK_STRENGTHS = {"gaussian": (1e-4, 1e-1), "laplacian": (1e-4, 1e-1), "prune": (0.1, 0.3),
                   "precision": ("float16", "int8"), "dp": (0.1,)}


def _add_options(parser: argparse.ArgumentParser, tradeoff: bool) -> None:
    add_attack_options(parser)
    parser.set_defaults(restarts=None, iterations=None)
    parser.add_argument("--attacks", default="dlg", help="attack presets, comma-separated (default: dlg)")
    parser.add_argument("--defense", default=None,
                        help="defenses, comma-separated, from gaussian, laplacian, prune, precision, dp "
                             f"(default: {STANDARD['defense']}; --quick: {QUICK['defense']})")
    parser.add_argument("--strengths", default=None,
                        help="strengths for every listed defense, comma-separated: a variance (noise), a "
                             "ratio (prune), a format (precision: float16, bfloat16, int8, ...), a noise "
                             "multiplier (dp) (default: each defense's own list)")
    parser.add_argument("--prune-scope", default=None, help="prune per tensor or global (default: tensor)")
    parser.add_argument("--dp-clip", type=float, default=None, help="DP per-example clipping norm C (default: 1)")
    parser.add_argument("--targets", type=_positive_int, default=None,
                        help=f"attack the first N batches of the dataset (default: {STANDARD['targets']})")
    parser.add_argument("--out", default="defend-out", help="output directory (default: defend-out)")
    parser.add_argument("--quick", action="store_true",
                        help=f"small budget unless given: {QUICK['restarts']} restarts, {QUICK['iterations']} "
                             f"iterations, {QUICK['targets']} targets, 2 strengths per defense"
                             + (f", {QUICK['train_steps']} training steps" if tradeoff else ""))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if tradeoff:
        parser.add_argument("--train-model", default=None, help="model to train (default: --model)")
        parser.add_argument("--train-norm", default="group", choices=("none", "group"),
                            help="normalisation of a trained resnet (default: group)")
        parser.add_argument("--train-steps", type=_positive_int, default=None,
                            help=f"SGD steps (default: {STANDARD['train_steps']})")
        parser.add_argument("--train-batch-size", type=_positive_int, default=16,
                            help="training minibatch (default: 16)")
        parser.add_argument("--train-lr", type=float, default=0.01, help="SGD learning rate (default: 0.01)")
        parser.add_argument("--train-runs", type=_positive_int, default=None,
                            help=f"independent trainings averaged (default: {STANDARD['train_runs']})")
    parser.set_defaults(handler=run, tradeoff=tradeoff)


def register(subparsers) -> None:
    parser = subparsers.add_parser("defend", help="defenses: attack sweeps and the privacy-utility trade-off",
                                   description=__doc__.split("\n\n")[0])
    modes = parser.add_subparsers(dest="mode", required=True)
    _add_options(modes.add_parser("sweep", help="attack quality vs defense strength",
                                  description="Attack the first --targets batches under every defense and "
                                              "strength; write sweep.json, defense_sweep.png, summary.md."),
                 tradeoff=False)
    _add_options(modes.add_parser("tradeoff", help="the sweep plus test accuracy of models trained with each defense",
                                  description="Run the sweep, train a model with each defense on every step's "
                                              "gradient, write training.json, tradeoff.png, summary.md."),
                 tradeoff=True)


def _resolve(args, name: str):
    """An option's value: given on the command line, else the --quick budget, else the standard one."""
    value = getattr(args, name, None)
    return value if value is not None else (QUICK if args.quick else STANDARD)[name]


def _parse_strength(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _split(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


class _SettingBars:
    """One progress bar per attacked setting."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, ProgressBar(enabled)

    def __call__(self, progress) -> None:
        self.bar(progress)

    def next(self) -> None:
        self.bar.close()
        self.bar = ProgressBar(self.enabled)


def run(args) -> int:
    from dlg_jax.defense_report import join_tradeoff, sweep_plot, sweep_table, tradeoff_plot, tradeoff_table
    from dlg_jax.defenses import format_strength
    from dlg_jax.files import atomic_write_bytes, prepare_output_dir
    from dlg_jax.sweep import grid, run_sweep, run_training_sweep
    from dlg_jax.training import TrainConfig

    args.restarts, args.iterations = _resolve(args, "restarts"), _resolve(args, "iterations")
    budget = attack_config_from_args(args)
    defenses = _split(_resolve(args, "defense"))
    options = {"prune": {} if args.prune_scope is None else {"scope": args.prune_scope},
               "dp": {} if args.dp_clip is None else {"clip": args.dp_clip}}
    if args.strengths is not None:
        strengths = {d: [_parse_strength(s) for s in _split(args.strengths)] for d in defenses}
    elif args.quick:
        strengths = {d: list(QUICK_STRENGTHS.get(d, ())) for d in defenses}
    else:
        strengths = {d: None for d in defenses}
    settings = []
    for defense in defenses:
        for setting in grid(_split(args.attacks), [defense], strengths[defense], options):
            if setting not in settings:
                settings.append(setting)
    settings.sort(key=lambda s: s.defense != "none")  # undefended baselines first
    train_config = None
    if args.tradeoff:
        train_config = TrainConfig(model=args.train_model or args.model, dataset=args.dataset, norm=args.train_norm,
                                   steps=_resolve(args, "train_steps"), batch_size=args.train_batch_size,
                                   learning_rate=args.train_lr, runs=_resolve(args, "train_runs"), seed=args.seed)
    out = prepare_output_dir(args.out)
    model_options = {"activation": args.activation} if args.activation else {}
    data_options = {k: v for k, v in (("split", args.split), ("data_dir", args.data_dir),
                                      ("image_size", args.image_size)) if v is not None}
    bars = _SettingBars(not args.quiet)

    counter = itertools.count(1)

    def report(row, reused):
        bars.next()
        s = row["setting"]
        print(f"[{next(counter)}/{len(settings)}] {s['attack']} {s['defense']} {format_strength(s['strength'])}: "
              f"PSNR {row['psnr_mean']:.1f} dB, SSIM {row['ssim_mean']:.3f}, labels {row['label_accuracy']:.0%}"
              + (" (from sweep.json)" if reused else f" ({row['wall_seconds']:.0f} s)"), file=sys.stderr)

    try:
        rows = run_sweep(settings, os.path.join(out, "sweep.json"), budget, model=args.model, dataset=args.dataset,
                         targets=_resolve(args, "targets"), batch_size=args.batch_size,
                         model_options=model_options, data_options=data_options, progress=bars, on_row=report)
    finally:
        bars.bar.close()
    sweep_plot(os.path.join(out, "defense_sweep.png"), rows,
               title=f"{args.model} on {args.dataset}: attack quality vs defense strength "
                     f"({_resolve(args, 'targets')} targets, {args.restarts} restarts, {args.iterations} iterations)")
    summary = ["## Defense sweep", "", sweep_table(rows), ""]
    print(sweep_table(rows))
    if args.tradeoff:
        def trained(row, reused):
            s = row["setting"]
            print(f"trained with {s['defense']} {format_strength(s['strength'])}: test accuracy "
                  f"{row['test_accuracy_mean']:.1%}" + (" (from training.json)" if reused else
                                                         f" ({row['seconds']:.0f} s)"), file=sys.stderr)

        training_rows = run_training_sweep(settings, os.path.join(out, "training.json"), train_config, on_row=trained)
        joined = join_tradeoff(rows, training_rows)
        tradeoff_plot(os.path.join(out, "tradeoff.png"), joined,
                      title=f"Privacy-utility trade-off: {train_config.model} trained on {args.dataset} "
                            f"({train_config.steps} steps), {args.model} attacked")
        summary += ["## Privacy-utility trade-off", "", tradeoff_table(joined), ""]
        print()
        print(tradeoff_table(joined))
    atomic_write_bytes(os.path.join(out, "summary.md"), "\n".join(summary).encode())
    return 0
