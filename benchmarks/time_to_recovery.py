"""Time to recovery: wall time and success rate to reconstruct ``T`` private batches, JAX vs PyTorch.

``T`` targets of ``B`` images each (``--batch-size``, default 1; images ``0 .. T*B-1`` of the embedded
``--dataset``, default colour), DLG's LeNet (100-class head, as DLG's CIFAR-100 code),
joint labels, best of ``R`` restarts, both sides from the same weights and the same dummies, both
stopping a restart once its matching loss ``J <= tolerance * ||dW||^2`` (the attacker cannot see the
PSNR; the threshold is relative to the shared gradient's squared norm, as ``AttackConfig.tolerance``):

- JAX: one :func:`dlg_jax.attack.engine.run_attack` call over all ``T x R`` problems (lockstep L-BFGS, one
  evaluation per iteration) with a budget of ``steps x 20`` iterations;
- PyTorch: DLG's own settings, ``torch.optim.LBFGS(lr=1, max_iter=20, history_size=100)`` for up to
  ``steps`` (DLG: 300) ``.step()`` calls, restarts of a target one after another, stopping at the
  first converged restart, targets one after another (``torch-reference``), and the same with the
  closure's objective ``torch.compile``d (``torch-reference-compiled``; compile time reported apart).

PyTorch runs on ``--device`` (default: JAX's device), both sides in full float32. On a GPU/TPU backend
the defaults are GPU-sized: :data:`ACCELERATOR_TARGETS` targets x :data:`ACCELERATOR_RESTARTS` restarts
in one chunk.

The budgets are equal in objective evaluations (``steps x 20`` per restart). A target is *recovered*
when its best restart has every slot at PSNR >= 30 dB after the optimal assignment of slots to images
(:mod:`dlg_jax.metrics`); reported: wall time (JAX with
and without compilation), success rate, label accuracy and the evaluations actually used.

    python -m benchmarks.time_to_recovery [--quick] [--targets 32] [--restarts 4] [--steps 300] [--tolerance 1e-8]
        [--batch-size 1] [--dataset colour|digits] [--device cpu]
"""

import time

import numpy as np

from benchmarks import common

NAME = "time_to_recovery"
TORCH_MAX_ITER = 20
SUCCESS_PSNR = 30.0
MAX_TARGETS = 100
MAX_RESTARTS = 256
MAX_STEPS = 10_000
ACCELERATOR_TARGETS = 8
ACCELERATOR_RESTARTS = 128
TORCH_NAMES = {"torch-reference": False, "torch-reference-compiled": True}  # name: compiled closure


def _scores(problem, images: np.ndarray, labels: np.ndarray) -> dict:
    """Per-target PSNR (mean and worst slot) / label accuracy of ``images [T, B, H, W, C]``, ``labels
    [T, B]`` and the success rate (every slot >= 30 dB)."""
    from dlg_jax.metrics import evaluate

    metrics = evaluate(images, problem.images, labels, problem.labels)
    success = metrics.slot_psnr.min(axis=1) >= SUCCESS_PSNR
    return {"psnr": metrics.psnr.tolist(), "worst_slot_psnr": metrics.slot_psnr.min(axis=1).tolist(),
            "label_accuracy": metrics.label_accuracy.tolist(), "duplicates": metrics.duplicates.tolist(),
            "success": success.tolist(), "success_rate": float(np.mean(success)),
            "psnr_median": float(np.median(metrics.psnr))}


def _jax_run(problem, restarts: int, iterations: int, tolerance: float, seed: int, chunk_size: int | None,
             history_size: int):
    from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
    from dlg_jax.attack.solvers import SolverConfig

    config = AttackConfig(restarts=restarts, iterations=iterations, tolerance=tolerance, seed=seed,
                          solver=SolverConfig(history_size=history_size))
    options = RunOptions(chunk_size=chunk_size, snapshots=0)

    def run() -> dict:
        started = time.perf_counter()
        with common.jax_precision():
            result = run_attack(problem.model, problem.params, problem.target_grads, problem.images.shape[1],
                                config, run=options)
        wall = time.perf_counter() - started
        return {"wall_seconds": wall, "compile_seconds": result.compile_seconds,
                "seconds": wall - result.compile_seconds, "run_seconds": result.run_seconds,
                "evaluations": int(result.evaluations.sum()), "restarts_run": int(result.loss.size),
                "converged_restarts": int(result.converged.sum()), "failed_restarts": int(result.failed.sum()),
                **_scores(problem, result.best_images, result.best_labels)}

    return run


def _torch_run(problem, restarts: int, steps: int, tolerance: float, seed: int, device, compiled: bool):
    """``run() -> measurements`` of DLG's procedure over all targets (warmed up) and the warm-up seconds
    (the compile time when ``compiled``)."""
    from benchmarks import torch_reference as tr

    net = tr.twin(problem.model, problem.params, device)
    targets = len(problem.images)
    start_images, start_logits = common.initial_dummies(seed, targets, restarts, problem.images.shape[1],
                                                        problem.model)

    def run() -> dict:
        attacks = []
        started = time.perf_counter()
        for t in range(targets):
            target = tr.shared_gradient(net, problem.images[t], problem.labels[t])
            threshold = tolerance * sum(float((g ** 2).sum()) for g in target)
            attacks.append(tr.dlg_attack(net, target, start_images[t], start_logits[t], steps=steps,
                                         max_iter=TORCH_MAX_ITER, tolerance=threshold, compiled=compiled))
        wall = time.perf_counter() - started
        best = [a.best_restart for a in attacks]
        images = np.stack([b.images for b in best])
        labels = np.stack([b.label_logits.argmax(-1) for b in best])
        return {"wall_seconds": wall, "seconds": wall, "evaluations": sum(a.evaluations for a in attacks),
                "iterations": sum(a.iterations for a in attacks),
                "restarts_run": sum(len(a.restarts) for a in attacks),
                "converged_restarts": sum(r.converged for a in attacks for r in a.restarts),
                "failed_restarts": sum(r.failed for a in attacks for r in a.restarts),
                **_scores(problem, images, labels)}

    started = time.perf_counter()
    warm_target = tr.shared_gradient(net, problem.images[0], problem.labels[0])
    tr.dlg_restart(net, warm_target, start_images[0, 0], start_logits[0, 0], steps=1, max_iter=2, compiled=compiled)
    return run, time.perf_counter() - started


def _summarise(name: str, samples: list[dict], compile_seconds: float | None = None) -> dict:
    last = samples[-1]
    return {"candidate": name, "seconds_median": common.median([s["seconds"] for s in samples]),
            "torch_compile_seconds": compile_seconds,
            "wall_seconds_median": common.median([s["wall_seconds"] for s in samples]),
            "success_rate": last["success_rate"], "psnr_median": last["psnr_median"],
            "evaluations": last["evaluations"], "samples": samples}


def headline(rows: list[dict]) -> dict:
    """JAX's speedup in wall time (without and with compilation) and both success rates, against the
    eager reference and (``_vs_torch_compile`` keys) the compiled-closure one."""
    by_name = {r["candidate"]: r for r in rows}
    if "jax" not in by_name or "torch-reference" not in by_name:
        return {}
    jax_row, torch_row = by_name["jax"], by_name["torch-reference"]
    out = {"speedup": torch_row["seconds_median"] / jax_row["seconds_median"],
           "speedup_including_compile": torch_row["seconds_median"] / jax_row["wall_seconds_median"],
           "jax_success_rate": jax_row["success_rate"], "torch_success_rate": torch_row["success_rate"],
           "success_rate_not_worse": jax_row["success_rate"] >= torch_row["success_rate"]}
    compiled = by_name.get("torch-reference-compiled")
    if compiled is not None:
        out.update({"speedup_vs_torch_compile": compiled["seconds_median"] / jax_row["seconds_median"],
                    "torch_compile_success_rate": compiled["success_rate"]})
    return out


def _plot(rows, targets: int):
    figure, (times, psnr) = common.new_figure(10.0, 4.0, columns=2)
    for index, row in enumerate(rows):
        sample = row["samples"][-1]
        compile_seconds = sample.get("compile_seconds", 0.0)
        times.bar(index, sample["seconds"], color="tab:blue")
        if compile_seconds:
            times.bar(index, compile_seconds, bottom=sample["seconds"], color="tab:gray")
        times.text(index, sample["wall_seconds"], f"{row['success_rate']:.0%} recovered", ha="center", va="bottom")
        psnr.plot(np.arange(targets), sample["psnr"], "o", label=row["candidate"])
    from matplotlib.patches import Patch

    times.legend(handles=[Patch(color="tab:blue", label="attack"), Patch(color="tab:gray", label="JAX compilation")])
    times.set_xticks(range(len(rows)), [r["candidate"] for r in rows])
    times.set_ylabel("wall seconds")
    times.set_title(f"{targets} targets")
    psnr.axhline(SUCCESS_PSNR, color="k", lw=0.8, ls="--")
    psnr.set_xlabel("target")
    psnr.set_ylabel("PSNR of the best restart (dB)")
    psnr.legend()
    return figure


def run(args) -> dict:
    from dlg_jax.attack.engine import AttackConfig

    accelerator = common.is_accelerator()
    targets = args.targets or (ACCELERATOR_TARGETS if accelerator else (4 if args.quick else 32))
    restarts = args.restarts or (ACCELERATOR_RESTARTS if accelerator else (2 if args.quick else 4))
    chunk_size = targets * restarts if accelerator else None
    steps = args.steps or (100 if args.quick else 300)
    repeats = args.repeats or 1
    tolerance = AttackConfig().tolerance if args.tolerance is None else args.tolerance
    torch, device = common.setup_torch(args)
    problem = common.make_problem("lenet", targets, args.batch_size, args.seed, args.dataset)
    runs = {"jax": _jax_run(problem, restarts, steps * TORCH_MAX_ITER, tolerance, args.seed, chunk_size,
                            args.history_size)}
    torch_compile_seconds = {}
    if torch is not None:
        for name, compiled in TORCH_NAMES.items():
            runs[name], seconds = _torch_run(problem, restarts, steps, tolerance, args.seed, device, compiled)
            torch_compile_seconds[name] = seconds if compiled else None
    samples = common.alternate(runs, repeats)
    rows = [_summarise(name, samples[name], torch_compile_seconds.get(name)) for name in runs]
    for row in rows:
        print(f"{row['candidate']:25s} {row['seconds_median']:9.1f} s  success {row['success_rate']:.0%}  "
              f"median PSNR {row['psnr_median']:.1f} dB  {row['evaluations']} evaluations", flush=True)
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "config": {"model": "lenet", "num_classes": problem.model.num_classes, "batch_size": args.batch_size,
                   "dataset": args.dataset,
                   "targets": targets, "restarts": restarts, "torch_steps": steps, "torch_max_iter": TORCH_MAX_ITER,
                   "jax_iterations": steps * TORCH_MAX_ITER, "tolerance": tolerance,
                   "success_psnr": SUCCESS_PSNR, "repeats": repeats, "seed": args.seed, "chunk_size": chunk_size,
                   "jax_history_size": args.history_size,
                   "device": str(device) if device is not None else None},
        "precision": common.precision_record(torch, device),
        "environment": common.environment(torch), "rows": rows, "headline": headline(rows),
    }
    figure = None if args.no_plot else _plot(rows, targets)
    print(f"wrote {common.write_results(args.out, NAME, payload, figure)}")
    return payload


def build_parser():
    parser = common.make_parser(NAME, "Wall time and success rate to recover T images: JAX vs PyTorch DLG.")
    parser.add_argument("--targets", type=common.positive_int("targets", MAX_TARGETS), default=None,
                        help="private images T (default: 32; quick: 4)")
    parser.add_argument("--restarts", type=common.positive_int("restarts", MAX_RESTARTS), default=None,
                        help="restarts per target (default: 4; quick: 2)")
    parser.add_argument("--steps", type=common.positive_int("steps", MAX_STEPS), default=None,
                        help="PyTorch LBFGS.step() calls (x 20 iterations; JAX gets the same evaluations) "
                             "(default: 300, DLG's; quick: 100)")
    parser.add_argument("--tolerance", type=common.nonnegative_float("tolerance"), default=None,
                        help="a restart stops once J <= this x ||dW||^2 (default: AttackConfig's)")
    parser.add_argument("--batch-size", type=common.positive_int("batch size", 8), default=1,
                        help="private images per shared gradient B (default: 1)")
    parser.add_argument("--dataset", choices=("colour", "digits"), default="colour",
                        help="embedded image set (default: colour)")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--history-size", type=common.positive_int("history size", 1000), default=100,
                        help="the JAX L-BFGS history (default: 100, DLG's)")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
