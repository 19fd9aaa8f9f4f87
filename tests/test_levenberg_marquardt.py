"""Levenberg–Marquardt: the iterates of a by-hand (numpy) Levenberg–Marquardt on a small least-squares
problem, lockstep under vmap, and convergence on DLG's digits B = 2."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.levenberg_marquardt import make_levenberg_marquardt

TIMES = np.linspace(0.0, 2.0, 9)
OBSERVED = 2.0 * np.exp(-1.3 * TIMES) + 0.5 + 0.01 * np.sin(7.0 * TIMES)  # a small nonzero residual at the optimum


def _residual(dummy, context):
    a, b, c = dummy["z"]
    return a * jnp.exp(b * context[0]) + c - context[1]


def _by_hand(z, steps, damping, trials, scaled):
    """Marquardt's rule, trials one after another (numpy, float64): lambda x 4 until the cost drops, then / 3;
    ``scaled``: D = diag(J^T J) + 1e-9 max (materialised), else D = I with lambda relative to the curvature
    along the first gradient (matrix-free)."""

    def residual(z):
        return z[0] * np.exp(z[1] * TIMES) + z[2] - OBSERVED

    def jacobian(z):
        e = np.exp(z[1] * TIMES)
        return np.stack([e, z[0] * TIMES * e, np.ones_like(TIMES)], axis=1)

    r = residual(z)
    cost = r @ r
    if scaled:
        lam = damping
    else:
        J, g = jacobian(z), jacobian(z).T @ r
        lam = damping * (J @ g) @ (J @ g) / (g @ g)
    path, rejected = [], 0
    for _ in range(steps):
        J = jacobian(z)
        A, g = J.T @ J, J.T @ r
        D = np.diag(np.diag(A) + 1e-9 * np.max(np.diag(A))) if scaled else np.eye(3)
        for k in range(trials):
            trial = z + np.linalg.solve(A + lam * D, -g)
            r_trial = residual(trial)
            if r_trial @ r_trial < cost:
                z, r, cost, lam = trial, r_trial, r_trial @ r_trial, max(lam / 3.0, 1e-12)
                break
            lam *= 4.0
            rejected += 1
        else:
            lam = min(lam, 1e12)
        path.append(z.copy())
    return np.array(path), rejected


@pytest.mark.parametrize("mode,scaled", [("materialised", True), ("cg", False)])
def test_iterates_equal_a_by_hand_levenberg_marquardt(mode, scaled):
    """From a far start (so that trials get rejected), 12 steps give the by-hand iterates to float64
    rounding (matrix-free: 3 CG steps solve the 3 x 3 system exactly), and reach the least-squares fit."""
    jax.config.update("jax_enable_x64", True)
    try:
        start = np.array([5.0, -4.0, -1.0])
        expected, rejected = _by_hand(start, 12, damping=1e-3, trials=4, scaled=scaled)
        assert rejected > 0
        init, step, evaluations = make_levenberg_marquardt(_residual, mode=mode, damping=1e-3, trials=4, cg_steps=3)
        context = (jnp.asarray(TIMES), jnp.asarray(OBSERVED))
        dummy = {"z": jnp.asarray(start)}
        state = init(dummy, context)
        step = jax.jit(step)
        path = []
        for _ in range(12):
            dummy, state, _ = step(dummy, state, context)
            path.append(np.asarray(dummy["z"]))
        np.testing.assert_allclose(np.array(path), expected, rtol=1e-8, atol=1e-10)
        np.testing.assert_allclose(path[-1], [2.0, -1.3, 0.5], atol=0.02)
        per_step = 1 + 3 + 4 if mode == "materialised" else 2 + 4 * (2 * 3 + 1)
        assert int(evaluations(state)) == int(evaluations(init(dummy, context))) + 12 * per_step
    finally:
        jax.config.update("jax_enable_x64", False)


def test_vmapped_problems_step_in_lockstep_like_each_alone():
    """Two problems under vmap (one accepting, one far off and rejecting at first) take the same steps
    as each run alone, to float32 rounding."""
    init, step, _ = make_levenberg_marquardt(_residual, damping=1e-3, trials=2)
    context = (jnp.asarray(TIMES, jnp.float32), jnp.asarray(OBSERVED, jnp.float32))
    starts = jnp.asarray([[1.5, -1.0, 0.3], [5.0, -4.0, -1.0]], jnp.float32)
    batched_step = jax.jit(jax.vmap(step, in_axes=(0, 0, None)))
    dummy = {"z": starts}
    state = jax.vmap(init, in_axes=(0, None))(dummy, context)
    alone = [({"z": s}, init({"z": s}, context)) for s in starts]
    for _ in range(6):
        dummy, state, _ = batched_step(dummy, state, context)
        alone = [step(d, s, context)[:2] for d, s in alone]
    np.testing.assert_allclose(np.asarray(dummy["z"]), np.stack([np.asarray(d["z"]) for d, _ in alone]),
                               rtol=1e-4, atol=1e-5)
    assert not np.array_equal(np.asarray(state.accepted), [6, 6])  # the far start had rejected steps


def test_recovers_a_digits_batch_of_two_from_its_gradient():
    """DLG's LeNet, digits B = 2, labels fixed (as iDLG / the count rule give them), DLG's N(0, 1) start:
    Levenberg–Marquardt reaches both images (>= 30 dB; runs give ~100 dB after 7 iterations) within 20
    iterations through the attack engine."""
    from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
    from dlg_jax.attack.solvers import SolverConfig
    from dlg_jax.data.datasets import get_dataset
    from dlg_jax.models import build_model
    from dlg_jax.victim.gradients import shared_gradients

    digits = get_dataset("digits")
    model = build_model("lenet", digits.input_shape, digits.num_classes)
    params = model.init(jax.random.key(0))
    images, labels = digits.examples([0, 1])
    images, labels = images[None], labels[None]
    config = AttackConfig(restarts=1, iterations=20, solver=SolverConfig("lm"), labels="count")
    result = run_attack(model, params, shared_gradients(model, params, images, labels), 2, config,
                        fixed_labels=labels, run=RunOptions(block=5, snapshots=0))
    assert result.converged[0, 0] and result.iterations[0, 0] < 20
    error = np.mean((np.clip(result.best_images[0], 0, 1) - images[0]) ** 2, axis=(1, 2, 3))
    assert np.all(10 * np.log10(1.0 / error) >= 30.0)


def test_projected_steps_stay_in_the_box_and_never_raise_the_cost():
    """With a projection (here ``c <= 0.3``, the unconstrained fit has ``c ~ 0.5``) every iterate is
    feasible, the cost never rises, and the run settles on the bound."""
    jax.config.update("jax_enable_x64", True)
    try:
        def project(dummy):
            return {"z": dummy["z"].at[2].set(jnp.minimum(dummy["z"][2], 0.3))}

        init, step, _ = make_levenberg_marquardt(_residual, damping=1e-3, project=project)
        context = (jnp.asarray(TIMES), jnp.asarray(OBSERVED))
        dummy = {"z": jnp.asarray([5.0, -4.0, -1.0])}
        state = init(dummy, context)
        step = jax.jit(step)
        costs = [float(state.cost)]
        for _ in range(30):
            dummy, state, _ = step(dummy, state, context)
            assert float(dummy["z"][2]) <= 0.3
            costs.append(float(state.cost))
        assert np.all(np.diff(costs) <= 0) and costs[-1] < 0.1 * costs[0]
        assert float(dummy["z"][2]) == pytest.approx(0.3)
    finally:
        jax.config.update("jax_enable_x64", False)


def test_with_a_bound_the_free_variables_converge_to_the_constrained_optimum():
    """The step is taken in the free variables (``c`` held at its bound 0.3): the iterates reach the optimum
    of the problem with ``c = 0.3`` fixed (by-hand Gauss–Newton in numpy) to float64 accuracy."""
    jax.config.update("jax_enable_x64", True)
    try:
        a, b = 2.0, -1.3
        for _ in range(100):  # Gauss-Newton over (a, b) with c = 0.3
            e = np.exp(b * TIMES)
            J = np.stack([e, a * TIMES * e], axis=1)
            a, b = np.array([a, b]) + np.linalg.lstsq(J, -(a * e + 0.3 - OBSERVED), rcond=None)[0]

        def project(dummy):
            return {"z": dummy["z"].at[2].set(jnp.minimum(dummy["z"][2], 0.3))}

        for mode in ("materialised", "cg"):
            init, step, _ = make_levenberg_marquardt(_residual, mode=mode, damping=1e-3, project=project, cg_steps=3)
            context = (jnp.asarray(TIMES), jnp.asarray(OBSERVED))
            dummy = {"z": jnp.asarray([5.0, -4.0, -1.0])}
            state = init(dummy, context)
            step = jax.jit(step)
            for _ in range(40):
                dummy, state, _ = step(dummy, state, context)
            np.testing.assert_allclose(np.asarray(dummy["z"]), [a, b, 0.3], rtol=1e-9, err_msg=mode)
    finally:
        jax.config.update("jax_enable_x64", False)
