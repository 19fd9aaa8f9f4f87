"""Scaling: objective throughput across models (LeNet, ResNet-20) and batch sizes ``B = 1, 2, 4, 8``.

For each model and batch size, ``R`` restarts of one target (``B`` colour images) are evaluated as in
:mod:`benchmarks.objective_throughput` (``J`` and ``grad_z J`` per restart, in restart-evaluations/s):

- ``jax-patches``: the library's default model (convolutions as patches + matmul), reverse-over-forward;
- ``jax-lax``: the same weights with ``lax.conv_general_dilated`` convolutions (the reference layer);
- ``torch-eager`` / ``torch-func`` / ``torch-compile``: the PyTorch twin
  (:func:`benchmarks.torch_reference.twin`; for ResNet-20 a ``torch.nn`` CIFAR ResNet without
  normalisation, option-A shortcuts, same weights) on ``--device``; ``torch-compile`` is the
  ``torch.func`` objective through ``torch.compile`` (compile time reported on its own).

LeNet keeps DLG's 100-class head; ResNet-20 has 10 classes and ReLU (the model's default).

On a GPU/TPU backend the default restart count is :data:`ACCELERATOR_RESTARTS`.

    python -m benchmarks.scaling [--quick] [--models lenet resnet20] [--batch-sizes 1 2 4 8] [--restarts 8] [--device cpu]
"""

from benchmarks import common
from benchmarks.objective_throughput import (
    TORCH_CANDIDATES,
    JaxProgram,
    measure_objective,
)

NAME = "scaling"
MODELS = ("lenet", "resnet20")
JAX_CANDIDATES = ("jax-patches", "jax-lax")
CANDIDATES = JAX_CANDIDATES + TORCH_CANDIDATES
BATCH_SIZES = (1, 2, 4, 8)
QUICK_BATCH_SIZES = (1, 8)
MAX_BATCH = 64
MAX_RESTARTS = 8192
ACCELERATOR_RESTARTS = 512


def _variants(problem, candidates) -> dict:
    """``{candidate: JaxProgram}`` for the JAX candidates; ``jax-lax`` rebuilds
    ``problem``'s model with ``lax`` convolutions (same parameter tree, so the same weights)."""
    from dlg_jax.models import build_model

    model = problem.model
    models = {"jax-patches": model,
              "jax-lax": build_model(model.name, model.input_shape, model.num_classes, conv_implementation="lax")}
    return {name: JaxProgram(models[name]) for name in candidates if name in JAX_CANDIDATES}


def _plot(rows, models):
    figure, axes = common.new_figure(5.0 * len(models), 4.0, columns=len(models))
    axes = list(axes) if len(models) > 1 else [axes]
    for ax, model in zip(axes, models):
        mine = [r for r in rows if r["model"] == model]
        for name in dict.fromkeys(r["candidate"] for r in mine):
            line = [r for r in mine if r["candidate"] == name]
            ax.plot([r["batch_size"] for r in line], [r["restart_evaluations_per_second"] for r in line], "o-",
                    label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_ylabel("restart-evaluations / s")
        ax.set_title(f"{model}, R = {mine[0]['restarts']}" if mine else model)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    return figure


def headline(rows: list[dict]) -> dict:
    """Per model and batch size: ``jax-patches``' speedup over each other candidate."""
    out: dict = {}
    for row in rows:
        if row["candidate"] != "jax-patches":
            continue
        others = [r for r in rows if r["model"] == row["model"] and r["batch_size"] == row["batch_size"]
                  and r["candidate"] != "jax-patches"]
        out[f"{row['model']}_B{row['batch_size']}"] = {
            f"speedup_vs_{o['candidate']}": row["restart_evaluations_per_second"] / o["restart_evaluations_per_second"]
            for o in others
        }
    return out


def run(args) -> dict:
    models = args.models or MODELS
    batch_sizes = args.batch_sizes or (QUICK_BATCH_SIZES if args.quick else BATCH_SIZES)
    restarts = args.restarts or (ACCELERATOR_RESTARTS if common.is_accelerator() else (4 if args.quick else 8))
    repeats = args.repeats or (2 if args.quick else 3)
    candidates = args.candidates
    torch_names = [name for name in candidates if name in TORCH_CANDIDATES]
    args.no_torch = not torch_names
    torch, device = common.setup_torch(args)
    peak = common.peak_matmul()
    rows = []
    for model_name in models:
        for batch in batch_sizes:
            problem = common.make_problem(model_name, 1, batch, args.seed)
            new = measure_objective(problem, restarts, repeats, args.seed, _variants(problem, candidates),
                                    torch_names, peak["gflops_best"], device)
            rows += new
            for row in new:
                print(f"{model_name:9s} B={batch:2d} {row['candidate']:13s} "
                      f"{row['restart_evaluations_per_second']:9.1f} restart-evals/s", flush=True)
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "config": {"models": list(models), "batch_sizes": list(batch_sizes), "restarts": restarts,
                   "repeats": repeats, "seed": args.seed, "candidates": list(candidates),
                   "second_order": "reverse_over_forward", "device": str(device) if device is not None else None},
        "precision": common.precision_record(torch, device),
        "environment": common.environment(torch), "peak_matmul": peak, "rows": rows, "headline": headline(rows),
    }
    figure = None if args.no_plot else _plot(rows, models)
    print(f"wrote {common.write_results(args.out, NAME, payload, figure)}")
    return payload


def build_parser():
    parser = common.make_parser(NAME, "Objective throughput across models and batch sizes: JAX vs PyTorch.")
    parser.add_argument("--models", nargs="+", action=common.Distinct, type=common.one_of("model", MODELS), default=None,
                        help=f"one or more of {','.join(MODELS)} (default: all)")
    parser.add_argument("--batch-sizes", nargs="+", action=common.Distinct, type=common.positive_int("batch size", MAX_BATCH), default=None,
                        help=f"batch sizes B (default: {','.join(map(str, BATCH_SIZES))}; quick: "
                             f"{','.join(map(str, QUICK_BATCH_SIZES))})")
    parser.add_argument("--restarts", type=common.positive_int("restarts", MAX_RESTARTS), default=None,
                        help="restarts R per evaluation (default: 8; quick: 4)")
    parser.add_argument("--candidates", nargs="+", action=common.Distinct, type=common.one_of("candidate", CANDIDATES), default=CANDIDATES,
                        help=f"one or more of {','.join(CANDIDATES)}")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
