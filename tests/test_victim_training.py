"""Trained victims and checkpoints: train_victim, msgpack/orbax/PyTorch checkpoints, the CLI's options."""

import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax import DLGInputError, Model, build_model, get_dataset
from dlg_jax.cli import main
from dlg_jax.models.checkpoints import load_checkpoint, save_checkpoint
from dlg_jax.victim.training import VictimTraining, train_victim

SMALL = ["--iterations", "20", "--restarts", "1", "--quiet", "--dataset", "digits"]


@pytest.fixture(scope="module")
def digits_lenet():
    source = get_dataset("digits")
    model = build_model("lenet", source.input_shape, source.num_classes)
    images, labels = source.examples(np.arange(20, source.size))
    return model, model.init(jax.random.key(0)), images, labels


def _tree_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_training_lowers_the_loss_and_is_deterministic(digits_lenet):
    model, params, images, labels = digits_lenet
    training = VictimTraining(steps=150, optimiser="adam", learning_rate=3e-3, batch_size=32, seed=1)
    calls = []
    first = train_victim(model, params, images, labels, training, lambda *a: calls.append(a))
    again = train_victim(model, params, images, labels, training)
    assert first.loss.shape == (150,) and calls[-1][:2] == (150, 150)
    assert first.loss[-20:].mean() < 0.5 * first.loss[:5].mean()  # typically 2.4 -> 0.1
    assert first.train_accuracy >= 0.8
    assert _tree_equal(first.params, again.params)
    other = train_victim(model, params, images, labels, VictimTraining(steps=150, optimiser="adam",
                                                                       learning_rate=3e-3, seed=2))
    assert not _tree_equal(first.params, other.params)
    untrained = train_victim(model, params, images, labels, VictimTraining(steps=0))
    assert _tree_equal(untrained.params, params) and untrained.loss.shape == (0,)
    assert VictimTraining(epochs=2, batch_size=32).total_steps(len(images)) == 2 * (len(images) // 32)


@pytest.mark.parametrize("kwargs,message", [
    ({"steps": -1}, "training steps must be an integer >= 0, got -1"),
    ({"steps": 1, "epochs": 1}, "either training steps or training epochs"),
    ({"steps": 1, "optimiser": "lbfgs"}, "unknown training optimiser 'lbfgs'"),
    ({"steps": 1, "learning_rate": 0.0}, "learning rate must be a finite number > 0"),
])
def test_bad_training_settings(kwargs, message):
    with pytest.raises(DLGInputError, match=message):
        VictimTraining(**kwargs)


class NormedCNN(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
        return nn.Dense(10)(nn.sigmoid(x).reshape(x.shape[0], -1))


def test_training_a_batch_normalised_module_updates_its_running_statistics(tmp_path):
    module = NormedCNN()
    variables = module.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    model = Model.from_flax(module, variables, (8, 8, 1), train=True)
    images = np.asarray(jax.random.uniform(jax.random.key(1), (40, 8, 8, 1))) * 0.5 + 0.3
    labels = np.arange(40) % 10
    trained = train_victim(model, variables["params"], images, labels, VictimTraining(steps=30, batch_size=8))
    mean = trained.model.fixed.collections["batch_stats"]["BatchNorm_0"]["mean"]
    assert not np.allclose(mean, 0.0, atol=1e-3)  # flax BatchNorm starts its running mean at 0
    path = tmp_path / "bn.msgpack"
    save_checkpoint(path, trained.model, trained.params)
    loaded_model, loaded = load_checkpoint(path, Model.from_flax(module, variables, (8, 8, 1), train=False))
    assert _tree_equal(loaded, trained.params)
    np.testing.assert_array_equal(loaded_model.fixed.collections["batch_stats"]["BatchNorm_0"]["mean"], mean)


def test_checkpoints_round_trip_and_bad_ones_get_one_line(tmp_path, digits_lenet):
    model, params, _, _ = digits_lenet
    save_checkpoint(tmp_path / "w.msgpack", model, params)
    _, loaded = load_checkpoint(tmp_path / "w.msgpack", model)
    assert _tree_equal(loaded, params)
    import orbax.checkpoint as ocp

    ocp.PyTreeCheckpointer().save((tmp_path / "orbax").absolute(), {"params": params})
    _, restored = load_checkpoint(tmp_path / "orbax", model)
    assert _tree_equal(restored, params)
    wider = build_model("lenet", (28, 28, 1), 100)
    with pytest.raises(DLGInputError, match=r"leaf 'Dense_0/bias' has shape \(10,\); model 'lenet' expects \(100,\)"):
        load_checkpoint(tmp_path / "w.msgpack", wider)
    (tmp_path / "junk.msgpack").write_bytes(b"\x00not msgpack")
    with pytest.raises(DLGInputError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "junk.msgpack", model)
    with pytest.raises(DLGInputError, match="does not exist"):
        load_checkpoint(tmp_path / "none.msgpack", model)
    with pytest.raises(DLGInputError, match="unknown checkpoint format"):
        load_checkpoint(__file__, model)


@pytest.mark.parametrize("name", ["lenet", "resnet20"])
def test_pytorch_state_dict_converts_both_ways(tmp_path, name):
    torch = pytest.importorskip("torch")
    from dlg_jax.models.torch_twin import (
        empty_twin,
        params_from_state_dict,
        state_dict_from_params,
    )

    model = build_model(name, (32, 32, 3), 10)
    params = model.init(jax.random.key(0))
    state = state_dict_from_params(model, params)  # flax -> torch -> flax is the identity
    assert _tree_equal(params_from_state_dict(model, state), params)
    torch.manual_seed(0)
    net = empty_twin(model).eval()  # torch -> flax: PyTorch's own initial weights give the same logits
    torch.save(net.state_dict(), tmp_path / "net.pt")
    _, loaded = load_checkpoint(tmp_path / "net.pt", model)
    x = np.asarray(jax.random.uniform(jax.random.key(1), (2, 32, 32, 3)))
    with torch.no_grad():
        want = net(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    np.testing.assert_allclose(model.apply(loaded, jnp.asarray(x)), want, rtol=1e-4, atol=1e-5)
    bad = dict(net.state_dict())
    bad.pop(next(iter(bad)))
    with pytest.raises(DLGInputError, match="state_dict lacks"):
        params_from_state_dict(model, bad)


def test_cli_trains_saves_and_reloads_the_victim(tmp_path, capsys):
    out = tmp_path / "trained"
    assert main(["attack", *SMALL, "--train-steps", "60", "--train-optimizer", "adam", "--train-lr", "0.003",
                 "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    training = metrics["victim"]["training"]
    assert training["steps_run"] == 60 and training["checkpoint"] == "victim.msgpack"
    reloaded = tmp_path / "reloaded"
    assert main(["attack", *SMALL, "--checkpoint", str(out / "victim.msgpack"), "--out", str(reloaded)]) == 0
    again = json.loads((reloaded / "metrics.json").read_text())
    # the same weights and seed: the same attack, to the bit
    assert again["targets"][0]["restart_losses"] == metrics["targets"][0]["restart_losses"]


@pytest.mark.parametrize("argv,message", [
    (["--train-steps", "-1"], "expected an integer >= 0, got '-1'"),
    (["--checkpoint", "missing.msgpack"], "checkpoint 'missing.msgpack' does not exist"),
    (["--train-steps", "1", "--train-epochs", "1"], "not allowed with argument"),
])
def test_bad_victim_options_are_one_line_and_exit_2(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text("keep me")
    assert main(["attack", *SMALL, "--out", str(out), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dlg-jax: error:")
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json"]
    assert (out / "metrics.json").read_text() == "keep me"
