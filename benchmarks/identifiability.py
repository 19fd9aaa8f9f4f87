"""How many batches share a gradient: the rank of the shared gradient's Jacobian at a private batch.

The shared gradient ``g(x) = grad_W loss(F(x; W), y)`` maps a batch ``x [B, H, W, C]`` (labels ``y`` known)
to ``m`` numbers, one per weight. Where its Jacobian ``J = dg/dx [m, n]`` (``n = B * H * W * C``) has
rank ``r < n``, the batches with exactly the same gradient form a manifold of dimension ``n - r`` through
the private one (the constant-rank theorem): no solver and no start can tell them apart; only a prior
can choose among them.

A bound without computing ``J``: when the last layer is dense on features ``f_b = phi(x_b) [d]``, its
gradient sees the batch only through the ``B * d`` numbers ``f_1 .. f_B`` (rank <= ``B * d``), and the
other ``P'`` weights give at most ``P'`` more independent rows, so ``r <= P' + B * d`` and

    n - r >= B * (H * W * C - d) - P'

(with joint labels the ``B * (K - 1)`` label unknowns add as many rows at most: the same bound). For
DLG's LeNet on 32 x 32 x 3 (``d = 768``, ``P' = 8136``): ``2304 * B - 8136``, positive from ``B = 4`` on,
for any number of classes.

Per case: ``J`` at the private batch in float64 (forward mode, ``--chunk`` columns at a time), its
singular values, the numerical rank (singular values above ``--relative-threshold * sigma_max``), the
bound, and the largest ratio between consecutive singular values (where the spectrum drops to rounding).

What the null space is made of (an orthonormal basis ``N [n, n - r]``: the eigenvectors of ``J^T J`` with
the smallest eigenvalues): ``null_slot_share [B]``, the share of its energy in each slot;
``null_fine_share``, the share that a grid of half the resolution cannot represent,
``||v - U(D(v))||^2 / ||v||^2`` averaged over the basis (``D``: bilinear, antialiased downsampling by 2,
``U``: bilinear upsampling), beside ``random_fine_share``, the same for random directions; and
``predicted_coarse_psnr [B]``: where a solver started at the private batch's own coarse version
``s = U(D(x))`` would end to first order. Gauss-Newton-type steps move within the row space of ``J``, so
they keep the start's null-space component and end at ``x + N N^T (s - x)``; its PSNR against ``x`` is
what a coarse start can give at best when ``r < n``.
The victims are as in :mod:`benchmarks.least_squares` (weights ``fold_in(key(seed), 0x5EED)``, target
``t`` = images ``t * B .. t * B + B - 1``)::

    python -m benchmarks.identifiability [--dataset colour] [--batch-sizes 2 3 4] [--targets 1]
        [--model lenet] [--classes K] [--chunk 256] [--relative-threshold 1e-9] [--out DIR] [--name identifiability]

Writes ``<out>/<name>.json`` (atomically) after every case.
"""

import time

import jax
import numpy as np

from benchmarks import common


def feature_bound(model, params, batch_size: int) -> dict:
    """The counting bound (module docstring): ``d`` (the inputs of the last dense layer), ``P'`` (the
    other weights) and ``B * (H W C - d) - P'``, the least dimension of the set of batches with the
    private batch's gradient."""
    from dlg_jax.attack.labels import final_dense_path

    path = final_dense_path(model, params)
    layer = params
    for key in path:
        layer = layer[key]
    features = int(layer["kernel"].shape[0])
    others = sum(leaf.size for leaf in jax.tree.leaves(params)) - sum(leaf.size for leaf in jax.tree.leaves(layer))
    pixels = int(np.prod(model.input_shape))
    return {"features": features, "other_weights": int(others),
            "manifold_dimension_at_least": batch_size * (pixels - features) - int(others)}


def jacobian(model, params, grads, images: np.ndarray, labels: np.ndarray, chunk: int) -> np.ndarray:
    """``J [m, n]``: the derivative of the gradient-matching residual (:func:`make_residual`, labels fixed)
    with respect to the flattened batch ``images [B, H, W, C]``, one JVP per column."""
    import jax.numpy as jnp

    from dlg_jax.attack.objectives import Context, Dummy, make_residual
    from dlg_jax.victim.gradients import one_hot

    residual = make_residual(model)
    context = Context(params, grads, one_hot(jnp.asarray(labels), model.num_classes, jnp.float64))
    flat = jnp.asarray(images, jnp.float64).ravel()

    def r(x):
        return residual(Dummy(x.reshape(images.shape), None), context)

    columns = jax.jit(jax.vmap(lambda v: jax.jvp(r, (flat,), (v,))[1], out_axes=1))
    eye = np.eye(chunk, dtype=np.float64)
    blocks = []
    for start in range(0, flat.size, chunk):
        width = min(chunk, flat.size - start)
        basis = np.zeros((chunk, flat.size))
        basis[:width, start:start + width] = eye[:width, :width]
        blocks.append(np.asarray(columns(jnp.asarray(basis)))[:, :width])
    return np.concatenate(blocks, axis=1)


def null_space_summary(matrix: np.ndarray, rank: int, images: np.ndarray) -> dict:
    """The null space of ``matrix [m, n]`` (numerical rank ``rank``) at the batch ``images [B, H, W, C]``
    (module docstring: slot shares, fine share, predicted PSNR from the coarse start)."""
    from dlg_jax.attack.coarse import resized
    from dlg_jax.attack.objectives import Dummy

    _, vectors = np.linalg.eigh(matrix.T @ matrix)
    basis = vectors[:, :matrix.shape[1] - rank]  # [n, n - r], orthonormal

    def smoothed(flat: np.ndarray) -> np.ndarray:  # U(D(v)) for columns v [n, k]
        batch = flat.T.reshape(-1, 1, *images.shape)  # [k, 1, B, H, W, C]
        small = resized(Dummy(batch, None), (images.shape[1] // 2, images.shape[2] // 2, images.shape[3]))
        return np.asarray(resized(small, images.shape[1:]).images).reshape(flat.shape[1], -1).T

    def fine_share(columns: np.ndarray) -> float:
        return float(np.mean(np.sum((columns - smoothed(columns)) ** 2, axis=0) / np.sum(columns ** 2, axis=0)))

    truth = images.reshape(-1, 1)
    end = truth + basis @ (basis.T @ (smoothed(truth) - truth))  # x + N N^T (s - x)
    error = ((end - truth) ** 2).reshape(images.shape[0], -1).mean(axis=1)
    random = np.random.default_rng(0).standard_normal((basis.shape[0], 16))
    return {
        "null_slot_share": np.round((basis ** 2).reshape(images.shape[0], -1, basis.shape[1]).sum(axis=(1, 2))
                                    / basis.shape[1], 4).tolist(),
        "null_fine_share": round(fine_share(basis), 4), "random_fine_share": round(fine_share(random), 4),
        "predicted_coarse_psnr": np.round(-10 * np.log10(np.maximum(error, 1e-30)), 2).tolist(),
    }


def run_case(batch: int, target: int, args) -> dict:
    from dlg_jax.data.datasets import get_dataset
    from dlg_jax.models import build_model, parse_model_spec
    from dlg_jax.victim.gradients import shared_gradients

    source = get_dataset(args.dataset)
    architecture, options = parse_model_spec(args.model)
    options.setdefault("num_classes", args.classes or source.num_classes)
    model = build_model(architecture, source.input_shape, **options)
    params = model.init(jax.random.fold_in(jax.random.key(args.seed), 0x5EED), dtype=np.float64)
    images, labels = source.examples(np.arange(target * batch, (target + 1) * batch))
    images = images.astype(np.float64)
    grads = jax.tree.map(lambda g: g[0], shared_gradients(model, params, images[None], labels[None]))
    started = time.perf_counter()
    matrix = jacobian(model, params, grads, images, labels, args.chunk)
    jacobian_seconds = time.perf_counter() - started
    started = time.perf_counter()
    singular = np.linalg.svd(matrix, compute_uv=False)
    svd_seconds = time.perf_counter() - started
    rank = int(np.sum(singular > args.relative_threshold * singular[0]))
    null = null_space_summary(matrix, rank, images) if rank < matrix.shape[1] else {}
    drops = singular[:-1] / np.maximum(singular[1:], np.finfo(np.float64).tiny)
    gap = int(np.argmax(drops))  # singular[gap] / singular[gap + 1] is the largest drop
    bound = feature_bound(model, params, batch)
    n = matrix.shape[1]
    return {
        "dataset": args.dataset, "model": args.model, "classes": model.num_classes, "batch_size": batch,
        "target": target, "labels": labels.tolist(), "residuals": int(matrix.shape[0]), "unknowns": int(n),
        **bound, "rank_bound": int(n - max(bound["manifold_dimension_at_least"], 0)),
        "numerical_rank": rank, "relative_threshold": args.relative_threshold,
        "null_dimension": int(n - rank), "largest_drop_after": gap + 1, "largest_drop": float(drops[gap]),
        "singular_max": float(singular[0]), "singular_min": float(singular[-1]),
        "singular_at_rank_bound": [float(s) for s in singular[max(0, n - max(bound["manifold_dimension_at_least"], 0)
                                                                      - 2):][:5]],
        "jacobian_seconds": jacobian_seconds, "svd_seconds": svd_seconds, **null,
    }


def main(argv=None):
    parser = common.make_parser("identifiability", __doc__.splitlines()[0], timing_options=False)
    parser.add_argument("--dataset", default="colour", type=common.one_of("dataset", ("colour", "digits", "faces")))
    parser.add_argument("--model", default="lenet", help="model spec (default lenet)")
    parser.add_argument("--classes", type=common.positive_int("classes"), default=None)
    parser.add_argument("--batch-sizes", nargs="+", type=common.positive_int("batch size"), default=(2, 3, 4))
    parser.add_argument("--targets", type=common.positive_int("targets"), default=1)
    parser.add_argument("--chunk", type=common.positive_int("chunk"), default=256)
    parser.add_argument("--relative-threshold", type=common.nonnegative_float("relative threshold"), default=1e-9)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="identifiability", help="results file name (default: identifiability)")

    def go(args):
        jax.config.update("jax_enable_x64", True)
        rows = []
        for batch in args.batch_sizes:
            for target in range(args.targets):
                rows.append(run_case(batch, target, args))
                row = rows[-1]
                print(f"B = {batch}, target {target}: n = {row['unknowns']}, m = {row['residuals']}, rank "
                      f"{row['numerical_rank']} (bound {row['rank_bound']}), null dimension {row['null_dimension']} "
                      f"(at least {max(row['manifold_dimension_at_least'], 0)}), largest drop x{row['largest_drop']:.3g} "
                      f"after {row['largest_drop_after']}; J {row['jacobian_seconds']:.0f} s, "
                      f"SVD {row['svd_seconds']:.0f} s", flush=True)
                common.write_results(args.out, args.name, {
                    "benchmark": "identifiability", "settings": dict(vars(args)), "rows": rows,
                    "environment": common.environment()})
        return rows

    return common.run_cli(parser, go, argv)


if __name__ == "__main__":
    raise SystemExit(main())
