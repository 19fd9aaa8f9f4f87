"""The attack: many independent gradient-inversion problems solved in one compiled, vmapped program.

A *problem* is one restart ``r`` of one target ``t`` (``N = T * R`` problems). Each has its own dummy
``z = (x' [B, H, W, C], y' [B, K])`` drawn from N(0, 1) with key ``fold_in(fold_in(key(seed), t), r)``
(so results do not depend on the chunking), and its own shared gradient ``dW_t``; the model parameters
are shared. Problems run in chunks of ``chunk_size``: inside a chunk, ``jax.vmap`` runs the solver's
step for every problem in lockstep, ``lax.scan`` runs ``block`` iterations per compiled call, and the
host loop between blocks reports progress and stops once every problem is done.

Per problem and iteration: a problem whose objective is below its threshold (``AttackConfig.tolerance``) is *converged* and frozen; one
whose objective or new dummy is NaN/inf is *failed* and frozen at its last finite dummy (so it never
poisons the others, which share no state with it). The best restart of a target is the non-failed one
with the lowest final objective; every restart's result is kept.
"""

import dataclasses
import functools
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.data import to_uint8
from dlg_jax.errors import DLGInputError, check_choice, check_positive_int
from dlg_jax.labels import LABEL_STRATEGIES, is_joint
from dlg_jax.models import Model
from dlg_jax.objectives import DISTANCES, SECOND_ORDER_MODES, Context, Dummy, make_objective
from dlg_jax.solvers import SolverConfig, make_solver
from dlg_jax.victim import check_shared_gradients, one_hot

DTYPES = ("float32", "float64")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """Everything that defines an attack run (validated on construction).

    ``tolerance``: a restart is converged (and frozen) once its objective is at or below
    ``tolerance * ||dW||^2`` (l2 matching: relative to the shared gradient's squared norm, so that a
    target whose gradient is small is held to the same standard) or ``tolerance`` (cosine matching).
    ``chunk_size``: problems (target x restart pairs) per vmapped batch.
    ``block``: iterations per compiled call between progress reports / early-stop checks.
    ``snapshots``: how many intermediate images (at evenly spaced iterations, first = initial dummy)
    are kept for the best restart. ``box``: clip the images to ``[low, high]`` after every step.
    ``memory_budget``: bytes; if set, the chunk is the largest whose compiled step fits it
    (:func:`dlg_jax.memory.chunk_for_budget`) and ``chunk_size`` is not used.
    """

    restarts: int = 8
    iterations: int = 3000
    solver: SolverConfig = SolverConfig()
    distance: str = "l2"
    labels: str = "joint"
    tv_weight: float = 0.0
    layer_weights: tuple[float, ...] | None = None
    box: tuple[float, float] | None = None
    second_order: str = "reverse_over_forward"
    tolerance: float = 1e-8
    chunk_size: int = 16
    block: int = 100
    snapshots: int = 6
    seed: int = 0
    dtype: str = "float32"
    memory_budget: int | None = None

    def __post_init__(self):
        check_positive_int("restarts", self.restarts)
        check_positive_int("iterations", self.iterations)
        check_positive_int("chunk_size", self.chunk_size)
        check_positive_int("block", self.block)
        check_choice("distance", self.distance, DISTANCES)
        check_choice("label strategy", self.labels, LABEL_STRATEGIES)
        check_choice("second-order mode", self.second_order, SECOND_ORDER_MODES)
        check_choice("dtype", self.dtype, DTYPES)
        if self.memory_budget is not None:
            check_positive_int("memory_budget", self.memory_budget)
        if not isinstance(self.solver, SolverConfig):
            raise DLGInputError(f"solver must be a SolverConfig, got {self.solver!r}")
        if self.tv_weight < 0:
            raise DLGInputError(f"tv_weight must be >= 0, got {self.tv_weight}")
        if not self.tolerance >= 0:
            raise DLGInputError(f"tolerance must be >= 0, got {self.tolerance}")
        if self.snapshots < 0:
            raise DLGInputError(f"snapshots must be >= 0, got {self.snapshots}")
        if self.box is not None and not (len(self.box) == 2 and self.box[0] < self.box[1]):
            raise DLGInputError(f"box must be (low, high) with low < high, got {self.box!r}")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise DLGInputError(
                "dtype 'float64' needs jax.config.update('jax_enable_x64', True) at start-up (CLI: --float64)"
            )


@dataclasses.dataclass
class AttackResult:
    """All restarts of all targets (numpy arrays; ``T`` targets, ``R`` restarts, ``B`` batch slots).

    images [T, R, B, H, W, C], label_logits [T, R, B, K] (joint labels) or None, labels [T, R, B],
    loss [T, R] (final objective), failed / converged [T, R] bool, iterations / evaluations [T, R],
    loss_history [T, R, I] (objective at each iteration run; frozen restarts repeat their last value),
    best_restart [T], snapshots [T, S, B, H, W, C] uint8 of the best restart at ``snapshot_iterations [S]``.
    """

    images: np.ndarray
    label_logits: np.ndarray | None
    labels: np.ndarray
    loss: np.ndarray
    failed: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    loss_history: np.ndarray
    best_restart: np.ndarray
    snapshots: np.ndarray
    snapshot_iterations: np.ndarray
    compile_seconds: float
    run_seconds: float
    restart_iterations: int

    @property
    def best_images(self) -> np.ndarray:
        """``[T, B, H, W, C]``: the best restart's images per target."""
        return self.images[np.arange(len(self.best_restart)), self.best_restart]

    @property
    def best_labels(self) -> np.ndarray:
        return self.labels[np.arange(len(self.best_restart)), self.best_restart]

    @property
    def best_loss(self) -> np.ndarray:
        return self.loss[np.arange(len(self.best_restart)), self.best_restart]


class Progress(NamedTuple):
    """Reported after every block: chunk ``chunk`` of ``chunks``, ``iteration`` of the budget."""

    chunk: int
    chunks: int
    iteration: int
    iterations: int
    best_loss: float
    converged: int
    failed: int
    problems: int


class _Problem(NamedTuple):
    """One problem's loop state. Once converged or failed, ``dummy`` and the counters stop changing;
    ``solver_state`` then goes on unused (not masked: copying it every step would cost a full
    read/write of the L-BFGS memory)."""

    dummy: Dummy
    solver_state: Any
    loss: jnp.ndarray
    failed: jnp.ndarray
    converged: jnp.ndarray
    iterations: jnp.ndarray
    evaluations: jnp.ndarray
    threshold: jnp.ndarray


def _all_finite(tree) -> jnp.ndarray:
    return jnp.all(jnp.array([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


def initial_dummy(seed: int, target: int, restart: int, batch_size: int, input_shape, num_classes: int,
                  joint_labels: bool, dtype) -> Dummy:
    """Problem ``(target, restart)``'s starting point: images and label logits ~ N(0, 1) (DLG's ``randn``)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), target), restart)
    image_key, label_key = jax.random.split(key)
    images = jax.random.normal(image_key, (batch_size, *input_shape), dtype)
    logits = jax.random.normal(label_key, (batch_size, num_classes), dtype) if joint_labels else None
    return Dummy(images, logits)


@functools.partial(jax.jit, static_argnames=("batch_size", "input_shape", "num_classes", "joint", "dtype"))
def _initial_dummies(seed, targets, restarts, *, batch_size, input_shape, num_classes, joint, dtype) -> Dummy:
    """:func:`initial_dummy` of each ``(targets[i], restarts[i])``; the seed is traced, so attacks that
    differ only in their seed (the points of a sweep) share one compilation."""
    return jax.vmap(lambda t, r: initial_dummy(seed, t, r, batch_size, input_shape, num_classes, joint, dtype))(
        targets, restarts)


@functools.lru_cache(maxsize=32)
def _programs(model: Model, config: AttackConfig):
    """The compiled building blocks for one (model, config): init, run ``n`` steps, final objective."""
    objective = make_objective(model, config.distance, tv_weight=config.tv_weight,
                               layer_weights=config.layer_weights, second_order=config.second_order)
    solver = make_solver(objective, config.solver)

    def init_one(dummy, context):
        value = objective(dummy, context)
        state = solver.init(dummy, context)
        scale = (sum(jnp.vdot(g, g) for g in jax.tree.leaves(context.target_grad))
                 if config.distance == "l2" else 1.0)
        threshold = jnp.asarray(config.tolerance * scale, value.dtype)
        return _Problem(dummy, state, value, ~jnp.isfinite(value), value <= threshold,
                        jnp.zeros((), jnp.int32), solver.evaluations(state), threshold)

    def run_one(problem: _Problem, context: Context, steps: int):
        def body(p: _Problem, _):
            new_dummy, new_state, value = solver.step(p.dummy, p.solver_state, context)
            if config.box is not None:
                new_dummy = new_dummy._replace(images=jnp.clip(new_dummy.images, *config.box))
            active = ~(p.failed | p.converged)
            value_ok = jnp.isfinite(value)
            converged = active & value_ok & (value <= p.threshold)
            moving = active & value_ok & ~converged
            step_ok = moving & _all_finite(new_dummy)
            failed = p.failed | (active & ~value_ok) | (moving & ~step_ok)
            dummy = jax.tree.map(lambda a, b: jnp.where(step_ok, a, b), new_dummy, p.dummy)
            loss = jnp.where(active & value_ok, value, p.loss)
            evaluations = jnp.where(active, solver.evaluations(new_state), p.evaluations)
            updated = _Problem(dummy, new_state, loss, failed, p.converged | converged,
                               p.iterations + step_ok.astype(jnp.int32), evaluations, p.threshold)
            return updated, loss

        return jax.lax.scan(body, problem, None, length=steps)

    batched_init = jax.jit(jax.vmap(init_one, in_axes=(0, Context(None, 0, 0))))
    batched_objective = jax.jit(jax.vmap(objective, in_axes=(0, Context(None, 0, 0))))

    @functools.lru_cache(maxsize=8)
    def batched_run(steps: int):
        return jax.jit(jax.vmap(functools.partial(run_one, steps=steps), in_axes=(0, Context(None, 0, 0)),
                                out_axes=(0, 1)))

    return batched_init, batched_run, batched_objective


def shared_programs(model: Model, config: AttackConfig):
    """:func:`_programs` of ``config`` with the fields they never read (budget, seed, chunking) reset,
    so that attacks (e.g. the points of a sweep) differing only there share one compilation."""
    return _programs(model, dataclasses.replace(config, restarts=1, iterations=1, chunk_size=1, block=1,
                                                snapshots=0, seed=0, memory_budget=None))


_COMPILED: dict = {}


def _compiled(program, *args):
    """``program`` (a jitted function) compiled ahead of time for ``args``' shapes, cached."""
    signature = (program, jax.tree.structure(args),
                 tuple((leaf.shape, leaf.dtype) for leaf in jax.tree.leaves(args)))
    if signature not in _COMPILED:
        _COMPILED[signature] = program.lower(*args).compile()
    return _COMPILED[signature]


def _block_schedule(iterations: int, block: int, snapshot_iterations: np.ndarray) -> list[int]:
    """Block boundaries: every ``block`` iterations and at each snapshot iteration."""
    stops = set(range(block, iterations, block)) | {iterations} | {int(s) for s in snapshot_iterations if s > 0}
    return sorted(stops)


def run_attack(
    model: Model,
    params: Any,
    target_grads: Any,
    batch_size: int,
    config: AttackConfig = AttackConfig(),
    *,
    fixed_labels: np.ndarray | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> AttackResult:
    """Reconstruct the private batches behind ``T`` shared gradients.

    ``target_grads``: the parameter pytree with a leading ``T`` axis on every leaf (e.g. from
    :func:`dlg_jax.victim.shared_gradients`). ``fixed_labels [T, B]``: labels to hold fixed (for label
    strategies other than ``joint``). Returns an :class:`AttackResult`.
    """
    if not isinstance(config, AttackConfig):
        raise DLGInputError(f"config must be an AttackConfig, got {type(config).__name__}")
    batch_size = check_positive_int("batch size", batch_size)
    model.check_params(params, "model params")
    targets = check_shared_gradients(model, params, target_grads)
    joint = is_joint(config.labels)
    if not joint:
        if fixed_labels is None or np.shape(fixed_labels) != (targets, batch_size):
            raise DLGInputError(
                f"label strategy {config.labels!r} needs fixed_labels of shape {(targets, batch_size)}, "
                f"got {None if fixed_labels is None else np.shape(fixed_labels)}"
            )
        labels = np.asarray(fixed_labels)
        if labels.min() < 0 or labels.max() >= model.num_classes:
            raise DLGInputError(f"fixed labels must be in 0..{model.num_classes - 1}, got {labels.min()}..{labels.max()}")
    dtype = jnp.dtype(config.dtype)
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
    target_grads = jax.tree.map(lambda g: jnp.asarray(g, dtype), target_grads)
    fixed_targets = (one_hot(jnp.asarray(fixed_labels), model.num_classes, dtype) if not joint
                     else jnp.zeros((targets, batch_size, model.num_classes), dtype))

    batched_init, batched_run, batched_objective = shared_programs(model, config)
    restarts, chunk = config.restarts, config.chunk_size
    problems = targets * restarts
    if config.memory_budget is not None:
        from dlg_jax.memory import chunk_for_budget, step_bytes

        chunk = chunk_for_budget(config.memory_budget, problems, lambda n: step_bytes(
            model, params, target_grads, fixed_targets, batch_size, config, n))
    chunk = min(chunk, problems)
    chunks = -(-problems // chunk)
    snapshot_iterations = (np.unique(np.round(np.linspace(0, config.iterations, config.snapshots)).astype(int))
                           if config.snapshots else np.zeros((0,), int))
    schedule = _block_schedule(config.iterations, config.block, snapshot_iterations)

    make_dummy = functools.partial(_initial_dummies, jnp.asarray(config.seed), batch_size=batch_size,
                                   input_shape=model.input_shape, num_classes=model.num_classes, joint=joint,
                                   dtype=dtype)
    outputs = []
    compile_seconds = run_seconds = 0.0
    restart_iterations = 0
    for index in range(chunks):
        ids = np.arange(index * chunk, (index + 1) * chunk)
        ids = np.where(ids < problems, ids, index * chunk)  # pad the last chunk with its first problem
        target_ids, restart_ids = ids // restarts, ids % restarts
        context = Context(params, jax.tree.map(lambda g: g[target_ids], target_grads), fixed_targets[target_ids])
        started = time.perf_counter()
        state = batched_init(make_dummy(jnp.asarray(target_ids), jnp.asarray(restart_ids)), context)
        jax.block_until_ready(state)
        compile_seconds += time.perf_counter() - started
        histories, snaps, done_at = [], [], 0
        if 0 in snapshot_iterations:
            snaps.append(to_uint8(np.asarray(state.dummy.images)))
        for stop in schedule:
            steps = stop - done_at
            started = time.perf_counter()
            compiled = _compiled(batched_run(steps), state, context)
            compile_seconds += time.perf_counter() - started
            started = time.perf_counter()
            state, history = compiled(state, context)
            history = np.asarray(history)
            run_seconds += time.perf_counter() - started
            restart_iterations += steps * len(ids)
            histories.append(history)
            done_at = stop
            if stop in snapshot_iterations:
                snaps.append(to_uint8(np.asarray(state.dummy.images)))
            live = slice(0, int(np.sum(ids < problems)) if index == chunks - 1 else len(ids))
            failed, converged = np.asarray(state.failed)[live], np.asarray(state.converged)[live]
            if progress is not None:
                losses = np.asarray(state.loss)[live]
                finite = losses[np.isfinite(losses)]
                progress(Progress(index, chunks, stop, config.iterations,
                                  float(finite.min()) if finite.size else float("nan"),
                                  int(converged.sum()), int(failed.sum()), len(losses)))
            if np.all(failed | converged):
                break
        while len(snaps) < len(snapshot_iterations):  # stopped early: the rest are the final images
            snaps.append(to_uint8(np.asarray(state.dummy.images)))
        final_loss = np.asarray(batched_objective(state.dummy, context))
        outputs.append(dict(
            ids=ids, images=np.asarray(state.dummy.images),
            label_logits=None if not joint else np.asarray(state.dummy.label_logits),
            loss=final_loss, failed=np.asarray(state.failed), converged=np.asarray(state.converged),
            iterations=np.asarray(state.iterations),
            evaluations=np.asarray(state.evaluations),
            history=np.concatenate(histories, axis=0).T,
            snapshots=np.stack(snaps, axis=1) if snaps else None,
        ))
    return _assemble(outputs, problems, targets, restarts, joint, fixed_labels, snapshot_iterations,
                     compile_seconds, run_seconds, restart_iterations)


def _assemble(outputs, problems, targets, restarts, joint, fixed_labels, snapshot_iterations,
              compile_seconds, run_seconds, restart_iterations) -> AttackResult:
    """Stitch the chunks back into ``[T, R, ...]`` arrays and pick each target's best restart."""
    longest = max(o["history"].shape[1] for o in outputs)

    def gather(key):
        rows = []
        for o in outputs:
            value = o[key]
            if key == "history" and value.shape[1] < longest:  # early-stopped chunk: repeat last value
                value = np.concatenate([value, np.repeat(value[:, -1:], longest - value.shape[1], 1)], 1)
            rows.append(value)
        stacked = np.concatenate(rows, axis=0)
        ids = np.concatenate([o["ids"] for o in outputs])
        first = np.unique(ids, return_index=True)[1]  # drop padding duplicates
        return stacked[first][:problems].reshape(targets, restarts, *stacked.shape[1:])

    images = gather("images")
    failed = gather("failed")
    loss = gather("loss")
    ranking = np.where(failed | ~np.isfinite(loss), np.inf, loss)
    best = np.argmin(ranking, axis=1)
    label_logits = gather("label_logits") if joint else None
    labels = (np.argmax(label_logits, axis=-1) if joint
              else np.broadcast_to(np.asarray(fixed_labels)[:, None, :], images.shape[:3]).copy())
    if outputs[0]["snapshots"] is not None:
        snapshots = gather("snapshots")[np.arange(targets), best]
    else:
        snapshots = np.zeros((targets, 0, *images.shape[2:]), np.uint8)
    return AttackResult(
        images=images, label_logits=label_logits, labels=labels.astype(np.int32), loss=loss,
        failed=failed, converged=gather("converged"), iterations=gather("iterations"),
        evaluations=gather("evaluations"), loss_history=gather("history"), best_restart=best,
        snapshots=snapshots, snapshot_iterations=snapshot_iterations,
        compile_seconds=compile_seconds, run_seconds=run_seconds, restart_iterations=restart_iterations,
    )
