"""Attack throughput: restart-iterations per second of the full attack, JAX solvers vs the PyTorch reference.

Both sides attack the same target (colour image 0, LeNet with DLG's 100-class head, ``B = 1``) from the
same dummies, for the same iteration budget ``I``, with no early stopping (tolerance 0), so every
restart does the whole budget:

- JAX: :func:`dlg_jax.attack.engine.run_attack` with ``R`` restarts for each solver; one restart-iteration is one
  solver step of one restart (``AttackResult.restart_iterations``), timed by ``run_seconds`` (compile
  time is reported on its own);
- PyTorch (``torch-reference``): :func:`benchmarks.torch_reference.dlg_restart` (``torch.optim.LBFGS``,
  ``max_iter=20``, ``ceil(I / 20)`` steps) on a few restarts one after another; its rate does not depend
  on ``R`` because restarts run sequentially. One restart-iteration is one L-BFGS iteration (``n_iter``).
- ``torch-reference-compiled``: the same procedure whose closure runs the ``torch.compile``d objective
  (compile time reported on its own).
- ``torch-lockstep-R<R>`` / ``torch-lockstep-compiled-R<R>``: the JAX attack's own algorithm written in
  PyTorch (:func:`benchmarks.torch_reference.lockstep_attack`: all restarts together in chunks of the
  attack's default size, lockstep L-BFGS on the ``torch.func`` objective; eager, and the whole step through
  ``torch.compile``), beside the JAX ``lbfgs`` attack at the same ``R``, for each ``R`` of
  ``--lockstep-restarts`` (:data:`LOCKSTEP_RESTARTS`). ``lockstep_comparison`` (in the JSON) separates the
  two ratios the other rows mix: *framework* (``speedup_vs_torch_lockstep``: JAX / the faster of eager and
  compiled PyTorch, same algorithm) and *algorithm* (``torch_lockstep_vs_torch_reference``: PyTorch's
  lockstep attack / PyTorch's one-restart-at-a-time DLG procedure, each at its faster of eager and compiled).

``attack_variants`` (in the JSON): the lockstep ``lbfgs`` with shorter histories
(:data:`HISTORY_VARIANTS`; DLG's is 100), timed in the same alternation, with their ratio to the default
(cheaper steps; whether they converge as well is measured by ``time_to_recovery --history-size``).

PyTorch runs on ``--device`` (default: JAX's device), both sides in full float32. On a GPU/TPU backend
the defaults are GPU-sized: :data:`ACCELERATOR_RESTARTS` restarts in one chunk.

What one iteration costs differs: the lockstep ``lbfgs`` and PyTorch's ``LBFGS`` without a line search
evaluate the objective once per iteration; ``optax-lbfgs`` / ``jaxopt-lbfgs`` run a zoom line search
(several evaluations per iteration); ``adam`` one. So evaluations/s and *accepted* iterations are
recorded as well.

    python -m benchmarks.attack_throughput [--quick] [--restarts 128] [--iterations 200] [--solvers ...]
        [--lockstep-restarts 32 128] [--device cpu]
"""

import math
import time

import numpy as np

from benchmarks import common

NAME = "attack_throughput"
TORCH_NAME = "torch-reference"
TORCH_COMPILED_NAME = "torch-reference-compiled"
TORCH_LOCKSTEP_NAME = "torch-lockstep"
TORCH_LOCKSTEP_COMPILED_NAME = "torch-lockstep-compiled"
LOCKSTEP_RESTARTS = (32, 128)
TORCH_MAX_ITER = 20
ACCELERATOR_RESTARTS = 1024
HISTORY_VARIANTS = (10, 30)
MAX_RESTARTS = 4096
MAX_ITERATIONS = 100_000
# jaxopt's zoom search makes every batched restart wait for the slowest (docs/design.md): minutes at R = 128
# even for the quick budget, so the quick run leaves it out (name it in --solvers to include it).
QUICK_SOLVERS = ("lbfgs", "optax-lbfgs", "adam")


def _jax_run(problem, solver: str, restarts: int, iterations: int, seed: int, chunk_size: int | None = None,
             history_size: int | None = None):
    """A warmed-up ``run_attack`` for ``solver`` (``run() -> measurements``) and its compile seconds."""
    from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
    from dlg_jax.attack.solvers import SolverConfig

    solver_config = SolverConfig(name=solver, **({} if history_size is None else {"history_size": history_size}))
    config = AttackConfig(restarts=restarts, iterations=iterations, solver=solver_config, tolerance=0.0, seed=seed)
    options = RunOptions(chunk_size=chunk_size, snapshots=0)

    def run():
        started = time.perf_counter()
        with common.jax_precision():
            result = run_attack(problem.model, problem.params, problem.target_grads, 1, config, run=options)
        return {"seconds": result.run_seconds, "wall_seconds": time.perf_counter() - started,
                "compile_seconds": result.compile_seconds, "restart_iterations": int(result.restart_iterations),
                "accepted_iterations": int(result.iterations.sum()), "evaluations": int(result.evaluations.sum()),
                "failed": int(result.failed.sum())}

    first = run()
    return run, first["compile_seconds"]


def run_torch_dlg(problem, device, iterations: int, restarts: int, seed: int = 0, compiled: bool = False) -> dict:
    """The PyTorch DLG procedure on target 0 of ``problem``: ``restarts`` restarts one after another from
    the attack's dummies, ``ceil(iterations / 20)`` ``LBFGS.step()`` calls each (``max_iter=20``, no early
    stop), on ``device``; ``compiled``: the closure runs the ``torch.compile``d objective (warm it up
    with a first call; for :mod:`benchmarks.accelerator`).

    Returns ``{"seconds", "restart_iterations", "accepted_iterations", "evaluations", "failed",
    "restart_iterations_per_second", "evaluations_per_second", "images" [R, B, H, W, C],
    "label_logits" [R, B, K], "loss" [R]}``."""
    from benchmarks import torch_reference as tr

    net = _torch_net(problem, device)
    target = tr.shared_gradient(net, problem.images[0], problem.labels[0])
    batch = problem.images.shape[1]
    images, logits = (a[0] for a in common.initial_dummies(seed, 1, restarts, batch, problem.model))
    steps = math.ceil(iterations / TORCH_MAX_ITER)
    results = [tr.dlg_restart(net, target, images[r], logits[r], steps=steps, max_iter=TORCH_MAX_ITER,
                              compiled=compiled) for r in range(restarts)]
    seconds = sum(r.seconds for r in results)
    done = sum(r.iterations for r in results)
    evaluations = sum(r.evaluations for r in results)
    return {"seconds": seconds, "restart_iterations": done, "accepted_iterations": done, "evaluations": evaluations,
            "failed": sum(r.failed for r in results), "restart_iterations_per_second": done / seconds,
            "evaluations_per_second": evaluations / seconds, "images": np.stack([r.images for r in results]),
            "label_logits": np.stack([r.label_logits for r in results]), "loss": np.array([r.loss for r in results])}


_NETS: dict = {}


def _torch_net(problem, device):
    """One PyTorch twin per (problem, device), so the compiled closure is compiled once per run."""
    from benchmarks import torch_reference as tr

    key = (id(problem), str(device))
    if key not in _NETS:
        _NETS[key] = (problem, tr.twin(problem.model, problem.params, device))
    return _NETS[key][1]


def _torch_run(problem, restarts: int, iterations: int, seed: int, device, compiled: bool):
    """``run() -> measurements`` for ``restarts`` sequential DLG restarts of ``ceil(I / 20)`` LBFGS steps,
    warmed up; and the warm-up's seconds (the compile time when ``compiled``)."""
    keys = ("seconds", "restart_iterations", "accepted_iterations", "evaluations", "failed")

    def run():
        measured = run_torch_dlg(problem, device, iterations, restarts, seed, compiled)
        return {key: measured[key] for key in keys}

    started = time.perf_counter()
    run_torch_dlg(problem, device, 2, 1, seed, compiled)  # warm-up (compiles the closure's objective)
    return run, time.perf_counter() - started


def _torch_lockstep_run(problem, restarts: int, iterations: int, seed: int, device, compiled: bool, chunk_size: int):
    """``run() -> measurements`` for :func:`benchmarks.torch_reference.lockstep_attack` on target 0 of
    ``problem`` from the attack's dummies (``restarts`` together, chunks of ``chunk_size``, no early stop),
    warmed up; and the warm-up's seconds (the compile time when ``compiled``)."""
    from benchmarks import torch_reference as tr

    net = _torch_net(problem, device)
    target = tr.shared_gradient(net, problem.images[0], problem.labels[0])
    images, logits = (a[0] for a in common.initial_dummies(seed, 1, restarts, problem.images.shape[1], problem.model))

    def run(steps=iterations):
        result = tr.lockstep_attack(net, target, images, logits, iterations=steps, tolerance=0.0,
                                    chunk_size=chunk_size, compiled=compiled)
        return {"seconds": result.seconds, "restart_iterations": result.restart_iterations,
                "accepted_iterations": int(result.iterations.sum()), "evaluations": int(result.evaluations.sum()),
                "failed": int(result.failed.sum())}

    started = time.perf_counter()
    run(2)  # warm-up (compiles the step for the chunk's shape)
    return run, time.perf_counter() - started


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


def headline(rows: list[dict], jax_names: dict[int, str] | None = None) -> dict:
    """The default solver (lockstep ``lbfgs``) against the PyTorch reference (eager closure; keys with
    ``_vs_torch_compile``: against the compiled closure), and from :func:`lockstep_comparison`
    ``speedup_vs_torch_lockstep[_R<R>]`` and ``torch_lockstep_vs_torch_reference[_R<R>]`` (unsuffixed: at
    the ``lbfgs`` row's ``R`` when compared there, else the largest ``R``)."""
    by_name = {r["candidate"]: r for r in rows}
    out = {}
    comparison = lockstep_comparison(rows, jax_names or {})
    for entry in comparison:
        for key in ("speedup_vs_torch_lockstep", "torch_lockstep_vs_torch_reference"):
            out[f"{key}_R{entry['restarts']}"] = entry[key]
    if comparison:
        main = next((e for e in comparison if jax_names[e["restarts"]] == "lbfgs"), comparison[-1])
        out.update(speedup_vs_torch_lockstep=main["speedup_vs_torch_lockstep"], lockstep_restarts=main["restarts"],
                   torch_lockstep_vs_torch_reference=main["torch_lockstep_vs_torch_reference"])
    if "lbfgs" not in by_name:
        return out
    jax_row = by_name["lbfgs"]
    out["restarts"] = jax_row["restarts"]
    for name, suffix in ((TORCH_NAME, ""), (TORCH_COMPILED_NAME, "_vs_torch_compile")):
        if name not in by_name:
            continue
        torch_row = by_name[name]
        for key, rate in (("restart_iterations", "restart_iterations_per_second"),
                          ("accepted_iterations", "accepted_iterations_per_second"),
                          ("evaluations", "restart_evaluations_per_second")):
            out[f"speedup_{key}{suffix}"] = jax_row[rate] / torch_row[rate]
    return out


def lockstep_comparison(rows: list[dict], jax_names: dict[int, str]) -> list[dict]:
    """Per ``R`` of ``jax_names`` (``R -> name of the JAX lbfgs row``): the JAX attack, PyTorch's lockstep
    attack eager and compiled (the faster is ``torch_lockstep_best``), the framework ratio
    ``speedup_vs_torch_lockstep`` (JAX / best PyTorch lockstep) and the algorithm ratio
    ``torch_lockstep_vs_torch_reference`` (best PyTorch lockstep / best PyTorch one-restart-at-a-time
    procedure), in restart-iterations/s."""
    rate = {r["candidate"]: r["restart_iterations_per_second"] for r in rows}
    reference = max((rate[name] for name in (TORCH_NAME, TORCH_COMPILED_NAME) if name in rate), default=None)
    out = []
    for restarts, jax_name in jax_names.items():
        torch_rates = {name: rate[f"{name}-R{restarts}"]
                       for name in (TORCH_LOCKSTEP_NAME, TORCH_LOCKSTEP_COMPILED_NAME)}
        best = max(torch_rates, key=torch_rates.get)
        out.append({"restarts": restarts, "jax": rate[jax_name],
                    "torch_lockstep_eager": torch_rates[TORCH_LOCKSTEP_NAME],
                    "torch_lockstep_compiled": torch_rates[TORCH_LOCKSTEP_COMPILED_NAME], "torch_lockstep_best": best,
                    "speedup_vs_torch_lockstep": rate[jax_name] / torch_rates[best],
                    "torch_lockstep_vs_torch_reference": None if reference is None else torch_rates[best] / reference})
    return out


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
    from dlg_jax.attack.engine import default_chunk_size
    from dlg_jax.attack.solvers import SOLVER_NAMES

    accelerator = common.is_accelerator()
    restarts = args.restarts or (ACCELERATOR_RESTARTS if accelerator else 128)
    chunk_size = args.chunk_size or (restarts if accelerator else None)
    iterations = args.iterations or (20 if args.quick else 200)
    torch_restarts = args.torch_restarts or (2 if args.quick else 4)
    repeats = args.repeats or (2 if args.quick else 3)
    solvers = args.solvers or (QUICK_SOLVERS if args.quick else SOLVER_NAMES)
    torch, device = common.setup_torch(args)
    problem = common.make_problem("lenet", 1, 1, args.seed)
    runs, compile_seconds = {}, {}
    for solver in solvers:
        runs[solver], compile_seconds[solver] = _jax_run(problem, solver, restarts, iterations, args.seed, chunk_size)
        print(f"compiled {solver} ({compile_seconds[solver]:.1f} s)", flush=True)
    variant_names = {}
    if "lbfgs" in solvers and not args.no_variants:
        for history in HISTORY_VARIANTS:
            name = variant_names[history] = f"lbfgs-history-{history}"
            runs[name], compile_seconds[name] = _jax_run(problem, "lbfgs", restarts, iterations, args.seed,
                                                         chunk_size, history)
    jax_names = {}
    lockstep_restarts = () if torch is None else (args.lockstep_restarts or LOCKSTEP_RESTARTS)
    for lockstep in lockstep_restarts:
        jax_names[lockstep] = "lbfgs" if lockstep == restarts and "lbfgs" in solvers else f"lbfgs-R{lockstep}"
        if jax_names[lockstep] not in runs:
            runs[jax_names[lockstep]], compile_seconds[jax_names[lockstep]] = _jax_run(
                problem, "lbfgs", lockstep, iterations, args.seed, chunk_size)
        for name, compiled in ((TORCH_LOCKSTEP_NAME, False), (TORCH_LOCKSTEP_COMPILED_NAME, True)):
            key = f"{name}-R{lockstep}"
            runs[key], seconds = _torch_lockstep_run(problem, lockstep, iterations, args.seed, device, compiled,
                                                     chunk_size or default_chunk_size())
            compile_seconds[key] = seconds if compiled else None
            print(f"warmed up {key} ({seconds:.1f} s)", flush=True)
    if torch is not None:
        for name, compiled in ((TORCH_NAME, False), (TORCH_COMPILED_NAME, True)):
            runs[name], compile_seconds[name] = _torch_run(problem, torch_restarts, iterations, args.seed,
                                                           device, compiled)
            if compiled:
                print(f"compiled {name} ({compile_seconds[name]:.1f} s)", flush=True)
            else:
                compile_seconds[name] = None
    samples = common.alternate(runs, repeats)
    row_restarts = {**{name: torch_restarts for name in (TORCH_NAME, TORCH_COMPILED_NAME)},
                    **{name: lockstep for lockstep, name in jax_names.items()},
                    **{f"{name}-R{lockstep}": lockstep for lockstep in jax_names
                       for name in (TORCH_LOCKSTEP_NAME, TORCH_LOCKSTEP_COMPILED_NAME)}}
    rows = [_summarise(name, samples[name], row_restarts.get(name, restarts), compile_seconds.get(name))
            for name in runs]
    by_name = {row["candidate"]: row for row in rows}
    attack_variants = [
        {"variant": name, "history_size": history,
         "restart_iterations_per_second": by_name[name]["restart_iterations_per_second"],
         "ratio_vs_default": by_name[name]["restart_iterations_per_second"]
         / by_name["lbfgs"]["restart_iterations_per_second"]}
        for history, name in variant_names.items()]
    for row in rows:
        print(f"{row['candidate']:25s} {row['restart_iterations_per_second']:10.1f} restart-iterations/s "
              f"{row['restart_evaluations_per_second']:10.1f} restart-evaluations/s", flush=True)
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "config": {"model": "lenet", "num_classes": problem.model.num_classes, "batch_size": 1,
                   "restarts": restarts, "iterations": iterations, "torch_restarts": torch_restarts,
                   "torch_max_iter": TORCH_MAX_ITER, "repeats": repeats, "seed": args.seed,
                   "solvers": list(solvers), "chunk_size": chunk_size,
                   "lockstep_restarts": list(lockstep_restarts),
                   "device": str(device) if device is not None else None},
        "precision": common.precision_record(torch, device),
        "environment": common.environment(torch), "rows": rows, "attack_variants": attack_variants,
        "lockstep_comparison": lockstep_comparison(rows, jax_names), "headline": headline(rows, jax_names),
    }
    figure = None if args.no_plot else _plot(rows)
    print(f"wrote {common.write_results(args.out, NAME, payload, figure)}")
    return payload


def build_parser():
    from dlg_jax.attack.solvers import SOLVER_NAMES

    parser = common.make_parser(NAME, "Restart-iterations/s of the full attack: JAX solvers vs PyTorch LBFGS.")
    parser.add_argument("--restarts", type=common.positive_int("restarts", MAX_RESTARTS), default=None,
                        help=f"JAX restarts R run together (default: 128; on a GPU/TPU {ACCELERATOR_RESTARTS})")
    parser.add_argument("--chunk-size", type=common.positive_int("chunk size", MAX_RESTARTS), default=None,
                        help="problems per batched chunk, JAX and PyTorch lockstep attacks alike (default: "
                             "AttackConfig's; on a GPU/TPU all restarts)")
    parser.add_argument("--iterations", type=common.positive_int("iterations", MAX_ITERATIONS), default=None,
                        help="iteration budget per restart (default: 200; quick: 20)")
    parser.add_argument("--torch-restarts", type=common.positive_int("torch restarts", MAX_RESTARTS), default=None,
                        help="sequential PyTorch restarts timed (default: 4; quick: 2)")
    parser.add_argument("--solvers", nargs="+", action=common.Distinct, type=common.one_of("solver", SOLVER_NAMES), default=None,
                        help=f"one or more of {','.join(SOLVER_NAMES)} "
                             f"(default: all; quick: {','.join(QUICK_SOLVERS)})")
    parser.add_argument("--lockstep-restarts", nargs="+", action=common.Distinct, type=common.positive_int("lockstep restarts", MAX_RESTARTS), default=None,
                        help="R values at which the JAX attack runs beside the same algorithm in PyTorch "
                             f"(default: {','.join(map(str, LOCKSTEP_RESTARTS))})")
    parser.add_argument("--no-torch", action="store_true", help="JAX only")
    parser.add_argument("--no-variants", action="store_true",
                        help=f"skip the lbfgs history variants ({', '.join(map(str, HISTORY_VARIANTS))})")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
