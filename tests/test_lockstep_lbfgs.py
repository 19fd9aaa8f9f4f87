"""Lockstep L-BFGS: the matrix form of the two-loop recursion equals the loops, and it minimises."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.lockstep_lbfgs import _direction, make_lockstep_lbfgs


def _two_loop(grad, s_pairs, y_pairs):
    """Nocedal & Wright Algorithm 7.4 over pairs given oldest first (numpy, float64)."""
    q, alphas = grad.copy(), []
    for s, y in zip(s_pairs[::-1], y_pairs[::-1]):
        alpha = (s @ q) / (s @ y)
        q -= alpha * y
        alphas.append(alpha)
    s, y = s_pairs[-1], y_pairs[-1]
    r = q * (s @ y) / (y @ y)
    for (s, y), alpha in zip(zip(s_pairs, y_pairs), alphas[::-1]):
        beta = (y @ r) / (s @ y)
        r += s * (alpha - beta)
    return -r


def _rosenbrock(dummy, context):
    x = dummy["x"]
    return jnp.sum(100.0 * (x[1:] - x[:-1] ** 2) ** 2 + (1.0 - x[:-1]) ** 2) * context


@pytest.mark.parametrize("history", [3, 20])
def test_matches_the_two_loop_recursion_and_converges(history):
    """Along a run (the memory wraps around when history = 3), every direction equals the two-loop
    recursion over the pairs stored so far; the run reaches Rosenbrock's minimum."""
    jax.config.update("jax_enable_x64", True)
    try:
        init, step, _ = make_lockstep_lbfgs(_rosenbrock, history)
        step = jax.jit(step)
        dummy = {"x": jnp.asarray(np.random.default_rng(0).uniform(-1.5, 1.5, 6))}
        state = init(dummy, 1.0)
        pairs, checked = [], 0
        for _ in range(300):
            x_before, grad_before = np.asarray(dummy["x"]), np.asarray(state.grad)
            if pairs:
                kept = pairs[-history:]
                expected = _two_loop(grad_before, [p[0] for p in kept], [p[1] for p in kept])
                np.testing.assert_allclose(np.asarray(_direction(state.grad, state)), expected, rtol=1e-7, atol=1e-10)
                checked += 1
            rho_before = np.asarray(state.rho)
            dummy, state, _ = step(dummy, state, 1.0)
            if not np.array_equal(np.asarray(state.rho), rho_before):  # a pair was stored
                pairs.append((np.asarray(dummy["x"]) - x_before, np.asarray(state.grad) - grad_before))
            if np.all(np.asarray(state.rho) == 0) and pairs:  # reset: memory cleared
                pairs = []
        assert checked > 20
        np.testing.assert_allclose(np.asarray(dummy["x"]), np.ones(6), atol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", False)
