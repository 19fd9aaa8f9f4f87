"""The objective benchmark's own LeNet objectives (restart axis innermost, factored dense gradient) compute
the package's objective: the same values and gradients, to float32 rounding, as ``make_objective``."""

import numpy as np
import pytest

from benchmarks import common
from benchmarks.objective_throughput import JaxProgram, _jax_program


@pytest.mark.parametrize("form", ["restarts_inner", "factored_dense"])
def test_benchmark_objective_forms_equal_the_package_objective(form):
    problem = common.make_problem("lenet", 1, 1, seed=0)
    images, logits = (a[0] for a in common.initial_dummies(0, 1, 3, 1, problem.model))
    values, gradient = _jax_program(problem, JaxProgram(problem.model), images, logits)[3]
    mine, my_gradient = _jax_program(problem, JaxProgram(problem.model, chunk=2, form=form), images, logits)[3]
    np.testing.assert_allclose(mine, values, rtol=1e-4)  # float32 rounding is ~1e-6 here
    for got, want in zip(my_gradient, gradient):
        scale = np.max(np.abs(want).reshape(len(want), -1), axis=1)
        assert np.all(np.max(np.abs(got - want).reshape(len(want), -1), axis=1) <= 1e-3 * scale)
