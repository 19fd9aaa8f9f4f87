"""Levenberg–Marquardt for zero-residual least squares, in lockstep under ``jax.vmap``.

DLG's l2 objective is a sum of squares, ``J(z) = ||r(z)||^2`` with the residual
``r(z) = concat_l sqrt(w_l) (grad_W loss(F(x'; W), y') - dW_l)`` (``[m]``: one entry per weight, 15.8k for
DLG's LeNet on 32x32x3 with 10 classes) and unknowns ``z`` (``[n]``: the dummy images, and the label logits
with joint labels). At a solution ``r(z*) = 0``, so Gauss–Newton's model ``r(z + d) ~ r(z) + J d`` is exact to
second order and Gauss–Newton converges quadratically near ``z*``; Levenberg–Marquardt's damping makes it
robust far from it (Nocedal & Wright, ch. 10.3).

One call to ``step`` at ``x`` (all vectors flattened; ``J = dr/dz (x)`` ``[m, n]``, ``g = J^T r``):

    for k = 0 .. K-1 (together, vmapped):   lambda_k = lambda * GROWTH^k
        solve  (J^T J + lambda_k D) d_k = -g
        x_k = P(x + d_k),   c_k = ||r(x_k)||^2
    k* = the first k with c_k < ||r(x)||^2 (finite)
    accept: x <- x_k*, lambda <- max(lambda_k* / SHRINK, MIN_DAMPING)
    reject (none decreased): x stays, lambda <- min(lambda * GROWTH^K, MAX_DAMPING)

``GROWTH = 4``, ``SHRINK = 3``: Marquardt's rule tried sequentially (``lambda`` times 4 until the cost
decreases, then divided by 3) gives the same iterates as long as it would succeed within ``K`` tries; here
the ``K`` tries are evaluated side by side, so every call does the same work for every problem (no
data-dependent loop, accept/reject by masks). ``P`` projects onto the box (the data range) when the attack
has one: a projected Levenberg–Marquardt step (Kanzow, Yamashita & Fukushima 2004), accepted only if the
projected point lowers the cost. With a box the step is taken in the *free* variables only (Bertsekas'
projected Newton): a variable is *held* when it sits at a bound and the descent direction ``-g`` points out
of the box (``P(x - g)_i = x_i``); the held rows and columns of the normal equations are replaced by the
identity and their right-hand side by 0, so ``d_i = 0`` there and the damped Gauss–Newton model is solved
exactly over the rest. Without this, the projection of a full step is not the model's minimiser once many
pixels sit at a bound, and the quadratic convergence is lost.

Two ways to solve the damped normal equations:

- ``materialised`` (``lm``): ``J`` by ``n`` forward-mode products ``J e_i`` (``jax.linearize`` once, the
  basis vectors in chunks of ``jacobian_chunk``), ``A = J^T J`` by one ``[n, m] x [m, n]`` matmul,
  Marquardt's scaling ``D = diag(A) + 1e-9 max(diag(A))`` (invariant to rescaling the unknowns) and a
  Cholesky factorisation per trial. Memory per problem: ``J`` (``m n``) plus ``A`` (``n^2``) and ``K``
  factors; cost per call: ``n`` JVPs, ``2 m n^2`` flops for ``A``, ``K n^3 / 3`` for the factors.
- ``cg`` (``lm-cg``, matrix-free): ``(J^T J + lambda I) v`` by one ``jvp`` and one ``vjp`` (``jax.linearize``
  and its transpose), the system solved by a fixed number ``cg_steps`` of conjugate-gradient iterations
  from ``d = 0`` (truncated CG also regularises). ``D = I``; the initial ``lambda`` is ``damping`` times the
  curvature along the first gradient, ``||J g||^2 / ||g||^2``, so that ``damping`` means the same in both
  modes. Memory: a few ``[n]`` and ``[m]`` vectors; cost per call: ``2 + K (2 cg_steps + 1)`` evaluations.

Evaluations counted per call (one evaluation ~ one residual, JVP or VJP, each about the cost of the victim
gradient and one more pass, as one objective+gradient evaluation of the L-BFGS): ``materialised``:
``1 + n + K`` (linearisation, ``n`` JVPs, ``K`` trial residuals); ``cg``: ``2 + K (2 cg_steps + 1)``.

**Float types.** Everything runs in the attack's dtype. In float32 the normal equations square ``J``'s
condition number, so the step loses accuracy once ``||r||^2`` nears float32's rounding of the gradient
(relative objective ~1e-10); the damping keeps the Cholesky well posed until then, and a failed factor
(NaN) is a rejected trial, after which the damping grows. That floor lies far below what a reconstruction
needs (>= 40 dB). ``--float64`` (``AttackConfig.dtype``) runs the Jacobian, ``J^T J`` and the factors in
float64 and reaches the exact zero (relative objective ~1e-18): for the identifiability studies, where one
must tell an exact solution from a near one. On GPUs float64 runs at half (H100/H200) or far less of the
float32 rate, so float32 is the default there too.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

GROWTH = 4.0
SHRINK = 3.0
MIN_DAMPING = 1e-12
MAX_DAMPING = 1e12
DIAGONAL_FLOOR = 1e-9
JACOBIAN_MODES = ("materialised", "cg")


class LevenbergMarquardtState(NamedTuple):
    residual: jnp.ndarray     # [m], r(x)
    cost: jnp.ndarray         # ||r(x)||^2
    damping: jnp.ndarray      # lambda for the next call's first trial
    accepted: jnp.ndarray     # accepted steps so far (iterations)
    evaluations: jnp.ndarray  # residual evaluations, JVPs and VJPs so far


def conjugate_gradient(matvec: Callable[[jnp.ndarray], jnp.ndarray], b: jnp.ndarray, steps: int) -> jnp.ndarray:
    """``steps`` iterations of conjugate gradients for ``A d = b`` from ``d = 0`` (``A`` symmetric positive
    definite, given by ``matvec``); a fixed count, no early exit (a converged run takes zero steps)."""

    def body(_, carry):
        d, r, p, rr = carry
        ap = matvec(p)
        pap = jnp.vdot(p, ap)
        alpha = jnp.where(pap > 0, rr / jnp.where(pap > 0, pap, 1.0), 0.0)
        d, r = d + alpha * p, r - alpha * ap
        rr_new = jnp.vdot(r, r)
        beta = jnp.where(rr > 0, rr_new / jnp.where(rr > 0, rr, 1.0), 0.0)
        return d, r, r + beta * p, rr_new

    zero = jnp.zeros_like(b)
    return jax.lax.fori_loop(0, steps, body, (zero, b, b, jnp.vdot(b, b)))[0]


def jacobian_rows(linear: Callable[[jnp.ndarray], jnp.ndarray], n: int, dtype, chunk: int) -> jnp.ndarray:
    """``[n, m]``: row ``i`` is ``J e_i`` (``linear``: the JVP ``v -> J v``), ``chunk`` basis vectors at a time."""
    return jax.lax.map(lambda i: linear(jax.nn.one_hot(i, n, dtype=dtype)), jnp.arange(n),
                       batch_size=min(chunk, n))


def make_levenberg_marquardt(
    residual: Callable[[Any, Any], jnp.ndarray],
    *,
    mode: str = "materialised",
    damping: float = 1e-2,
    trials: int = 4,
    cg_steps: int = 20,
    jacobian_chunk: int = 64,
    project: Callable[[Any], Any] | None = None,
):
    """``(init, step, evaluations)`` of lockstep Levenberg–Marquardt (module docstring) for
    ``residual(dummy, context) -> [m]``; ``project(dummy) -> dummy`` (optional) maps a trial point into the
    feasible set. ``step(dummy, state, context)`` returns ``(dummy, state, ||r(dummy)||^2)`` (the value at
    its input, as every solver's step)."""
    if mode not in JACOBIAN_MODES:
        raise ValueError(f"unknown Jacobian mode {mode!r}; allowed: {', '.join(JACOBIAN_MODES)}")

    def flat_residual(flat, unravel, context):
        return residual(unravel(flat), context)

    def flat_project(flat, unravel):
        return flat if project is None else ravel_pytree(project(unravel(flat)))[0]

    def init(dummy, context) -> LevenbergMarquardtState:
        flat, unravel = ravel_pytree(dummy)
        if mode == "materialised":
            r = flat_residual(flat, unravel, context)
            lam, evaluations = jnp.asarray(damping, flat.dtype), 1
        else:  # lambda relative to the curvature along the first gradient
            r, linear = jax.linearize(lambda x: flat_residual(x, unravel, context), flat)
            (g,) = jax.linear_transpose(linear, flat)(r)
            jg = linear(g)
            gg = jnp.vdot(g, g)
            curvature = jnp.where(gg > 0, jnp.vdot(jg, jg) / jnp.where(gg > 0, gg, 1.0), 1.0)
            lam, evaluations = jnp.clip(damping * curvature, MIN_DAMPING, MAX_DAMPING).astype(flat.dtype), 3
        return LevenbergMarquardtState(r, jnp.vdot(r, r), lam, jnp.zeros((), jnp.int32),
                                       jnp.asarray(evaluations, jnp.int32))

    def step(dummy, state: LevenbergMarquardtState, context):
        flat, unravel = ravel_pytree(dummy)
        n = flat.shape[0]
        r, linear = jax.linearize(lambda x: flat_residual(x, unravel, context), flat)
        lambdas = state.damping * GROWTH ** jnp.arange(trials, dtype=flat.dtype)

        def free_of(gradient):  # [n] 1.0 where the step may move (module docstring), 0.0 where it is held
            if project is None:
                return jnp.ones_like(flat)
            return (flat_project(flat - gradient, unravel) != flat).astype(flat.dtype)

        if mode == "materialised":
            rows = jacobian_rows(linear, n, flat.dtype, jacobian_chunk)
            gradient = rows @ r
            free = free_of(gradient)
            normal = (rows @ rows.T) * jnp.outer(free, free)
            scale = jnp.diagonal(normal)
            scale = scale + DIAGONAL_FLOOR * jnp.max(scale)

            def solve(lam):
                factor = jax.scipy.linalg.cho_factor(normal + jnp.diag(lam * scale * free + (1.0 - free)))
                return jax.scipy.linalg.cho_solve(factor, -gradient * free)

            evaluations = 1 + n + trials
        else:
            transpose = jax.linear_transpose(linear, flat)
            (gradient,) = transpose(r)
            free = free_of(gradient)

            def solve(lam):
                return conjugate_gradient(lambda v: free * transpose(linear(free * v))[0] + lam * v,
                                          -gradient * free, cg_steps)

            evaluations = 2 + trials * (2 * cg_steps + 1)
        candidates = jax.vmap(lambda lam: flat_project(flat + solve(lam), unravel))(lambdas)   # [K, n]
        residuals = jax.vmap(lambda x: flat_residual(x, unravel, context))(candidates)        # [K, m]
        costs = jnp.sum(jnp.square(residuals), axis=1)
        better = jnp.isfinite(costs) & (costs < state.cost) & jnp.all(jnp.isfinite(candidates), axis=1)
        accept = jnp.any(better)
        first = jnp.argmax(better)
        new_flat = jnp.where(accept, candidates[first], flat)
        damping_next = jnp.where(accept, jnp.maximum(lambdas[first] / SHRINK, MIN_DAMPING),
                                 jnp.minimum(lambdas[-1] * GROWTH, MAX_DAMPING))
        new_state = LevenbergMarquardtState(
            jnp.where(accept, residuals[first], state.residual), jnp.where(accept, costs[first], state.cost),
            damping_next.astype(state.damping.dtype), state.accepted + accept.astype(jnp.int32),
            state.evaluations + evaluations,
        )
        return unravel(new_flat), new_state, state.cost

    return init, step, lambda state: state.evaluations
