"""Threat models: K aggregated clients and FedAvg's local steps against independent computations."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlg_jax.cli import main
from dlg_jax.errors import DLGInputError
from dlg_jax.pipeline import run_dlg
from dlg_jax.victim.gradients import shared_gradient, shared_gradients
from dlg_jax.victim.threat_models import (
    ThreatModel,
    client_shares,
    co_client_indices,
    observed_gradients,
)


def _clients(colour, starts, batch):
    """``images [1, K, B, H, W, C]``, ``labels [1, K, B]``: client ``k`` holds images ``starts[k] ..``."""
    images, labels = colour.examples(np.add.outer(starts, np.arange(batch)).reshape(-1))
    return (images.reshape(1, len(starts), batch, *colour.input_shape),
            labels.reshape(1, len(starts), batch))


def _sgd_weights(model, params, images, labels, steps, lr):
    """``W_S`` by a plain Python loop of ``steps`` SGD steps on optax's cross-entropy of the batch."""
    def loss(weights):
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(model.apply(weights, images), labels))

    for _ in range(steps):
        params = jax.tree.map(lambda w, g: w - lr * g, params, jax.grad(loss)(params))
    return params


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-7):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


@pytest.mark.parametrize("how", ["sum", "mean"])
def test_aggregate_of_k_clients_is_the_sum_or_mean_of_their_gradients(colour, lenet, how):
    model, params = lenet
    images, labels = _clients(colour, [0, 10, 20], batch=2)
    seen = observed_gradients(model, params, images, labels, ThreatModel(clients=3, aggregate=how))
    each = [shared_gradient(model, params, images[0, k], labels[0, k]) for k in range(3)]
    total = jax.tree.map(lambda *g: sum(g) / (1 if how == "sum" else 3), *each)
    _assert_trees_close(jax.tree.map(lambda leaf: leaf[0], seen), total)
    if how == "mean":  # one step each, mean of per-client means = the gradient of the union batch
        union = shared_gradient(model, params, images[0].reshape(-1, *colour.input_shape), labels[0].reshape(-1))
        _assert_trees_close(jax.tree.map(lambda leaf: leaf[0], seen), union, rtol=1e-4, atol=1e-6)


def test_fedavg_share_equals_s_applied_sgd_steps(colour, lenet):
    """Each client's share is (W - W_S) / (S lr) of S SGD steps computed independently; K clients sum."""
    model, params = lenet
    images, labels = _clients(colour, [3, 30], batch=2)
    threat = ThreatModel(clients=2, aggregate="sum", local_steps=4, local_lr=0.5)
    shares = client_shares(model, params, images, labels, threat)
    expected = []
    for k in range(2):
        final = _sgd_weights(model, params, images[0, k], labels[0, k], steps=4, lr=0.5)
        expected.append(jax.tree.map(lambda w, w_s: (w - w_s) / (4 * 0.5), params, final))
        _assert_trees_close(jax.tree.map(lambda leaf: leaf[0, k], shares), expected[-1], rtol=1e-4, atol=1e-6)
    seen = observed_gradients(model, params, images, labels, threat)
    _assert_trees_close(jax.tree.map(lambda leaf: leaf[0], seen),
                        jax.tree.map(lambda a, b: a + b, *expected), rtol=1e-4, atol=1e-6)
    # The local steps moved the weights: the share is not the gradient at W.
    gradient = shared_gradient(model, params, images[0, 0], labels[0, 0])
    share = jax.tree.map(lambda leaf: leaf[0, 0], shares)
    gap = optax.tree.norm(jax.tree.map(jnp.subtract, share, gradient)) / optax.tree.norm(gradient)
    assert gap > 1e-2


def test_one_client_one_step_is_the_single_client_gradient(colour, lenet):
    """K = 1, S = 1 is plain FedSGD: the local learning rate must not enter. The two sides are different
    compiled programs, so they agree to float32 rounding (a few ulps), not bit for bit; a wrong scale or
    another client's share would be off by orders of magnitude more."""
    model, params = lenet
    images, labels = _clients(colour, [5, 6], batch=1)
    images, labels = images.reshape(2, 1, 1, *colour.input_shape), labels.reshape(2, 1, 1)
    seen = observed_gradients(model, params, images, labels, ThreatModel(local_lr=123.0))
    reference = shared_gradients(model, params, images[:, 0], labels[:, 0])
    _assert_trees_close(seen, reference, rtol=1e-5, atol=1e-9)


def test_other_clients_are_deterministic_disjoint_and_bounded():
    grid = np.array([[0, 1], [2, 3], [98, 99]])
    first = co_client_indices(100, grid, clients=8, seed=0)
    assert first.shape == (3, 7, 2)
    np.testing.assert_array_equal(first, co_client_indices(100, grid, clients=8, seed=0))
    assert not np.array_equal(first, co_client_indices(100, grid, clients=8, seed=1))
    for t in range(3):
        assert len(np.unique(first[t])) == 14 and not set(first[t].ravel()) & set(grid[t])
    assert co_client_indices(100, grid, clients=1, seed=0).shape == (3, 0, 2)
    with pytest.raises(DLGInputError, match="51 clients x batch size 2 need 102 distinct images; the dataset has 100"):
        co_client_indices(100, grid, clients=51, seed=0)


@pytest.mark.parametrize("options,message", [
    ({"clients": 0}, "number of clients K must be an integer >= 1, got 0"),
    ({"local_steps": 0}, "local steps S must be an integer >= 1, got 0"),
    ({"local_lr": -0.1}, "local learning rate must be a finite number > 0, got -0.1"),
    ({"aggregate": "max"}, "unknown aggregate 'max'; allowed: mean, sum"),
])
def test_bad_threat_model_raises_one_line(options, message):
    with pytest.raises(DLGInputError, match=message):
        ThreatModel(**options)


def _defended_by_loop(defense, model, params, images, labels, steps, lr, key):
    """The aggregate (mean) of ``K`` defended clients by plain Python loops over clients and local steps,
    with the documented keys: client ``k`` ``c = fold_in(fold_in(key, 0), k)``, step ``s`` ``fold_in(c, s)``,
    its send ``fold_in(c, S)``; per-example gradients one example at a time."""
    from dlg_jax.victim.defenses import with_key

    def defend(grads, key, weights, x):
        transform = optax.with_extra_args_support(defense.transform)
        extra = {"model": model, "inputs": x} if defense.needs_inputs else {}
        return transform.update(grads, with_key(transform.init(grads), key), weights, **extra)[0]

    shares = []
    for k in range(images.shape[1]):
        x, y, client = images[0, k], labels[0, k], jax.random.fold_in(jax.random.fold_in(key, 0), k)
        weights = params
        for s in range(steps):
            if defense.per_example:
                examples = [shared_gradient(model, weights, x[i:i + 1], y[i:i + 1]) for i in range(len(x))]
                g = defend(jax.tree.map(lambda *e: jnp.stack(e), *examples), jax.random.fold_in(client, s),
                           weights, x)
            else:
                g = shared_gradient(model, weights, x, y)
            weights = jax.tree.map(lambda w, d: w - lr * d, weights, g)
        share = jax.tree.map(lambda w, w_s: (w - w_s) / (steps * lr), params, weights)
        if not defense.per_example:
            share = defend(share, jax.random.fold_in(client, steps), params, x)
        shares.append(share)
    return jax.tree.map(lambda *leaves: sum(leaves) / len(leaves), *shares)


@pytest.mark.parametrize("name,strength", [("dp", 0.5), ("gaussian", 1e-4), ("prune", 0.5), ("precision", "int8"),
                                           ("soteria", 0.5)])
def test_every_defense_composes_with_k_clients_and_local_steps_as_a_plain_loop(colour, lenet, name, strength):
    from dlg_jax.victim.defenses import make_defense

    model, params = lenet
    images, labels = _clients(colour, [0, 10, 20, 30], 2)  # K = 4 clients of B = 2
    threat = ThreatModel(clients=4, local_steps=2, local_lr=0.5)
    defense = make_defense(name, strength)
    key = jax.random.key(7)
    seen = observed_gradients(model, params, images, labels, threat, defense=defense, key=key)
    want = _defended_by_loop(defense, model, params, images, labels, 2, 0.5, key)
    _assert_trees_close(jax.tree.map(lambda g: g[0], seen), want, rtol=2e-3, atol=2e-6)
    plain = observed_gradients(model, params, images, labels, threat)
    assert not all(np.allclose(a[0], b[0]) for a, b in zip(jax.tree.leaves(seen), jax.tree.leaves(plain)))


def test_run_dlg_with_a_defense_and_four_clients_of_two_local_steps(lenet):
    from dlg_jax.attack.engine import AttackConfig, RunOptions
    from dlg_jax.victim.defenses import make_defense

    run = run_dlg(defense=make_defense("dp", 0.1), threat=ThreatModel(clients=4, local_steps=2),
                  config=AttackConfig(restarts=1, iterations=20), run=RunOptions(chunk_size=1), batch_size=2,
                  indices=[0])
    assert run.client_indices.shape == (1, 3, 2) and np.isfinite(run.metrics.psnr).all()


@pytest.mark.parametrize("argv,message", [
    (["--clients", "0"], "number of clients K must be an integer >= 1, got 0"),
    (["--local-steps", "-2"], "local steps S must be an integer >= 1, got -2"),
    (["--local-steps", "3", "--local-lr", "0"], "argument --local-lr: expected a finite number > 0, got '0'"),
    (["--clients", "two"], "argument --clients: invalid int value: 'two'"),
    (["--clients", "101"], "101 clients x batch size 1 need 101 distinct images; the dataset has 100"),
])
def test_cli_bad_threat_model_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["attack", "--iterations", "2", "--restarts", "1", "--quiet", "--out", str(tmp_path / "out"),
                 *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dlg-jax: error:")


def test_cli_records_the_threat_model(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["attack", "--iterations", "3", "--restarts", "1", "--quiet", "--index", "4", "--clients", "3",
                 "--aggregate", "sum", "--local-steps", "2", "--local-lr", "0.05", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threat_model"] == {"clients": 3, "aggregate": "sum", "local_steps": 2, "local_lr": 0.05,
                                       "description": "sum of 3 clients, FedAvg 2 local steps at lr 0.05"}
    others = metrics["targets"][0]["other_clients_indices"]
    assert len(others) == 2 and 4 not in sum(others, [])
    assert "threat model: sum of 3 clients" in capsys.readouterr().out


def test_threat_study_reports_the_gradient_the_attacker_matched(tmp_path):
    out = tmp_path / "exp"
    assert main(["experiment", "threat", "--quick", "--quiet", "--targets", "1", "--iterations", "5", "--clients", "2",
                 "--out", str(out)]) == 0
    points = json.loads((out / "threat.json").read_text())["points"]
    mean2 = [p for p in points if p["clients"] == 2]
    assert [(p["attack"], p["local_steps"], p["threat_model"]) for p in mean2] == [("dlg", 1, "mean of 2 clients")]
    assert mean2[0]["gradient_gap"][0] > 0.1 and mean2[0]["gradient_cosine"][0] < 0.99  # not the target's gradient
    fedavg = [p for p in points if p["local_steps"] == 2]
    assert fedavg and fedavg[0]["gradient_gap"][0] > 0.0
    assert (out / "threat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| dlg | mean of 2 clients | 2 | 1 |" in (out / "threat.md").read_text()
