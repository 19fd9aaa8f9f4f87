import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlg_jax.errors import DLGInputError
from dlg_jax.models import build_model, dlg_resnet
from dlg_jax.models.layers import Conv2D


@pytest.mark.parametrize("strides,padding", [((2, 2), ((2, 2), (2, 2))), ((1, 1), ((2, 2), (2, 2))),
                                             ((1, 1), ((1, 1), (1, 1))), ((2, 2), ((0, 1), (1, 0)))])
def test_patch_convolution_equals_lax_conv(strides, padding):
    x = jax.random.normal(jax.random.key(0), (3, 13, 11, 4))
    fast = Conv2D(6, (5, 5) if padding[0][0] == 2 else (3, 3), strides, padding, implementation="patches")
    reference = fast.clone(implementation="lax")
    params = fast.init(jax.random.key(1), x)
    np.testing.assert_allclose(fast.apply(params, x), reference.apply(params, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 32, 3), (28, 28, 1), (64, 64, 3)])
def test_lenet_shapes_and_dlg_init(shape):
    model = build_model("lenet", shape, 100)
    params = model.init(jax.random.key(0))
    flat = shape[0] // 4 * (shape[1] // 4) * 12
    assert params["Dense_0"]["kernel"].shape == (flat, 100)
    assert [params[f"Conv2D_{i}"]["kernel"].shape for i in range(3)] == [(5, 5, shape[2], 12), (5, 5, 12, 12),
                                                                          (5, 5, 12, 12)]
    for leaf in jax.tree.leaves(params):  # DLG: every weight and bias ~ U(-0.5, 0.5)
        assert float(leaf.min()) >= -0.5 and float(leaf.max()) <= 0.5
        if leaf.size > 100:
            assert abs(float(leaf.mean())) < 0.1 and 0.25 < float(leaf.std()) * np.sqrt(12) < 1.1
    assert model.apply(params, jnp.zeros((2, *shape))).shape == (2, 100)


@pytest.mark.parametrize("depth,count", [(20, 0.27e6), (32, 0.46e6)])
def test_resnet_depth_and_parameter_count(depth, count):
    model = build_model(f"resnet{depth}", (32, 32, 3), 10, activation="sigmoid")
    params = model.init(jax.random.key(0))
    total = sum(leaf.size for leaf in jax.tree.leaves(params))
    assert abs(total - count) / count < 0.05  # He et al. 2016, table 6
    assert model.apply(params, jnp.zeros((2, 32, 32, 3))).shape == (2, 10)


def test_fast_and_reference_models_agree():
    x = jax.random.uniform(jax.random.key(3), (2, 32, 32, 3))
    for name in ("lenet", "resnet20"):
        fast = build_model(name, (32, 32, 3), 10)
        reference = build_model(name, (32, 32, 3), 10, conv_implementation="lax")
        params = fast.init(jax.random.key(0))
        np.testing.assert_allclose(fast.apply(params, x), reference.apply(params, x), rtol=1e-4, atol=1e-5)


def test_mlp_and_group_norm_resnet_run():
    mlp = build_model("mlp", (28, 28, 1), 10)
    assert mlp.apply(mlp.init(jax.random.key(0)), jnp.ones((3, 28, 28, 1))).shape == (3, 10)
    resnet = build_model("resnet20", (32, 32, 3), 10, norm="group")
    assert resnet.apply(resnet.init(jax.random.key(0)), jnp.ones((1, 32, 32, 3))).shape == (1, 10)


@pytest.mark.parametrize("kwargs,message", [
    (dict(name="vgg"), "unknown model 'vgg'"),
    (dict(name="resnet20", activation="tanh"), "unknown activation 'tanh'"),
    (dict(name="lenet", activation="relu"), "lenet's activation is sigmoid"),
    (dict(name="lenet", num_classes=1), "num_classes must be >= 2"),
])
def test_bad_model_arguments(kwargs, message):
    options = dict(name="lenet", input_shape=(32, 32, 3), num_classes=10) | kwargs
    with pytest.raises(DLGInputError, match=message):
        build_model(**options)


def test_batch_statistics_norm_equals_torch_training_mode_batch_norm():
    torch = pytest.importorskip("torch")
    from dlg_jax.models.batchnorm import BatchStatNorm

    x = jax.random.normal(jax.random.key(0), (3, 5, 4, 6)) * 2.0 + 0.7
    layer = BatchStatNorm(scale_init=nn.initializers.uniform(1.0), bias_init=nn.initializers.uniform(1.0))
    params = layer.init(jax.random.key(1), x)["params"]
    reference = torch.nn.functional.batch_norm(
        torch.tensor(np.asarray(x)).permute(0, 3, 1, 2), None, None, torch.tensor(np.asarray(params["scale"])),
        torch.tensor(np.asarray(params["bias"])), training=True, eps=1e-5).permute(0, 2, 3, 1)
    np.testing.assert_allclose(layer.apply({"params": params}, x), reference.numpy(), rtol=1e-5, atol=1e-5)


def test_dlg_resnet_is_stride_free_batch_normalised_and_dlg_initialised():
    model = build_model("resnet20", (12, 12, 3), 10, **dlg_resnet())
    params = model.init(jax.random.key(0))
    leaves = jax.tree.leaves(params)
    assert all(float(leaf.min()) >= -0.5 and float(leaf.max()) <= 0.5 for leaf in leaves)
    assert "BatchStatNorm_0" in params["_BasicBlock_0"] and "bias" not in params["_BasicBlock_0"]["Conv2D_0"]
    x = jax.random.uniform(jax.random.key(1), (2, 12, 12, 3))

    def blocks(images):
        captured = model.module.apply({"params": params}, images, capture_intermediates=True,
                                      mutable=["intermediates"])[1]["intermediates"]
        return captured["_BasicBlock_0"]["__call__"][0], captured["_BasicBlock_8"]["__call__"][0]

    (first, last), (first_alone, _) = blocks(x), blocks(x[:1])
    assert last.shape == (2, 12, 12, 64)  # no stride anywhere: full resolution to the end
    # the statistics come from the batch: the first image's features depend on its batch-mate
    assert not np.allclose(first[:1], first_alone, atol=1e-3)
    with pytest.raises(DLGInputError, match="unknown init 'xavier'"):
        build_model("resnet20", (12, 12, 3), 10, init="xavier")
    with pytest.raises(DLGInputError, match="ResNet options; 'lenet' takes none"):
        build_model("lenet", (12, 12, 3), 10, norm="batch")


def _relative_gradient_change(model, params, images, labels):
    """``|g(x0) - g(x1)| / |g(x0)|`` for the single-image gradients of two different images."""
    from dlg_jax.victim.gradients import shared_gradients

    grads = shared_gradients(model, params, images[:, None], labels[:, None])
    flat = np.concatenate([np.asarray(leaf).reshape(2, -1) for leaf in jax.tree.leaves(grads)], axis=1)
    return np.linalg.norm(flat[0] - flat[1]) / np.linalg.norm(flat[0])


def test_sigmoid_resnet_gradient_forgets_its_input_unless_batch_normalised_at_unit_scale():
    # measured on these 16x16 crops: He-init sigmoid ResNet-20 8.9e-8 (the image is all but invisible in the
    # gradient), DLG's ResNet-20 (batch norm with U(-0.5, 0.5) scales, no strides) 2.5e-7, batch norm with
    # unit scale (He init) 9.4e-3 (on 32x32 images: 1.2e-7, 5e-6, 0.04; LeNet 0.25)
    from dlg_jax.data.datasets import get_dataset

    images, labels = get_dataset("colour").examples([0, 1])
    images, labels = images[:, :16, :16], np.array([3, 3])  # a crop keeps the stride-free net cheap
    changes = {}
    for spec, options in {"plain": dict(activation="sigmoid"), "dlg": dlg_resnet(),
                          "bn": dict(activation="sigmoid", norm="batch")}.items():
        model = build_model("resnet20", (16, 16, 3), 10, **options)
        changes[spec] = _relative_gradient_change(model, model.init(jax.random.key(0)), images, labels)
    assert changes["plain"] < 1e-4 and changes["dlg"] < 1e-4 and changes["bn"] > 1e-3, changes


def test_batch_normalised_resnet_gradient_cannot_see_brightness_or_contrast():
    # batch norm from the batch's own statistics after a bias-free first convolution removes a x + b:
    # measured here 2x scale 3e-6 (exact up to BN's eps), +0.3 shift 5e-3 (zero-padding border), another
    # image 2.7e-2; LeNet sees all three (~0.1-0.2). metrics.affine_aligned_mse forgives exactly this.
    from dlg_jax.data.datasets import get_dataset

    images, labels = get_dataset("colour").examples([0, 1])
    images, labels = images[:, :16, :16], np.array([3, 3])
    for name, options, invariant in (("resnet20", dict(activation="sigmoid", norm="batch"), True),
                                     ("lenet", {}, False)):
        model = build_model(name, (16, 16, 3), 10, **options)
        params = model.init(jax.random.key(0))
        change = {what: _relative_gradient_change(model, params, np.stack([images[0], other]), labels)
                  for what, other in (("scale", 2.0 * images[0]), ("shift", images[0] + 0.3),
                                      ("image", images[1]))}
        if invariant:
            assert change["scale"] < 1e-4 and change["shift"] < 0.3 * change["image"], (name, change)
        else:
            assert min(change.values()) > 0.05, (name, change)
