"""``dlg-jax sweep GRID.toml --store DIR``: run an experiment grid into a results store.

Each point of the grid (:mod:`dlg_jax.experiments.grid`) is one vmapped attack over its targets x restarts; its rows
(one per target) land in ``DIR`` as one Parquet part as soon as it finishes (:mod:`dlg_jax.experiments.store`).
``--resume`` skips the points already stored, so a sweep killed at any moment resumes without losing or
repeating work. ``--executor ray`` spreads the points over a Ray cluster; ``--memory-budget`` picks
each attack's chunk so that its compiled step fits the budget.
"""

import sys
import time

from dlg_jax.cli.options import add_memory_budget, nonnegative_float, plain, positive_float, positive_int


def register(subparsers) -> None:
    from dlg_jax.experiments.executors import EXECUTORS

    parser = subparsers.add_parser("sweep", help="run an experiment grid (TOML) into a results store",
                                   description=plain(__doc__.split("\n\n")[0]))
    parser.add_argument("grid", help="the grid file (TOML; see docs/sweeps.md)")
    parser.add_argument("--store", required=True, help="results store directory (created if absent)")
    parser.add_argument("--resume", action="store_true", help="skip the points already in the store")
    parser.add_argument("--executor", default="local", choices=EXECUTORS,
                        help="local: this process; ray: one task per point on a Ray cluster (default: local)")
    add_memory_budget(parser)
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray instance)")
    parser.add_argument("--ray-num-cpus", type=positive_int, default=None, help="CPUs of a local Ray instance")
    parser.add_argument("--ray-cpus-per-point", type=positive_float, default=1.0, help="CPUs reserved per point (default: 1)")
    parser.add_argument("--ray-gpus-per-point", type=nonnegative_float, default=0.0, help="GPUs reserved per point (default: 0)")
    parser.add_argument("--compile-cache", default=None,
                        help="JAX's persistent compilation cache, shared with every other command and sweep, so a "
                             "program compiles once per machine (default: $DLG_JAX_COMPILATION_CACHE, else "
                             "~/.cache/dlg-jax/xla; 'none' to disable)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run)


def point_label(point) -> str:
    """``dlg lenet/digits B=1 gaussian 0.0001 seed 0``-style text."""
    from dlg_jax.victim.defenses import format_strength

    if point.text:
        return f"{point.model}/{point.dataset} B={point.batch_size} {point.config.distance} seed {point.config.seed}"
    defense = point.defense + ("" if point.defense == "none" else f" {format_strength(point.strength)}")
    return (f"{point.attack} {point.model}/{point.dataset} B={point.batch_size} {point.config.labels} "
            f"{defense} seed {point.config.seed}")


def run(args) -> int:
    from dlg_jax.attack.compile_cache import enable_compilation_cache
    from dlg_jax.cli.options import ProgressBar
    from dlg_jax.experiments.executors import make_executor
    from dlg_jax.experiments.grid import load_grid
    from dlg_jax.experiments.store import Store
    from dlg_jax.experiments.sweep import check_resume, point_outcome, run_grid

    grid = load_grid(args.grid)
    store = Store(args.store)
    cache = None if args.compile_cache == "none" else enable_compilation_cache(args.compile_cache)
    points = list(grid.points)
    options = {}
    if args.executor == "ray":
        options = dict(address=args.ray_address, num_cpus=args.ray_num_cpus, cpus_per_task=args.ray_cpus_per_point,
                       gpus_per_task=args.ray_gpus_per_point, compilation_cache=cache)
    local = args.executor == "local" and not args.quiet
    bar = ProgressBar(local)
    counter = iter(range(1, len(points) + 1))
    started = time.perf_counter()

    def report(point, rows):
        nonlocal bar
        bar.close()
        bar = ProgressBar(local)
        if rows is None:
            print(f"[{next(counter)}/{len(points)}] {point_label(point)}: in the store", file=sys.stderr)
            return
        print(f"[{next(counter)}/{len(points)}] {point_label(point)}: {point_outcome(rows)}", file=sys.stderr)

    check_resume(points, store, args.resume)  # before a cluster is contacted
    executor = None
    try:
        executor = make_executor(args.executor, **options)
        ran = run_grid(points, store, resume=args.resume, executor=executor, memory_budget=args.memory_budget,
                       progress=(lambda progress: bar(progress)) if local else None, on_point=report)
    finally:
        bar.close()
        if executor is not None:
            executor.close()
    wall = time.perf_counter() - started
    print(f"{ran} points run, {len(points) - ran} already stored; {wall:.1f} s"
          + (f" ({ran / wall * 60:.1f} points/min)" if ran else "") + f"; store: {store.path}")
    return 0
