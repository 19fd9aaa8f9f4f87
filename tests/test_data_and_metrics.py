import numpy as np
import pytest

from dlg_jax.data.datasets import (
    EMBEDDED_NAMES,
    _embedded_arrays,
    build_embedded_arrays,
    get_dataset,
)
from dlg_jax.errors import DLGInputError
from dlg_jax.metrics import evaluate, wilson_interval


@pytest.mark.parametrize("name,size,shape,classes", [("colour", 100, (32, 32, 3), 10),
                                                     ("digits", 200, (28, 28, 1), 10),
                                                     ("faces", 200, (32, 32, 1), 2)])
def test_embedded_sets(name, size, shape, classes):
    data = get_dataset(name)
    assert (data.size, data.input_shape, data.num_classes) == (size, shape, classes)
    images, labels = data.examples(np.arange(size))
    assert images.dtype == np.float32 and images.shape == (size, *shape)
    assert 0.0 <= images.min() and images.max() <= 1.0 and images.std() > 0.1
    assert set(np.unique(labels)) == set(range(classes))
    assert len({images[i].tobytes() for i in range(size)}) == size  # no duplicates


def test_embedded_sets_resize_to_any_size_in_range():
    native, _ = get_dataset("faces").examples([0, 1])
    assert np.array_equal(get_dataset("faces", image_size=32).examples([0, 1])[0], native)
    for size in (16, 128):
        data = get_dataset("faces", image_size=size)
        images, _ = data.examples([0, 1])
        assert data.input_shape == (size, size, 1) and images.shape == (2, size, size, 1)
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert abs(images.mean() - native.mean()) < 0.02  # bilinear resampling keeps the brightness
    for bad in (4, 300, 2.5):
        with pytest.raises(DLGInputError, match=f"integer from 8 to 256, got {bad}"):
            get_dataset("colour", image_size=bad)


def test_embedded_file_is_rebuilt_bit_for_bit_from_the_registry_packages():
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    fresh, shipped = build_embedded_arrays(), _embedded_arrays()
    assert set(fresh) == set(shipped)
    for key in fresh:
        np.testing.assert_array_equal(fresh[key], shipped[key], err_msg=key)
    assert all(f"{name}_images" in fresh for name in EMBEDDED_NAMES)


def test_dataset_bad_input():
    with pytest.raises(DLGInputError, match="unknown dataset 'imagenet'"):
        get_dataset("imagenet")
    with pytest.raises(DLGInputError, match="index -1 is outside dataset 'digits'; allowed: 0 to 199"):
        get_dataset("digits").examples([-1])
    with pytest.raises(DLGInputError, match="unknown split 'test'"):
        get_dataset("colour", split="test")


def test_psnr_ssim_match_scikit_image_and_assignment_undoes_a_permutation():
    metrics_module = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    truth = rng.uniform(size=(2, 3, 32, 32, 3)).astype(np.float32)
    noisy = np.clip(truth + 0.05 * rng.normal(size=truth.shape), 0, 1).astype(np.float32)
    permuted = noisy[:, [2, 0, 1]]
    scores = evaluate(permuted, truth, np.array([[5, 3, 4]] * 2), np.array([[3, 4, 5]] * 2))
    np.testing.assert_array_equal(scores.assignment, [[1, 2, 0]] * 2)
    assert np.all(scores.label_accuracy == 1.0) and np.all(scores.duplicates == 0)
    for b in range(3):
        expected_psnr = metrics_module.peak_signal_noise_ratio(truth[0, b], noisy[0, b], data_range=1.0)
        expected_ssim = metrics_module.structural_similarity(
            truth[0, b], noisy[0, b], channel_axis=-1, data_range=1.0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False)
        assert scores.slot_psnr[0, b] == pytest.approx(expected_psnr, abs=1e-3)
        assert scores.slot_ssim[0, b] == pytest.approx(expected_ssim, abs=1e-5)


def test_duplicate_slots_are_flagged():
    rng = np.random.default_rng(1)
    truth = rng.uniform(size=(1, 2, 16, 16, 1)).astype(np.float32)
    collapsed = np.stack([truth[:, 0], truth[:, 0]], axis=1)  # both slots converged to image 0
    scores = evaluate(collapsed, truth, np.zeros((1, 2), int), np.zeros((1, 2), int))
    assert scores.duplicates[0] == 2 and scores.summary()["duplicates"] == 2


def test_affine_psnr_forgives_brightness_and_contrast_only():
    rng = np.random.default_rng(2)
    truth = rng.uniform(size=(1, 2, 16, 16, 3)).astype(np.float32)
    rescaled = np.stack([40.0 * truth[:, 0] - 3.0, truth[:, 1] + rng.normal(0, 0.1, truth[:, 1].shape)], axis=1)
    scores = evaluate(rescaled, truth, np.zeros((1, 2), int), np.zeros((1, 2), int))
    assert scores.slot_psnr[0, 0] < 10 and scores.slot_affine_psnr[0, 0] > 60  # a x + b is the image
    # noise is not forgiven: the fit can only shrink it (a < 1), never remove it
    assert scores.slot_affine_psnr[0, 1] == pytest.approx(scores.slot_psnr[0, 1], abs=1.5)
    assert scores.summary()["affine_success_rate_psnr30"] == 0.0


def test_wilson_interval_of_a_success_rate():
    # by hand: 0 of n gives [0, z^2 / (n + z^2)]; n of n mirrors it; 5 of 10 is the textbook [0.2366, 0.7634]
    assert wilson_interval(0, 4) == pytest.approx((0.0, 1.96 ** 2 / (4 + 1.96 ** 2)))
    assert wilson_interval(4, 4) == pytest.approx((4 / (4 + 1.96 ** 2), 1.0))
    assert wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    low, high = wilson_interval(30, 100)
    assert low < 0.3 < high and high - low < wilson_interval(3, 10)[1] - wilson_interval(3, 10)[0]
