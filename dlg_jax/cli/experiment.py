"""``dlg-jax experiment NAME``: run a shipped study into a results store and write its page.

Every study is a grid file in ``dlg_jax/experiments/specs/`` (``NAME.toml``: its axes, standard budget and
``--quick`` budget). Its points run into ``OUT/store``, one store shared by all studies (a point two
studies share runs once; running a command again reuses every point already there), then ``OUT/NAME.md``,
``NAME.png`` and ``NAME.json`` are written from the store (:mod:`dlg_jax.experiments.studies`).
``dlg-jax experiment NAME --help`` lists the study's options: one per axis, replacing that axis (space-
separated values), and ``--targets``, ``--restarts``, ``--iterations`` replacing its budget.
"""

import os
import shlex
import sys

from dlg_jax.cli.options import RunBars, add_memory_budget, plain, positive_int


def _spec_axes(name: str) -> tuple[str, list[str]]:
    """Study ``name``'s description and the axis keys it sets anywhere (its tables in file order)."""
    import tomllib

    from dlg_jax.experiments.grid import spec_path

    with open(spec_path(name), "rb") as handle:
        document = tomllib.load(handle)
    layers = [document, document.get("quick", {}), *document.get("grids", [])]
    layers += [part.get("quick", {}) for part in document.get("grids", [])]
    budget = ("targets", "restarts", "iterations", "chunk_size")  # options of their own, on every grid
    return document.get("name", name), list(dict.fromkeys(k for layer in layers for k in layer.get("axes", {})
                                                          if k not in budget))


def register(subparsers):
    from dlg_jax.experiments.grid import spec_names

    parser = subparsers.add_parser(
        "experiment", help="run a shipped study (labels, batch, compare, ...) into a store and write its page",
        description=plain(__doc__.split("\n\n")[1]))
    experiments = parser.add_subparsers(dest="name", required=True, metavar="NAME")
    for name in (*spec_names(), "all"):
        if name == "all":
            summary, axes = "every study in turn, at its own settings", []
        else:
            summary, axes = _spec_axes(name)
        sub = experiments.add_parser(name, help=summary, description=summary + ".")
        for axis in axes:
            sub.add_argument(f"--{axis.replace('_', '-')}", dest=f"axis_{axis}", nargs="+", default=None,
                             metavar=axis.upper(), help=f"replace the study's {axis} axis (one or more values)")
        _add_options(sub)
        sub.set_defaults(handler=run, axes=axes)


def _add_options(parser) -> None:
    parser.add_argument("--quick", action="store_true", help="the study's small smoke-test budget (minutes)")
    parser.add_argument("--targets", type=positive_int, default=None, help="replace the targets per point")
    parser.add_argument("--restarts", type=positive_int, default=None, help="replace the restarts per target")
    parser.add_argument("--iterations", type=positive_int, default=None, help="replace the iterations per restart")
    parser.add_argument("--float64", action="store_true", help="run in double precision")
    parser.add_argument("--chunk-size", type=positive_int, default=None,
                        help="problems (target x restart) per vmapped batch (default: 16; on a GPU: all of them)")
    add_memory_budget(parser)
    parser.add_argument("--out", default="experiments-out", help="output directory (default: experiments-out)")
    parser.add_argument("--store", default=None, help="results store (default: OUT/store)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or status lines")


def _value(text: str):
    """A command-line axis value: an integer, else a number, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _check_data(points) -> None:
    """Every point's dataset exists and holds its targets' images or sentences (before anything runs)."""
    import numpy as np

    from dlg_jax.data.datasets import get_dataset
    from dlg_jax.data.sentences import sentence_batches

    needed = {}
    for p in points:
        if p.text:
            sentence_batches(p.dataset, p.targets, p.batch_size)
            continue
        key = (p.dataset, p.data_options)
        needed[key] = max(needed.get(key, 0), p.targets * p.batch_size)
    for (dataset, options), count in needed.items():
        get_dataset(dataset, **dict(options)).check_indices(np.arange(count))


def run(args) -> int:
    import jax

    from dlg_jax.attack.compile_cache import enable_compilation_cache
    from dlg_jax.cli.sweep import point_label
    from dlg_jax.experiments.grid import load_spec, spec_names
    from dlg_jax.experiments.store import Store
    from dlg_jax.experiments.studies import write_study
    from dlg_jax.experiments.sweep import point_outcome, run_grid
    from dlg_jax.files import prepare_output_dir

    budget = {k: getattr(args, k) for k in ("targets", "restarts", "iterations", "chunk_size")
              if getattr(args, k) is not None}
    axes = {axis: [_value(v) for v in getattr(args, f"axis_{axis}")] for axis in args.axes
            if getattr(args, f"axis_{axis}") is not None}
    if args.float64:
        jax.config.update("jax_enable_x64", True)
        axes["dtype"] = "float64"
    names = spec_names() if args.name == "all" else (args.name,)
    grids = {name: load_spec(name, quick=args.quick, budget=budget, axes=axes) for name in names}
    for grid in grids.values():
        _check_data(grid.points)
    out = prepare_output_dir(args.out)
    store = Store(args.store or os.path.join(out, "store"))
    enable_compilation_cache()
    command = "dlg-jax " + shlex.join(sys.argv[1:]) if sys.argv[1:2] == ["experiment"] else ""
    bars = RunBars(not args.quiet)
    try:
        for name, grid in grids.items():
            count = iter(range(1, len(grid.points) + 1))

            def report(point, rows, name=name, count=count, total=len(grid.points)):
                state = "in the store" if rows is None else point_outcome(rows)
                bars.next(f"{name} [{next(count)}/{total}] {point_label(point)}: {state}")

            bars.next()
            run_grid(list(grid.points), store, resume=True, memory_budget=args.memory_budget, progress=bars,
                     on_point=report)
            bars.close()
            paths = write_study(grid, store.rows(), out, name, command=command or f"dlg-jax experiment {name}")
            print(f"## {name} -> {', '.join(paths)}\n")
            with open(paths[0]) as handle:
                print(handle.read())
    finally:
        bars.close()
    return 0
