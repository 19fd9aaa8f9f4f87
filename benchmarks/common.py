"""Shared benchmark machinery: command line, PyTorch import guard, problem set-up, timing, environment
record, matmul peak, XLA FLOP counts and result files.

Device and precision: the PyTorch side runs on the device JAX runs on (``--device cpu|cuda``, default
:func:`default_device`), both sides at full float32 precision: JAX programs are traced under
:func:`jax_precision` (``"highest"``), PyTorch on CUDA has TF32 turned off (:func:`torch_device`); every
result JSON records both settings (:func:`precision_record`).

Timing protocol: every candidate (a JAX program, a PyTorch baseline) is warmed up (JAX: compiled ahead
of time, the compile time recorded on its own), then the candidates run in turn, ``A, B, C, A, B, C, ...``
(:func:`alternate`), so that load from other processes on a shared machine hits all of them alike, and
each is summarised by the median over its repeats.
"""

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.environment import cpu_model, environment  # noqa: F401  (re-exported for the benchmarks)
from dlg_jax.errors import DLGInputError
from dlg_jax.figures import subplots
from dlg_jax.files import atomic_save_figure, atomic_write_json, prepare_output_dir

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
MISSING_TORCH = "PyTorch is not installed: pip install 'dlg-jax[torch]'"
TORCH_THREADS = 2
# DLG's LeNet ends in Linear(768, 100) (CIFAR-100); the benchmarks keep that head for every LeNet run.
DLG_NUM_CLASSES = 100
RESNET_NUM_CLASSES = 10
DEVICES = ("cpu", "cuda")
# The matmul/convolution precision every JAX program of the benchmarks is traced with (full float32: on
# NVIDIA GPUs XLA's default is TF32, with which DLG does not recover the image; docs/design.md).
JAX_PRECISION = "highest"


class TorchMissingError(ImportError):
    """PyTorch is absent; the message is the one line :data:`MISSING_TORCH`."""


def require_torch():
    """Import PyTorch with :data:`TORCH_THREADS` intra-op threads, or raise :class:`TorchMissingError`.

    Unless ``OMP_WAIT_POLICY`` is set already, it is set to ``PASSIVE`` before the first import: with
    the default (spinning) policy, 2-thread PyTorch on a 2-core machine shared with other busy processes
    ran DLG's objective at 3 evaluations/s instead of 182 (its OpenMP threads spin while descheduled).
    Set ``OMP_WAIT_POLICY=ACTIVE`` to measure the spinning default on an idle machine; the value used is
    recorded in :func:`environment`.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        import torch
    except ImportError:
        raise TorchMissingError(MISSING_TORCH) from None
    torch.set_num_threads(TORCH_THREADS)
    return torch


def is_accelerator() -> bool:
    """Whether JAX's default backend is a GPU or TPU (the benchmarks then use GPU-sized settings)."""
    return jax.default_backend() != "cpu"


def default_device() -> str:
    """The PyTorch device matching JAX's backend: ``"cuda"`` when it is ``gpu``, else ``"cpu"``."""
    return "cuda" if jax.default_backend() == "gpu" else "cpu"


def torch_device(torch, name: str):
    """``torch.device(name)`` for ``name`` in :data:`DEVICES`, set up for full float32: on CUDA, TF32 is
    turned off in matmuls and cuDNN convolutions and the float32 matmul precision set to ``"highest"``.
    Raises :class:`DLGInputError` (one line) when ``name`` is unknown or CUDA is asked of a PyTorch
    without it."""
    if name not in DEVICES:
        raise DLGInputError(f"unknown device {name!r}; allowed: {', '.join(DEVICES)}")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DLGInputError(f"device 'cuda' asked, but this PyTorch ({torch.__version__}) has no CUDA device; "
                                "allowed here: cpu")
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        torch.set_float32_matmul_precision("highest")
    return torch.device(name)


def jax_precision():
    """The context every JAX program of the benchmarks is traced and compiled in:
    :func:`dlg_jax.attack.precision.matmul_precision` at :data:`JAX_PRECISION`."""
    from dlg_jax.attack.precision import matmul_precision

    return matmul_precision(JAX_PRECISION)


def precision_record(torch=None, device=None) -> dict:
    """Which precision settings each side ran with (for the result JSON)."""
    record = {"jax": {"default_matmul_precision": JAX_PRECISION, "backend": jax.default_backend()}}
    if torch is not None:
        record["torch"] = {"device": str(device) if device is not None else "cpu",
                           "float32_matmul_precision": torch.get_float32_matmul_precision(),
                           "cuda_matmul_allow_tf32": bool(torch.backends.cuda.matmul.allow_tf32),
                           "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32)}
    return record


def setup_torch(args):
    """``(torch, device)`` for a benchmark run: PyTorch imported and ``args.device`` set up, or
    ``(None, None)`` when ``args.no_torch`` is set."""
    if getattr(args, "no_torch", False):
        return None, None
    torch = require_torch()
    return torch, torch_device(torch, args.device or default_device())


# ---------------------------------------------------------------------------------------------------
# Command line


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit status 2 (argparse would print the usage too)
        raise DLGInputError(message)


def make_parser(name: str, description: str, timing_options: bool = True) -> argparse.ArgumentParser:
    """A parser for ``python -m benchmarks.<name>`` with ``--out`` and (``timing_options``) the common
    ``--quick``, ``--repeats``, ``--seed`` and ``--no-plot`` options."""
    parser = _Parser(prog=f"python -m benchmarks.{name}", description=description)
    parser.add_argument("--out", default=RESULTS_DIR, help=f"results directory (default: {RESULTS_DIR})")
    if timing_options:
        parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (minutes on 2 cores)")
        parser.add_argument("--repeats", type=positive_int("repeats"), default=None,
                            help="timed repeats per candidate (median reported)")
        parser.add_argument("--seed", type=int, default=0, help="seed of the model weights and the dummies")
        parser.add_argument("--no-plot", action="store_true", help="skip the PNG")
        parser.add_argument("--device", choices=DEVICES, default=None,
                            help="where the PyTorch side runs (default: cuda when JAX's backend is gpu, else cpu)")
    return parser


def positive_int(what: str, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse ``type`` for one integer in ``[1, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{what} must be an integer >= 1, got {text!r}") from None
        if value < 1 or (maximum is not None and value > maximum):
            limit = f" and <= {maximum}" if maximum is not None else ""
            raise argparse.ArgumentTypeError(f"{what} must be an integer >= 1{limit}, got {text!r}")
        return value

    return parse


def nonnegative_float(what: str) -> Callable[[str], float]:
    """An argparse ``type`` for one finite number ``>= 0``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = float("nan")
        if not 0 <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"{what} must be a number >= 0, got {text!r}")
        return value

    return parse


def one_of(what: str, allowed: tuple[str, ...]) -> Callable[[str], str]:
    """An argparse ``type`` for one name out of ``allowed`` (lists: ``nargs="+"`` with :class:`Distinct`)."""

    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"unknown {what} {text!r}; allowed: {', '.join(allowed)}")
        return text

    return parse


class Distinct(argparse.Action):
    """Stores ``nargs="+"`` values as a tuple; a value given twice is an error (space-separated lists,
    as every ``dlg-jax`` command takes them)."""

    def __call__(self, parser, namespace, values, option_string=None):
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise argparse.ArgumentError(self, f"{repeated[0]!r} is given twice")
        setattr(namespace, self.dest, tuple(values))


def run_cli(parser: argparse.ArgumentParser, run: Callable[[argparse.Namespace], Any],
            argv: list[str] | None) -> int:
    """Parse ``argv`` and call ``run(args)``; bad input or a missing PyTorch prints one line to stderr
    and returns 2, success returns 0."""
    try:
        args = parser.parse_args(argv)
        prepare_output_dir(args.out)
        run(args)
        return 0
    except (DLGInputError, TorchMissingError) as error:
        print(f"{parser.prog}: error: {error}", file=sys.stderr)
        return 2


# ---------------------------------------------------------------------------------------------------
# Problems


class Problem(NamedTuple):
    """``T`` victims of one model: images ``[T, B, H, W, C]`` (colour set, image ``t * B + b``),
    labels ``[T, B]``, their shared gradients (JAX, parameter pytree with a leading ``T`` axis)."""

    model: Any
    params: Any
    images: np.ndarray
    labels: np.ndarray
    target_grads: Any


def make_problem(model_name: str, targets: int, batch_size: int, seed: int, dataset: str = "colour") -> Problem:
    """LeNet (DLG's, 100 classes) or a CIFAR ResNet (10 classes) with weights from ``seed`` and the
    shared gradients of ``targets`` batches of ``batch_size`` images of an embedded ``dataset``
    (image ``t * B + b``; default the colour set, 32x32x3)."""
    from dlg_jax.data.datasets import get_dataset
    from dlg_jax.models import build_model
    from dlg_jax.victim.gradients import shared_gradients

    classes = DLG_NUM_CLASSES if model_name == "lenet" else RESNET_NUM_CLASSES
    source = get_dataset(dataset)
    model = build_model(model_name, source.input_shape, classes)
    params = model.init(jax.random.key(seed))
    if targets * batch_size > source.size:
        raise DLGInputError(
            f"targets x batch size = {targets * batch_size} exceeds the {source.size} {dataset} images"
        )
    images, labels = source.examples(np.arange(targets * batch_size))
    images = images.reshape(targets, batch_size, *source.input_shape)
    labels = labels.reshape(targets, batch_size)
    return Problem(model, params, images, labels, shared_gradients(model, params, images, labels))


def initial_dummies(seed: int, targets: int, restarts: int, batch_size: int, model) -> tuple[np.ndarray, np.ndarray]:
    """The starting points :func:`dlg_jax.attack.engine.run_attack` draws (joint labels), as numpy arrays:
    images ``[T, R, B, H, W, C]`` and label logits ``[T, R, B, K]``."""
    from dlg_jax.attack.engine import initial_dummy

    draw = jax.vmap(jax.vmap(
        lambda t, r: initial_dummy(seed, t, r, batch_size, model.input_shape, model.num_classes, True, jnp.float32),
        in_axes=(None, 0)), in_axes=(0, None))
    dummy = draw(jnp.arange(targets), jnp.arange(restarts))
    return np.asarray(dummy.images), np.asarray(dummy.label_logits)


# ---------------------------------------------------------------------------------------------------
# Timing


def timed(fn: Callable[[], Any]) -> Callable[[], float]:
    """``fn`` wrapped to return its wall time in seconds (``fn`` must block until its work is done)."""

    def run() -> float:
        started = time.perf_counter()
        fn()
        return time.perf_counter() - started

    return run


def alternate(candidates: dict[str, Callable[[], Any]], repeats: int) -> dict[str, list]:
    """Run every candidate ``repeats`` times in round-robin order; the outputs per candidate."""
    outputs: dict[str, list] = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            outputs[name].append(fn())
    return outputs


def median(values) -> float:
    return float(statistics.median(values))


def block(tree):
    """``jax.block_until_ready`` that returns the tree (for use inside lambdas)."""
    return jax.block_until_ready(tree)


def compile_timed(jitted, *args, options: dict | None = None) -> tuple[Any, float]:
    """``jitted`` lowered and compiled for ``args`` under :func:`jax_precision` (``options``: XLA compiler
    options for this compilation only, e.g. ``{"xla_cpu_enable_fast_math": True}``): the executable and
    the seconds that took."""
    started = time.perf_counter()
    with jax_precision():
        compiled = jitted.lower(*args).compile(compiler_options=options or None)
    return compiled, time.perf_counter() - started


def xla_cost(compiled) -> dict:
    """``{"flops", "bytes_accessed"}`` of one call of a compiled JAX executable, from XLA's cost analysis
    (NaN where the backend reports none). XLA counts a loop body once, so use loop-free programs."""
    analysis = compiled.cost_analysis()
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else {}
    analysis = analysis or {}
    return {"flops": float(analysis.get("flops", float("nan"))),
            "bytes_accessed": float(analysis.get("bytes accessed", float("nan")))}


def peak_matmul(n: int = 2048, repeats: int = 5) -> dict:
    """float32 ``[n, n] @ [n, n]`` with ``jnp.matmul`` (``2 n^3`` FLOPs): the best and the median
    GFLOP/s over ``repeats``. The best is the peak the benchmarks divide by (a conservative choice)."""
    a = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(2), (n, n), jnp.float32)
    matmul, _ = compile_timed(jax.jit(jnp.matmul), a, b)
    block(matmul(a, b))
    seconds = [timed(lambda: block(matmul(a, b)))() for _ in range(repeats)]
    flops = 2.0 * n ** 3
    return {"n": n, "repeats": repeats, "gflops_best": flops / min(seconds) / 1e9,
            "gflops_median": flops / median(seconds) / 1e9}


# ---------------------------------------------------------------------------------------------------
# Environment and output


def write_results(out_dir: str, name: str, payload: dict, figure=None) -> str:
    """Write ``<out_dir>/<name>.json`` (and ``<name>.png`` from ``figure``) atomically; the JSON path."""
    prepare_output_dir(out_dir)
    path = os.path.join(out_dir, f"{name}.json")
    atomic_write_json(path, payload)
    if figure is not None:
        atomic_save_figure(os.path.join(out_dir, f"{name}.png"), figure)
    return path


def new_figure(width: float = 6.0, height: float = 4.0, columns: int = 1):
    """A matplotlib figure and its axes (``columns`` side by side), made without pyplot."""
    return subplots(1, columns, figsize=(width, height), dpi=120)
