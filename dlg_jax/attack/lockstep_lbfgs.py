"""L-BFGS whose line search costs exactly one objective evaluation per iteration (lockstep-friendly).

Under ``jax.vmap`` a ``while_loop`` line search (optax's and jaxopt's zoom) runs every batched restart
for as long as the slowest one needs, and its loop body carries the whole problem state. Here the
backtracking is *unrolled across iterations* instead: every call to :func:`step` evaluates the
objective once, at the trial point, and either accepts it or shrinks the step for the next call. So a
batch of restarts always does the same work per call, with no data-dependent loop at all.

One call, for the flattened dummy ``x`` with value ``f`` and gradient ``g`` (all ``[n]``):

    d   = -H g                 two-loop recursion over the last ``m`` accepted pairs (s_i, y_i);
                               no pairs yet: d = -g * min(1, 1 / ||g||_1) (torch.optim.LBFGS's first step)
    x_t = x + a d,  (f_t, g_t) = J(x_t), grad J(x_t)
    accept  iff  f_t finite, g_t finite and  f_t <= f + c1 a <g, d>         (Armijo, c1 = 1e-4)
    accept:  s = x_t - x,  y = g_t - g;  store (s, y) when <s, y> > eps ||s|| ||y||;  x, f, g <- x_t, f_t, g_t;
             a <- 1
    reject:  a <- a * clip(quadratic-interpolation minimiser, 0.1, 0.5); below ``min_step`` the memory
             is cleared and a <- 1 (restart from steepest descent)

``H`` is the usual L-BFGS inverse-Hessian estimate with initial scaling ``<s, y> / <y, y>`` of the newest
pair (Nocedal & Wright, Algorithm 7.4). Only accepted steps count as iterations; every call counts as
one evaluation.

**The two-loop recursion as four matrix-vector products.** Written as loops, ``-H g`` takes ``2m``
sequential dot/axpy pairs over ``[n]`` vectors (under ``vmap``, ``4m`` small kernels per step that each
stream one row of the memory). The same numbers follow from small ``m x m`` algebra: with the pairs in
age order (newest first), ``SY[i, j] = <s_i, y_j>``, ``YY = Y Y^T``, ``Sg = S g``, ``Yg = Y g``,

    alpha:  (I + diag(rho) tril(SY, -1)) alpha = rho * Sg                 (the first loop's alpha_i)
    q = g - Y^T alpha,     r0 = gamma q,     Y r0 = gamma (Yg - YY alpha)
    beta:   (I + diag(rho) triu(SY^T, 1)) beta = rho * (Y r0 + triu(SY^T, 1) alpha)   (second loop)
    -H g = -(r0 + S^T (alpha - beta))

two unit-triangular ``m x m`` solves and two products with the memory. ``Sg``, ``Yg``, ``SY`` and ``YY``
are kept in the state and refreshed after each step by ``S [g', y]`` and ``Y [g', s, y]`` (one more
pass over each memory), so every step streams ``S`` and ``Y`` twice each, as the loops do, but in four
large products.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

ARMIJO_C1 = 1e-4
CURVATURE_EPS = 1e-10
MIN_STEP = 1e-10


class LockstepLBFGSState(NamedTuple):
    value: jnp.ndarray      # f(x), scalar
    grad: jnp.ndarray       # [n]
    s_memory: jnp.ndarray   # [m, n], circular
    y_memory: jnp.ndarray   # [m, n]
    rho: jnp.ndarray        # [m], 1 / <s_i, y_i>; 0 marks an empty slot
    sy: jnp.ndarray         # [m, m], <s_i, y_j> (slot order)
    yy: jnp.ndarray         # [m, m], <y_i, y_j>
    s_grad: jnp.ndarray     # [m], <s_i, grad>
    y_grad: jnp.ndarray     # [m], <y_i, grad>
    head: jnp.ndarray       # index of the next slot to write
    step_size: jnp.ndarray  # a, the trial step for the next call
    accepted: jnp.ndarray   # accepted steps so far (iterations)
    evaluations: jnp.ndarray


def _direction(grad, state: LockstepLBFGSState) -> jnp.ndarray:
    """``-H grad`` by the two-loop recursion over the stored pairs (newest first), in the matrix form of
    the module docstring."""
    memory = state.rho.shape[0]
    order = (state.head - 1 - jnp.arange(memory)) % memory  # age index -> slot, newest first (an involution)
    rho = state.rho[order]
    sy = state.sy[order][:, order]
    yy = state.yy[order][:, order]
    eye = jnp.eye(memory, dtype=grad.dtype)
    lower = jnp.tril(sy, -1)
    alpha = jax.scipy.linalg.solve_triangular(eye + rho[:, None] * lower, rho * state.s_grad[order],
                                              lower=True, unit_diagonal=True)
    have_pair = rho[0] > 0
    gamma = jnp.where(have_pair, 1.0 / jnp.where(have_pair, rho[0] * yy[0, 0], 1.0), 1.0)
    first_scale = jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.sum(jnp.abs(grad)), 1e-30))
    scale = jnp.where(have_pair, gamma, first_scale)
    upper = jnp.triu(sy.T, 1)
    y_r0 = scale * (state.y_grad[order] - yy @ alpha)
    beta = jax.scipy.linalg.solve_triangular(eye + rho[:, None] * upper, rho * (y_r0 + upper @ alpha),
                                             lower=False, unit_diagonal=True)
    # Back to slot order: the age -> slot map is its own inverse.
    r = scale * (grad - alpha[order] @ state.y_memory) + (alpha - beta)[order] @ state.s_memory
    return -r


def make_lockstep_lbfgs(objective: Callable[[Any, Any], jnp.ndarray], history_size: int):
    """``(init, step, evaluations)`` of lockstep L-BFGS for ``objective(dummy, context) -> scalar``."""

    def flat_value_and_grad(flat, unravel, context):
        value, grad = jax.value_and_grad(objective)(unravel(flat), context)
        return value, ravel_pytree(grad)[0]

    def init(dummy, context) -> LockstepLBFGSState:
        flat, unravel = ravel_pytree(dummy)
        value, grad = flat_value_and_grad(flat, unravel, context)
        n = flat.shape[0]
        zeros = jnp.zeros((history_size, n), flat.dtype)
        small = jnp.zeros((history_size, history_size), flat.dtype)
        vector = jnp.zeros((history_size,), flat.dtype)
        return LockstepLBFGSState(value, grad, zeros, zeros, vector, small, small, vector, vector,
                                  jnp.zeros((), jnp.int32), jnp.ones((), flat.dtype),
                                  jnp.zeros((), jnp.int32), jnp.ones((), jnp.int32))

    def step(dummy, state: LockstepLBFGSState, context):
        flat, unravel = ravel_pytree(dummy)
        direction = _direction(state.grad, state)
        slope = jnp.vdot(state.grad, direction)
        descent = slope < 0
        direction = jnp.where(descent, direction, -state.grad)  # safeguard: fall back to steepest descent
        slope = jnp.where(descent, slope, -jnp.vdot(state.grad, state.grad))
        trial = flat + state.step_size * direction
        value, grad = flat_value_and_grad(trial, unravel, context)
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        accept = finite & (value <= state.value + ARMIJO_C1 * state.step_size * slope)

        s, y = trial - flat, grad - state.grad
        sy = jnp.vdot(s, y)
        store = accept & (sy > CURVATURE_EPS * jnp.linalg.norm(s) * jnp.linalg.norm(y))
        head = state.head
        # Written in place (a masked row, not a masked copy of the whole memory).
        s_memory = state.s_memory.at[head].set(jnp.where(store, s, state.s_memory[head]))
        y_memory = state.y_memory.at[head].set(jnp.where(store, y, state.y_memory[head]))
        rho = state.rho.at[head].set(jnp.where(store, 1.0 / jnp.where(store, sy, 1.0), state.rho[head]))
        # Inner products with the (updated) memory: one pass over S and one over Y.
        s_products = s_memory @ jnp.stack([grad, y], axis=1)       # [m, 2]: <s_i, g'>, <s_i, y>
        y_products = y_memory @ jnp.stack([grad, s, y], axis=1)    # [m, 3]: <y_i, g'>, <y_i, s>, <y_i, y>
        sy_matrix = state.sy.at[head, :].set(jnp.where(store, y_products[:, 1], state.sy[head, :]))
        sy_matrix = sy_matrix.at[:, head].set(jnp.where(store, s_products[:, 1], sy_matrix[:, head]))
        yy_matrix = state.yy.at[head, :].set(jnp.where(store, y_products[:, 2], state.yy[head, :]))
        yy_matrix = yy_matrix.at[:, head].set(jnp.where(store, y_products[:, 2], yy_matrix[:, head]))
        s_grad = jnp.where(accept, s_products[:, 0], state.s_grad)
        y_grad = jnp.where(accept, y_products[:, 0], state.y_grad)
        head = jnp.where(store, (head + 1) % history_size, head)

        # Backtracking by the minimiser of the quadratic through f(x), slope and f(x_t), kept in [0.1, 0.5].
        a = state.step_size
        curvature = value - state.value - a * slope
        shrink = jnp.where(finite & (curvature > 0), -slope * a / (2.0 * curvature), 0.5)
        next_step = jnp.where(accept, 1.0, a * jnp.clip(shrink, 0.1, 0.5))
        reset = ~accept & (next_step < MIN_STEP)
        rho = jnp.where(reset, jnp.zeros_like(rho), rho)
        next_step = jnp.where(reset, 1.0, next_step)

        new_state = LockstepLBFGSState(
            jnp.where(accept, value, state.value), jnp.where(accept, grad, state.grad),
            s_memory, y_memory, rho, sy_matrix, yy_matrix, s_grad, y_grad, head, next_step.astype(a.dtype),
            state.accepted + accept.astype(jnp.int32), state.evaluations + 1,
        )
        new_dummy = unravel(jnp.where(accept, trial, flat))
        return new_dummy, new_state, state.value

    return init, step, lambda state: state.evaluations
