"""Attack throughput: restart-iterations per second of the full attack, JAX solvers vs the PyTorch reference.

Both sides attack the same target (colour image 0, LeNet with DLG's 100-class head, ``B = 1``) from the
same dummies, for the same iteration budget ``I``, with no early stopping (tolerance 0), so every
restart does the whole budget:

- JAX: :func:`dlg_jax.attack.run_attack` with ``R`` restarts for each solver; one restart-iteration is one
  solver step of one restart (``AttackResult.restart_iterations``), timed by ``run_seconds`` (compile
  time is reported on its own);
- PyTorch: :func:`benchmarks.torch_reference.dlg_restart` (``torch.optim.LBFGS``, ``max_iter=20``,
  ``ceil(I / 20)`` steps) on a few restarts one after another; its rate does not depend on ``R``
  because restarts run sequentially. One restart-iteration is one L-BFGS iteration (``n_iter``).

What one iteration costs differs: the lockstep ``lbfgs`` and PyTorch's ``LBFGS`` without a line search
evaluate the objective once per iteration; ``optax-lbfgs`` / ``jaxopt-lbfgs`` run a zoom line search
(several evaluations per iteration); ``adam`` one. So evaluations/s and *accepted* iterations are
recorded as well.

    python -m benchmarks.attack_throughput [--quick] [--restarts 128] [--iterations 200] [--solvers ...]
"""

import math
import time

from benchmarks import common

NAME = "attack_throughput"
TORCH_NAME = "torch-reference"
TORCH_MAX_ITER = 20
MAX_RESTARTS = 4096
MAX_ITERATIONS = 100_000
# jaxopt's zoom search makes every batched restart wait for the slowest (DESIGN.md): minutes at R = 128
# even for the quick budget, so the quick run leaves it out (name it in --solvers to include it).
QUICK_SOLVERS = ("lbfgs", "optax-lbfgs", "adam")


def _jax_run(problem, solver: str, restarts: int, iterations: int, seed: int):
    """A warmed-up ``run_attack`` for ``solver`` (``run() -> measurements``) and its compile seconds."""
    from dlg_jax.attack import AttackConfig, run_attack
    from dlg_jax.solvers import SolverConfig

    config = AttackConfig(restarts=restarts, iterations=iterations, solver=SolverConfig(name=solver),
                          tolerance=0.0, snapshots=0, seed=seed)

    def run():
        started = time.perf_counter()
        result = run_attack(problem.model, problem.params, problem.target_grads, 1, config)
        return {"seconds": result.run_seconds, "wall_seconds": time.perf_counter() - started,
                "compile_seconds": result.compile_seconds, "restart_iterations": int(result.restart_iterations),
                "accepted_iterations": int(result.iterations.sum()), "evaluations": int(result.evaluations.sum()),
                "failed": int(result.failed.sum())}

    first = run()
    return run, first["compile_seconds"]


def _torch_run(problem, restarts: int, iterations: int, seed: int):
    """``run() -> measurements`` for ``restarts`` sequential DLG restarts of ``ceil(I / 20)`` LBFGS steps."""
    from benchmarks import torch_reference as tr

    net = tr.twin(problem.model, problem.params)
    target = tr.shared_gradient(net, problem.images[0], problem.labels[0])
    images, logits = (a[0] for a in common.initial_dummies(seed, 1, restarts, 1, problem.model))
    steps = math.ceil(iterations / TORCH_MAX_ITER)

    def run():
        results = [tr.dlg_restart(net, target, images[r], logits[r], steps=steps, max_iter=TORCH_MAX_ITER)
                   for r in range(restarts)]
        iterations_done = sum(r.iterations for r in results)
        return {"seconds": sum(r.seconds for r in results), "restart_iterations": iterations_done,
                "accepted_iterations": iterations_done, "evaluations": sum(r.evaluations for r in results),
                "failed": sum(r.failed for r in results)}

    tr.dlg_restart(net, target, images[0], logits[0], steps=1, max_iter=2)  # warm-up
    return run


def _summarise(name: str, samples: list[dict], restarts: int, compile_seconds: float | None) -> dict:
    seconds = [s["seconds"] for s in samples]
    per_second = {key: common.median([s[key] / s["seconds"] for s in samples])
                  for key in ("restart_iterations", "accepted_iterations", "evaluations")}
    return {
        "candidate": name, "restarts": restarts, "seconds_median": common.median(seconds), "seconds": seconds,
        "restart_iterations_per_second": per_second["restart_iterations"],
        "accepted_iterations_per_second": per_second["accepted_iterations"],
        "restart_evaluations_per_second": per_second["evaluations"],
        "evaluations_per_iteration": samples[0]["evaluations"] / max(samples[0]["restart_iterations"], 1),
        "failed_restarts": samples[-1]["failed"], "compile_seconds": compile_seconds,
        "samples": samples,
    }


def headline(rows: list[dict]) -> dict:
    """The default solver (lockstep ``lbfgs``) against the PyTorch reference."""
    by_name = {r["candidate"]: r for r in rows}
    if "lbfgs" not in by_name or TORCH_NAME not in by_name:
        return {}
    jax_row, torch_row = by_name["lbfgs"], by_name[TORCH_NAME]
    return {
        "restarts": jax_row["restarts"],
        "speedup_restart_iterations": jax_row["restart_iterations_per_second"] / torch_row["restart_iterations_per_second"],
        "speedup_accepted_iterations": jax_row["accepted_iterations_per_second"] / torch_row["accepted_iterations_per_second"],
        "speedup_evaluations": jax_row["restart_evaluations_per_second"] / torch_row["restart_evaluations_per_second"],
    }


def _plot(rows):
    figure, axes = common.new_figure()
    names = [r["candidate"] for r in rows]
    axes.bar(names, [r["restart_iterations_per_second"] for r in rows], color="tab:blue", label="iterations")
    axes.plot(names, [r["restart_evaluations_per_second"] for r in rows], "o", color="tab:orange", label="evaluations")
    axes.set_yscale("log")
    axes.set_ylabel("per second (restart-iterations, restart-evaluations)")
    axes.set_title(f"Full attack, LeNet, B = 1, R = {rows[0]['restarts']} (JAX)")
    axes.legend()
    axes.grid(True, axis="y", which="both", alpha=0.3)
    figure.autofmt_xdate(rotation=20)
    return figure


def run(args) -> dict:
    from dlg_jax.solvers import SOLVER_NAMES

    restarts = args.restarts or 128
    iterations = args.iterations or (20 if args.quick else 200)
    torch_restarts = args.torch_restarts or (2 if args.quick else 4)
    repeats = args.repeats or (2 if args.quick else 3)
    solvers = args.solvers or (QUICK_SOLVERS if args.quick else SOLVER_NAMES)
    torch = None if args.no_torch else common.require_torch()
    problem = common.make_problem("lenet", 1, 1, args.seed)
    runs, compile_seconds = {}, {}
    for solver in solvers:
        runs[solver], compile_seconds[solver] = _jax_run(problem, solver, restarts, iterations, args.seed)
        print(f"compiled {solver} ({compile_seconds[solver]:.1f} s)", flush=True)
    if torch is not None:
        runs[TORCH_NAME] = _torch_run(problem, torch_restarts, iterations, args.seed)
    samples = common.alternate(runs, repeats)
    rows = [_summarise(name, samples[name], torch_restarts if name == TORCH_NAME else restarts,
                       compile_seconds.get(name)) for name in runs]
    for row in rows:
        print(f"{row['candidate']:16s} {row['restart_iterations_per_second']:10.1f} restart-iterations/s "
              f"{row['restart_evaluations_per_second']:10.1f} restart-evaluations/s", flush=True)
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "config": {"model": "lenet", "num_classes": problem.model.num_classes, "batch_size": 1,
                   "restarts": restarts, "iterations": iterations, "torch_restarts": torch_restarts,
                   "torch_max_iter": TORCH_MAX_ITER, "repeats": repeats, "seed": args.seed,
                   "solvers": list(solvers)},
        "environment": common.environment(torch), "rows": rows, "headline": headline(rows),
    }
    figure = None if args.no_plot else _plot(rows)
    print(f"wrote {common.write_results(args.out, NAME, payload, figure)}")
    return payload


def build_parser():
    from dlg_jax.solvers import SOLVER_NAMES

    parser = common.make_parser(NAME, "Restart-iterations/s of the full attack: JAX solvers vs PyTorch LBFGS.")
    parser.add_argument("--restarts", type=common.positive_int("restarts", MAX_RESTARTS), default=None,
                        help="JAX restarts R run together (default: 128)")
    parser.add_argument("--iterations", type=common.positive_int("iterations", MAX_ITERATIONS), default=None,
                        help="iteration budget per restart (default: 200; quick: 20)")
    parser.add_argument("--torch-restarts", type=common.positive_int("torch restarts", MAX_RESTARTS), default=None,
                        help="sequential PyTorch restarts timed (default: 4; quick: 2)")
    parser.add_argument("--solvers", type=common.name_list("solver", SOLVER_NAMES), default=None,
                        help=f"comma-separated subset of {','.join(SOLVER_NAMES)} "
                             f"(default: all; quick: {','.join(QUICK_SOLVERS)})")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
