"""Label strategies: iDLG's analytic rule, GradInversion's distinct-label rule, the label-count rule,
finding the final dense layer, and their bad inputs."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.attack.labels import LABEL_STRATEGIES, final_dense_path, recover_labels
from dlg_jax.data.datasets import get_dataset
from dlg_jax.errors import DLGInputError
from dlg_jax.models import Model, build_model
from dlg_jax.pipeline import run_dlg
from dlg_jax.victim.gradients import shared_gradients


def _victim(dataset: str, indices, model_name: str = "lenet", seed: int = 0):
    """LeNet (or ``model_name``) on ``dataset``; ``indices [T, B]``; returns model, params, labels, grads."""
    source = get_dataset(dataset)
    model = build_model(model_name, source.input_shape, source.num_classes)
    params = model.init(jax.random.key(seed))
    indices = np.asarray(indices)
    images, labels = source.examples(indices.reshape(-1))
    images = images.reshape(*indices.shape, *source.input_shape)
    labels = labels.reshape(indices.shape)
    return model, params, labels, shared_gradients(model, params, images, labels)


@pytest.mark.parametrize("dataset", ["digits", "colour", "faces"])
def test_analytic_labels_are_exact_on_single_images(dataset):
    model, params, labels, grads = _victim(dataset, np.arange(24)[:, None])
    recovered = recover_labels("analytic", model, params, grads, 1)
    assert recovered.shape == (24, 1)
    np.testing.assert_array_equal(recovered, labels)
    np.testing.assert_array_equal(recover_labels("auto", model, params, grads, 1), labels)


def test_distinct_rule_recovers_a_batch_of_distinct_labels():
    # colour index i has label i % 10: the batches 0-3 and 4-7 hold four different labels each
    model, params, labels, grads = _victim("colour", [[0, 1, 2, 3], [4, 5, 6, 7]])
    recovered = recover_labels("distinct", model, params, grads, 4)
    np.testing.assert_array_equal(recovered, np.sort(labels, axis=1))


@pytest.mark.parametrize("dataset,indices", [
    ("colour", [[0, 10, 20, 1], [2, 12, 3, 13]]),           # labels {0, 0, 0, 1} and {2, 2, 3, 3}
    ("faces", [[0, 2, 4, 6, 8, 10, 1, 3]]),                 # six faces, two non-faces
    ("digits", [[0, 10, 20, 30, 1, 2, 3, 4]]),
])
def test_count_rule_recovers_repeated_labels(dataset, indices):
    model, params, labels, grads = _victim(dataset, indices)
    assert any(len(set(row)) < len(row) for row in labels.tolist())  # the batches do repeat labels
    batch = len(indices[0])
    np.testing.assert_array_equal(recover_labels("count", model, params, grads, batch), np.sort(labels, axis=1))
    np.testing.assert_array_equal(recover_labels("auto", model, params, grads, batch), np.sort(labels, axis=1))


def test_joint_recovers_nothing():
    model, params, _, grads = _victim("digits", [[0]])
    assert recover_labels("joint", model, params, grads, 1) is None
    assert set(LABEL_STRATEGIES) == {"joint", "analytic", "distinct", "count", "auto"}


class _Head(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3)(x)


class _NestedHead(nn.Module):
    """Dense(5) -> sigmoid -> a submodule holding the final Dense(3): the final layer is not top-level."""

    @nn.compact
    def __call__(self, x):
        x = nn.sigmoid(nn.Dense(5)(x.reshape(x.shape[0], -1)))
        return _Head()(x)


class _ScaledLogits(nn.Module):
    """The logits are a Dense output times 2: no dense layer produces them."""

    @nn.compact
    def __call__(self, x):
        return 2.0 * nn.Dense(3)(x.reshape(x.shape[0], -1))


class _NoBias(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(3, use_bias=False)(nn.sigmoid(nn.Dense(4)(x.reshape(x.shape[0], -1))))


def _custom(module, batch=1):
    model = Model("custom", module, (4, 4, 1), 3)
    params = model.init(jax.random.key(1))
    images = jax.random.uniform(jax.random.key(2), (2, batch, 4, 4, 1))
    labels = jnp.arange(2 * batch).reshape(2, batch) % 3
    return model, params, np.asarray(labels), shared_gradients(model, params, images, labels)


def test_final_dense_layer_is_found_by_what_produces_the_logits():
    source = get_dataset("digits")
    mlp = build_model("mlp", source.input_shape, source.num_classes)
    assert final_dense_path(mlp, mlp.init(jax.random.key(0))) == ("Dense_2",)
    model, params, labels, grads = _custom(_NestedHead())
    assert final_dense_path(model, params) == ("_Head_0", "Dense_0")
    np.testing.assert_array_equal(recover_labels("analytic", model, params, grads, 1), labels)


@pytest.mark.parametrize("strategy,batch,dataset,message", [
    ("analytic", 2, "colour", "label strategy 'analytic' (iDLG) works for one image per gradient, got batch size 2"),
    ("distinct", 3, "faces", "label strategy 'distinct' needs batch size <= number of classes (2), got 3"),
    ("magic", 1, "colour", "unknown label strategy 'magic'"),
])
def test_bad_strategy_input_is_one_clear_line(strategy, batch, dataset, message):
    model, params, _, grads = _victim(dataset, [list(range(batch))])
    with pytest.raises(DLGInputError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as error:
        recover_labels(strategy, model, params, grads, batch)
    assert "\n" not in str(error.value)


def test_models_without_a_usable_final_layer_are_refused():
    model, params, _, grads = _custom(_ScaledLogits())
    with pytest.raises(DLGInputError, match="has no final dense layer"):
        recover_labels("analytic", model, params, grads, 1)
    model, params, _, grads = _custom(_NoBias())
    assert recover_labels("analytic", model, params, grads, 1).shape == (2, 1)
    with pytest.raises(DLGInputError, match="'count' needs a bias in the final dense layer"):
        recover_labels("count", model, params, grads, 1)


def test_pipeline_refuses_analytic_labels_for_batches():
    from dlg_jax.attack.engine import AttackConfig

    with pytest.raises(DLGInputError, match="'analytic' .* got batch size 2"):
        run_dlg("lenet", "digits", indices=[3], batch_size=2, config=AttackConfig(labels="analytic"))
