"""``dlg-jax defend``: defenses against gradient leakage and the privacy-utility trade-off.

    dlg-jax defend sweep     attack x defense x strength -> store/, defense_sweep.png, summary.md
    dlg-jax defend tradeoff  the sweep, plus a model trained with each defense -> training-store/, tradeoff.png

The sweep is the shipped ``defenses`` study (``dlg_jax/experiments/specs/defenses.toml``: its budgets, defenses
and strengths, standard and ``--quick``) with this command's options on top, run by the one sweep loop
(:mod:`dlg_jax.experiments.sweep`) into results stores under ``--out`` (:mod:`dlg_jax.experiments.store`), so
both are resumable: points already stored are reused, not rerun, and ``dlg-jax report OUT/store`` reads the
same rows.
"""

import argparse
import itertools
import json
import os
import sys

from dlg_jax.cli.attack import add_attack_options
from dlg_jax.cli.options import RunBars, add_memory_budget, plain, positive_float, positive_int

# The training budgets of the trade-off (the attack's are the defenses study's), standard and with --quick.
TRAINING = {"standard": {"train_steps": 500, "train_runs": 3}, "quick": {"train_steps": 100, "train_runs": 2}}


def _study(quick: bool) -> tuple[dict, list]:
    """The shipped defenses study's budget (``targets``, ``restarts``, ``iterations``) and ``defense``
    entries, standard or ``quick``."""
    import tomllib

    from dlg_jax.experiments.grid import spec_path

    with open(spec_path("defenses"), "rb") as handle:
        document = tomllib.load(handle)
    layers = [document] + ([document["quick"]] if quick else [])
    budget = {k: v for layer in layers for k, v in layer.get("budget", {}).items()}
    defenses = [layer["axes"]["defense"] for layer in layers if "defense" in layer.get("axes", {})][-1]
    return budget, defenses


def _add_options(parser: argparse.ArgumentParser, tradeoff: bool) -> None:
    add_attack_options(parser)
    parser.set_defaults(restarts=None, iterations=None)
    parser.add_argument("--attacks", nargs="+", default=["dlg"], help="attack presets, one or more (default: dlg)")
    parser.add_argument("--defense", nargs="+", default=None,
                        help="defenses, one or more of gaussian, laplacian, prune, precision, dp, soteria "
                             "(default: the defenses study's)")
    parser.add_argument("--strengths", nargs="+", default=None,
                        help="strengths for every listed defense, one or more: a variance (noise), a "
                             "ratio (prune), a format (precision: float16, bfloat16, int8, ...), a noise "
                             "multiplier (dp), a fraction of representation features pruned (soteria, 0 to <1) "
                             "(default: each defense's own list)")
    parser.add_argument("--prune-scope", default=None, help="prune per tensor or global (default: tensor)")
    add_memory_budget(parser)
    parser.add_argument("--dp-clip", type=positive_float, default=None, help="DP per-example clipping norm C (default: 1)")
    parser.add_argument("--targets", type=positive_int, default=None,
                        help="attack the first N batches of the dataset (default: the defenses study's)")
    parser.add_argument("--out", default="defend-out", help="output directory (default: defend-out)")
    parser.add_argument("--quick", action="store_true",
                        help="the defenses study's small budget and strengths unless given"
                             + (f", {TRAINING['quick']['train_steps']} training steps" if tradeoff else ""))
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    if tradeoff:
        parser.add_argument("--train-model", default=None, help="model to train (default: --model)")
        parser.add_argument("--train-norm", default="group", choices=("none", "group"),
                            help="normalisation of a trained resnet (default: group)")
        parser.add_argument("--train-steps", type=positive_int, default=None,
                            help=f"SGD steps (default: {TRAINING['standard']['train_steps']})")
        parser.add_argument("--train-batch-size", type=positive_int, default=16,
                            help="training minibatch (default: 16)")
        parser.add_argument("--train-lr", type=positive_float, default=0.01, help="SGD learning rate (default: 0.01)")
        parser.add_argument("--train-runs", type=positive_int, default=None,
                            help=f"independent trainings averaged (default: {TRAINING['standard']['train_runs']})")
    parser.set_defaults(handler=run, tradeoff=tradeoff)


def register(subparsers) -> None:
    parser = subparsers.add_parser("defend", help="defenses: attack sweeps and the privacy-utility trade-off",
                                   description=plain(__doc__.split("\n\n")[0]))
    modes = parser.add_subparsers(dest="mode", required=True)
    _add_options(modes.add_parser("sweep", help="attack quality vs defense strength",
                                  description="Attack the first --targets batches under every defense and "
                                              "strength; write store/, defense_sweep.png, summary.md."),
                 tradeoff=False)
    _add_options(modes.add_parser("tradeoff", help="the sweep plus test accuracy of models trained with each defense",
                                  description="Run the sweep, train a model with each defense on every step's "
                                              "gradient, write training-store/, tradeoff.png, summary.md."),
                 tradeoff=True)


def _resolve(args, name: str, budget: dict):
    """An option's value: given on the command line, else the study's ``budget``, else the training budget."""
    value = getattr(args, name, None)
    if value is not None:
        return value
    return budget[name] if name in budget else TRAINING["quick" if args.quick else "standard"][name]


def _parse_strength(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def _defense_entries(args, entries: list) -> list:
    """The grid's ``defense`` axis: the undefended baseline, then each defense of ``--defense`` (else of
    the study's ``entries``) at ``--strengths`` (else at the study's strengths for it, else its defaults)."""
    study = {entry if isinstance(entry, str) else entry["name"]: entry for entry in entries}
    names = args.defense if args.defense is not None else list(study)
    options = {"prune": {} if args.prune_scope is None else {"scope": args.prune_scope},
               "dp": {} if args.dp_clip is None else {"clip": args.dp_clip}}
    axis = ["none"]
    for defense in dict.fromkeys(d for d in names if d != "none"):
        entry = study.get(defense, defense)
        entry = {**({"name": entry} if isinstance(entry, str) else entry), **options.get(defense, {})}
        if args.strengths is not None:
            entry["strength"] = [_parse_strength(s) for s in args.strengths]
        axis.append(entry)
    return axis


def run(args) -> int:
    import jax

    from dlg_jax.attack.compile_cache import enable_compilation_cache
    from dlg_jax.experiments.defense_report import (
        join_tradeoff,
        sweep_plot_figure,
        sweep_table,
        tradeoff_plot,
        tradeoff_table,
    )
    from dlg_jax.experiments.grid import expand
    from dlg_jax.experiments.store import Store
    from dlg_jax.experiments.studies import point_summaries
    from dlg_jax.experiments.sweep import TrainingPoint, run_grid, run_points, training_rows
    from dlg_jax.files import atomic_save_figure, atomic_write_bytes, prepare_output_dir
    from dlg_jax.victim.defenses import format_strength
    from dlg_jax.victim.training import TrainConfig

    if args.float64:
        jax.config.update("jax_enable_x64", True)
    if not args.no_compilation_cache:
        enable_compilation_cache()
    study_budget, study_defenses = _study(args.quick)
    args.restarts, args.iterations = _resolve(args, "restarts", study_budget), _resolve(args, "iterations", study_budget)
    targets = _resolve(args, "targets", study_budget)
    budget = {name: getattr(args, name) for name in ("restarts", "iterations", "tolerance", "chunk_size", "solver",
                                                      "history_size", "learning_rate")
              if getattr(args, name) is not None}
    dataset = {"name": args.dataset, **{k: v for k, v in (("split", args.split), ("data_dir", args.data_dir),
                                                         ("image_size", args.image_size)) if v is not None}}
    model = {"name": args.model, **({"activation": args.activation} if args.activation else {})}
    axes = {"attack": args.attacks, "defense": _defense_entries(args, study_defenses),
            "model": model, "dataset": dataset, "batch_size": args.batch_size, "targets": targets,
            "seed": args.seed, "dtype": "float64" if args.float64 else "float32", "precision": args.precision,
            **({"devices": args.devices} if args.devices is not None else {})}
    points = sorted(expand(axes, budget).points, key=lambda p: p.defense != "none")  # undefended baselines first
    train_config = None
    if args.tradeoff:
        train_config = TrainConfig(model=args.train_model or args.model, dataset=args.dataset, norm=args.train_norm,
                                   steps=_resolve(args, "train_steps", {}), batch_size=args.train_batch_size,
                                   learning_rate=args.train_lr, runs=_resolve(args, "train_runs", {}), seed=args.seed)
    out = prepare_output_dir(args.out)
    store = Store(os.path.join(out, "store"))
    bars = RunBars(not args.quiet)
    bars.next()
    counter = itertools.count(1)

    def report(point, rows):
        bars.next()
        psnr = sum(r["psnr"] for r in rows) / len(rows) if rows else None
        print(f"[{next(counter)}/{len(points)}] {point.attack} {point.defense} {format_strength(point.strength)}: "
              + ("in the store" if rows is None else
                 f"PSNR {psnr:.1f} dB, labels {sum(r['label_accuracy'] for r in rows) / len(rows):.0%} "
                 f"({rows[0]['point_wall_seconds']:.0f} s)"), file=sys.stderr)

    try:
        run_grid(points, store, resume=True, memory_budget=args.memory_budget, progress=bars, on_point=report)
    finally:
        bars.close()
    order = {p.id: i for i, p in enumerate(points)}
    rows = point_summaries(sorted((r for r in store.rows() if r["point_id"] in order),
                                  key=lambda r: (order[r["point_id"]], r["target"])))
    atomic_save_figure(os.path.join(out, "defense_sweep.png"), sweep_plot_figure(
        rows, title=f"{args.model} on {args.dataset}: attack quality vs defense strength "
                    f"({targets} targets, {args.restarts} restarts, {args.iterations} iterations)"))
    summary = ["## Defense sweep", "", sweep_table(rows), ""]
    print(sweep_table(rows))
    if args.tradeoff:
        training = list({(p.defense, p.strength, p.defense_options): TrainingPoint(
            p.defense, p.strength, p.defense_options, train_config) for p in points}.values())

        def trained(point, rows):
            print(f"trained with {point.defense} {format_strength(point.strength)}: "
                  + ("in the store" if rows is None else
                     f"test accuracy {rows[0]['test_accuracy_mean']:.1%} ({rows[0]['seconds']:.0f} s)"), file=sys.stderr)

        training_store = Store(os.path.join(out, "training-store"))
        run_points(training_store, training, training_rows, on_point=trained)
        wanted = {p.id for p in training}
        training_results = [{**row, "setting": json.loads(row["point"])} for row in training_store.rows()
                            if row["point_id"] in wanted]
        joined = join_tradeoff(rows, training_results)
        tradeoff_plot(os.path.join(out, "tradeoff.png"), joined,
                      title=f"Privacy-utility trade-off: {train_config.model} trained on {args.dataset} "
                            f"({train_config.steps} steps), {args.model} attacked")
        summary += ["## Privacy-utility trade-off", "", tradeoff_table(joined), ""]
        print()
        print(tradeoff_table(joined))
    atomic_write_bytes(os.path.join(out, "summary.md"), "\n".join(summary).encode())
    return 0
