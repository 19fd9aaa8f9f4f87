"""``dlg-jax experiment``: the label, batch and attack-comparison experiments (:mod:`dlg_jax.experiments.studies`).

    dlg-jax experiment labels  [--quick]   DLG vs iDLG label accuracy per embedded dataset
    dlg-jax experiment batch   [--quick]   batch recovery per B, method and dataset
    dlg-jax experiment compare [--quick]   PSNR of DLG vs Inverting Gradients, LeNet and ResNets
    dlg-jax experiment threat  [--quick]   DLG's PSNR vs K aggregated clients and FedAvg local steps S
    dlg-jax experiment resolution [--quick] DLG and IG success vs image size 16 to 128 (faces, colour)
    dlg-jax experiment all     [--quick]   all of them in turn

Each writes ``<name>.json``, ``<name>.png`` and ``<name>.md`` to ``--out`` and prints the table;
``dlg-jax experiment NAME --help`` lists the options that experiment reads.
"""


from dlg_jax.cli.options import (
    RunBars,
    add_memory_budget,
    nonnegative_float,
    positive_float,
    positive_int,
)
from dlg_jax.environment import environment

# Which experiments read each selection option (the rest are shared by all); ``all`` takes only the shared ones.
SELECTIONS = {
    "datasets": ("labels", "batch", "compare", "threat", "resolution"),
    "batch_sizes": ("batch",), "methods": ("batch", "compare", "threat", "resolution"), "models": ("batch", "compare"),
    "classes": ("batch",), "tolerance": ("batch",), "clients": ("threat",), "local_steps": ("threat",),
    "aggregate": ("threat",), "local_lr": ("threat",), "sizes": ("resolution",),
}
SUMMARIES = {
    "labels": "DLG vs iDLG label accuracy per embedded dataset",
    "batch": "batch recovery per batch size B, method and dataset",
    "compare": "PSNR of DLG vs Inverting Gradients, LeNet and ResNets",
    "threat": "DLG's PSNR vs K aggregated clients and FedAvg local steps S",
    "resolution": "DLG and IG success vs image size 16 to 128",
    "all": "every experiment in turn, each at its default settings",
}


def register(subparsers):
    from dlg_jax.experiments.studies import EXPERIMENT_NAMES, QUICK, STANDARD

    def budget_text(name):
        def text(budget):
            return f"{budget.targets}x{budget.restarts}x{budget.iterations}"
        if name == "compare":
            return ", ".join(f"{k} {text(STANDARD[name][k])} (quick {text(QUICK[name][k])})" for k in STANDARD[name])
        return f"{text(STANDARD[name])} (quick {text(QUICK[name])})"

    parser = subparsers.add_parser(
        "experiment", help="reproduce the DLG / iDLG / Inverting Gradients result shapes",
        description="Run an experiment and write <name>.json, <name>.png and <name>.md to --out. "
                    "dlg-jax experiment NAME --help lists its options.")
    experiments = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in (*EXPERIMENT_NAMES, "all"):
        budget = f" Budget (targets x restarts x iterations): {budget_text(name)}." if name != "all" else ""
        sub = experiments.add_parser(name, help=SUMMARIES[name], description=SUMMARIES[name] + "." + budget)
        _add_options(sub, name)
        sub.set_defaults(handler=run, **{dest: None for dest, users in SELECTIONS.items() if name not in users})


def _add_options(parser, name: str) -> None:
    """The shared options, then the selection options that experiment ``name`` reads."""
    from dlg_jax.experiments.studies import BATCH_METHODS, METHODS
    from dlg_jax.victim.threat_models import AGGREGATES

    parser.add_argument("--quick", action="store_true", help="the small smoke-test budget (a few minutes)")
    parser.add_argument("--targets", type=positive_int, default=None, help="override the targets per setting")
    parser.add_argument("--restarts", type=positive_int, default=None, help="override the restarts per target")
    parser.add_argument("--iterations", type=positive_int, default=None, help="override the iterations per restart")
    uses = {dest for dest, users in SELECTIONS.items() if name in users}
    if "datasets" in uses:
        defaults = {"labels": "digits colour faces", "batch": "colour digits", "resolution": "faces colour"}
        parser.add_argument("--datasets", nargs="+", default=None,
                            help=f"datasets, one or more (default: {defaults.get(name, 'colour')}"
                                 + ("" if name in defaults else "; only the first is used") + ")")
    if "batch_sizes" in uses:
        parser.add_argument("--batch-sizes", nargs="+", type=positive_int, default=None,
                            help="one or more (default: 1 2 4 8; --quick: 1 2)")
    if "methods" in uses:
        default = {"batch": " ".join(BATCH_METHODS) + "; --quick: dlg dlg-count-uniform", "threat": "dlg"}
        parser.add_argument("--methods", nargs="+", default=None,
                            help=f"attack methods, one or more of {', '.join(METHODS)} "
                                 f"(default: {default.get(name, 'dlg ig')})")
    if "models" in uses:
        parser.add_argument("--models", nargs="+", default=None,
                            help="one or more name[-token...], tokens relu, sigmoid, bn, nostride, dlginit, dlg "
                                 "(DLG's ResNet) (default: " + ("lenet" if name == "batch" else
                                                                "lenet resnet20-sigmoid resnet20-relu") + ")")
    if "classes" in uses:
        parser.add_argument("--classes", type=positive_int, default=None,
                            help="LeNet's number of outputs (default: the dataset's; DLG's CIFAR-100 code: 100)")
    if "tolerance" in uses:
        parser.add_argument("--tolerance", type=nonnegative_float, default=None,
                            help="a restart converges (and stops) at objective <= this x |dW|^2 (default: 1e-8)")
    if "clients" in uses:
        parser.add_argument("--clients", nargs="+", type=positive_int, default=None,
                            help="numbers of clients K, one step each (default: 1 2 4 8)")
        parser.add_argument("--local-steps", nargs="+", type=positive_int, default=None,
                            help="FedAvg local steps S of one client (default: 1 2 5 10)")
        parser.add_argument("--aggregate", default=None, choices=AGGREGATES,
                            help="how the K clients' gradients are combined (default: mean)")
        parser.add_argument("--local-lr", type=positive_float, default=None,
                            help="the FedAvg client's SGD learning rate (default: 0.1)")
    if "sizes" in uses:
        parser.add_argument("--sizes", nargs="+", type=positive_int, default=None,
                            help="image sizes S (S x S; embedded sets: 8 to 256; default: 16 32 64 128)")
    parser.add_argument("--float64", action="store_true", help="run in double precision")
    parser.add_argument("--chunk-size", type=positive_int, default=None,
                        help="problems (target x restart) per vmapped batch (default: 16; on a GPU: all of them)")
    add_memory_budget(parser)
    parser.add_argument("--seed", type=int, default=0, help="seed of the model weights and the dummies")
    parser.add_argument("--out", default="experiments-out", help="output directory (default: experiments-out)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def run(args) -> int:
    from dlg_jax.experiments.studies import (
        EXPERIMENT_NAMES,
        experiment_table,
        run_experiment,
        save_experiment,
    )
    from dlg_jax.files import prepare_output_dir

    prepare_output_dir(args.out)
    if args.float64:
        import jax

        jax.config.update("jax_enable_x64", True)
    # the selection options this experiment has (the others are left to run_experiment's defaults)
    selections = {("num_classes" if dest == "classes" else dest): getattr(args, dest) for dest in SELECTIONS
                  if getattr(args, dest) is not None}
    bars = RunBars(not args.quiet)
    names = EXPERIMENT_NAMES if args.name == "all" else (args.name,)
    try:
        for name in names:
            result = run_experiment(name, quick=args.quick, targets=args.targets, restarts=args.restarts,
                                    iterations=args.iterations, seed=args.seed,
                                    dtype="float64" if args.float64 else "float32", chunk_size=args.chunk_size,
                                    memory_budget=args.memory_budget, log=bars.next, progress=bars,
                                    **selections)
            bars.close()
            paths = save_experiment(result, args.out, {"environment": environment()})
            print(f"## {name} ({result.payload['wall_seconds']:.0f} s) -> {', '.join(paths)}\n")
            print(experiment_table(result))
    finally:
        bars.close()
    return 0
