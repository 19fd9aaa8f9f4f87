"""Label strategies: how the attack treats the private labels.

- ``joint`` (DLG, Zhu et al. 2019): dummy label logits ``y' [B, K] ~ N(0, 1)`` are optimised together
  with the images; the victim loss uses ``softmax(y')``. The recovered label is ``argmax(y')``.

Every other strategy reads the labels off the shared gradient *before* the attack
(:func:`recover_labels`) and the attack holds them fixed. All of them look only at the gradient of the
model's final dense layer ``logits = h W + b`` (kernel ``W [F, K]``, bias ``b [K]``, features
``h [B, F]``). With the victim's mean softmax cross-entropy (``dlg_jax.victim.gradients``), ``p = softmax(logits)``
and one-hot labels ``y [B, K]``:

    dW[f, k] = (1/B) sum_b h[b, f] (p[b, k] - y[b, k])          db[k] = (1/B) sum_b (p[b, k] - y[b, k])

- ``analytic`` (iDLG, Zhao et al. 2020), ``B = 1`` only: ``dW[:, k] = h (p_k - y_k)``. With non-negative
  features ``h >= 0`` (outputs of a sigmoid or ReLU: every registered model) and ``sum_f h_f > 0``, the
  column sum ``s_k = sum_f dW[f, k] = (sum_f h_f)(p_k - y_k)`` is negative for the true class only, so the
  label is ``argmin_k s_k``.
- ``distinct`` (GradInversion's batch label restoration, Yin et al. 2021): assumes the ``B`` labels are
  pairwise distinct (``B <= K``). For an absent class ``dW[f, k] = (1/B) sum_b h[b, f] p[b, k] >= 0`` for
  every ``f``; a present class usually has a negative entry. The labels are the ``B`` classes with the
  most negative column minima ``min_f dW[f, k]``. It misses a present class whose mean predicted
  probability exceeds its share (``mean_b p[b, k] > 1/B``): then its column can be all positive.
- ``count`` (a label-count rule after LLG+, Wainakh et al. 2022): repeated labels allowed. From the bias
  gradient, exactly, ``n_k = B (pbar_k - db_k)`` where ``n_k`` is how often class ``k`` occurs and
  ``pbar_k = mean_b p[b, k]`` the model's mean prediction on the private batch. ``pbar`` is unknown; the
  rule assumes it is close to the model's mean prediction ``q`` on ``REFERENCE_IMAGES`` images drawn
  uniformly from the data range ``[0, 1]`` (true when the model's output depends little on its input, as
  for the randomly initialised networks gradient-inversion attacks target: on the embedded sets the mean
  prediction varies by < 0.02 between private batches of DLG's LeNet). The estimate
  ``B (q - db)``, clipped at 0, is rounded to non-negative counts summing to ``B`` (largest remainder).
  Needs the final layer's bias. LLG's own greedy rule (impact from the negative entries only) was
  measured less accurate on the embedded sets (per-label accuracy 0.5-1.0 vs 0.9-1.0) and is not kept.
- ``auto``: ``analytic`` for ``B = 1``, ``count`` for ``B > 1``.

Recovered labels are returned sorted per target; the attack's slots are unordered (metrics match
slots to private images by an optimal assignment).
"""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dlg_jax.errors import DLGInputError, check_choice, check_positive_int
from dlg_jax.models import Model
from dlg_jax.victim.gradients import check_shared_gradients

LABEL_STRATEGIES = ("joint", "analytic", "distinct", "count", "auto")
REFERENCE_IMAGES = 64
_DENSE_NAME = re.compile(r"Dense_\d+")


def is_joint(strategy: str) -> bool:
    """Whether ``strategy`` optimises label logits with the images (else the labels are fixed)."""
    return strategy == "joint"


def final_dense_path(model: Model, params: Any) -> tuple[str, ...]:
    """The params path (e.g. ``("Dense_0",)``) of the flax ``Dense`` layer whose output is the logits.

    Found by running the model once on a U(0, 1) input with flax's ``capture_intermediates``: the layer is
    the module named ``Dense_<n>`` whose output equals the model's output and whose kernel is 2-D
    ``[F, K]``. Raises :class:`DLGInputError` when there is none (the logits come from another layer).
    """
    x = jax.random.uniform(jax.random.key(0), (1, *model.input_shape), jax.tree.leaves(params)[0].dtype)
    logits, state = model.apply_collecting(params, x, ("intermediates",), capture_intermediates=True)
    logits = np.asarray(logits)
    found = []

    def walk(node, path):
        for name, child in node.items():
            if not isinstance(child, dict):
                continue
            if _DENSE_NAME.fullmatch(name) and "__call__" in child:
                output = np.asarray(child["__call__"][0])
                if output.shape == logits.shape and np.array_equal(output, logits):
                    found.append(path + (name,))
            walk(child, path + (name,))

    walk(state["intermediates"], ())
    for path in found:
        layer = _lookup(params, path)
        if isinstance(layer, dict) and np.ndim(layer.get("kernel")) == 2:
            return path
    raise DLGInputError(
        f"model {model.name!r} has no final dense layer (a Dense_<n> module producing the logits); "
        "label strategies other than 'joint' need one"
    )


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def analytic_labels(kernel_grads: np.ndarray) -> np.ndarray:
    """iDLG: ``[T, 1]`` labels ``argmin_k sum_f dW[t, f, k]`` from final-kernel gradients ``[T, F, K]``."""
    return np.argmin(kernel_grads.sum(axis=1), axis=-1)[:, None]


def distinct_labels(kernel_grads: np.ndarray, batch_size: int) -> np.ndarray:
    """GradInversion: ``[T, B]`` labels, the ``B`` classes with the most negative ``min_f dW[t, f, k]``."""
    order = np.argsort(kernel_grads.min(axis=1), axis=-1, kind="stable")
    return np.sort(order[:, :batch_size], axis=-1)


def count_labels(bias_grads: np.ndarray, mean_prediction: np.ndarray, batch_size: int) -> np.ndarray:
    """Label counts from bias gradients ``db [T, K]`` and the mean prediction ``q [K]``, expanded to
    sorted labels ``[T, B]``.

    ``e = max(B (q - db), 0)`` rescaled to ``sum_k e_k = B`` (an exact gradient has ``sum_k db_k = 0``, so
    ``sum_k B (q_k - db_k) = B`` before clipping; a degenerate all-zero ``e`` falls back to ``B q``), then
    ``n = floor(e)`` plus one for each of the ``B - sum n`` largest remainders ``e - floor(e)``.
    """
    estimate = np.clip(batch_size * (mean_prediction[None, :] - bias_grads), 0.0, None)
    total = estimate.sum(axis=1, keepdims=True)
    estimate = np.where(total > 0, estimate / np.where(total > 0, total, 1.0), mean_prediction[None, :]) * batch_size
    counts = np.floor(estimate).astype(np.int64)
    labels = np.zeros((len(bias_grads), batch_size), np.int64)
    for t in range(len(bias_grads)):
        missing = batch_size - counts[t].sum()
        counts[t, np.argsort(-(estimate[t] - counts[t]), kind="stable")[:missing]] += 1
        labels[t] = np.repeat(np.arange(len(counts[t])), counts[t])
    return labels


def reference_prediction(model: Model, params: Any, count: int = REFERENCE_IMAGES) -> np.ndarray:
    """``q [K]``: the model's mean softmax over ``count`` images drawn from U(0, 1) (fixed key)."""
    dtype = jax.tree.leaves(params)[0].dtype
    images = jax.random.uniform(jax.random.key(0), (count, *model.input_shape), dtype)
    return np.asarray(jnp.mean(jax.nn.softmax(model.apply(params, images), axis=-1), axis=0), np.float64)


def recover_labels(strategy: str, model: Model, params: Any, target_grads: Any, batch_size: int) -> np.ndarray | None:
    """Labels ``[T, B]`` (int64, sorted per target) read off the shared gradients ``target_grads``
    (leading ``T`` axis) by ``strategy``, or ``None`` for ``joint`` (labels are optimised, not recovered).

    Raises :class:`DLGInputError` for ``analytic`` with ``B > 1``, ``distinct`` with more labels than
    classes, ``count`` without a final-layer bias, or a model without a final dense layer.
    """
    check_choice("label strategy", strategy, LABEL_STRATEGIES)
    batch_size = check_positive_int("batch size", batch_size)
    if is_joint(strategy):
        return None
    if strategy == "auto":
        strategy = "analytic" if batch_size == 1 else "count"
    if strategy == "analytic" and batch_size != 1:
        raise DLGInputError(
            f"label strategy 'analytic' (iDLG) works for one image per gradient, got batch size {batch_size}; "
            "use 'distinct', 'count' or 'auto'"
        )
    if strategy == "distinct" and batch_size > model.num_classes:
        raise DLGInputError(
            f"label strategy 'distinct' needs batch size <= number of classes ({model.num_classes}), "
            f"got {batch_size}; use 'count' for repeated labels"
        )
    model.check_params(params, "model params")
    check_shared_gradients(model, params, target_grads)
    layer = _lookup(target_grads, final_dense_path(model, params))
    if strategy == "count":
        if "bias" not in layer:
            raise DLGInputError(f"label strategy 'count' needs a bias in the final dense layer of {model.name!r}")
        bias = np.asarray(layer["bias"], np.float64)
        return count_labels(bias, reference_prediction(model, params), batch_size)
    kernel = np.asarray(layer["kernel"], np.float64)
    if strategy == "analytic":
        return analytic_labels(kernel)
    return distinct_labels(kernel, batch_size)
