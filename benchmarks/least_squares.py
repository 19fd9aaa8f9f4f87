"""Least squares against L-BFGS: Levenberg–Marquardt (materialised and matrix-free) and the lockstep L-BFGS
on the same DLG problems, side by side in one run.

Each *case* is a set of victims (``--targets`` batches of ``B`` images of an embedded dataset, image
``t * B + b``), DLG's LeNet (or ``--model SPEC``, e.g. ``resnet20-sigmoid-bn``) with ``K`` outputs and
weights from ``fold_in(key(seed), 0x5EED)`` (as ``dlg-jax attack``), joint labels (DLG) unless the case
says otherwise, ``--restarts`` restarts per target.
Every solver gets the same victims and the same starting dummies (:func:`dlg_jax.attack.engine.initial_dummy`)
and stops a restart once ``J <= tolerance * ||dW||^2``. Reported per case and solver:

- ``recovered``: targets whose best restart has every slot at PSNR >= 30 dB (slots matched to images
  by :func:`dlg_jax.metrics.evaluate`);
- ``evaluations``: of the best restart, until it converged or the budget ran out (a Jacobian counts as
  its ``n`` JVPs; one JVP, VJP or residual ~ one objective+gradient evaluation of L-BFGS);
- ``affine_recovered``: the same up to brightness and contrast (PSNR of the unclipped images after the
  least-squares fit ``a x + b`` per slot, :mod:`dlg_jax.metrics`): what a batch-normalised model's gradient
  can give;
- ``outside_data_range``: the share of the best restart's pixels outside [0, 1] (a solution just outside
  the data range is a batch no camera took; the box excludes it);
- ``run_seconds`` / ``compile_seconds``: wall time of :func:`~dlg_jax.attack.engine.run_attack` (all targets x
  restarts; ``run`` excludes compilation);
- ``restart_relative_objective``, ``restart_worst_slot_psnr`` ``[T][R]``: every restart's end;
- ``exact_solutions``: for each target, how many *distinct* exact solutions its converged restarts found
  (two converged restarts are the same solution when their unclipped images agree to >= 30 dB after
  matching slots; up to ``a x + b`` per slot for a model with batch norm), and how many of those are the
  private batch (``exact_at_truth``): with several restarts this counts the zeros of the residual that
  the starts reach. ``distinct_ends`` / ``distinct_ends_at_truth``: the same count over the restarts
  that end at or below ``--distinct-below`` (relative objective; L-BFGS's ends are rarely exact zeros);
  ``restarts_at_truth``: how many restarts end at the private batch (every slot >= 30 dB, unclipped; up
  to ``a x + b`` with batch norm): which starts reach the right solution.

``lbfgs+lm`` is a two-stage strategy: ``--lbfgs-iterations`` of the lockstep L-BFGS (with ``--tv-weight``,
Inverting Gradients' total-variation prior, in this stage only), then ``--lm-iterations`` of the materialised
Levenberg–Marquardt on the plain l2 residual from every restart's L-BFGS end
(:func:`dlg_jax.attack.engine.continue_from`): L-BFGS restarts choose the basin, Levenberg–Marquardt
finishes it to an exact zero; its row reports both stages (``stage1_*``: the L-BFGS end).

Starts and priors for the L-BFGS stage: ``--labels`` (labels read off the gradient and held fixed,
:func:`dlg_jax.attack.labels.recover_labels`: a label-informed start), ``--bn-prior W`` (GradInversion's
batch-norm statistics prior, reference statistics from 512 images outside the targets, as
:func:`dlg_jax.pipeline.bn_reference`), and ``--coarse F [F ...]``: continuation from low-resolution
problems. Stage ``F`` solves ``--coarse-iterations`` of L-BFGS for dummies of ``H/F x W/F`` pixels that
the model sees bilinearly upsampled to ``H x W`` (:mod:`dlg_jax.attack.coarse`: the same weights and shared
gradient, ``n / F^2`` unknowns, a smooth family of batches; ``AttackConfig.coarse`` in the API and
``dlg-jax attack --coarse``), and its ends, upsampled, start the next stage (the next factor, then the
solvers). ``coarse_worst_slot_psnr [T][R]`` and ``coarse_relative_objective``
report where the last coarse stage left every restart.

``jaxopt-lm`` runs ``jaxopt.LevenbergMarquardt`` (materialised Jacobian, Cholesky; no box) on the same
residual (:func:`dlg_jax.attack.objectives.make_residual`) and starts, one problem at a time (its update computes
the Jacobian at the trial point whether or not the step is accepted, as ours does at the current point),
``--lm-iterations`` updates at most, its evaluations counted as ``n + 1`` per update, its first update's
time counted as compilation.

Cases (``--cases``, one or more; ``box`` cases start from U(0, 1) and keep the images in [0, 1]:
projected trial points for Levenberg–Marquardt, clipping after each step for L-BFGS)::

    colour-b1 digits-b1 faces-b1 digits-b2 digits-b4 digits-b8 digits-b8-box colour-b2 colour-b2-k100
    colour-b2-uniform colour-b2-box colour-b2-k100-box colour-b4-box colour-b4-k100-box colour-b8-box colour-b8-k100-box
    colour-b2-k100-uniform colour-b4-uniform colour-b4-k100-uniform colour-b8-uniform colour-b8-k100-uniform
    digits-b8-uniform

    python -m benchmarks.least_squares [--cases digits-b2 colour-b1] [--solvers lbfgs lm lm-cg] [--targets 2]
        [--model lenet] [--restarts 1] [--lbfgs-iterations 3000] [--lm-iterations 40] [--tv-weight 0]
        [--labels joint] [--bn-prior 0] [--coarse F ...] [--coarse-iterations 1000] [--distinct-below REL]
        [--float64] [--out DIR] [--name least_squares]

Writes ``<out>/<name>.json`` (atomically) after every case and solver.
"""

import time

import jax
import numpy as np

from benchmarks import common

CASES = {
    # name: (dataset, batch size, classes (None: the dataset's), dummy init, box)
    "colour-b1": ("colour", 1, None, "randn", False),
    "digits-b1": ("digits", 1, None, "randn", False),
    "faces-b1": ("faces", 1, None, "randn", False),
    "digits-b2": ("digits", 2, None, "randn", False),
    "digits-b4": ("digits", 4, None, "randn", False),
    "digits-b8": ("digits", 8, None, "randn", False),
    "digits-b8-box": ("digits", 8, None, "uniform", True),
    "colour-b2": ("colour", 2, None, "randn", False),
    "colour-b2-k100": ("colour", 2, 100, "randn", False),
    "colour-b2-uniform": ("colour", 2, None, "uniform", False),
    "colour-b2-box": ("colour", 2, None, "uniform", True),
    "colour-b2-k100-box": ("colour", 2, 100, "uniform", True),
    "colour-b4-box": ("colour", 4, None, "uniform", True),
    "colour-b4-k100-box": ("colour", 4, 100, "uniform", True),
    "colour-b8-box": ("colour", 8, None, "uniform", True),
    "colour-b8-k100-box": ("colour", 8, 100, "uniform", True),
    "colour-b2-k100-uniform": ("colour", 2, 100, "uniform", False),
    "colour-b4-uniform": ("colour", 4, None, "uniform", False),
    "colour-b4-k100-uniform": ("colour", 4, 100, "uniform", False),
    "colour-b8-uniform": ("colour", 8, None, "uniform", False),
    "colour-b8-k100-uniform": ("colour", 8, 100, "uniform", False),
    "digits-b8-uniform": ("digits", 8, None, "uniform", False),
}
SOLVERS = ("lbfgs", "lm", "lm-cg", "jaxopt-lm", "lbfgs+lm")
SAME_SOLUTION_PSNR = 30.0


def same_batch(a: np.ndarray, b: np.ndarray, affine: bool) -> bool:
    """Whether batches ``a, b [B, H, W, C]`` agree to >= 30 dB in every slot after matching slots (unclipped
    images; ``affine``: up to ``a x + b`` per slot, what a batch-normalised model's gradient fixes, with
    every slot first scaled to [0, 1] by its own minimum and maximum so that the decibels do not depend on
    the scale either reconstruction happens to have)."""
    from dlg_jax.metrics import evaluate

    if affine:
        a, b = (np.stack([(s - s.min()) / max(np.ptp(s), 1e-12) for s in x]) for x in (a, b))
    metrics = evaluate(a[None], b[None], np.zeros((1, len(a)), int), np.zeros((1, len(a)), int), lpips=False)
    return bool(np.all((metrics.slot_affine_psnr if affine else metrics.slot_psnr) >= SAME_SOLUTION_PSNR))


def distinct_solutions(images: np.ndarray, selected: np.ndarray, truth: np.ndarray, affine: bool) -> tuple[int, int]:
    """Of one target's restarts ``images [R, B, H, W, C]``: the number of distinct batches among the
    ``selected [R]`` ones (greedy clustering: a restart joins the first cluster whose representative is
    :func:`same_batch`) and how many of them are ``truth``."""
    representatives = []
    for image in images[np.asarray(selected, bool)]:
        if not any(same_batch(image, r, affine) for r in representatives):
            representatives.append(image)
    return len(representatives), sum(same_batch(r, truth, affine) for r in representatives)


def run_case(name: str, solver: str, args) -> dict:
    from dlg_jax.attack.coarse import resized
    from dlg_jax.attack.engine import AttackConfig, RunOptions, coarse_stages, continue_from, run_attack
    from dlg_jax.attack.labels import recover_labels
    from dlg_jax.attack.solvers import SolverConfig
    from dlg_jax.data.datasets import get_dataset
    from dlg_jax.metrics import evaluate
    from dlg_jax.models import build_model, parse_model_spec
    from dlg_jax.models.batchnorm import has_batchnorm, reference_statistics
    from dlg_jax.pipeline import BN_REFERENCE_IMAGES
    from dlg_jax.victim.gradients import shared_gradients

    dataset, batch, classes, init, box = CASES[name]
    source = get_dataset(dataset)
    dtype = "float64" if args.float64 else "float32"
    architecture, options = parse_model_spec(args.model)
    options.setdefault("num_classes", classes or source.num_classes)
    model = build_model(architecture, source.input_shape, **options)
    params = model.init(jax.random.fold_in(jax.random.key(args.seed), 0x5EED), dtype=np.dtype(dtype))
    images, labels = source.examples(np.arange(args.targets * batch))
    images = images.reshape(args.targets, batch, *source.input_shape).astype(dtype)
    labels = labels.reshape(args.targets, batch)
    grads = shared_gradients(model, params, images, labels)
    fixed_labels = recover_labels(args.labels, model, params, grads, batch)
    reference = np.arange(args.targets * batch, source.size)[:BN_REFERENCE_IMAGES]
    bn_statistics = (reference_statistics(model, params, source.examples(reference)[0].astype(dtype))
                     if args.bn_prior else None)
    affine = has_batchnorm(model)
    stages = ("lbfgs", "lm") if solver == "lbfgs+lm" else (solver,)
    if args.bn_prior and (args.coarse or solver != "lbfgs"):
        raise SystemExit("--bn-prior is for the lbfgs solver without --coarse")

    def config_for(stage: str, **coarse) -> AttackConfig:
        lbfgs = stage == "lbfgs"
        return AttackConfig(restarts=args.restarts, iterations=args.lbfgs_iterations if lbfgs else args.lm_iterations,
                            solver=SolverConfig(stage), tolerance=args.tolerance, dummy_init=init,
                            box=(0.0, 1.0) if box else None, seed=args.seed, dtype=dtype, labels=args.labels,
                            tv_weight=args.tv_weight if lbfgs else 0.0, bn_prior=args.bn_prior if lbfgs else 0.0,
                            **coarse)

    def options_for(stage: str) -> RunOptions:
        return RunOptions(chunk_size=args.chunk_size, block=100 if stage == "lbfgs" else 1, snapshots=0)

    started = time.perf_counter()
    # the engine's coarse stages (L-BFGS), run apart so that their ends can be scored below
    results = coarse_stages(model, params, grads, batch, config_for("lbfgs", coarse=tuple(args.coarse),
                                                                    coarse_iterations=args.coarse_iterations),
                            fixed_labels=fixed_labels, run=options_for("lbfgs"))
    start = resized(continue_from(results[-1]), tuple(model.input_shape)) if results else None
    for stage in stages:
        results.append(run_attack(model, params, grads, batch, config_for(stage), fixed_labels=fixed_labels,
                                  bn_statistics=bn_statistics, start=start, run=options_for(stage)))
        start = continue_from(results[-1])
    wall = time.perf_counter() - started
    result = results[-1]
    metrics = evaluate(np.clip(result.best_images, 0, 1), images, result.best_labels, labels)
    # up to a x + b from the unclipped images: a batch-normalised model's reconstruction is a x + b, often far
    # outside [0, 1]
    affine_psnr = evaluate(result.best_images, images, result.best_labels, labels).slot_affine_psnr
    best = result.best_restart
    rows = np.arange(args.targets)
    norm = np.array([sum(float(np.vdot(g[t], g[t])) for g in jax.tree.leaves(grads)) for t in rows])
    relative = result.loss / norm[:, None]
    distinct_below = args.tolerance if args.distinct_below is None else args.distinct_below
    solutions = [distinct_solutions(result.images[t], result.converged[t], images[t], affine) for t in rows]
    ends = [distinct_solutions(result.images[t], relative[t] <= distinct_below, images[t], affine) for t in rows]

    def restart_psnr(ends: np.ndarray, ends_labels: np.ndarray, clip: bool, column: str) -> list:
        """``[T][R]``: every restart's worst slot of ``ends [T, R, B, H, W, C]`` against the private batch."""
        return [np.round(getattr(evaluate(
            np.clip(ends[t], 0, 1) if clip else ends[t], np.repeat(images[t][None], args.restarts, 0),
            ends_labels[t], np.repeat(labels[t][None], args.restarts, 0), lpips=False), column).min(axis=1), 2).tolist()
            for t in rows]

    at_truth = restart_psnr(result.images, result.labels, False, "slot_affine_psnr" if affine else "slot_psnr")
    row = {
        "case": name, "solver": solver, "model": args.model, "dataset": dataset, "batch_size": batch,
        "classes": model.num_classes, "dummy_init": init, "box": box, "targets": args.targets,
        "restarts": args.restarts, "iterations_budget": config_for(stages[-1]).iterations, "labels": args.labels,
        "tv_weight": args.tv_weight if "lbfgs" in stages else 0.0, "bn_prior": args.bn_prior,
        "coarse": list(args.coarse), "coarse_iterations": args.coarse_iterations if args.coarse else 0,
        "recovered": int(np.sum(np.all(metrics.slot_psnr >= 30.0, axis=1))),
        "slot_psnr": np.round(metrics.slot_psnr, 2).tolist(),
        "affine_recovered": int(np.sum(np.all(affine_psnr >= 30.0, axis=1))),
        "slot_affine_psnr": np.round(affine_psnr, 2).tolist(),
        "label_accuracy": metrics.label_accuracy.tolist(),
        "relative_objective": relative[rows, best].tolist(),
        "restart_relative_objective": relative.tolist(),
        "restart_worst_slot_psnr": restart_psnr(result.images, result.labels, True, "slot_psnr"),
        "restarts_at_truth": [int(np.sum(np.asarray(p) >= 30.0)) for p in at_truth],
        "outside_data_range": np.mean((result.best_images < 0) | (result.best_images > 1), axis=(1, 2, 3, 4)).tolist(),
        "iterations": result.iterations[rows, best].tolist(),
        "evaluations": sum(r.evaluations[rows, best] for r in results).tolist(),
        "evaluations_all_restarts": int(sum(r.evaluations.sum() for r in results)),
        "converged_restarts": result.converged.sum(axis=1).tolist(),
        "exact_solutions": [s[0] for s in solutions], "exact_at_truth": [s[1] for s in solutions],
        "distinct_below": distinct_below, "ends_below": [int(np.sum(r <= distinct_below)) for r in relative],
        "distinct_ends": [e[0] for e in ends], "distinct_ends_at_truth": [e[1] for e in ends],
        "run_seconds": sum(r.run_seconds for r in results),
        "compile_seconds": sum(r.compile_seconds for r in results), "wall_seconds": wall,
    }
    if args.coarse:  # where the last coarse stage left every restart, upsampled to the full size
        coarse = results[len(args.coarse) - 1]
        full = resized(continue_from(coarse), tuple(model.input_shape)).images
        row.update(coarse_relative_objective=(coarse.loss / norm[:, None]).tolist(),
                   coarse_worst_slot_psnr=restart_psnr(full, coarse.labels, True, "slot_psnr"))
    if solver == "lbfgs+lm":  # the L-BFGS stage's end, for what the finishing stage changed
        first = results[-2]
        stage1 = evaluate(np.clip(first.best_images, 0, 1), images, first.best_labels, labels)
        row.update(stage1_slot_psnr=np.round(stage1.slot_psnr, 2).tolist(),
                   stage1_relative_objective=(first.loss[rows, first.best_restart] / norm).tolist(),
                   stage1_iterations=first.iterations[rows, best].tolist(),
                   stage1_run_seconds=first.run_seconds)
    return row


def run_jaxopt(name: str, args) -> dict:
    """``jaxopt.LevenbergMarquardt`` on case ``name``'s problems (module docstring), one after another."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    from dlg_jax.attack.engine import initial_dummy
    from dlg_jax.attack.objectives import Context, make_residual
    from dlg_jax.data.datasets import get_dataset
    from dlg_jax.metrics import evaluate
    from dlg_jax.models import build_model
    from dlg_jax.victim.gradients import shared_gradients

    dataset, batch, classes, init, box = CASES[name]
    if box or args.model != "lenet":
        raise SystemExit(f"jaxopt-lm runs the lenet cases without a box; not {name!r} on {args.model!r}")
    source = get_dataset(dataset)
    dtype = "float64" if args.float64 else "float32"
    model = build_model("lenet", source.input_shape, classes or source.num_classes)
    params = model.init(jax.random.fold_in(jax.random.key(args.seed), 0x5EED), dtype=np.dtype(dtype))
    images, labels = source.examples(np.arange(args.targets * batch))
    images = images.reshape(args.targets, batch, *source.input_shape).astype(dtype)
    labels = labels.reshape(args.targets, batch)
    grads = shared_gradients(model, params, images, labels)
    residual = make_residual(model)
    best_images, best_labels, rows = [], [], []
    run_seconds = compile_seconds = 0.0
    for t in range(args.targets):
        context = Context(params, jax.tree.map(lambda g: g[t], grads), jnp.zeros((batch, model.num_classes), dtype))
        threshold = args.tolerance * sum(float(jnp.vdot(g[t], g[t])) for g in jax.tree.leaves(grads))
        start = initial_dummy(args.seed, t, 0, batch, tuple(model.input_shape), model.num_classes, True,
                              jnp.dtype(dtype), init)
        flat, unravel = ravel_pytree(start)
        solver = jaxopt.LevenbergMarquardt(lambda x: residual(unravel(x), context), maxiter=args.lm_iterations,
                                           materialize_jac=True, solver="cholesky", jit=True)
        state = solver.init_state(flat)
        update = jax.jit(solver.update)
        iterations, cost = 0, float(jnp.vdot(state.residual, state.residual))
        while iterations < args.lm_iterations and cost > threshold:
            started = time.perf_counter()
            flat, state = update(flat, state)
            cost = float(jnp.vdot(state.residual, state.residual))
            elapsed = time.perf_counter() - started
            compile_seconds, run_seconds = ((compile_seconds + elapsed, run_seconds) if iterations == 0
                                            else (compile_seconds, run_seconds + elapsed))
            iterations += 1
        dummy = unravel(flat)
        best_images.append(np.asarray(dummy.images))
        best_labels.append(np.argmax(np.asarray(dummy.label_logits), axis=-1))
        rows.append((iterations, iterations * (flat.size + 1), cost / threshold * args.tolerance, cost <= threshold))
    metrics = evaluate(np.clip(np.stack(best_images), 0, 1), images, np.stack(best_labels), labels)
    return {
        "case": name, "solver": "jaxopt-lm", "dataset": dataset, "batch_size": batch,
        "classes": model.num_classes, "dummy_init": init, "box": box, "targets": args.targets, "restarts": 1,
        "iterations_budget": args.lm_iterations,
        "recovered": int(np.sum(np.all(metrics.slot_psnr >= 30.0, axis=1))),
        "slot_psnr": np.round(metrics.slot_psnr, 2).tolist(), "label_accuracy": metrics.label_accuracy.tolist(),
        "relative_objective": [r[2] for r in rows], "iterations": [r[0] for r in rows],
        "outside_data_range": [float(np.mean((x < 0) | (x > 1))) for x in best_images],
        "evaluations": [r[1] for r in rows], "evaluations_all_restarts": sum(r[1] for r in rows),
        "converged_restarts": [int(r[3]) for r in rows], "exact_solutions": [], "exact_at_truth": [],
        "run_seconds": run_seconds, "compile_seconds": compile_seconds, "wall_seconds": run_seconds + compile_seconds,
    }


def run(args) -> dict:
    rows = []
    for name in args.cases:
        for solver in args.solvers:
            row = run_jaxopt(name, args) if solver == "jaxopt-lm" else run_case(name, solver, args)
            rows.append(row)
            print(f"{name:>18} {solver:>6}: recovered {row['recovered']}/{row['targets']} "
                  f"(up to a x + b: {row.get('affine_recovered', '-')}), PSNR {row['slot_psnr']}, "
                  f"evaluations {row['evaluations']}, iterations {row['iterations']}, "
                  f"run {row['run_seconds']:.1f} s, compile {row['compile_seconds']:.1f} s, "
                  f"exact solutions {row['exact_solutions']} (at truth {row['exact_at_truth']})", flush=True)
            payload = {"benchmark": "least_squares", "settings": {k: v for k, v in vars(args).items()
                                                                  if k not in ("func",)},
                       "rows": rows, "environment": common.environment()}
            common.write_results(args.out, args.name, payload)  # after every row: a partial run keeps its rows
    return payload


def main(argv=None):
    from dlg_jax.attack.labels import LABEL_STRATEGIES

    parser = common.make_parser("least_squares", __doc__.splitlines()[0], timing_options=False)
    parser.add_argument("--cases", nargs="+", action=common.Distinct, type=common.one_of("case", tuple(CASES)), default=("digits-b2",))
    parser.add_argument("--solvers", nargs="+", action=common.Distinct, type=common.one_of("solver", SOLVERS), default=SOLVERS[:3])
    parser.add_argument("--model", default="lenet", help="model spec (default lenet; e.g. resnet20-sigmoid-bn)")
    parser.add_argument("--targets", type=common.positive_int("targets"), default=2)
    parser.add_argument("--restarts", type=common.positive_int("restarts"), default=1)
    parser.add_argument("--lbfgs-iterations", type=common.positive_int("lbfgs iterations"), default=3000)
    parser.add_argument("--lm-iterations", type=common.positive_int("lm iterations"), default=40)
    parser.add_argument("--tolerance", type=common.nonnegative_float("tolerance"), default=1e-8)
    parser.add_argument("--tv-weight", type=common.nonnegative_float("tv weight"), default=0.0,
                        help="total-variation prior of the L-BFGS stage (lbfgs, lbfgs+lm; default 0)")
    parser.add_argument("--labels", type=common.one_of("label strategy", LABEL_STRATEGIES), default="joint",
                        help="joint (DLG, default) or labels read off the gradient and held fixed")
    parser.add_argument("--bn-prior", type=common.nonnegative_float("bn prior"), default=0.0,
                        help="GradInversion's batch-norm prior in the L-BFGS solver (a model with batch norm)")
    parser.add_argument("--coarse", nargs="+", type=common.positive_int("coarse factor"), default=(),
                        help="continuation: L-BFGS stages at 1/F of the resolution first (e.g. 4 2)")
    parser.add_argument("--coarse-iterations", type=common.positive_int("coarse iterations"), default=1000)
    parser.add_argument("--distinct-below", type=common.nonnegative_float("distinct below"), default=None,
                        help="count distinct ends among restarts at or below this relative objective "
                             "(default: the tolerance)")
    parser.add_argument("--chunk-size", type=common.positive_int("chunk size"), default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--name", default="least_squares", help="results file name (default: least_squares)")

    def go(args):
        if args.float64:
            jax.config.update("jax_enable_x64", True)
        return run(args)

    return common.run_cli(parser, go, argv)


if __name__ == "__main__":
    raise SystemExit(main())
