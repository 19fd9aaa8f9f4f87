"""Defenses: each transform against its formula, composition, keys, bad input; DLG's defense claims on
LeNet; the ``dlg-jax defend`` command."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import recovery_chunk

from dlg_jax.attack.engine import AttackConfig, RunOptions, run_attack
from dlg_jax.cli import main
from dlg_jax.errors import DLGInputError
from dlg_jax.experiments.store import Store
from dlg_jax.metrics import evaluate
from dlg_jax.victim.defenses import (
    apply_defense,
    compose,
    defended_gradients,
    make_defense,
    per_example_gradients,
    with_key,
)
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.victim.training import TrainConfig, split_indices, train


def _tree(key, shapes=((400, 250), (7,), (3, 5, 5))):
    """A gradient-like tree of distinct N(0, 1) values with a leading T = 1 axis."""
    keys = jax.random.split(jax.random.key(key), len(shapes))
    return {f"leaf{i}": jax.random.normal(k, (1, *s)) for i, (k, s) in enumerate(zip(keys, shapes))}


def _defend(name, strength, grads, key=0, **options):
    return apply_defense(make_defense(name, strength, **options), grads, jax.random.key(key))


@pytest.mark.parametrize("name,excess_kurtosis", [("gaussian", 0.0), ("laplacian", 3.0)])
@pytest.mark.parametrize("variance", [1e-4, 1e-1])
def test_noise_has_the_stated_variance_and_shape(name, excess_kurtosis, variance):
    grads = _tree(0)
    noise = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(_defend(name, variance, grads)),
                                                            jax.tree.leaves(grads))]).astype(np.float64)
    assert noise.size > 100_000
    assert abs(noise.mean()) < 4 * np.sqrt(variance / noise.size)
    assert noise.var() == pytest.approx(variance, rel=0.03)
    kurtosis = np.mean((noise - noise.mean()) ** 4) / noise.var() ** 2 - 3.0
    assert kurtosis == pytest.approx(excess_kurtosis, abs=0.15)


def test_float_formats_are_exact_casts_in_the_input_dtype():
    grads = _tree(1)
    for precision, dtype in (("float16", jnp.float16), ("bfloat16", jnp.bfloat16)):
        out = _defend("precision", precision, grads)
        for o, g in zip(jax.tree.leaves(out), jax.tree.leaves(grads)):
            assert o.dtype == g.dtype
            np.testing.assert_array_equal(o, g.astype(dtype).astype(g.dtype))
        assert not np.array_equal(out["leaf0"], grads["leaf0"])


@pytest.mark.parametrize("bits", [8, 4])
def test_integer_quantisation_error_is_within_half_a_step(bits):
    grads = _tree(2)
    grads["leaf2"] = jnp.zeros_like(grads["leaf2"])  # an all-zero tensor stays zero
    out = _defend("precision", f"int{bits}", grads)
    levels = 2 ** (bits - 1) - 1
    for name in grads:
        g, o = np.asarray(grads[name][0]), np.asarray(out[name][0])
        step = np.abs(g).max() / levels
        assert np.all(np.abs(o - g) <= step / 2 * (1 + 1e-5) + 1e-12)
        assert len(np.unique(o)) <= 2 * levels + 1
    np.testing.assert_array_equal(out["leaf2"], 0.0)


def test_pruning_keeps_exactly_the_top_k_per_tensor():
    grads = _tree(3)
    out = _defend("prune", 0.3, grads)
    for name in grads:
        g, o = np.ravel(grads[name]), np.ravel(out[name])
        kept = o != 0
        assert kept.sum() == g.size - int(np.floor(0.3 * g.size))
        np.testing.assert_array_equal(o[kept], g[kept])
        assert np.abs(g[kept]).min() >= np.abs(g[~kept]).max()


def test_pruning_global_ranks_all_leaves_together():
    grads = _tree(4)
    grads["leaf1"] = grads["leaf1"] * 100.0  # a small leaf of large values survives whole
    out = _defend("prune", 0.5, grads, scope="global")
    g = np.concatenate([np.ravel(grads[n]) for n in grads])
    o = np.concatenate([np.ravel(out[n]) for n in grads])
    kept = o != 0
    assert kept.sum() == g.size - int(np.floor(0.5 * g.size))
    assert np.abs(g[kept]).min() >= np.abs(g[~kept]).max()
    assert np.all(out["leaf1"] != 0)
    np.testing.assert_array_equal(_defend("prune", 0.0, grads)["leaf0"], grads["leaf0"])


def test_dp_clips_each_example_and_adds_noise_of_sigma_c_over_b():
    per_example = {"w": jax.random.normal(jax.random.key(5), (1, 4, 3000)) * jnp.array([0.1, 1, 10, 100])[:, None],
                   "b": jnp.ones((1, 4, 3))}
    clip = 2.0
    norms = np.sqrt(np.sum(np.asarray(per_example["w"][0]) ** 2, 1) + 3.0)
    factors = np.minimum(1.0, clip / norms)
    expected = np.mean(np.asarray(per_example["w"][0]) * factors[:, None], axis=0)
    clean = make_defense("dp", 0.0, clip=clip)
    out = jax.jit(jax.vmap(lambda g: clean.transform.update(g, clean.transform.init(g))[0]))(per_example)
    np.testing.assert_allclose(out["w"][0], expected, rtol=1e-5, atol=1e-7)
    assert np.all(factors * norms <= clip * (1 + 1e-6))
    noisy = make_defense("dp", 0.5, clip=clip)
    keyed = lambda g: noisy.transform.update(g, with_key(noisy.transform.init(g), jax.random.key(1)))[0]  # noqa: E731
    out = jax.jit(jax.vmap(keyed))(per_example)
    assert np.var(np.asarray(out["w"][0]) - expected) == pytest.approx((0.5 * clip / 4) ** 2, rel=0.1)


def test_per_example_dp_on_the_victim(colour, lenet):
    model, params = lenet
    images, labels = colour.examples([0, 1, 2, 3])
    images, labels = images.reshape(2, 2, *images.shape[1:]), labels.reshape(2, 2)
    per = per_example_gradients(model, params, images, labels)
    for p, m in zip(jax.tree.leaves(per), jax.tree.leaves(shared_gradients(model, params, images, labels))):
        assert p.shape[:2] == (2, 2)
        np.testing.assert_allclose(p.mean(axis=1), m, rtol=1e-4, atol=1e-6)
    norms = np.sqrt(sum(np.sum(np.asarray(p, np.float64) ** 2, axis=tuple(range(2, p.ndim)))
                        for p in jax.tree.leaves(per)))  # [T, B]
    clip = float(np.median(norms))  # some examples clipped, some not
    out = defended_gradients(make_defense("dp", 0.0, clip=clip), model, params, images, labels, 0)
    factors = np.minimum(1.0, clip / norms)
    for o, p in zip(jax.tree.leaves(out), jax.tree.leaves(per)):
        expected = np.mean(np.asarray(p) * factors.reshape(2, 2, *([1] * (p.ndim - 2))), axis=1)
        np.testing.assert_allclose(o, expected, rtol=1e-4, atol=1e-7)


def test_composition_is_sequential_application():
    grads = _tree(6)
    chained = compose(make_defense("prune", 0.5), make_defense("precision", "float16"))
    assert chained.name == "prune+precision"
    step_by_step = _defend("precision", "float16", _defend("prune", 0.5, grads))
    for a, b in zip(jax.tree.leaves(apply_defense(chained, grads, 0)), jax.tree.leaves(step_by_step)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DLGInputError, match="must come first"):
        compose(make_defense("gaussian", 1e-2), make_defense("dp", 1.0))


def test_keys_are_independent_per_target_and_reproducible():
    zeros = {"w": jnp.zeros((3, 20_000))}
    defense = make_defense("gaussian", 1.0)
    noise = np.asarray(defense(zeros, jax.random.key(0))["w"])
    correlation = np.corrcoef(noise)
    assert np.all(np.abs(correlation[~np.eye(3, dtype=bool)]) < 0.05)
    np.testing.assert_array_equal(noise, defense(zeros, jax.random.key(0))["w"])
    assert not np.allclose(noise, defense(zeros, jax.random.key(1))["w"])
    two_noises = compose(make_defense("gaussian", 1.0), make_defense("laplacian", 2.0))
    state = with_key(two_noises.transform.init(None), jax.random.key(0))
    first, second = (s.rng_key for s in state)
    assert not np.array_equal(jax.random.key_data(first), jax.random.key_data(second))


def test_the_same_transform_chains_into_an_optimiser():
    optimiser = optax.chain(make_defense("prune", 0.5).transform, optax.sgd(1.0))
    params = {"w": jnp.arange(1.0, 5.0)}
    updates, _ = optimiser.update({"w": jnp.array([4.0, -1.0, 3.0, 0.5])}, optimiser.init(params), params)
    np.testing.assert_array_equal(updates["w"], [-4.0, 0.0, -3.0, 0.0])


@pytest.mark.parametrize("name,strength,options,message", [
    ("noise", 1e-2, {}, "unknown defense 'noise'; allowed: none, gaussian"),
    ("gaussian", -1e-4, {}, "noise variance must be a finite number >= 0, got -0.0001"),
    ("laplacian", float("nan"), {}, "noise variance must be a finite number >= 0"),
    ("prune", 1.0, {}, "pruning ratio must be a finite number >= 0 and < 1, got 1.0"),
    ("prune", 0.3, {"scope": "layer"}, "unknown pruning scope 'layer'; allowed: tensor, global"),
    ("precision", "float12", {}, "unknown precision 'float12'; allowed: float16, bfloat16"),
    ("precision", "float32", {}, "not narrower than float32"),
    ("precision", "int1", {}, "needs 2 to 16 bits"),
    ("precision", "float8_e8m0fnu", {}, "cannot represent 0 and +-1 on the cpu backend"),
    ("dp", 1.0, {"clip": 0.0}, "DP clipping norm must be a finite number > 0, got 0.0"),
    ("dp", 1.0, {"scope": "tensor"}, "unknown option 'scope' for defense 'dp'; allowed: clip"),
    ("gaussian", None, {}, "defense 'gaussian' needs a strength"),
])
def test_bad_arguments_raise_one_clear_line(name, strength, options, message):
    with pytest.raises(DLGInputError, match=None) as error:
        make_defense(name, strength, **options)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_train_split_is_deterministic_and_training_runs_with_a_defense(colour):
    train_ids, test_ids = split_indices(colour.size, 0.2)
    assert len(test_ids) == 20 and set(train_ids).isdisjoint(test_ids)
    assert sorted(colour.examples(test_ids)[1]) == sorted(list(range(10)) * 2)  # every class in the test set
    result = train(TrainConfig(steps=3, runs=2, batch_size=4), make_defense("dp", 0.1))
    assert result.test_accuracy.shape == (2,) and result.loss.shape == (2, 3)
    assert np.all(np.isfinite(result.loss))


@pytest.mark.recovery
def test_dlg_paper_defense_claims_on_lenet(colour, lenet):
    """DLG section 5 on one 32x32 image, all settings in one compiled batch (T = 4 defended gradients).

    Measured here (2 restarts, 1500 iterations): float16 ~40 dB (as the undefended attack), pruning 30%
    ~11 dB, noise variance 1e-1 ~5 dB, noise variance 1e-4 ~12 dB (image faint but recognisable). The paper
    reports that variance 1e-4 does *not* stop DLG; by PSNR it does here, so we only assert that it leaks
    far more than 1e-1, not the paper's threshold.
    """
    model, params = lenet
    images, labels = colour.examples([0])
    images, labels = images[None], labels[None]
    grads = shared_gradients(model, params, images, labels)
    settings = [("precision", "float16"), ("prune", 0.3), ("gaussian", 1e-1), ("gaussian", 1e-4)]
    defended = [make_defense(*s)(grads, jax.random.key(7)) for s in settings]
    stacked = jax.tree.map(lambda *leaves: jnp.concatenate(leaves), *defended)
    config = AttackConfig(restarts=2, iterations=1500)
    result = run_attack(model, params, stacked, 1, config, run=RunOptions(chunk_size=recovery_chunk(8), snapshots=0))
    psnr = dict(zip(settings, evaluate(result.best_images, np.repeat(images, 4, 0), result.best_labels,
                                       np.repeat(labels, 4, 0)).psnr))
    assert psnr[("precision", "float16")] >= 30.0
    assert psnr[("prune", 0.3)] < 20.0
    assert psnr[("gaussian", 1e-1)] < 20.0
    assert psnr[("gaussian", 1e-4)] > psnr[("gaussian", 1e-1)] + 3.0


TINY = ["--iterations", "20", "--restarts", "1", "--targets", "2", "--quiet"]


def test_cli_sweep_writes_rows_plot_and_resumes(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["defend", "sweep", *TINY, "--defense", "gaussian", "prune", "--strengths", "0.5", "--out", str(out)]
    assert main(argv) == 0
    rows = Store(out / "store").rows()  # one row per (point, target)
    assert sorted((r["defense"], r["defense_strength"], r["target"]) for r in rows) == [
        ("gaussian", "0.5", 0), ("gaussian", "0.5", 1), ("none", "-", 0), ("none", "-", 1), ("prune", "0.5", 0),
        ("prune", "0.5", 1)]
    assert all(r["iterations_budget"] == 20 and len(r["restart_losses"]) == 1 for r in rows)
    assert (out / "defense_sweep.png").read_bytes()[:4] == b"\x89PNG"
    assert "| dlg | prune | 0.5 |" in capsys.readouterr().out
    assert main(argv) == 0  # everything reused: nothing rerun, nothing added
    assert capsys.readouterr().err.count("in the store") == 3
    assert Store(out / "store").rows() == rows
    assert not [name for name in os.listdir(out / "store" / "parts") if name.startswith(".tmp")]


def test_cli_tradeoff_trains_with_each_defense(tmp_path, capsys):
    out = tmp_path / "tradeoff"
    assert main(["defend", "tradeoff", *TINY, "--defense", "precision", "dp", "--strengths", "int4",
                 "--train-steps", "5", "--train-runs", "1", "--out", str(out)]) == 2  # int4 is no DP multiplier
    assert "DP noise multiplier must be a finite number" in capsys.readouterr().err
    assert main(["defend", "tradeoff", *TINY, "--defense", "precision", "--strengths", "int4",
                 "--train-steps", "5", "--train-runs", "1", "--out", str(out)]) == 0
    training = Store(out / "training-store").rows()
    assert sorted(r["defense"] for r in training) == ["none", "precision"]
    assert {"tradeoff.png", "defense_sweep.png", "summary.md", "store", "training-store"} <= set(os.listdir(out))
    table = capsys.readouterr().out
    assert "| dlg | precision | int4 |" in table and "test accuracy" in table


@pytest.mark.parametrize("argv,message", [
    (["--defense", "noise"], "unknown defense 'noise'"),
    (["--defense", "gaussian", "--strengths=-1e-4"], "noise variance must be a finite number >= 0, got -0.0001"),
    (["--defense", "prune", "--strengths", "1.0"], "pruning ratio must be a finite number >= 0 and < 1"),
    (["--defense", "precision", "--strengths", "float12"], "unknown precision 'float12'"),
    (["--attacks", "breaching"], "unknown attack 'breaching'"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert main(["defend", "sweep", *TINY, "--out", str(tmp_path / "x"), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("dlg-jax: error:")
    assert not (tmp_path / "x").exists()
