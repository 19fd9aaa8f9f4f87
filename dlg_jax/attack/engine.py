"""The attack: many independent gradient-inversion problems solved in one compiled, vmapped program.

A *problem* is one restart ``r`` of one target ``t`` (``N = T * R`` problems). Each has its own dummy
``z = (x' [B, *input_shape], y' [B, *label_axes, K])`` (images ``[B, H, W, C]``, ``[B, K]``; text
embeddings ``[B, L, E]``, masked-token logits ``[B, M, V]``) drawn from N(0, 1) with key ``fold_in(fold_in(key(seed), t), r)``
(so results do not depend on the chunking), and its own shared gradient ``dW_t``; the model parameters
are shared. Problems run in chunks of ``RunOptions.chunk_size``: inside a chunk, ``jax.vmap`` runs the solver's
step for every problem in lockstep, ``lax.scan`` runs ``RunOptions.block`` iterations per compiled call, and the
host loop between blocks reports progress and stops once every problem is done.

Per problem and iteration: a problem whose objective is below its threshold (``AttackConfig.tolerance``) is *converged* and frozen; one
whose objective or new dummy is NaN/inf is *failed* and frozen at its last finite dummy (so it never
poisons the others, which share no state with it). The best restart of a target is the non-failed one
with the lowest final objective; every restart's result is kept.

**Group consistency** (GradInversion, Yin et al. 2021; ``AttackConfig.group_consistency``): the restarts of
one target are independent problems in the vmapped step, so the group mean ``E_t`` (the mean over target
``t``'s restarts of their current images, failed restarts left out) is computed on the host every
``group_every`` iterations and held constant in each restart's context until the next update; before the
first update the term is off (the mean of random initialisations is noise). Chunks are then made of whole
targets (a multiple of ``R``). Changing the objective invalidates an L-BFGS state (its stored value and
gradient, its curvature pairs), so the L-BFGS solvers are re-initialised at every update (their memory
restarts); Adam keeps its moments and learning-rate schedule. GradInversion registers the restarts to each
other (image registration) before averaging; we average them unregistered, a simplification.
"""

import collections
import dataclasses
import functools
import math
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.attack.coarse import check_coarse, coarse_problem, resized
from dlg_jax.attack.labels import LABEL_STRATEGIES, is_joint
from dlg_jax.attack.objectives import (
    DISTANCES,
    SECOND_ORDER_MODES,
    Context,
    Dummy,
    GroupMean,
    check_prior_weights,
    make_objective,
    make_residual,
)
from dlg_jax.attack.precision import (
    DEFAULT_PRECISION,
    check_precision,
    matmul_precision,
)
from dlg_jax.attack.solvers import SolverConfig, make_solver
from dlg_jax.data.datasets import to_uint8
from dlg_jax.errors import DLGInputError, check_choice, check_number, check_positive_int
from dlg_jax.models import Model, check_same_tree
from dlg_jax.models.batchnorm import batchnorm_statistics, check_batchnorm
from dlg_jax.victim.gradients import check_shared_gradients, one_hot

DTYPES = ("float32", "float64")
BATCH_UPDATES = ("joint", "cyclic")
DUMMY_INITS = ("randn", "uniform")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How an attack runs, not what it solves: results agree across these up to float rounding, so a
    stored result (a sweep point) is the same whatever they were (validated on construction).

    ``chunk_size``: problems (target x restart pairs) per device in one vmapped batch (``None``: 16 on
    CPU, where small chunks stay in cache, 1024 on GPU/TPU, where large batches fill the chip;
    :func:`default_chunk_size`). ``devices``: how many local devices share each chunk (its problem axis is
    sharded over a 1-D mesh; ``None``: all of them). ``memory_budget``: bytes per device; if set, the chunk
    is the largest whose compiled step fits it (:func:`dlg_jax.attack.memory.chunk_for_budget`) and
    ``chunk_size`` is not used. ``block``: iterations per compiled call between progress reports and
    early-stop checks (converged restarts are frozen, so a later check changes no number; the
    least-squares solvers' iterations cost a Jacobian each and converge in tens, so use a small block with
    them: the CLI sets 1). ``snapshots``: how many intermediate images (at evenly spaced iterations, first
    = initial dummy) are kept for the best restart. The persistent compilation cache is a setting of the
    process, not of one attack: :func:`dlg_jax.attack.compile_cache.enable_compilation_cache`.
    """

    chunk_size: int | None = None
    devices: int | None = None
    memory_budget: int | None = None
    block: int = 100
    snapshots: int = 6

    def __post_init__(self):
        for name in ("chunk_size", "devices", "memory_budget"):
            if getattr(self, name) is not None:
                check_positive_int(name, getattr(self, name))
        check_positive_int("block", self.block)
        if isinstance(self.snapshots, bool) or not isinstance(self.snapshots, int) or self.snapshots < 0:
            raise DLGInputError(f"snapshots must be an integer >= 0, got {self.snapshots!r}")


@dataclasses.dataclass(frozen=True)
class AttackConfig:
    """What an attack solves: every field can change its numbers (validated on construction; how it runs,
    e.g. chunking and devices, is :class:`RunOptions`).

    ``tolerance``: a restart is converged (and frozen) once its objective is at or below
    ``tolerance * ||dW||^2`` (l2 and tag matching: relative to the shared gradient's squared norm, so that a
    target whose gradient is small is held to the same standard) or ``tolerance`` (cosine matching).
    ``precision``: the matmul/convolution precision of every program the attack
    traces (:mod:`dlg_jax.attack.precision`; ``highest`` = full float32, which DLG needs on GPUs).
    ``box``: clip the images to ``[low, high]`` after every step.
    ``batch_update``: ``"joint"`` (every slot of the dummy batch follows the full gradient) or
    ``"cyclic"`` (DLG's batch algorithm: at iteration ``i`` only slot ``i mod B`` is updated; see
    :func:`slot_restricted`). ``dummy_init``: the dummy images start ~ N(0, 1) (``"randn"``, DLG) or
    ~ U(0, 1) (``"uniform"``, the data range).
    ``bn_prior``, ``group_consistency``: weights of GradInversion's batch-norm statistics prior and group
    consistency term (:mod:`dlg_jax.attack.objectives`); the BN prior needs the reference statistics
    (``run_attack(bn_statistics=...)``), group consistency ``restarts >= 2`` and updates the group mean
    every ``group_every`` iterations (module docstring).
    ``coarse``: continuation from low resolution (:mod:`dlg_jax.attack.coarse`), factors ``F`` (integers
    >= 2, strictly decreasing, e.g. ``(4, 2)``; each must divide the image height and width): before the
    full-resolution attack, ``coarse_iterations`` of the same solver for dummies of ``H/F x W/F`` pixels
    that the model sees upsampled, each stage starting from the previous one's ends (priors other than TV
    apply in the full-resolution stage only).
    """

    restarts: int = 8
    iterations: int = 3000
    solver: SolverConfig = SolverConfig()
    distance: str = "l2"
    labels: str = "joint"
    tv_weight: float = 0.0
    bn_prior: float = 0.0
    group_consistency: float = 0.0
    group_every: int = 100
    layer_weights: tuple[float, ...] | None = None
    box: tuple[float, float] | None = None
    second_order: str = "reverse_over_forward"
    tolerance: float = 1e-8
    precision: str = DEFAULT_PRECISION
    seed: int = 0
    dtype: str = "float32"
    batch_update: str = "joint"
    dummy_init: str = "randn"
    coarse: tuple[int, ...] = ()
    coarse_iterations: int = 1000

    def __post_init__(self):
        check_positive_int("restarts", self.restarts)
        check_positive_int("iterations", self.iterations)
        check_precision(self.precision)
        check_choice("distance", self.distance, DISTANCES)
        check_choice("label strategy", self.labels, LABEL_STRATEGIES)
        check_choice("second-order mode", self.second_order, SECOND_ORDER_MODES)
        check_choice("dtype", self.dtype, DTYPES)
        check_choice("batch update", self.batch_update, BATCH_UPDATES)
        check_choice("dummy init", self.dummy_init, DUMMY_INITS)
        if not isinstance(self.solver, SolverConfig):
            raise DLGInputError(f"solver must be a SolverConfig, got {self.solver!r}")
        check_prior_weights(tv_weight=self.tv_weight, bn_prior=self.bn_prior,
                            group_consistency=self.group_consistency)
        check_positive_int("group_every", self.group_every)
        check_positive_int("coarse_iterations", self.coarse_iterations)
        coarse = tuple(self.coarse) if isinstance(self.coarse, (tuple, list)) else (self.coarse,)
        if not all(isinstance(f, (int, np.integer)) and not isinstance(f, bool) and f >= 2 for f in coarse) \
                or list(coarse) != sorted(set(coarse), reverse=True):
            raise DLGInputError(f"coarse must be strictly decreasing integer factors >= 2, e.g. (4, 2); "
                                f"got {self.coarse!r}")
        object.__setattr__(self, "coarse", tuple(int(f) for f in coarse))
        if self.solver.least_squares:
            clashes = [f"{name}={value}" for name, value in (("tv_weight", self.tv_weight), ("bn_prior", self.bn_prior),
                                                              ("group_consistency", self.group_consistency)) if value]
            clashes += [f"distance={self.distance!r}"] * (self.distance != "l2")
            clashes += [f"batch_update={self.batch_update!r}"] * (self.batch_update != "joint")
            if clashes:
                raise DLGInputError(f"solver {self.solver.name!r} solves l2 gradient matching without priors "
                                    f"(a sum of squares) with the joint batch update; got {', '.join(clashes)}")
        if self.group_consistency and self.restarts < 2:
            raise DLGInputError(f"group_consistency needs restarts >= 2 (one restart's group mean is itself), "
                                f"got restarts={self.restarts}")
        check_number("tolerance", self.tolerance, low=0.0)
        for weight in self.layer_weights or ():
            check_number("layer weight", weight, low=0.0)
        if self.box is not None and not (len(self.box) == 2 and check_number("box bound", self.box[0])
                                         < check_number("box bound", self.box[1])):
            raise DLGInputError(f"box must be (low, high) with low < high, got {self.box!r}")
        if self.dtype == "float64" and not jax.config.jax_enable_x64:
            raise DLGInputError(
                "dtype 'float64' needs jax.config.update('jax_enable_x64', True) at start-up (CLI: --float64)"
            )


@dataclasses.dataclass
class AttackResult:
    """All restarts of all targets (numpy arrays; ``T`` targets, ``R`` restarts, ``B`` batch slots).

    images [T, R, B, H, W, C], label_logits [T, R, B, K] (joint labels) or None, labels [T, R, B]
    (text models: ``images`` are the embeddings [T, R, B, L, E], label_logits [T, R, B, M, V], labels [T, R, B, M]),
    loss [T, R] (final objective), failed / converged [T, R] bool, iterations / evaluations [T, R],
    loss_history [T, R, I] (objective at each iteration run; frozen restarts repeat their last value),
    best_restart [T], snapshots [T, S, B, H, W, C] uint8 of the best restart at ``snapshot_iterations [T, S]``
    (non-image models: the dummy input itself, e.g. embeddings [T, S, B, L, E], in the attack's dtype).
    Snapshots are taken at ``S`` evenly spaced iterations of the budget; ``snapshot_iterations`` says which
    iteration each one actually shows: a restart that converged (or a run that stopped early) at
    iteration ``i`` shows its final dummy, iteration ``i``, in every later snapshot.
    With coarse stages (``AttackConfig.coarse``), ``evaluations``, the times and ``restart_iterations``
    include them; ``iterations``, the histories and snapshots are the full-resolution stage's.
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
    """Reported after every block: chunk ``chunk`` of ``chunks``, ``iteration`` of the budget;
    ``run_seconds``: time spent running compiled blocks so far, all chunks together (compiling excluded)."""

    chunk: int
    chunks: int
    iteration: int
    iterations: int
    best_loss: float
    converged: int
    failed: int
    problems: int
    run_seconds: float


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
                  joint_labels: bool, dtype, images_from: str = "randn",
                  label_axes: tuple[int, ...] = ()) -> Dummy:
    """Problem ``(target, restart)``'s starting point: label logits ``[B, *label_axes, K]`` ~ N(0, 1) and
    the input ``[B, *input_shape]`` ~ N(0, 1) (DLG's ``randn``) or, with ``images_from="uniform"``, ~ U(0, 1)."""
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), target), restart)
    image_key, label_key = jax.random.split(key)
    draw = jax.random.uniform if images_from == "uniform" else jax.random.normal
    images = draw(image_key, (batch_size, *input_shape), dtype)
    logits = (jax.random.normal(label_key, (batch_size, *label_axes, num_classes), dtype) if joint_labels
              else None)
    return Dummy(images, logits)


@functools.partial(jax.jit, static_argnums=(3, 4, 5, 6, 7, 8, 9))
def _initial_dummies(seed, target_ids, restart_ids, batch_size, input_shape, num_classes, joint, dtype,
                     images_from, label_axes) -> Dummy:
    """:func:`initial_dummy` of problems ``(target_ids[i], restart_ids[i])``, stacked on a leading axis.
    The seed is traced, so attacks that differ only in their seed (a sweep's points) compile this once."""
    return jax.vmap(lambda t, r: initial_dummy(seed, t, r, batch_size, input_shape, num_classes, joint, dtype,
                                               images_from, label_axes))(target_ids, restart_ids)


def slot_restricted(objective: Callable[[Dummy, Context], jnp.ndarray]):
    """DLG's cyclic batch update (Zhu et al. 2019, batched DLG: slot ``i mod N`` at iteration ``i``).

    Returns ``J_s(z, (context, s)) = J(z, context)``, the same value, whose gradient is
    ``dJ/dz`` in slot ``s`` of every dummy leaf (``images [B, ...]``, ``label_logits [B, K]``) and 0 in the
    other slots (the other slots enter through ``stop_gradient``). The attack passes ``s = i mod B`` at
    iteration ``i`` (accepted steps; init: slot 0).

    What the solvers make of it: Adam's (and signed Adam's) update at iteration ``i`` is driven by slot
    ``i mod B``'s gradient, its moments carry earlier slots' steps along. Lockstep L-BFGS evaluates
    at its trial point, so the gradient of slot ``i mod B`` shapes the direction of iteration ``i + 1``;
    its memory pairs ``(s, y)`` then pair a step with the difference of two gradients restricted to
    different slots, which is no curvature pair of ``J``: the inverse-Hessian estimate couples the slots and
    all of them move a little every step (only the first step moves slot 0 alone). So with L-BFGS
    ``cyclic`` is a preconditioned cyclic coordinate descent, not exact block coordinate descent.
    """

    def restricted(dummy: Dummy, slot_context) -> jnp.ndarray:
        context, slot = slot_context

        def keep_slot(leaf):
            mask = (jnp.arange(leaf.shape[0]) == slot).reshape(-1, *(1,) * (leaf.ndim - 1))
            return jnp.where(mask, leaf, jax.lax.stop_gradient(leaf))

        return objective(jax.tree.map(keep_slot, dummy), context)

    return restricted


@functools.lru_cache(maxsize=32)
def _programs(model: Model, config: AttackConfig, mesh: jax.sharding.Mesh | None):
    """The compiled building blocks for one (model, config): init, run ``n`` steps, final objective.

    Each maps a chunk of problems (leading axis) with ``jax.vmap``. On a ``mesh``, ``jax.shard_map``
    hands every device its slice of the chunk, and each device runs exactly the program one device
    would run on a chunk of that size (no communication), so results do not depend on the device count.
    """
    objective = make_objective(model, config.distance, tv_weight=config.tv_weight, bn_prior=config.bn_prior,
                               group_consistency=config.group_consistency, layer_weights=config.layer_weights,
                               second_order=config.second_order)
    cyclic = config.batch_update == "cyclic"
    residual = make_residual(model, layer_weights=config.layer_weights) if config.solver.least_squares else None

    def project(dummy: Dummy) -> Dummy:  # into the data range, for solvers that project their trial points
        return dummy._replace(images=jnp.clip(dummy.images, *config.box))

    solver = make_solver(slot_restricted(objective) if cyclic else objective, config.solver, residual=residual,
                         project=project if config.box is not None else None)

    def solver_context(context, iterations, dummy):
        return (context, iterations % dummy.images.shape[0]) if cyclic else context

    def init_one(dummy, context):
        value = objective(dummy, context)
        state = solver.init(dummy, solver_context(context, 0, dummy))
        scale = (sum(jnp.vdot(g, g) for g in jax.tree.leaves(context.target_grad))
                 if config.distance in ("l2", "tag") else 1.0)
        threshold = jnp.asarray(config.tolerance * scale, value.dtype)
        return _Problem(dummy, state, value, ~jnp.isfinite(value), value <= threshold,
                        jnp.zeros((), jnp.int32), solver.evaluations(state), threshold)

    def run_one(problem: _Problem, context: Context, steps: int):
        def body(p: _Problem, _):
            new_dummy, new_state, value = solver.step(p.dummy, p.solver_state,
                                                      solver_context(context, p.iterations, p.dummy))
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
            evaluations = jnp.where(active, p.evaluations + solver.evaluations(new_state)
                                    - solver.evaluations(p.solver_state), p.evaluations)
            updated = _Problem(dummy, new_state, loss, failed, p.converged | converged,
                               p.iterations + step_ok.astype(jnp.int32), evaluations, p.threshold)
            return updated, loss

        return jax.lax.scan(body, problem, None, length=steps)

    def regroup_one(problem: _Problem, context: Context):
        """After the group mean changed: a fresh L-BFGS state (Adam's is kept), its evaluations counted."""
        if config.solver.name == "adam":
            return problem
        state = solver.init(problem.dummy, solver_context(context, problem.iterations, problem.dummy))
        return problem._replace(solver_state=state, evaluations=problem.evaluations + solver.evaluations(state))

    per_problem = jax.sharding.PartitionSpec("problems")
    shared_context = Context(None, 0, 0, None, 0)

    def batched(fn, out_axes=0):
        mapped = jax.vmap(fn, in_axes=(0, shared_context), out_axes=out_axes)
        if mesh is None:
            return jax.jit(mapped)
        out_specs = jax.tree.map(lambda axis: jax.sharding.PartitionSpec(*[None] * axis, "problems"), out_axes)
        # check_vma=False: with the default check, jax 0.10.2 fed every device the same dummies
        # (wrong results through the objective's custom_vjp); no collective is used, so nothing needs it.
        return jax.jit(jax.shard_map(mapped, mesh=mesh, out_specs=out_specs, check_vma=False,
                                     in_specs=(per_problem, Context(jax.sharding.PartitionSpec(), per_problem,
                                                                    per_problem, jax.sharding.PartitionSpec(),
                                                                    per_problem))))

    batched_init = batched(init_one)
    batched_objective = batched(objective)

    @functools.lru_cache(maxsize=8)
    def batched_run(steps: int):
        return batched(functools.partial(run_one, steps=steps), out_axes=(0, 1))

    return batched_init, batched_run, batched_objective, batched(regroup_one)


def shared_programs(model: Model, config: AttackConfig, mesh: jax.sharding.Mesh | None):
    """:func:`_programs` of ``config`` with the fields they never read (budget, seed, start, group schedule)
    reset, so that attacks (e.g. the points of a sweep) differing only there share one compilation.
    ``precision`` stays: it is how the programs are traced."""
    return _programs(model, dataclasses.replace(config, restarts=2, iterations=1, seed=0, dummy_init="randn",
                                                group_every=1), mesh)


# Compiled executables by (program, argument shapes), least recently used first. Bounded: a process that
# attacks many configurations (a local sweep, a notebook, the test suite) would otherwise keep every
# executable, and the programs and weights they close over, until it exits.
_COMPILED: collections.OrderedDict = collections.OrderedDict()
COMPILED_LIMIT = 64


def _compiled(program, *args):
    """``program`` (a jitted function) compiled ahead of time for ``args``' shapes, cached (the
    ``COMPILED_LIMIT`` most recently used)."""
    signature = (program, jax.tree.structure(args), tuple(
        (leaf.shape, leaf.dtype, leaf.sharding if isinstance(getattr(leaf, "sharding", None), jax.sharding.NamedSharding)
         else None) for leaf in jax.tree.leaves(args)))
    if signature in _COMPILED:
        _COMPILED.move_to_end(signature)
    else:
        _COMPILED[signature] = program.lower(*args).compile()
        while len(_COMPILED) > COMPILED_LIMIT:
            _COMPILED.popitem(last=False)
    return _COMPILED[signature]


def clear_compiled() -> None:
    """Forget every program the attack has traced and compiled in this process (and JAX's own caches), to
    free their memory; the next attack compiles again (or loads from the persistent compilation cache)."""
    _COMPILED.clear()
    _programs.cache_clear()
    jax.clear_caches()


def _block_schedule(iterations: int, block: int, snapshot_iterations: np.ndarray) -> list[int]:
    """Block boundaries: every ``block`` iterations and at each snapshot iteration."""
    stops = set(range(block, iterations, block)) | {iterations} | {int(s) for s in snapshot_iterations if s > 0}
    return sorted(stops)


class _Plan(NamedTuple):
    """A validated attack: inputs cast to the config's dtype, and how the ``problems = T * R`` problems
    are split into chunks of ``chunk`` (a multiple of the mesh's size) and placed on devices (``run``)."""

    model: Model
    params: Any
    target_grads: Any          # leading axis T
    fixed_targets: jnp.ndarray  # [T, B, *label_axes, K] one-hot (zeros with joint labels)
    fixed_labels: np.ndarray | None
    bn_statistics: Any          # reference batch-norm statistics (BN prior) or None
    batch_size: int
    config: AttackConfig
    run: RunOptions
    joint: bool
    problems: int
    chunk: int
    mesh: jax.sharding.Mesh | None
    start: Dummy | None = None  # starting dummies [T, R, ...] (None: drawn by initial_dummy)


def _plan(model, params, target_grads, batch_size, config, run, fixed_labels, bn_statistics=None,
          start=None) -> _Plan:
    if not isinstance(config, AttackConfig):
        raise DLGInputError(f"config must be an AttackConfig, got {type(config).__name__}")
    if not isinstance(run, RunOptions):
        raise DLGInputError(f"run must be RunOptions, got {type(run).__name__}")
    if config.tv_weight and model.modality != "image":
        raise DLGInputError(f"the TV prior is for images; model {model.name!r} is a {model.modality} model")
    if config.bn_prior:
        check_batchnorm(model, f"the BN prior (bn_prior={config.bn_prior})")
        if bn_statistics is None:
            raise DLGInputError("the BN prior needs bn_statistics, the reference statistics "
                                "(dlg_jax.models.batchnorm.reference_statistics of reference images)")
        reference = jax.eval_shape(lambda p, x: batchnorm_statistics(model, p, x),
                                   jax.eval_shape(model.init, jax.random.key(0)),
                                   jax.ShapeDtypeStruct((1, *model.input_shape), jnp.float32))
        check_same_tree("bn_statistics", bn_statistics, reference, f"the batch-norm layers of model {model.name!r}")
    batch_size = check_positive_int("batch size", batch_size)
    model.check_params(params, "model params")
    targets = check_shared_gradients(model, params, target_grads)
    joint = is_joint(config.labels)
    if not joint:
        label_shape = (targets, batch_size, *model.label_axes)
        if fixed_labels is None or np.shape(fixed_labels) != label_shape:
            raise DLGInputError(
                f"label strategy {config.labels!r} needs fixed_labels of shape {label_shape}, "
                f"got {None if fixed_labels is None else np.shape(fixed_labels)}"
            )
        labels = np.asarray(fixed_labels)
        if labels.min() < 0 or labels.max() >= model.num_classes:
            raise DLGInputError(f"fixed labels must be in 0..{model.num_classes - 1}, got {labels.min()}..{labels.max()}")
    dtype = jnp.dtype(config.dtype)
    params = jax.tree.map(lambda p: jnp.asarray(p, dtype), params)
    target_grads = jax.tree.map(lambda g: jnp.asarray(g, dtype), target_grads)
    bn_statistics = jax.tree.map(lambda s: jnp.asarray(s, dtype), bn_statistics) if config.bn_prior else None
    fixed_targets = (one_hot(jnp.asarray(fixed_labels), model.num_classes, dtype) if not joint
                     else jnp.zeros((targets, batch_size, *model.label_axes, model.num_classes), dtype))
    mesh = problem_mesh(run.devices)
    devices = 1 if mesh is None else mesh.size
    problems = targets * config.restarts
    if devices > problems:
        raise DLGInputError(f"devices {devices} is more than the {problems} problems (targets x restarts) to "
                            f"share among them; use at most {problems} devices")
    per_device = -(-problems // devices)
    plan = _Plan(model, params, target_grads, fixed_targets, fixed_labels, bn_statistics, batch_size, config, run,
                 joint, problems, _whole_targets(min(run.chunk_size or default_chunk_size(), per_device) * devices,
                                                 config, devices), mesh,
                 _checked_start(start, model, targets, batch_size, config, joint))
    if run.memory_budget is None:
        return plan
    from dlg_jax.attack.memory import chunk_for_budget, compiled_bytes, format_bytes

    if config.solver.name == "lm":
        unknowns = batch_size * (math.prod(model.input_shape)
                                 + joint * math.prod(model.label_axes) * model.num_classes)
        residuals = sum(leaf.size for leaf in jax.tree.leaves(params))
        need = (residuals * unknowns + (config.solver.damping_trials + 1) * unknowns**2) * dtype.itemsize
        if run.memory_budget < need:
            raise DLGInputError(
                f"memory budget {format_bytes(run.memory_budget)} is below one problem's Jacobian: solver 'lm' "
                f"needs {format_bytes(need)} ({residuals} residuals x {unknowns} unknowns, and J^T J); raise "
                f"--memory-budget or use the matrix-free --solver lm-cg")

    steps = min(run.block, config.iterations)

    def step_bytes(n: int) -> int:  # one device's share of the attack step over n problems per device
        with matmul_precision(config.precision):
            return compiled_bytes(_compiled(*_step_arguments(plan._replace(chunk=n * devices), steps)))

    return plan._replace(chunk=_whole_targets(chunk_for_budget(run.memory_budget, per_device, step_bytes) * devices,
                                              config, devices))


def _whole_targets(chunk: int, config: AttackConfig, devices: int) -> int:
    """With group consistency, ``chunk`` rounded down (at least up to one unit) to a multiple of
    ``lcm(R, devices)``, so that every chunk holds all restarts of its targets; else ``chunk``."""
    if not config.group_consistency:
        return chunk
    unit = math.lcm(config.restarts, devices)
    return max(unit, chunk // unit * unit)


def default_chunk_size() -> int:
    """Problems per device per vmapped batch when ``RunOptions.chunk_size`` is ``None``: 16 on CPU
    (chunks of ~8-24 restarts stay in cache; docs/design.md), 1024 on accelerators (1024 problems ran at
    144k restart-iterations/s on an H200, 8 x 16 at 51k)."""
    return 16 if jax.default_backend() == "cpu" else 1024


def problem_mesh(devices: int | None) -> jax.sharding.Mesh | None:
    """A 1-D mesh ``("problems",)`` over the first ``devices`` local devices (``None``: all), or ``None``
    for one device. Raises ``DLGInputError`` when more devices are asked for than are present."""
    available = jax.local_devices()
    count = len(available) if devices is None else check_positive_int("devices", devices)
    if count > len(available):
        raise DLGInputError(f"devices {count} is more than the {len(available)} local "
                            f"{jax.default_backend()} device(s) present; allowed: 1..{len(available)}")
    if count == 1:
        return None
    return jax.sharding.Mesh(np.asarray(available[:count]), ("problems",),
                             axis_types=(jax.sharding.AxisType.Auto,))


def _placed(tree, mesh, spec):
    """``tree`` on ``mesh`` with every leaf's leading axis sharded (``spec="problems"``) or replicated."""
    if mesh is None:
        return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(spec)))


def _checked_start(start, model: Model, targets: int, batch_size: int, config: AttackConfig,
                   joint: bool) -> Dummy | None:
    """``start`` (a :class:`Dummy` of numpy or jax arrays, images ``[T, R, B, *input_shape]`` and, with
    joint labels, label logits ``[T, R, B, *label_axes, K]``) cast to the attack's dtype, or a
    ``DLGInputError`` naming the leaf whose shape differs."""
    if start is None:
        return None
    if not isinstance(start, Dummy):
        raise DLGInputError(f"start must be a Dummy (images, label_logits), got {type(start).__name__}")
    lead = (targets, config.restarts, batch_size)
    wanted = {"images": (*lead, *model.input_shape),
              "label_logits": (*lead, *model.label_axes, model.num_classes) if joint else None}
    for name, shape in wanted.items():
        got = getattr(start, name)
        got = None if got is None else tuple(np.shape(got))
        if got != shape:
            wants = (f"must have shape {shape} (targets, restarts, batch, ...) for this attack" if shape
                     else "must be None: the labels are fixed")
            raise DLGInputError(f"start.{name} {wants}, got {got}")
    dtype = jnp.dtype(config.dtype)
    return Dummy(jnp.asarray(start.images, dtype),
                 None if start.label_logits is None else jnp.asarray(start.label_logits, dtype))


def _chunk_inputs(plan: _Plan, ids: np.ndarray) -> tuple[Dummy, Context]:
    """The starting dummies and contexts of problems ``ids`` (``target = id // R``, ``restart = id % R``),
    placed on the plan's devices."""
    config, model = plan.config, plan.model
    target_ids, restart_ids = ids // config.restarts, ids % config.restarts
    dummy = (_initial_dummies(config.seed, jnp.asarray(target_ids), jnp.asarray(restart_ids), plan.batch_size,
                              tuple(model.input_shape), model.num_classes, plan.joint, jnp.dtype(config.dtype),
                              config.dummy_init, tuple(model.label_axes)) if plan.start is None
             else jax.tree.map(lambda leaf: leaf[target_ids, restart_ids], plan.start))
    dummy = _placed(dummy, plan.mesh, "problems")
    per_problem = (jax.tree.map(lambda g: g[target_ids], plan.target_grads), plan.fixed_targets[target_ids])
    group = (GroupMean(jnp.zeros_like(dummy.images), jnp.zeros(len(ids), dummy.images.dtype))
             if config.group_consistency else None)
    return dummy, Context(_placed(plan.params, plan.mesh, None), *_placed(per_problem, plan.mesh, "problems"),
                          _placed(plan.bn_statistics, plan.mesh, None), _placed(group, plan.mesh, "problems"))


def group_means(images: np.ndarray, targets: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Each problem's group mean: ``images [n, ...]`` of problems of targets ``targets [n]`` averaged over
    the problems of the same target with ``weights [n]`` (0/1); a target whose weights are all 0 gets its
    plain mean. Returns ``[n, ...]``."""
    means = np.empty_like(images)
    for target in np.unique(targets):
        members = targets == target
        weight = weights[members].astype(images.dtype)
        if not weight.any():
            weight = np.ones_like(weight)
        means[members] = np.tensordot(weight, images[members], axes=1) / weight.sum()
    return means


def run_attack(
    model: Model,
    params: Any,
    target_grads: Any,
    batch_size: int,
    config: AttackConfig = AttackConfig(),
    *,
    fixed_labels: np.ndarray | None = None,
    bn_statistics: Any = None,
    run: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    start: Dummy | None = None,
) -> AttackResult:
    """Reconstruct the private batches behind ``T`` shared gradients.

    ``target_grads``: the parameter pytree with a leading ``T`` axis on every leaf (e.g. from
    :func:`dlg_jax.victim.gradients.shared_gradients`). ``fixed_labels [T, B]``: labels to hold fixed (for label
    strategies other than ``joint``; ``[T, B, *model.label_axes]`` for text models). ``bn_statistics``:
    the BN prior's reference statistics (with ``config.bn_prior``; the tree of
    :func:`~dlg_jax.models.batchnorm.reference_statistics`). ``run``: how it runs (chunks, devices, memory
    budget, progress blocks, snapshots; :class:`RunOptions`). ``start``: the starting dummies, a
    :class:`~dlg_jax.attack.objectives.Dummy` with images ``[T, R, B, ...]`` and label logits
    ``[T, R, B, K]`` (joint labels; else ``None``), e.g. another attack's final ones to finish its restarts
    with another solver (:func:`continue_from`); ``None``: drawn by :func:`initial_dummy` from
    ``config.seed`` and ``config.dummy_init``; with ``config.coarse`` the start (given or drawn at the
    coarse size) begins the coarsest stage. Returns an :class:`AttackResult`.
    """
    plan = _plan(model, params, target_grads, batch_size, config, run, fixed_labels, bn_statistics, start)
    stages = coarse_stages(model, params, target_grads, batch_size, config, fixed_labels=fixed_labels, run=run,
                           start=start)
    if stages:
        plan = plan._replace(start=_checked_start(resized(continue_from(stages[-1]), model.input_shape), model,
                                                  plan.problems // config.restarts, batch_size, config, plan.joint))
    with matmul_precision(config.precision):
        result = _solve(plan, progress)
    if not stages:
        return result
    return dataclasses.replace(
        result, evaluations=result.evaluations + sum(stage.evaluations for stage in stages),
        compile_seconds=result.compile_seconds + sum(stage.compile_seconds for stage in stages),
        run_seconds=result.run_seconds + sum(stage.run_seconds for stage in stages),
        restart_iterations=result.restart_iterations + sum(stage.restart_iterations for stage in stages))


def coarse_stages(model: Model, params: Any, target_grads: Any, batch_size: int, config: AttackConfig, *,
                  fixed_labels: np.ndarray | None = None, run: RunOptions = RunOptions(),
                  start: Dummy | None = None) -> list[AttackResult]:
    """The coarse stages of ``config.coarse`` (:mod:`dlg_jax.attack.coarse`), coarsest first: each is an
    attack of ``config.coarse_iterations`` on the victim seen through upsampling from ``1/F`` of its
    size, started from the previous stage's ends (the first from ``start`` resized, or from dummies drawn
    at its size); priors other than TV and snapshots are off. ``[]`` without coarse stages.
    :func:`run_attack` starts its full-size attack from the last one's ends, upsampled."""
    check_coarse(config.coarse, model)
    stage_config = dataclasses.replace(config, coarse=(), iterations=config.coarse_iterations, bn_prior=0.0,
                                       group_consistency=0.0)
    stages = []
    for factor in config.coarse:
        coarse_model, coarse_params, coarse_grads = coarse_problem(model, params, target_grads, factor)
        stages.append(run_attack(coarse_model, coarse_params, coarse_grads, batch_size, stage_config,
                                 fixed_labels=fixed_labels, run=dataclasses.replace(run, snapshots=0),
                                 start=None if start is None else resized(start, coarse_model.input_shape)))
        start = continue_from(stages[-1])
    return stages


def continue_from(result: AttackResult) -> Dummy:
    """The final dummies of every restart of ``result`` as a ``start`` for :func:`run_attack` (images
    ``[T, R, B, ...]``, label logits ``[T, R, B, K]`` or ``None``): e.g. Levenberg–Marquardt finishing the
    restarts that L-BFGS began (its quadratic convergence near a zero of the residual)."""
    return Dummy(result.images, result.label_logits)


def lower_attack_step(model: Model, params: Any, target_grads: Any, batch_size: int,
                      config: AttackConfig = AttackConfig(), *, fixed_labels: np.ndarray | None = None,
                      bn_statistics: Any = None, run: RunOptions = RunOptions(),
                      steps: int = 1) -> jax.stages.Lowered:
    """The program :func:`run_attack` compiles for ``steps`` iterations of its first chunk, lowered (not
    run): ``.as_text()`` is its StableHLO, ``.compile()`` gives XLA's cost and memory analysis."""
    plan = _plan(model, params, target_grads, batch_size, config, run, fixed_labels, bn_statistics)
    with matmul_precision(config.precision):
        program, state, context = _step_arguments(plan, check_positive_int("steps", steps))
        return program.lower(state, context)


def _step_arguments(plan: _Plan, steps: int):
    """The jitted ``steps``-iteration program of the plan's first chunk and its arguments (the state as
    shapes only: nothing runs)."""
    batched_init, batched_run, _, _ = shared_programs(plan.model, plan.config, plan.mesh)
    dummy, context = _chunk_inputs(plan, np.arange(plan.chunk) % plan.problems)
    return batched_run(steps), jax.eval_shape(batched_init, dummy, context), context


def _solve(plan: _Plan, progress) -> AttackResult:
    """The chunk loop of :func:`run_attack` (to be traced at ``plan.config.precision``)."""
    config, problems, chunk = plan.config, plan.problems, plan.chunk
    batched_init, batched_run, batched_objective, batched_regroup = shared_programs(plan.model, config, plan.mesh)
    chunks = -(-problems // chunk)
    snapshot_iterations = (np.unique(np.round(np.linspace(0, config.iterations, plan.run.snapshots)).astype(int))
                           if plan.run.snapshots else np.zeros((0,), int))
    regroup_at = set(range(config.group_every, config.iterations, config.group_every)) if config.group_consistency else set()
    schedule = sorted(set(_block_schedule(config.iterations, plan.run.block, snapshot_iterations)) | regroup_at)
    snapshot = to_uint8 if plan.model.modality == "image" else np.array
    outputs = []
    compile_seconds = run_seconds = 0.0
    restart_iterations = 0
    for index in range(chunks):
        ids = np.arange(index * chunk, (index + 1) * chunk)
        ids = np.where(ids < problems, ids, index * chunk)  # pad the last chunk with its first problem
        started = time.perf_counter()
        dummy, context = _chunk_inputs(plan, ids)
        state = batched_init(dummy, context)
        jax.block_until_ready(state)
        compile_seconds += time.perf_counter() - started
        histories, snaps, done_at = [], [], 0
        if 0 in snapshot_iterations:
            snaps.append(snapshot(np.asarray(state.dummy.images)))
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
                snaps.append(snapshot(np.asarray(state.dummy.images)))
            live = slice(0, int(np.sum(ids < problems)) if index == chunks - 1 else len(ids))
            failed, converged = np.asarray(state.failed)[live], np.asarray(state.converged)[live]
            if progress is not None:
                losses = np.asarray(state.loss)[live]
                finite = losses[np.isfinite(losses)]
                progress(Progress(index, chunks, stop, config.iterations,
                                  float(finite.min()) if finite.size else float("nan"),
                                  int(converged.sum()), int(failed.sum()), len(losses), run_seconds))
            if np.all(failed | converged):
                break
            if stop in regroup_at:
                context, state = _regroup(plan, ids, index, state, context, batched_regroup)
        while len(snaps) < len(snapshot_iterations):  # stopped early: the rest are the final images
            snaps.append(snapshot(np.asarray(state.dummy.images)))
        final_loss = np.asarray(batched_objective(state.dummy, context))
        outputs.append(dict(
            ids=ids, images=np.asarray(state.dummy.images),
            label_logits=None if not plan.joint else np.asarray(state.dummy.label_logits),
            loss=final_loss, failed=np.asarray(state.failed), converged=np.asarray(state.converged),
            iterations=np.asarray(state.iterations),
            evaluations=np.asarray(state.evaluations),
            history=np.concatenate(histories, axis=0).T,
            snapshots=np.stack(snaps, axis=1) if snaps else None,
        ))
    return _assemble(outputs, problems, problems // config.restarts, config.restarts, plan.joint,
                     plan.fixed_labels, snapshot_iterations, compile_seconds, run_seconds, restart_iterations)


def _regroup(plan: _Plan, ids: np.ndarray, index: int, state: _Problem, context: Context, batched_regroup):
    """Group consistency's update between blocks: each problem's context gets its target's current mean
    image (padding duplicates and failed restarts left out) and the term is switched on; the solver state
    is re-initialised for the new objective (``regroup_one``)."""
    live = (np.arange(index * plan.chunk, (index + 1) * plan.chunk) < plan.problems) & ~np.asarray(state.failed)
    images = np.asarray(state.dummy.images)
    means = group_means(images, ids // plan.config.restarts, live)
    group = GroupMean(jnp.asarray(means), jnp.ones(len(ids), images.dtype))
    context = context._replace(group=_placed(group, plan.mesh, "problems"))
    return context, _compiled(batched_regroup, state, context)(state, context)


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
              else np.repeat(np.asarray(fixed_labels)[:, None], restarts, axis=1))
    iterations = gather("iterations")
    if outputs[0]["snapshots"] is not None:
        snapshots = gather("snapshots")[np.arange(targets), best]
    else:
        snapshots = np.zeros((targets, 0, *images.shape[2:]), np.uint8)
    shown = np.minimum(snapshot_iterations[None, :], iterations[np.arange(targets), best][:, None])
    return AttackResult(
        images=images, label_logits=label_logits, labels=labels.astype(np.int32), loss=loss,
        failed=failed, converged=gather("converged"), iterations=iterations,
        evaluations=gather("evaluations"), loss_history=gather("history"), best_restart=best,
        snapshots=snapshots, snapshot_iterations=shown,
        compile_seconds=compile_seconds, run_seconds=run_seconds, restart_iterations=restart_iterations,
    )
