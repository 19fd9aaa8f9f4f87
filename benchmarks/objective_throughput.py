"""Objective throughput: restart-evaluations per second of DLG's matching loss and its gradient.

One *restart-evaluation* is ``(J(z), grad_z J(z))`` for one dummy ``z = (x' [B, H, W, C], y' [B, K])``,
``J(z) = sum_l ||grad_{W_l} loss(F(x'; W), softmax(y')) - dW_l||^2``. For ``R`` restarts of one target:

- ``jax-reverse_over_forward`` / ``jax-reverse``: ``jit(vmap(value_and_grad(objective)))`` over ``R``
  with :func:`dlg_jax.attack.objectives.make_objective` in that second-order mode;
- ``jax-chunked``: reverse-over-forward, the ``R`` restarts as ``lax.map`` over chunks of the attack's
  default ``chunk_size`` (16), each chunk vmapped: how :func:`dlg_jax.attack.engine.run_attack` batches them;
- ``torch-eager``: a Python loop over the ``R`` restarts of ``autograd.grad(create_graph=True)``
  (DLG's closure);
- ``torch-func``: ``torch.func.vmap`` over ``R`` of ``grad`` of a loss built on ``grad`` + ``functional_call``;
- ``torch-compile``: that ``torch.func`` function through ``torch.compile`` (PyTorch's best; its compile
  time, the first call, is reported on its own and its values are checked against eager).

PyTorch runs on ``--device`` (default: the device JAX runs on), both sides in full float32
(:mod:`benchmarks.common`). The eager loop is timed on at most :data:`EAGER_RESTARTS` restarts (its rate
does not depend on ``R``), and the eager values of those restarts are the reference every other
candidate is compared with (``max_relative_difference_vs_torch``).

``objective_variants`` (in the JSON): other ways to build the JAX program, each timed side by side with
the default (``jax-reverse_over_forward``) at :data:`VARIANT_SIZES` and kept with its number whether it
won or lost: :data:`VARIANTS` (``lax.conv`` layers, chunking, XLA CPU compiler options set for that one
compilation).

FLOPs (and bytes accessed) per restart-evaluation come from XLA's cost analysis of the compiled,
loop-free vmapped program (divided by the restarts it evaluates); the fraction of peak is
``flops x evaluations/s / (float32 matmul peak)``.

    python -m benchmarks.objective_throughput [--quick] [--sizes 1 8 32 128 512] [--candidates ...] [--device cpu]
"""

import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common

NAME = "objective_throughput"
SIZES = (1, 8, 32, 128, 512)
QUICK_SIZES = (1, 8, 32, 128)
ACCELERATOR_SIZES = (1, 128, 1024, 8192)
QUICK_ACCELERATOR_SIZES = (1, 128, 1024)
MAX_RESTARTS = 8192
EAGER_RESTARTS = 64
JAX_CANDIDATES = ("jax-reverse_over_forward", "jax-reverse", "jax-chunked")
TORCH_CANDIDATES = ("torch-eager", "torch-func", "torch-compile")
CANDIDATES = JAX_CANDIDATES + TORCH_CANDIDATES
HEADLINE_RESTARTS = 128
VARIANT_SIZES = (16, 128)
# name: (description, conv implementation, chunk, XLA compiler options)
VARIANTS = {
    "jax-chunked": ("patches, lax.map over chunks of 16 restarts (how run_attack batches)", "patches", 16, None),
    "jax-lax": ("lax.conv_general_dilated layers (grouped convolutions under vmap)", "lax", None, None),
    "jax-xla_fast_math": ("patches, xla_cpu_enable_fast_math", "patches", None, {"xla_cpu_enable_fast_math": True}),
    "jax-xla_onednn": ("patches, xla_cpu_use_onednn", "patches", None, {"xla_cpu_use_onednn": True}),
    "jax-xla_onednn_lax": ("lax.conv layers, xla_cpu_use_onednn", "lax", None, {"xla_cpu_use_onednn": True}),
    "jax-xla_no_xnnpack": ("patches, xla_cpu_use_xnnpack off", "patches", None, {"xla_cpu_use_xnnpack": False}),
}


class JaxProgram(NamedTuple):
    """How to build one JAX candidate: the model (its conv implementation), the second-order mode,
    ``chunk`` (restarts per ``lax.map`` step, ``None``: one vmap) and XLA compiler options."""

    model: Any
    mode: str = "reverse_over_forward"
    chunk: int | None = None
    options: dict | None = None


def _jax_program(problem, program: JaxProgram, images: np.ndarray, logits: np.ndarray):
    """``vmap(value_and_grad(J))`` of ``program.model`` (with ``problem``'s weights and target 0) for
    ``images [R, B, H, W, C]``, ``logits [R, B, K]``, compiled; with ``program.chunk``, ``lax.map`` over
    chunks of that many restarts (``R`` padded to a multiple). Returns ``(run, compile_seconds, XLA cost
    per restart-evaluation, values [R])``."""
    from dlg_jax.attack.objectives import Context, Dummy, make_objective

    objective = make_objective(program.model, second_order=program.mode)
    chunk, options = program.chunk, program.options
    batched = jax.vmap(jax.value_and_grad(objective), in_axes=(0, Context(None, None, None)))
    restarts = len(images)
    chunk = min(chunk or restarts, restarts)
    chunks = -(-restarts // chunk)

    def chunked(dummy, context):
        def split(a):  # [R, ...] -> [chunks, chunk, ...], padded with the first restarts
            a = jnp.concatenate([a, a[:chunks * chunk - restarts]])
            return a.reshape(chunks, chunk, *a.shape[1:])

        out = jax.lax.map(lambda d: batched(d, context), jax.tree.map(split, dummy))
        return jax.tree.map(lambda a: a.reshape(chunks * chunk, *a.shape[2:])[:restarts], out)

    dummy = Dummy(jnp.asarray(images), jnp.asarray(logits))
    context = Context(problem.params, jax.tree.map(lambda g: g[0], problem.target_grads),
                      jnp.zeros(logits.shape[1:], jnp.float32))
    compiled, seconds = common.compile_timed(jax.jit(batched if chunks == 1 else chunked), dummy, context,
                                             options=options)
    costed = compiled if chunks == 1 else common.compile_timed(
        jax.jit(batched), jax.tree.map(lambda a: a[:chunk], dummy), context, options=options)[0]
    cost = {key: value / chunk for key, value in common.xla_cost(costed).items()}
    values = np.asarray(common.block(compiled(dummy, context))[0])
    return common.timed(lambda: common.block(compiled(dummy, context))), seconds, cost, values


def _torch_programs(problem, candidates, images: np.ndarray, logits: np.ndarray, device):
    """Warmed-up PyTorch runs ``{name: run}`` on ``device``, ``{name: (values [R], compile seconds)}`` and
    the eager values of the first :data:`EAGER_RESTARTS` restarts (the reference)."""
    from benchmarks import torch_reference as tr

    net = tr.twin(problem.model, problem.params, device)
    target = tr.shared_gradient(net, problem.images[0], problem.labels[0])
    x, y = tr.to_nchw(images, device), tr.to_tensor(logits, device)
    eager_count = min(len(x), EAGER_RESTARTS)

    def eager():
        return [tr.eager_value_and_grad(net, target, x[r], y[r])[0].item() for r in range(eager_count)]

    runs, info = {}, {}
    reference = np.asarray(eager())
    if "torch-eager" in candidates:
        runs["torch-eager"] = common.timed(eager)
        info["torch-eager"] = (reference, None, eager_count)
    for name, compiled in (("torch-func", False), ("torch-compile", True)):
        if name not in candidates:
            continue
        functional = tr.functional_objective(net, target, compiled=compiled)
        started = time.perf_counter()
        values = functional(x, y)[0].detach().cpu().numpy()  # the first call compiles
        info[name] = (values, time.perf_counter() - started if compiled else None, len(x))
        runs[name] = common.timed(lambda functional=functional: _sync(functional(x, y)))
    return runs, info, reference


def _sync(output):
    """Wait for ``output``'s tensors (CUDA runs asynchronously): ``.item()`` of the first value."""
    return output[0][0].item()


def jax_variants(problem, names) -> dict:
    """``{name: JaxProgram}`` for the JAX candidates among ``names``."""
    from dlg_jax.attack.engine import default_chunk_size

    variants = {"jax-reverse_over_forward": JaxProgram(problem.model),
                "jax-reverse": JaxProgram(problem.model, "reverse"),
                "jax-chunked": JaxProgram(problem.model, chunk=default_chunk_size())}
    return {name: variants[name] for name in names if name in variants}


def measure_variants(problem, sizes, repeats: int, seed: int, names=tuple(VARIANTS)) -> list[dict]:
    """The entries ``names`` of :data:`VARIANTS` timed in alternation with the default program at each
    of ``sizes``: rows with ``restart_evaluations_per_second``, ``ratio_vs_default`` and the description.
    On a GPU/TPU backend the XLA CPU options are left out."""
    from dlg_jax.models import build_model

    model = problem.model
    models = {impl: build_model(model.name, model.input_shape, model.num_classes, conv_implementation=impl)
              for impl in ("patches", "lax")}
    chosen = {name: VARIANTS[name] for name in names
              if VARIANTS[name][3] is None or not common.is_accelerator()}
    programs = {"jax-reverse_over_forward": JaxProgram(model)}
    programs.update({name: JaxProgram(models[impl], chunk=chunk, options=options)
                     for name, (_, impl, chunk, options) in chosen.items()})
    rows = []
    for restarts in sizes:
        measured = measure_objective(problem, restarts, repeats, seed, programs, (), float("nan"))
        default = measured[0]["restart_evaluations_per_second"]
        for row in measured:
            name = row["candidate"]
            rows.append({"variant": name, "restarts": restarts,
                         "description": chosen[name][0] if name in chosen else "the default (patches, one vmap)",
                         "options": programs[name].options,
                         "restart_evaluations_per_second": row["restart_evaluations_per_second"],
                         "ratio_vs_default": row["restart_evaluations_per_second"] / default,
                         "compile_seconds": row["compile_seconds"],
                         "bytes_accessed_per_evaluation": row["bytes_accessed_per_evaluation"]})
            print(f"variant R={restarts:4d} {name:26s} {row['restart_evaluations_per_second']:9.1f} restart-evals/s "
                  f"(x{rows[-1]['ratio_vs_default']:.2f})", flush=True)
    return rows


def measure_objective(problem, restarts: int, repeats: int, seed: int, variants: dict, torch_names,
                      peak_gflops: float, device="cpu") -> list[dict]:
    """One row per candidate for ``restarts`` restarts of target 0 of ``problem``, timed in alternation.

    ``variants``: ``{name: JaxProgram}`` (models sharing ``problem``'s parameters); ``torch_names``: a subset of :data:`TORCH_CANDIDATES`, run on ``device``.
    Each row: ``restart_evaluations_per_second`` (median), ``compile_seconds`` (JAX, torch-compile),
    ``max_relative_difference_vs_torch`` (against eager PyTorch), XLA cost per evaluation (JAX)."""
    batch = problem.images.shape[1]
    images, logits = (a[0] for a in common.initial_dummies(seed, 1, restarts, batch, problem.model))
    runs, info, values = {}, {}, {}
    for name, program in variants.items():
        runs[name], compile_seconds, cost, values[name] = _jax_program(problem, program, images, logits)
        info[name] = {"compile_seconds": compile_seconds, "flops_per_evaluation": cost["flops"],
                      "bytes_accessed_per_evaluation": cost["bytes_accessed"],
                      "flops_per_byte": cost["flops"] / cost["bytes_accessed"]}
    reference = None
    if torch_names:
        torch_runs, torch_info, reference = _torch_programs(problem, torch_names, images, logits, device)
        runs.update(torch_runs)
        for name, (torch_values, compile_seconds, timed_restarts) in torch_info.items():
            values[name] = torch_values
            info[name] = {"timed_restarts": timed_restarts, "device": str(device)}
            if compile_seconds is not None:
                info[name]["compile_seconds"] = compile_seconds
    samples = common.alternate(runs, repeats)
    rows = []
    for name in runs:
        seconds = common.median(samples[name])
        evaluated = info[name].get("timed_restarts", restarts)
        row = {"model": problem.model.name, "batch_size": batch, "restarts": restarts, "candidate": name,
               "seconds_median": seconds, "seconds": samples[name],
               "restart_evaluations_per_second": evaluated / seconds, **info.get(name, {})}
        if "flops_per_evaluation" in row:
            achieved = row["flops_per_evaluation"] * restarts / seconds
            row["gflops"] = achieved / 1e9
            if peak_gflops == peak_gflops:  # not NaN
                row["peak_fraction"] = achieved / (peak_gflops * 1e9)
        if reference is not None and name in values:
            mine = np.asarray(values[name])[:len(reference)]
            row["max_relative_difference_vs_torch"] = float(
                np.max(np.abs(mine - reference) / np.maximum(np.abs(reference), 1e-30)))
        rows.append(row)
    return rows


def compare_objective(restarts: int, device: str | None = None, *, repeats: int = 5, seed: int = 0,
                      candidates=("jax-reverse_over_forward", "torch-func", "torch-compile", "torch-eager"),
                      model: str = "lenet", batch_size: int = 1) -> dict:
    """Objective throughput of JAX vs PyTorch at ``restarts`` restarts, PyTorch on ``device`` (``"cpu"`` or
    ``"cuda"``; default: JAX's backend), both in full float32 (for :mod:`benchmarks.accelerator`).

    Returns ``{candidate: {"restart_evaluations_per_second": median, "compile_seconds": s or None,
    "max_relative_difference_vs_torch": x}}`` for ``candidates`` (names from :data:`CANDIDATES`), plus
    ``"precision"``: the settings each side ran with. One target of ``batch_size`` colour images,
    ``model``'s weights from ``seed``."""
    torch_names = [name for name in candidates if name in TORCH_CANDIDATES]
    torch = common.require_torch() if torch_names else None
    device = common.torch_device(torch, device or common.default_device()) if torch else None
    problem = common.make_problem(model, 1, batch_size, seed)
    rows = measure_objective(problem, restarts, repeats, seed, jax_variants(problem, candidates), torch_names,
                             float("nan"), device)
    out = {row["candidate"]: {key: row.get(key) for key in
                              ("restart_evaluations_per_second", "compile_seconds", "max_relative_difference_vs_torch")}
           for row in rows}
    out["precision"] = common.precision_record(torch, device)
    return out


def _plot(rows, title: str, x_key: str):
    figure, axes = common.new_figure()
    for name in dict.fromkeys(r["candidate"] for r in rows):
        mine = [r for r in rows if r["candidate"] == name]
        axes.plot([r[x_key] for r in mine], [r["restart_evaluations_per_second"] for r in mine], "o-", label=name)
    axes.set_xscale("log", base=2)
    axes.set_yscale("log")
    axes.set_xlabel(x_key.replace("_", " "))
    axes.set_ylabel("restart-evaluations / s (J and grad)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend()
    return figure


def headline(rows: list[dict], restarts: int = HEADLINE_RESTARTS) -> dict:
    """Ratios at ``restarts``: the default JAX mode (reverse-over-forward, one vmap over all restarts)
    vs each PyTorch baseline and that mode's fraction of the matmul peak; the same for ``jax-chunked``
    (``chunked_`` keys)."""
    at = {r["candidate"]: r for r in rows if r["restarts"] == restarts}
    out: dict = {}
    for jax_name, prefix in (("jax-reverse_over_forward", ""), ("jax-chunked", "chunked_")):
        if jax_name not in at:
            continue
        rate = at[jax_name]["restart_evaluations_per_second"]
        out.update({"restarts": restarts, f"{prefix}jax_restart_evaluations_per_second": rate,
                    f"{prefix}peak_fraction": at[jax_name].get("peak_fraction")})
        for name, key in (("torch-eager", "speedup_vs_torch_eager"), ("torch-func", "speedup_vs_torch_func"),
                          ("torch-compile", "speedup_vs_torch_compile")):
            if name in at:
                out[prefix + key] = rate / at[name]["restart_evaluations_per_second"]
    return out


def run(args) -> dict:
    accelerator = common.is_accelerator()
    sizes = args.sizes or ((QUICK_ACCELERATOR_SIZES if args.quick else ACCELERATOR_SIZES) if accelerator
                           else (QUICK_SIZES if args.quick else SIZES))
    repeats = args.repeats or (3 if args.quick else 5)
    candidates = args.candidates
    args.no_torch = not set(candidates) & set(TORCH_CANDIDATES)
    torch, device = common.setup_torch(args)
    problem = common.make_problem("lenet", 1, 1, args.seed)
    peak = common.peak_matmul()
    variants = jax_variants(problem, candidates)
    torch_names = [name for name in candidates if name in TORCH_CANDIDATES]
    rows = []
    for restarts in sizes:
        rows += measure_objective(problem, restarts, repeats, args.seed, variants, torch_names, peak["gflops_best"],
                                  device)
        for row in rows[-len(candidates):]:
            print(f"R={restarts:5d} {row['candidate']:26s} {row['restart_evaluations_per_second']:10.1f} restart-evals/s",
                  flush=True)
    variants_rows = [] if args.no_variants else measure_variants(problem, VARIANT_SIZES, repeats, args.seed)
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "config": {"model": "lenet", "num_classes": problem.model.num_classes, "batch_size": 1,
                   "sizes": list(sizes), "repeats": repeats, "seed": args.seed, "candidates": list(candidates),
                   "device": str(device) if device is not None else None},
        "precision": common.precision_record(torch, device),
        "environment": common.environment(torch), "peak_matmul": peak, "rows": rows,
        "objective_variants": variants_rows,
        "headline": headline(rows),
    }
    figure = None if args.no_plot else _plot(rows, "LeNet matching loss + gradient (B = 1)", "restarts")
    print(f"wrote {common.write_results(args.out, NAME, payload, figure)}")
    return payload


def build_parser():
    parser = common.make_parser(NAME, "Restart-evaluations/s of DLG's objective: JAX vs PyTorch.")
    parser.add_argument("--sizes", nargs="+", action=common.Distinct, type=common.positive_int("restart count", MAX_RESTARTS), default=None,
                        help=f"restart counts R (default: {','.join(map(str, SIZES))}; quick: "
                             f"{','.join(map(str, QUICK_SIZES))}; on a GPU/TPU "
                             f"{','.join(map(str, ACCELERATOR_SIZES))}; quick: {','.join(map(str, QUICK_ACCELERATOR_SIZES))})")
    parser.add_argument("--candidates", nargs="+", action=common.Distinct, type=common.one_of("candidate", CANDIDATES), default=CANDIDATES,
                        help=f"one or more of {','.join(CANDIDATES)}")
    parser.add_argument("--no-variants", action="store_true",
                        help=f"skip the objective_variants record ({', '.join(VARIANTS)} at R = "
                             f"{', '.join(map(str, VARIANT_SIZES))})")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
