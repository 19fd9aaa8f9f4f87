"""One's own flax module as the victim: Model.from_flax, batch norm in train and eval mode, run_dlg."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlg_jax
from dlg_jax import (
    AttackConfig,
    DLGInputError,
    Model,
    RunOptions,
    run_attack,
    run_dlg,
    save_run,
    shared_gradients,
)

EPS = 1e-5


class TinyCNN(nn.Module):
    """conv 3x3 -> [batch norm] -> sigmoid -> dense: a user's module with a ``train`` flag."""

    batch_norm: bool = False

    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))(x)
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPS)(x)
        x = nn.sigmoid(x)
        return nn.Dense(10)(x.reshape(x.shape[0], -1))


def by_hand_loss(params, stats, x, labels, mode):
    """The victim's loss written out: conv, batch norm from the batch (train) or ``stats`` (eval)."""
    conv = params["Conv_0"]
    h = jax.lax.conv_general_dilated(x, conv["kernel"], (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     precision=jax.lax.Precision.HIGHEST) + conv["bias"]
    if mode is not None:
        if mode == "train":
            mean = h.mean(axis=(0, 1, 2))
            var = ((h - mean) ** 2).mean(axis=(0, 1, 2))
        else:
            mean, var = stats["BatchNorm_0"]["mean"], stats["BatchNorm_0"]["var"]
        norm = params["BatchNorm_0"]
        h = (h - mean) / jnp.sqrt(var + EPS) * norm["scale"] + norm["bias"]
    h = jax.nn.sigmoid(h).reshape(x.shape[0], -1)
    logits = jnp.dot(h, params["Dense_0"]["kernel"], precision=jax.lax.Precision.HIGHEST) + params["Dense_0"]["bias"]
    return -jnp.mean(jnp.sum(jax.nn.one_hot(labels, 10) * jax.nn.log_softmax(logits), axis=-1))


def trained_variables(module, x):
    """Variables with non-trivial running statistics: init, then one train-mode call updates them."""
    variables = module.init(jax.random.key(1), x, train=True)
    _, updates = module.apply(variables, x * 1.7 + 0.2, train=True, mutable=["batch_stats"])
    return {**variables, **updates}


@pytest.mark.parametrize("mode", [None, "train", "eval"])
def test_shared_gradient_of_a_flax_module_equals_the_by_hand_gradient(mode):
    x = jax.random.uniform(jax.random.key(2), (2, 3, 8, 8, 3))  # [T, B, H, W, C]
    labels = jnp.array([[1, 7, 3], [0, 2, 2]])
    module = TinyCNN(batch_norm=mode is not None)
    variables = trained_variables(module, x[0]) if mode else module.init(jax.random.key(1), x[0])
    model = Model.from_flax(module, variables, (8, 8, 3), train=mode != "eval")
    assert model.num_classes == 10 and model.mutable == (("batch_stats",) if mode else ())
    got = shared_gradients(model, variables["params"], x, labels)
    stats = variables.get("batch_stats")
    if mode == "eval":  # the stored statistics differ from any batch's: eval mode really reads them
        assert not np.allclose(stats["BatchNorm_0"]["mean"], 0.0, atol=1e-3)
    want = jax.vmap(jax.grad(by_hand_loss), in_axes=(None, None, 0, 0, None))(variables["params"], stats, x, labels, mode)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=2e-4, atol=2e-6)


def test_train_and_eval_mode_give_different_gradients_and_eval_ignores_the_batch_mix():
    """Eval mode normalises each image alone (fixed statistics), so an image's per-example logits do not
    depend on the rest of its batch; train mode mixes the batch."""
    x = jax.random.uniform(jax.random.key(3), (3, 8, 8, 3))
    module = TinyCNN(batch_norm=True)
    variables = trained_variables(module, x)
    train = Model.from_flax(module, variables, (8, 8, 3), train=True)
    evaluation = Model.from_flax(module, variables, (8, 8, 3), train=False)
    params = variables["params"]
    np.testing.assert_allclose(evaluation.apply(params, x)[:1], evaluation.apply(params, x[:1]), rtol=1e-5, atol=1e-6)
    assert not np.allclose(train.apply(params, x)[:1], train.apply(params, x[:1]), atol=1e-3)


def test_bad_modules_and_variables_get_one_line_errors():
    class Features(nn.Module):
        @nn.compact
        def __call__(self, x):
            return nn.Conv(4, (3, 3))(x)  # [B, H, W, 4]: not logits

    x = jnp.zeros((1, 8, 8, 3))
    with pytest.raises(DLGInputError, match=r"must return float logits \[B, K\].*\(2, 8, 8, 4\)"):
        Model.from_flax(Features(), Features().init(jax.random.key(0), x), (8, 8, 3))
    module = TinyCNN(batch_norm=True)
    variables = module.init(jax.random.key(0), x)
    with pytest.raises(DLGInputError, match="cannot be applied"):
        Model.from_flax(module, {"params": variables["params"]}, (8, 8, 3))  # batch_stats missing
    with pytest.raises(DLGInputError, match="flax.linen Module"):
        Model.from_flax(lambda x: x, variables, (8, 8, 3))
    model = Model.from_flax(module, variables, (8, 8, 3))
    wrong = jax.tree.map(lambda p: p, variables["params"])
    wrong["Dense_0"] = {"kernel": jnp.zeros((3, 10)), "bias": jnp.zeros(10)}
    with pytest.raises(DLGInputError, match=r"leaf 'Dense_0/kernel' has shape \(3, 10\)"):
        model.check_params(wrong)
    assert "Model" in dlg_jax.__all__


def test_run_dlg_attacks_a_users_module_and_writes_metrics(tmp_path):
    """The documented path: build the module, wrap it, attack with run_dlg, save the report."""
    module = TinyCNN(batch_norm=False)
    variables = module.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)))
    model = Model.from_flax(module, variables, (16, 16, 1), name="tiny")
    config = AttackConfig(restarts=2, iterations=1000, labels="analytic")
    run = run_dlg(model, "digits", image_size=16, params=variables["params"], indices=[0, 1], config=config,
                  run=RunOptions(chunk_size=2, block=200))
    summary = run.metrics.summary()
    assert summary["label_accuracy"] == 1.0
    assert summary["psnr_mean"] >= 30.0, summary
    payload = save_run(run, tmp_path / "out")
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["model"] == "tiny" and saved["summary"] == payload["summary"]
    assert (tmp_path / "out" / "reconstruction.png").stat().st_size > 0


def test_run_attack_on_a_batch_normalised_module_in_eval_mode_recovers_the_image():
    module = TinyCNN(batch_norm=True)
    x = jax.random.uniform(jax.random.key(4), (1, 1, 8, 8, 3))
    variables = trained_variables(module, x[0])
    model = Model.from_flax(module, variables, (8, 8, 3), train=False)
    grads = shared_gradients(model, variables["params"], x, jnp.array([[4]]))
    config = AttackConfig(restarts=2, iterations=600)
    result = run_attack(model, variables["params"], grads, 1, config, fixed_labels=np.array([[4]]),
                        run=RunOptions(chunk_size=2, block=200))
    psnr = dlg_jax.evaluate(result.best_images, x, result.best_labels, np.array([[4]])).summary()["psnr_mean"]
    assert psnr >= 30.0, psnr


def test_run_dlg_rejects_a_model_for_other_images():
    module = TinyCNN()
    model = Model.from_flax(module, module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3))), (8, 8, 3))
    with pytest.raises(DLGInputError, match=r"takes inputs \(8, 8, 3\); dataset 'digits' has images \(28, 28, 1\)"):
        run_dlg(model, "digits", config=AttackConfig(restarts=1, iterations=1))
