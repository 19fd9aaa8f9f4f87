"""One interface over the inner optimisers: L-BFGS (own, ``optax.lbfgs``, ``jaxopt.LBFGS``), ``optax.adam``
and Levenberg–Marquardt.

A :class:`Solver` optimises one restart's dummy ``z`` (a pytree) for an objective ``J(z, context)``; the
least-squares solvers get it in residual form, ``J(z, context) = ||r(z, context)||^2`` with
``r(z, context) -> [m]`` (:func:`dlg_jax.attack.objectives.make_residual`):

    state          = solver.init(z, context)
    z, state, J(z) = solver.step(z, state, context)     # one iteration; returns the value at the input z
    solver.evaluations(state)                            # objective+gradient evaluations so far

Everything is a pure function of arrays, so ``jax.vmap`` runs many restarts in lockstep and
``lax.scan`` compiles the iteration loop.

- ``lbfgs`` (default): L-BFGS with a lockstep backtracking line search (``lockstep_lbfgs.py``): one
  objective evaluation per call, no data-dependent loop, so vmapped restarts never wait for each other.
- ``optax-lbfgs``: ``optax.lbfgs`` with its zoom (strong-Wolfe) line search (a ``while_loop``: under
  ``vmap`` every restart runs as long as the slowest one's search).
- ``jaxopt-lbfgs``: ``jaxopt.LBFGS`` (zoom line search), kept for the design card; jaxopt is no
  longer maintained and its line search runs every batched restart as long as the slowest one.
- ``lm``: Levenberg–Marquardt on the residual with the Jacobian materialised (``n`` JVPs, ``J^T J``,
  Cholesky), ``lm-cg``: matrix-free (``J^T J v`` by a JVP and a VJP, ``cg_steps`` conjugate-gradient
  iterations); ``damping`` is the initial ``lambda``, ``damping_trials`` the damping values tried side by
  side per call (:mod:`dlg_jax.attack.levenberg_marquardt`). Only for l2 matching without priors.
- ``adam``: ``optax.adam`` with learning rate ``learning_rate``, multiplied by 0.1 at each of
  ``lr_decay_steps``; ``signed=True`` feeds Adam ``sign(grad)`` instead of the gradient (Inverting
  Gradients, Geiping et al. 2020: ``optax.chain(scale_by_sign(), adam)``).

DLG's PyTorch code uses ``torch.optim.LBFGS(history_size=100)``; ``history_size`` defaults to 100 here too.
"""

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dlg_jax.attack.levenberg_marquardt import make_levenberg_marquardt
from dlg_jax.attack.lockstep_lbfgs import make_lockstep_lbfgs
from dlg_jax.errors import DLGInputError, check_choice, check_number, check_positive_int

SOLVER_NAMES = ("lbfgs", "optax-lbfgs", "jaxopt-lbfgs", "adam", "lm", "lm-cg")
LEAST_SQUARES_SOLVERS = {"lm": "materialised", "lm-cg": "cg"}


@dataclasses.dataclass(frozen=True)
class SolverConfig:
    """Solver hyper-parameters (validated on construction)."""

    name: str = "lbfgs"
    history_size: int = 100
    max_linesearch_steps: int = 20
    learning_rate: float = 0.1
    lr_decay_steps: tuple[int, ...] = ()
    signed: bool = False
    damping: float = 1e-2
    damping_trials: int = 4
    cg_steps: int = 20
    jacobian_chunk: int = 64

    @property
    def least_squares(self) -> bool:
        """Whether the solver needs the objective in residual form (``lm``, ``lm-cg``)."""
        return self.name in LEAST_SQUARES_SOLVERS

    def __post_init__(self):
        check_choice("solver", self.name, SOLVER_NAMES)
        if self.signed and self.name != "adam":
            raise DLGInputError(f"signed gradients need solver 'adam', got {self.name!r}")
        if self.history_size < 1:
            raise DLGInputError(f"history_size must be >= 1, got {self.history_size}")
        if self.max_linesearch_steps < 1:
            raise DLGInputError(f"max_linesearch_steps must be >= 1, got {self.max_linesearch_steps}")
        check_number("learning_rate", self.learning_rate, low=0.0, low_inclusive=False)
        check_number("damping", self.damping, low=0.0, low_inclusive=False)
        for name in ("damping_trials", "cg_steps", "jacobian_chunk"):
            check_positive_int(name, getattr(self, name))


class Solver(NamedTuple):
    name: str
    init: Callable[[Any, Any], Any]
    step: Callable[[Any, Any, Any], tuple[Any, Any, jnp.ndarray]]
    evaluations: Callable[[Any], jnp.ndarray]


class OptaxState(NamedTuple):
    """State of a solver built on an optax optimiser: the optimiser's state and the objective evaluations."""
    inner: Any
    evaluations: jnp.ndarray


def _lockstep_lbfgs(objective, config: SolverConfig) -> Solver:
    init, step, evaluations = make_lockstep_lbfgs(objective, config.history_size)
    return Solver("lbfgs", init, step, evaluations)


def _optax_lbfgs(objective, config: SolverConfig) -> Solver:
    optimizer = optax.lbfgs(
        memory_size=config.history_size,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=config.max_linesearch_steps, initial_guess_strategy="one"
        ),
    )

    def init(dummy, context):
        return OptaxState(optimizer.init(dummy), jnp.zeros((), jnp.int32))

    def step(dummy, state, context):
        def value_fn(z):
            return objective(z, context)

        value, grad = optax.value_and_grad_from_state(value_fn)(dummy, state=state.inner)
        fresh = jnp.asarray(optax.tree.get(state.inner, "count") == 0, jnp.int32)
        updates, inner = optimizer.update(grad, state.inner, dummy, value=value, grad=grad, value_fn=value_fn)
        searched = jnp.asarray(optax.tree.get(inner, "num_linesearch_steps"), jnp.int32)
        return optax.apply_updates(dummy, updates), OptaxState(inner, state.evaluations + fresh + searched), value

    return Solver("optax-lbfgs", init, step, lambda state: state.evaluations)


def _jaxopt_lbfgs(objective, config: SolverConfig) -> Solver:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import jaxopt

    solver = jaxopt.LBFGS(
        fun=objective, history_size=config.history_size, linesearch="zoom",
        maxls=config.max_linesearch_steps, maxiter=2**31 - 1, tol=0.0, jit=True,
    )

    def init(dummy, context):
        return solver.init_state(dummy, context)

    def step(dummy, state, context):
        value = state.value
        new_dummy, new_state = tuple(solver.update(dummy, state, context))
        return new_dummy, new_state, value

    return Solver("jaxopt-lbfgs", init, step, lambda state: jnp.asarray(state.num_fun_eval, jnp.int32))


def _adam(objective, config: SolverConfig) -> Solver:
    schedule = optax.piecewise_constant_schedule(
        config.learning_rate, {int(s): 0.1 for s in config.lr_decay_steps}
    )
    optimizer = optax.adam(schedule)
    if config.signed:
        optimizer = optax.chain(optax.scale_by_sign(), optimizer)

    def init(dummy, context):
        return OptaxState(optimizer.init(dummy), jnp.zeros((), jnp.int32))

    def step(dummy, state, context):
        value, grad = jax.value_and_grad(objective)(dummy, context)
        updates, inner = optimizer.update(grad, state.inner, dummy)
        return optax.apply_updates(dummy, updates), OptaxState(inner, state.evaluations + 1), value

    return Solver("adam", init, step, lambda state: state.evaluations)


def _levenberg_marquardt(residual, config: SolverConfig, project) -> Solver:
    init, step, evaluations = make_levenberg_marquardt(
        residual, mode=LEAST_SQUARES_SOLVERS[config.name], damping=config.damping, trials=config.damping_trials,
        cg_steps=config.cg_steps, jacobian_chunk=config.jacobian_chunk, project=project)
    return Solver(config.name, init, step, evaluations)


def make_solver(objective: Callable[[Any, Any], jnp.ndarray], config: SolverConfig, *,
                residual: Callable[[Any, Any], jnp.ndarray] | None = None,
                project: Callable[[Any], Any] | None = None) -> Solver:
    """The :class:`Solver` named by ``config.name`` for ``objective(dummy, context) -> scalar``; the
    least-squares solvers use ``residual(dummy, context) -> [m]`` instead (``objective = ||residual||^2``)
    and project their trial points by ``project(dummy) -> dummy`` (e.g. into the data range) when given."""
    if config.least_squares:
        if residual is None:
            raise DLGInputError(f"solver {config.name!r} needs the objective as a residual (l2 matching)")
        return _levenberg_marquardt(residual, config, project)
    return {"lbfgs": _lockstep_lbfgs, "optax-lbfgs": _optax_lbfgs, "jaxopt-lbfgs": _jaxopt_lbfgs, "adam": _adam}[config.name](objective, config)
