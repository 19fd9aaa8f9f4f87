"""DLG's cyclic batch update (``AttackConfig.batch_update="cyclic"``) and the dummy's initialisation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.engine import (
    AttackConfig,
    RunOptions,
    initial_dummy,
    run_attack,
    slot_restricted,
)
from dlg_jax.attack.objectives import Context, make_objective
from dlg_jax.attack.solvers import SolverConfig
from dlg_jax.cli import build_parser
from dlg_jax.cli.attack import attack_config_from_args
from dlg_jax.data.datasets import get_dataset
from dlg_jax.errors import DLGInputError
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import one_hot, shared_gradients


@pytest.fixture(scope="module")
def digits_pair():
    source = get_dataset("digits")
    model = build_model("lenet", source.input_shape, source.num_classes)
    params = model.init(jax.random.key(0))
    images, labels = source.examples([0, 1, 2])
    return model, params, images, labels, shared_gradients(model, params, images[None], labels[None])


def test_slot_restricted_objective_keeps_the_value_and_one_slot_of_the_gradient(digits_pair):
    model, params, images, labels, grads = digits_pair
    objective = make_objective(model)
    context = Context(params, jax.tree.map(lambda g: g[0], grads), one_hot(labels, 10))
    dummy = initial_dummy(0, 0, 0, 3, model.input_shape, 10, True, jnp.float32)
    value, full = jax.value_and_grad(objective)(dummy, context)
    for slot in range(3):
        restricted_value, part = jax.value_and_grad(slot_restricted(objective))(dummy, (context, slot))
        assert restricted_value == value
        for got, want in zip(jax.tree.leaves(part), jax.tree.leaves(full)):
            np.testing.assert_allclose(got[slot], want[slot], rtol=1e-5, atol=1e-8)
            assert not np.any(np.delete(np.asarray(got), slot, axis=0))


def test_cyclic_update_moves_slot_zero_alone_first(digits_pair):
    model, params, _, _, grads = digits_pair
    start = initial_dummy(0, 0, 0, 3, model.input_shape, 10, True, jnp.float32)
    moved = {}
    for update, solver in (("joint", "lbfgs"), ("cyclic", "lbfgs"), ("cyclic", "adam")):
        config = AttackConfig(restarts=1, iterations=1, batch_update=update, solver=SolverConfig(solver))
        result = run_attack(model, params, grads, 3, config, run=RunOptions(snapshots=0))
        moved[update, solver] = [bool(np.any(result.images[0, 0, b] != start.images[b])) or
                                 bool(np.any(result.label_logits[0, 0, b] != start.label_logits[b])) for b in range(3)]
    assert moved == {("joint", "lbfgs"): [True, True, True], ("cyclic", "lbfgs"): [True, False, False],
                     ("cyclic", "adam"): [True, False, False]}


def test_options_and_bad_values():
    with pytest.raises(DLGInputError, match="unknown batch update 'roundrobin'; allowed: joint, cyclic"):
        AttackConfig(batch_update="roundrobin")
    with pytest.raises(DLGInputError, match="unknown dummy init 'zeros'; allowed: randn, uniform"):
        AttackConfig(dummy_init="zeros")
    args = build_parser().parse_args(["attack", "--batch-update", "cyclic", "--dummy-init", "uniform"])
    config = attack_config_from_args(args)
    assert (config.batch_update, config.dummy_init) == ("cyclic", "uniform")
    uniform = initial_dummy(0, 0, 0, 2, (4, 4, 1), 10, False, jnp.float32, "uniform").images
    assert float(uniform.min()) >= 0.0 and float(uniform.max()) <= 1.0 and float(uniform.std()) > 0.2
