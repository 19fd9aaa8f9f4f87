"""A real federation: a Flower simulation whose server records the clients' replies, attacked here."""

import jax
import numpy as np
import pytest

pytest.importorskip("flwr")

from dlg_jax import AttackConfig, RunOptions, build_model, evaluate, get_dataset, run_attack  # noqa: E402
from dlg_jax.victim.federation import observed_gradient, run_federation  # noqa: E402
from dlg_jax.victim.gradients import shared_gradient  # noqa: E402


def test_flower_fedsgd_server_records_gradients_and_the_attack_recovers_a_client():
    source = get_dataset("digits")
    model = build_model("lenet", source.input_shape, source.num_classes)
    params = model.init(jax.random.key(0))
    data = [source.examples([3 * k]) for k in range(2)]  # 2 clients of one image each
    records = run_federation(model, params, data, protocol="fedsgd", rounds=2, lr=0.1, cpus=1)
    assert sorted((r.round, r.client) for r in records) == [(1, 0), (1, 1), (2, 0), (2, 1)]
    first = {r.client: r for r in records if r.round == 1}
    for client, (x, y) in enumerate(data):  # a reply is the client's gradient at the weights it was sent
        want = shared_gradient(model, params, x, y)
        for got, ref in zip(jax.tree.leaves(first[client].arrays), jax.tree.leaves(want)):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-7)
    second = next(r for r in records if r.round == 2)  # the server's step: W - lr * mean of the gradients
    stepped = jax.tree.map(lambda w, a, b: w - 0.1 * (a + b) / 2, params, first[0].arrays, first[1].arrays)
    for got, ref in zip(jax.tree.leaves(second.weights), jax.tree.leaves(stepped)):
        np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7)
    x, y = data[0]
    result = run_attack(model, first[0].weights, observed_gradient(first[0]), 1,
                        AttackConfig(restarts=2, iterations=1000), fixed_labels=y[None], run=RunOptions(chunk_size=2))
    assert evaluate(result.best_images, x[None], result.best_labels, y[None]).summary()["psnr_mean"] >= 30.0


def test_flower_fedavg_server_records_local_steps_weights_and_matches_the_threat_model():
    from dlg_jax.victim.threat_models import ThreatModel, observed_gradients

    source = get_dataset("digits")
    model = build_model("lenet", source.input_shape, source.num_classes)
    params = model.init(jax.random.key(1))
    data = [source.examples([2 * k, 2 * k + 1]) for k in range(2)]  # 2 clients of 2 images
    records = run_federation(model, params, data, protocol="fedavg", local_steps=2, lr=0.05, cpus=1)
    target = next(r for r in records if r.client == 0)
    seen = observed_gradient(target, "fedavg", local_steps=2, lr=0.05)
    images = np.stack([x for x, _ in data])[None]  # [1, K, B, ...]
    labels = np.stack([y for _, y in data])[None]
    alone = observed_gradients(model, params, images[:, :1], labels[:, :1], ThreatModel(local_steps=2, local_lr=0.05))
    for got, want in zip(jax.tree.leaves(seen), jax.tree.leaves(alone)):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-5 * float(np.abs(want).max()))
