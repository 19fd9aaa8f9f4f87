"""Soteria: the pruned rows against a straightforward per-feature Jacobian, its effect on DLG, training
with it, and bad input."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import recovery_chunk

from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
from dlg_jax.cli import main
from dlg_jax.data.datasets import get_dataset
from dlg_jax.errors import DLGInputError
from dlg_jax.metrics import evaluate
from dlg_jax.models import build_model
from dlg_jax.models.bert import build_text_model
from dlg_jax.victim.defenses import apply_defense, defended_gradients, make_defense
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.victim.soteria import defended_layer
from dlg_jax.victim.training import TrainConfig, train


def _lenet_features(model, params, x):
    """LeNet's representation by flax's own capture: sigmoid of the last conv's output, flattened."""
    _, state = model.module.apply({"params": params}, x, capture_intermediates=True)
    return jax.nn.sigmoid(state["intermediates"]["Conv2D_2"]["__call__"][0]).reshape(x.shape[0], -1)


def test_soteria_zeroes_the_rows_of_the_best_reconstructing_features():
    """On 8x8 inputs LeNet's representation has 2 * 2 * 12 = 48 features; a batch of 3 examples."""
    model = build_model("lenet", (8, 8, 1), 4)
    params = model.init(jax.random.key(1))
    x = jax.random.uniform(jax.random.key(2), (3, 8, 8, 1))
    y = jnp.array([0, 3, 1])
    # Reference: s_i = sum_b ||d r_i(x_b) / d x_b|| / |r_i(x_b)|, each example's Jacobian [48, 8, 8, 1] alone.
    score = np.zeros(48)
    for b in range(3):
        r = np.asarray(_lenet_features(model, params, x[b:b + 1]))[0]
        jacobian = np.asarray(jax.jacrev(lambda xb: _lenet_features(model, params, xb[None])[0])(x[b]))
        score += np.linalg.norm(jacobian.reshape(48, -1), axis=1) / np.abs(r)
    expected = np.sort(np.argsort(score)[:int(0.3 * 48)])  # the 14 smallest scores

    clean = jax.tree.map(lambda g: np.asarray(g[0]), shared_gradients(model, params, x[None], y[None]))
    defended = jax.tree.map(lambda g: np.asarray(g[0]),
                            defended_gradients(make_defense("soteria", 0.3), model, params, x[None], y[None], 0))
    kernel, clean_kernel = defended["Dense_0"]["kernel"], clean["Dense_0"]["kernel"]  # [48, 4]
    np.testing.assert_array_equal(np.flatnonzero((kernel == 0).all(axis=1)), expected)
    kept = np.setdiff1d(np.arange(48), expected)
    np.testing.assert_array_equal(kernel[kept], clean_kernel[kept])
    assert np.abs(clean_kernel[expected]).min() > 0  # the zeros are the defense's, not the gradient's
    for name in ("Conv2D_0", "Conv2D_1", "Conv2D_2"):
        for leaf in ("kernel", "bias"):
            np.testing.assert_array_equal(defended[name][leaf], clean[name][leaf])
    np.testing.assert_array_equal(defended["Dense_0"]["bias"], clean["Dense_0"]["bias"])
    zero = defended_gradients(make_defense("soteria", 0.0), model, params, x[None], y[None], 0)
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a[0], b), zero, clean))


@pytest.mark.recovery
def test_soteria_stops_dlg_at_equal_budget():
    """The same digit (28x28: 588 features), seed and budget (2 restarts, 500 L-BFGS iterations):
    undefended ~60 dB, Soteria pruning 40% of the features ~4 dB (measured 2026-11-26; 20% gave ~5 dB)."""
    source = get_dataset("digits")
    model = build_model("lenet", source.input_shape, source.num_classes)
    params = model.init(jax.random.key(0))
    images, labels = source.examples([0])
    images, labels = images[None], labels[None]
    grads = [defended_gradients(make_defense(*setting), model, params, images, labels, 0)
             for setting in (("none",), ("soteria", 0.4))]
    stacked = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *grads)
    result = run_attack(model, params, stacked, 1, AttackConfig(restarts=2, iterations=500),
                        run=RunOptions(chunk_size=recovery_chunk(8), snapshots=0))
    none, soteria = evaluate(result.best_images, np.repeat(images, 2, 0), result.best_labels,
                             np.repeat(labels, 2, 0)).psnr
    assert none >= 30.0
    assert soteria < 15.0


def test_training_ranks_on_each_minibatch():
    result = train(TrainConfig(steps=2, runs=1, batch_size=4), make_defense("soteria", 0.4))
    assert result.loss.shape == (1, 2) and np.all(np.isfinite(result.loss))


def test_models_it_defends_and_those_it_refuses():
    x = jnp.zeros((2, 8, 8, 1))
    y = jnp.array([0, 1])
    mlp = build_model("mlp", (8, 8, 1), 3)
    grads = defended_gradients(make_defense("soteria", 0.5), mlp, mlp.init(jax.random.key(0)), x[None] + 0.5,
                               y[None], 0)
    assert int((np.asarray(grads["Dense_2"]["kernel"][0]) == 0).all(axis=1).sum()) == 128  # half of 256
    resnet = build_model("resnet20", (8, 8, 1), 3, norm="batch")
    with pytest.raises(DLGInputError, match="batch norm, which mixes the 2 examples") as error:
        defended_layer(resnet, jax.eval_shape(resnet.init, jax.random.key(0)), x)
    assert "\n" not in str(error.value)
    text = build_text_model("bert-tiny", 4, (1,), 30)
    with pytest.raises(DLGInputError, match=r"dense layer on a flat representation \[B, D\]; model 'bert-tiny' "
                                            r"has a last dense layer on \(1, 1, \d+\)"):
        defended_layer(text, jax.eval_shape(text.init, jax.random.key(0)), jnp.zeros((1, 4, text.input_shape[-1])))


@pytest.mark.parametrize("strength,message", [
    (1.0, "Soteria pruning ratio is the fraction of representation features pruned, >= 0 and < 1, got 1.0 "
          "(for 1% use 0.01)"),
    (40, "got 40 (for 40% use 0.4)"),
    (-0.1, "Soteria pruning ratio must be a finite number >= 0 and < 1, got -0.1"),
    ("most", "Soteria pruning ratio must be a finite number >= 0 and < 1, got 'most'"),
    (None, "defense 'soteria' needs a strength, e.g. 0.1"),
])
def test_bad_strength_is_one_line(strength, message):
    with pytest.raises(DLGInputError) as error:
        make_defense("soteria", strength)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_without_the_clients_inputs_it_says_what_it_needs():
    grads = {"Dense_0": {"kernel": jnp.ones((1, 4, 2)), "bias": jnp.ones((1, 2))}}
    with pytest.raises(DLGInputError, match="needs the clients' model, params and images: use defended_gradients"):
        apply_defense(make_defense("soteria", 0.2), grads, 0)


def test_cli_bad_strength_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["defend", "sweep", "--defense", "soteria", "--strengths", "20", "--quiet",
                 "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err == ("dlg-jax: error: axes.defense: Soteria pruning ratio is the fraction of representation features pruned, "
                   ">= 0 and < 1, got 20.0 (for 20% use 0.2)\n")
    assert not (tmp_path / "x").exists()
