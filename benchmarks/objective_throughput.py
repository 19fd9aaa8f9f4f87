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
compilation, and two benchmark-local LeNet objectives: the restart axis innermost, the dense layer's weight
gradient in factored form), each with the largest relative difference of its values and gradients from the
default's (``--variants``, ``--variant-sizes`` pick which and where).

FLOPs (and bytes accessed) per restart-evaluation come from XLA's cost analysis of the compiled,
loop-free vmapped program (divided by the restarts it evaluates); the fraction of peak is
``flops x evaluations/s / (float32 matmul peak)``.

    python -m benchmarks.objective_throughput [--quick] [--sizes 1 8 32 128 512] [--candidates ...] [--device cpu]
        [--no-variants | --variants NAME ... --variant-sizes 16 128]
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


class Variant(NamedTuple):
    """One entry of :data:`VARIANTS`: its one-line description, the conv implementation, ``chunk``
    (restarts per ``lax.map`` step, ``None``: one vmap), XLA compiler options and ``form``, how a chunk is
    evaluated (:data:`FORMS`)."""

    description: str
    conv: str
    chunk: int | None
    options: dict | None
    form: str = "vmap"


VARIANTS = {
    "jax-chunked": Variant("patches, lax.map over chunks of 16 restarts (how run_attack batches)", "patches", 16, None),
    "jax-lax": Variant("lax.conv_general_dilated layers (grouped convolutions under vmap)", "lax", None, None),
    "jax-xla_fast_math": Variant("patches, xla_cpu_enable_fast_math", "patches", None,
                                 {"xla_cpu_enable_fast_math": True}),
    "jax-xla_onednn": Variant("patches, xla_cpu_use_onednn", "patches", None, {"xla_cpu_use_onednn": True}),
    "jax-xla_onednn_lax": Variant("lax.conv layers, xla_cpu_use_onednn", "lax", None, {"xla_cpu_use_onednn": True}),
    "jax-xla_no_xnnpack": Variant("patches, xla_cpu_use_xnnpack off", "patches", None, {"xla_cpu_use_xnnpack": False}),
    "jax-chunked_onednn": Variant("patches, chunks of 16 restarts, xla_cpu_use_onednn", "patches", 16,
                                  {"xla_cpu_use_onednn": True}),
    "jax-chunked_restarts_inner": Variant(
        "chunks of 16, restart axis innermost: activations [C, B, H, W, R], each conv one matmul "
        "K^T [F, khkwC] @ patches [khkwC, B*H'*W'*R], reverse-over-forward written out (benchmark-local LeNet)",
        "patches", 16, None, "restarts_inner"),
    "jax-chunked_factored_dense": Variant(
        "chunks of 16, dense weight gradient never formed: ||h^T d - dW||^2 = sum((h h^T)*(d d^T)) "
        "- 2 sum(h*(d dW^T)) + ||dW||^2 (benchmark-local LeNet objective on the package's patch_conv)",
        "patches", 16, None, "factored_dense"),
}
FORMS = ("vmap", "restarts_inner", "factored_dense")


class JaxProgram(NamedTuple):
    """How to build one JAX candidate: the model (its conv implementation), the second-order mode,
    ``chunk`` (restarts per ``lax.map`` step, ``None``: one vmap), XLA compiler options and ``form``
    (:data:`FORMS`: ``"vmap"``, the package's objective vmapped; else a benchmark-local LeNet objective,
    always reverse-over-forward)."""

    model: Any
    mode: str = "reverse_over_forward"
    chunk: int | None = None
    options: dict | None = None
    form: str = "vmap"


def _jax_program(problem, program: JaxProgram, images: np.ndarray, logits: np.ndarray):
    """``vmap(value_and_grad(J))`` of ``program.model`` (with ``problem``'s weights and target 0) for
    ``images [R, B, H, W, C]``, ``logits [R, B, K]``, compiled; with ``program.chunk``, ``lax.map`` over
    chunks of that many restarts (``R`` padded to a multiple); ``program.form`` other than ``"vmap"``: the
    chunk is evaluated by that benchmark-local objective (:func:`_restarts_inner_objective`,
    :func:`_factored_dense_objective`). Returns ``(run, compile_seconds, XLA cost per restart-evaluation,
    (values [R], gradient leaves [R, ...]))``."""
    from dlg_jax.attack.objectives import Context, Dummy, make_objective

    chunk, options = program.chunk, program.options
    if program.form == "vmap":
        objective = make_objective(program.model, second_order=program.mode)
        batched = jax.vmap(jax.value_and_grad(objective), in_axes=(0, Context(None, None, None)))
    else:
        batched = {"restarts_inner": _restarts_inner_objective,
                   "factored_dense": _factored_dense_objective}[program.form](program.model)
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
    values, gradient = common.block(compiled(dummy, context))
    outputs = (np.asarray(values), [np.asarray(leaf) for leaf in jax.tree.leaves(gradient)])
    return common.timed(lambda: common.block(compiled(dummy, context))), seconds, cost, outputs


# ---------------------------------------------------------------------------------------------------
# Benchmark-local LeNet objectives (the "restarts_inner" and "factored_dense" forms of VARIANTS).
# Both evaluate, for a chunk of restarts (dummy leaves [R, ...]) and a Context like the package's,
# exactly DLG's l2 objective J(z) = sum_l ||g_l(z) - dW_l||^2 of make_objective (no priors) and its
# gradient, reverse-over-forward: grad_z J = grad_z <g(z), v>, v = 2 (g - dW) held fixed. They are only
# for dlg_jax.models.lenet.LeNet (3 convs 5x5, strides 2, 2, 1, padding 2, sigmoid, then one Dense);
# measure_objective(compare_with=...) records how far their values and gradients are from the default's.

_LENET_CONVS = (("Conv2D_0", 2), ("Conv2D_1", 2), ("Conv2D_2", 1))
_LENET_PADDING = ((2, 2), (2, 2))


def _check_lenet(model, params=None):
    from dlg_jax.errors import DLGInputError

    names = {name for name, _ in _LENET_CONVS} | {"Dense_0"}
    if model.name != "lenet" or getattr(model.module, "conv_implementation", None) != "patches":
        raise DLGInputError(f"the benchmark-local objectives are written for LeNet with patches, not {model.name!r}")
    if params is not None and set(params) != names:
        raise DLGInputError(f"LeNet parameters {sorted(params)} are not {sorted(names)}")


def _factored_dense_objective(model):
    """``(dummy [R, ...], context) -> (J [R], grad_z J)`` with the dense layer's weight gradient in
    factored form. For ``logits = h W + c`` (``h [B, 768]``) the weight gradient is ``h^T d``, ``d =
    d loss / d logits [B, K]`` (rank ``B``), and

        ||h^T d - dW||^2 = sum((h h^T) * (d d^T)) - 2 sum(h * (d dW^T)) + ||dW||^2,

    so no ``[768, K]`` matrix per restart is formed. The other leaves (conv kernels and biases, the dense
    bias) are matched as in :func:`dlg_jax.attack.objectives.make_objective` (a ``jvp`` in those weights
    under a ``grad`` in the dummy); the dense term is differentiated through ``h(z)`` and ``d(z)``. Each
    restart is vmapped (restart axis leading), convolutions are the package's ``patch_conv``. Near a match
    (``h^T d ~ dW``) the three terms cancel: the value's error is ~ float32 eps x ``||dW||^2`` absolute, not
    relative to the (small) residual, so this is a throughput experiment, not checked under the attack."""
    from dlg_jax.attack.objectives import Context, soft_targets
    from dlg_jax.models.layers import patch_conv
    from dlg_jax.victim.gradients import soft_cross_entropy

    _check_lenet(model)

    def split(tree):  # (everything but the dense kernel, the dense kernel)
        rest = {name: leaves for name, leaves in tree.items() if name != "Dense_0"}
        return {**rest, "Dense_0": {"bias": tree["Dense_0"]["bias"]}}, tree["Dense_0"]["kernel"]

    def loss(theta, kernel, dummy, context):
        x = dummy.images
        for name, stride in _LENET_CONVS:
            x = jax.nn.sigmoid(patch_conv(x, theta[name]["kernel"], (stride, stride), _LENET_PADDING)
                               + theta[name]["bias"])
        h = x.reshape(x.shape[0], -1)
        logits = h @ kernel + theta["Dense_0"]["bias"]
        targets = soft_targets(dummy, context)
        return soft_cross_entropy(logits, targets), (h, logits, targets)

    def dense_term(h, logits, targets, kernel_target):  # ||h^T d - dW||^2 - ||dW||^2
        d = jax.grad(soft_cross_entropy)(logits, targets)
        return jnp.sum((h @ h.T) * (d @ d.T)) - 2.0 * jnp.sum(h * (d @ kernel_target.T))

    def value_and_grad(dummy, context):
        _check_lenet(model, context.params)
        theta, kernel = split(context.params)
        theta_target, kernel_target = split(context.target_grad)
        grad, (h, logits, targets) = jax.grad(loss, has_aux=True)(theta, kernel, dummy, context)
        diff = jax.tree.map(jnp.subtract, grad, theta_target)
        value = (sum(jnp.vdot(leaf, leaf) for leaf in jax.tree.leaves(diff))
                 + dense_term(h, logits, targets, kernel_target) + jnp.vdot(kernel_target, kernel_target))
        direction = jax.lax.stop_gradient(jax.tree.map(lambda leaf: 2.0 * leaf, diff))

        def surrogate(d):  # <g_theta(d), v_theta> + the dense term, v held fixed: its gradient is grad_z J
            _, tangent, aux = jax.jvp(lambda t: loss(t, kernel, d, context), (theta,), (direction,), has_aux=True)
            return tangent + dense_term(*aux, kernel_target)

        return value, jax.grad(surrogate)(dummy)

    return jax.vmap(value_and_grad, in_axes=(0, Context(None, None, None)))


def _inner_patches(x, kernel_size, strides, padding):
    """im2col with the restart axis innermost: ``x [C, B, H, W, R] -> [kh * kw * C, B, H', W', R]``,
    feature order (kh, kw, C) as :func:`dlg_jax.models.layers.extract_patches` (two stages of slices)."""
    (kh, kw), (sh, sw) = kernel_size, strides
    x = jnp.pad(x, ((0, 0), (0, 0), tuple(padding[0]), tuple(padding[1]), (0, 0)))
    out_h = (x.shape[2] - kh) // sh + 1
    out_w = (x.shape[3] - kw) // sw + 1
    columns = jnp.stack([x[:, :, :, j:j + sw * (out_w - 1) + 1:sw] for j in range(kw)])  # [kw, C, B, Hp, W', R]
    patches = jnp.stack([columns[:, :, :, i:i + sh * (out_h - 1) + 1:sh] for i in range(kh)])  # [kh, kw, C, B, H', W', R]
    return patches.reshape(-1, *patches.shape[3:])


def _restarts_inner_objective(model):
    """``(dummy [R, ...], context) -> (J [R], grad_z J)`` for a chunk of ``R`` restarts laid out with
    the restart axis last: images ``[C, B, H, W, R]``, label logits ``[K, B, R]`` (transposed in and
    out). Each conv is one matmul ``K^T [F, kh kw C] @ patches [kh kw C, B H' W' R]`` with the shared
    kernel, so every slice/pad of the patches moves runs of ``R`` (and ``W' R``) values; the per-restart
    weight gradients are contractions over ``(B, H', W')`` with ``R`` as the batch axis.

    ``g(z)``: the activation gradients ``d loss_r / d u_l`` from ``jax.grad`` of ``sum_r loss_r`` with
    respect to zero probes added to each layer's pre-activation ``u_l`` (restarts are independent, so that
    is each restart's own), then ``g_K = patches^T du``, ``g_b = sum du``, ``g_W = h^T d``. ``grad_z J``:
    ``grad_z sum_r <g_r(z), v_r>`` with the ``jvp`` in the weights written out (``u'_l = K^T patches(a'_{l-1})
    + patches(a_{l-1}) v_K + v_b``, ``a'_l = a_l (1 - a_l) u'_l``), as make_objective's reverse-over-forward."""
    _check_lenet(model)
    size = (5, 5)

    def per_restart_loss(logits, label_logits):  # [K, B, R] -> [R]
        targets = jax.nn.softmax(label_logits, axis=0)
        return jnp.mean(jnp.sum(-targets * jax.nn.log_softmax(logits, axis=0), axis=0), axis=0)

    def dense(kernel, h):  # kernel [H*W*C, K] (NHWC flatten), h [C, B, H, W, R] -> [K, B, R]
        channels, _, height, width, _ = h.shape
        return jnp.einsum("hwck,cbhwr->kbr", kernel.reshape(height, width, channels, -1), h)

    def forward(params, x, probes=None):
        """``x [C, B, H, W, R]`` -> logits ``[K, B, R]`` and the patches/activations of every layer."""
        patches, activations = [], [x]
        for index, (name, stride) in enumerate(_LENET_CONVS):
            kernel = params[name]["kernel"]
            p = _inner_patches(x, size, (stride, stride), _LENET_PADDING)
            u = jnp.tensordot(kernel.reshape(-1, kernel.shape[-1]), p, axes=(0, 0))
            u = u + params[name]["bias"][:, None, None, None, None]
            if probes is not None:
                u = u + probes[index]
            x = jax.nn.sigmoid(u)
            patches.append(p)
            activations.append(x)
        logits = dense(params["Dense_0"]["kernel"], x) + params["Dense_0"]["bias"][:, None, None]
        if probes is not None:
            logits = logits + probes[-1]
        return logits, patches, activations

    def gradient(params, x, label_logits):
        """Each restart's weight gradient, shaped like ``params`` with a trailing ``R`` axis."""
        logits, _, activations = jax.eval_shape(forward, params, x)
        probes = [jnp.zeros(a.shape, a.dtype) for a in (*activations[1:], logits)]  # on u_1..u_3, the logits

        def total(probes):
            logits, patches, activations = forward(params, x, probes)
            return jnp.sum(per_restart_loss(logits, label_logits)), (patches, activations)

        deltas, (patches, activations) = jax.grad(total, has_aux=True)(probes)
        grad = {}
        for (name, _), p, du in zip(_LENET_CONVS, patches, deltas):
            kernel = params[name]["kernel"]
            grad[name] = {"kernel": jnp.einsum("kbhwr,fbhwr->kfr", p, du).reshape(*kernel.shape, -1),
                          "bias": du.sum(axis=(1, 2, 3))}
        h, d = activations[-1], deltas[-1]
        channels, _, height, width, _ = h.shape
        grad["Dense_0"] = {"kernel": jnp.einsum("cbhwr,kbr->hwckr", h, d).reshape(height * width * channels, -1,
                                                                                  h.shape[-1]),
                           "bias": d.sum(axis=1)}
        return grad

    def directional(params, x, label_logits, v):  # sum_r <g_r, v_r>: loss_r's derivative along v_r
        a, a_dot = x, None
        for name, stride in _LENET_CONVS:
            kernel = params[name]["kernel"].reshape(-1, params[name]["kernel"].shape[-1])
            p = _inner_patches(a, size, (stride, stride), _LENET_PADDING)
            u = jnp.tensordot(kernel, p, axes=(0, 0)) + params[name]["bias"][:, None, None, None, None]
            v_kernel = v[name]["kernel"].reshape(kernel.shape[0], kernel.shape[1], -1)
            u_dot = jnp.einsum("kbhwr,kfr->fbhwr", p, v_kernel) + v[name]["bias"][:, None, None, None, :]
            if a_dot is not None:
                u_dot = u_dot + jnp.tensordot(kernel, _inner_patches(a_dot, size, (stride, stride), _LENET_PADDING),
                                              axes=(0, 0))
            a = jax.nn.sigmoid(u)
            a_dot = a * (1.0 - a) * u_dot
        channels, _, height, width, _ = a.shape
        weights, v_weights = params["Dense_0"]["kernel"], v["Dense_0"]["kernel"]
        logits = dense(weights, a) + params["Dense_0"]["bias"][:, None, None]
        logits_dot = (dense(weights, a_dot) + v["Dense_0"]["bias"][:, None, :]
                      + jnp.einsum("hwckr,cbhwr->kbr", v_weights.reshape(height, width, channels, *v_weights.shape[1:]), a))
        _, loss_dot = jax.jvp(lambda l: per_restart_loss(l, label_logits), (logits,), (logits_dot,))
        return jnp.sum(loss_dot)

    def inner(dummy):  # the restart axis last
        return dummy.images.transpose(4, 1, 2, 3, 0), dummy.label_logits.transpose(2, 1, 0)

    def value_and_grad(dummy, context):
        _check_lenet(model, context.params)
        params = context.params
        x, label_logits = inner(dummy)
        grad = gradient(params, x, label_logits)
        diff = jax.tree.map(lambda g, t: g - t[..., None], grad, context.target_grad)
        value = sum(jnp.sum(jnp.square(leaf), axis=tuple(range(leaf.ndim - 1))) for leaf in jax.tree.leaves(diff))
        direction = jax.lax.stop_gradient(jax.tree.map(lambda leaf: 2.0 * leaf, diff))
        dummy_grad = jax.grad(lambda d: directional(params, *inner(d), direction))(dummy)
        return value, dummy_grad

    return value_and_grad


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


def measure_variants(problem, sizes, repeats: int, seed: int, names=tuple(VARIANTS), torch_names=(),
                     device="cpu") -> list[dict]:
    """The entries ``names`` of :data:`VARIANTS` timed in alternation with the default program (and the
    PyTorch candidates ``torch_names``, e.g. ``torch-compile``, the bar to reach, on ``device``) at each of
    ``sizes``: rows with ``restart_evaluations_per_second``, ``ratio_vs_default`` and the description. On a
    GPU/TPU backend the XLA CPU options are left out."""
    from dlg_jax.models import build_model

    model = problem.model
    models = {impl: build_model(model.name, model.input_shape, model.num_classes, conv_implementation=impl)
              for impl in ("patches", "lax")}
    chosen = {name: VARIANTS[name] for name in names
              if VARIANTS[name].options is None or not common.is_accelerator()}
    programs = {"jax-reverse_over_forward": JaxProgram(model)}
    programs.update({name: JaxProgram(models[v.conv], chunk=v.chunk, options=v.options, form=v.form)
                     for name, v in chosen.items()})
    rows = []
    for restarts in sizes:
        measured = measure_objective(problem, restarts, repeats, seed, programs, torch_names, float("nan"), device,
                                     compare_with="jax-reverse_over_forward")
        default = measured[0]["restart_evaluations_per_second"]
        for row in measured:
            name = row["candidate"]
            description = (chosen[name].description if name in chosen else "the default (patches, one vmap)"
                           if name in programs else f"PyTorch ({name}), timed in the same alternation")
            rows.append({"variant": name, "restarts": restarts, "description": description,
                         "options": programs[name].options if name in programs else None,
                         "restart_evaluations_per_second": row["restart_evaluations_per_second"],
                         "ratio_vs_default": row["restart_evaluations_per_second"] / default,
                         **{key: row.get(key) for key in (
                             "compile_seconds", "bytes_accessed_per_evaluation", "flops_per_evaluation",
                             "max_relative_difference_vs_default", "max_relative_gradient_difference_vs_default")}})
            versus = (f"vs default: J {row['max_relative_difference_vs_default']:.1e}, grad "
                      f"{row['max_relative_gradient_difference_vs_default']:.1e}" if name in programs else "PyTorch")
            print(f"variant R={restarts:4d} {name:26s} {row['restart_evaluations_per_second']:9.1f} restart-evals/s "
                  f"(x{rows[-1]['ratio_vs_default']:.2f}; {versus})", flush=True)
    return rows


def measure_objective(problem, restarts: int, repeats: int, seed: int, variants: dict, torch_names,
                      peak_gflops: float, device="cpu", compare_with: str | None = None) -> list[dict]:
    """One row per candidate for ``restarts`` restarts of target 0 of ``problem``, timed in alternation.

    ``variants``: ``{name: JaxProgram}`` (models sharing ``problem``'s parameters); ``torch_names``: a subset of :data:`TORCH_CANDIDATES`, run on ``device``.
    Each row: ``restart_evaluations_per_second`` (median), ``compile_seconds`` (JAX, torch-compile),
    ``max_relative_difference_vs_torch`` (against eager PyTorch), XLA cost per evaluation (JAX). With
    ``compare_with`` (a name in ``variants``), each JAX row also has ``max_relative_difference_vs_default``
    (of the values J, elementwise) and ``max_relative_gradient_difference_vs_default`` (per restart and
    dummy leaf, ``max |grad - grad_default| / max |grad_default|``; the largest) against that program."""
    batch = problem.images.shape[1]
    images, logits = (a[0] for a in common.initial_dummies(seed, 1, restarts, batch, problem.model))
    runs, info, values, gradients = {}, {}, {}, {}
    for name, program in variants.items():
        runs[name], compile_seconds, cost, (values[name], gradients[name]) = _jax_program(
            problem, program, images, logits)
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
        if compare_with is not None and name in gradients:
            row["max_relative_difference_vs_default"] = float(np.max(
                np.abs(values[name] - values[compare_with]) / np.maximum(np.abs(values[compare_with]), 1e-30)))
            row["max_relative_gradient_difference_vs_default"] = max(
                float(np.max(np.max(np.abs(mine - theirs).reshape(len(mine), -1), axis=1)
                             / np.maximum(np.max(np.abs(theirs).reshape(len(theirs), -1), axis=1), 1e-30)))
                for mine, theirs in zip(gradients[name], gradients[compare_with]))
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
    variant_sizes = args.variant_sizes or VARIANT_SIZES
    variants_rows = [] if args.no_variants else measure_variants(
        problem, variant_sizes, repeats, args.seed, args.variants,
        [name for name in torch_names if name == "torch-compile"], device)
    payload = {
        "benchmark": NAME, "quick": args.quick,
        "config": {"model": "lenet", "num_classes": problem.model.num_classes, "batch_size": 1,
                   "sizes": list(sizes), "repeats": repeats, "seed": args.seed, "candidates": list(candidates),
                   "variants": [] if args.no_variants else list(args.variants),
                   "variant_sizes": [] if args.no_variants else list(variant_sizes),
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
    parser.add_argument("--variants", nargs="+", action=common.Distinct, type=common.one_of("variant", tuple(VARIANTS)),
                        default=tuple(VARIANTS),
                        help="the objective_variants to time against the default (jax-reverse_over_forward); "
                             f"one or more of {','.join(VARIANTS)} (default: all)")
    parser.add_argument("--variant-sizes", nargs="+", action=common.Distinct,
                        type=common.positive_int("restart count", MAX_RESTARTS), default=None,
                        help=f"restart counts R of the objective_variants (default: {','.join(map(str, VARIANT_SIZES))})")
    return parser


def main(argv: list[str] | None = None) -> int:
    return common.run_cli(build_parser(), run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
