"""DLG written the canonical PyTorch way: the baseline the JAX implementation is measured against.

Everything here works on PyTorch tensors in NCHW layout; the public helpers take and return numpy
arrays in the JAX layout (images ``[B, H, W, C]``, parameters as the flax pytree) so that both sides
start from the same weights and the same dummies.

- :func:`twin` builds the ``torch.nn.Module`` twin of a :class:`dlg_jax.models.Model` (DLG's LeNet, or a
  CIFAR ResNet without normalisation) and copies the flax weights into it. Conv kernels go from HWIO to
  OIHW; LeNet's ``Linear`` weight is permuted because flax flattens ``[h, w, c]`` (NHWC) and torch
  ``[c, h, w]`` (NCHW): ``W_torch[k, c*h'*w' + i*w' + j] = W_flax[i*w'*C + j*C + c, k]``.
- Victim: ``loss(W) = mean_b sum_k -t[b, k] log_softmax(F(x; W))[b, k]``; the shared gradient is
  ``dW = autograd.grad(loss, W)``, a list in ``net.parameters()`` order.
- Matching loss of a dummy ``(x' [B, C, H, W], y' [B, K])``:
  ``J = sum_l || grad_{W_l} loss(F(x'; W), softmax(y')) - dW_l ||^2``; its gradient needs
  ``autograd.grad(..., create_graph=True)`` (double backward).
- :func:`dlg_attack`: ``torch.optim.LBFGS([x', y'], lr=1)`` with DLG's defaults (``max_iter=20``,
  ``history_size=100``, no line search) for up to 300 ``.step()`` calls, restarts one after another.
- :func:`functional_objective`: the strongest batched PyTorch form, ``torch.func.vmap`` over restarts
  of ``grad`` (w.r.t. the dummy) of ``J``, which itself takes ``grad`` w.r.t. the parameters of a
  ``functional_call``; with ``compiled=True`` that function goes through ``torch.compile`` (Inductor:
  fused C++ on CPU, Triton on CUDA), PyTorch's best.
- :func:`dlg_restart` with ``compiled=True``: the same ``torch.optim.LBFGS`` procedure whose closure
  evaluates ``J`` and its gradient with the compiled objective (one restart as a batch of one).

Every function works on the device of ``net`` (:func:`twin` ``device=``).
"""

import dataclasses
import functools
import time
from typing import Callable

import numpy as np

from benchmarks.common import require_torch

torch = require_torch()
nn = torch.nn
F = torch.nn.functional

from dlg_jax.models.torch_twin import TorchCifarResNet, TorchLeNet, to_flax, twin  # noqa: E402,F401

# ---------------------------------------------------------------------------------------------------
# Models and weight layout: the twins live in :mod:`dlg_jax.models.torch_twin`.


def device_of(net: nn.Module):
    """The device ``net``'s parameters live on."""
    return next(net.parameters()).device


def to_nchw(images: np.ndarray, device="cpu"):
    """``[..., H, W, C]`` numpy -> ``[..., C, H, W]`` float32 tensor on ``device``."""
    return torch.from_numpy(np.array(np.moveaxis(np.asarray(images, np.float32), -1, -3), order="C")).to(device)


def to_tensor(array: np.ndarray, device="cpu"):
    """A float32 copy of ``array`` on ``device``."""
    return torch.tensor(np.asarray(array, np.float32), device=device)


def to_nhwc(images) -> np.ndarray:
    """``[..., C, H, W]`` tensor -> ``[..., H, W, C]`` numpy."""
    return np.moveaxis(images.detach().cpu().numpy(), -3, -1)


# ---------------------------------------------------------------------------------------------------
# Victim and matching loss


def soft_cross_entropy(logits, targets):
    """``mean_b sum_k -targets[b, k] log_softmax(logits)[b, k]`` for ``[B, K]`` tensors."""
    return torch.mean(torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1))


def shared_gradient(net: nn.Module, images: np.ndarray, labels: np.ndarray) -> list:
    """The victim's gradient for ``images [B, H, W, C]``, ``labels [B]``: tensors in ``net.parameters()`` order."""
    device = device_of(net)
    logits = net(to_nchw(images, device))
    targets = F.one_hot(torch.as_tensor(np.asarray(labels), dtype=torch.int64, device=device),
                        logits.shape[-1]).float()
    return [g.detach() for g in torch.autograd.grad(soft_cross_entropy(logits, targets), list(net.parameters()))]


def matching_loss(net: nn.Module, images, label_logits, target_grads, create_graph: bool = True):
    """DLG's ``J = sum_l ||grad_{W_l} loss(F(x'), softmax(y')) - dW_l||^2`` for ``images [B, C, H, W]``,
    ``label_logits [B, K]``; ``create_graph`` keeps the graph so that ``J`` can be differentiated."""
    loss = soft_cross_entropy(net(images), F.softmax(label_logits, dim=-1))
    grads = torch.autograd.grad(loss, list(net.parameters()), create_graph=create_graph)
    return sum(((g - t) ** 2).sum() for g, t in zip(grads, target_grads))


def eager_value_and_grad(net: nn.Module, target_grads, images, label_logits):
    """``J`` and ``(dJ/dx' [B, C, H, W], dJ/dy' [B, K])`` for one restart by eager double backward."""
    images = images.detach().requires_grad_(True)
    label_logits = label_logits.detach().requires_grad_(True)
    value = matching_loss(net, images, label_logits, target_grads)
    grad_images, grad_logits = torch.autograd.grad(value, [images, label_logits])
    return value.detach(), (grad_images, grad_logits)


def _batched_matching(net: nn.Module) -> Callable:
    """``(params, targets, images [R, B, C, H, W], label_logits [R, B, K]) -> ((dJ/dx', dJ/dy'), J [R])``:
    ``torch.func.vmap`` over restarts of ``grad_and_value`` of ``J``, with the parameters and the
    shared gradient as arguments (dicts keyed by parameter name), so that a compiled version serves
    every target without recompiling."""
    from torch.func import functional_call, grad, grad_and_value, vmap

    def victim_loss(weights, images, label_logits):
        logits = functional_call(net, weights, (images,))
        return soft_cross_entropy(logits, F.softmax(label_logits, dim=-1))

    def matching(params, targets, images, label_logits):
        grads = grad(victim_loss)(params, images, label_logits)
        return sum(((grads[name] - targets[name]) ** 2).sum() for name in grads)

    return vmap(grad_and_value(matching, argnums=(2, 3)), in_dims=(None, None, 0, 0))


# Dynamo keys compiled code on the function's code object: every new net (and every new restart count,
# the shapes being static) is a recompilation of the same code, more than the default limit of 8 in
# one benchmark run.
_RECOMPILE_LIMIT = 64


@functools.lru_cache(maxsize=16)
def _compiled_matching(net: nn.Module) -> Callable:
    """:func:`_batched_matching` of ``net`` through ``torch.compile`` (whole graph, static shapes)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
    return torch.compile(_batched_matching(net), fullgraph=True, dynamic=False)


def functional_objective(net: nn.Module, target_grads, compiled: bool = False) -> Callable:
    """``(images [R, B, C, H, W], label_logits [R, B, K]) -> (J [R], (dJ/dx' [R, B, C, H, W], dJ/dy' [R, B, K]))``
    for ``R`` restarts of one target, with ``torch.func`` (vmap over restarts of grad of a loss that
    itself takes grad w.r.t. the parameters). ``compiled``: through ``torch.compile`` (the first call
    for each new ``R`` compiles, seconds to a minute)."""
    params = {name: p.detach() for name, p in net.named_parameters()}
    targets = dict(zip(params, target_grads))
    batched = _compiled_matching(net) if compiled else _batched_matching(net)

    def value_and_grad(images, label_logits):
        grads, values = batched(params, targets, images, label_logits)
        return values, grads

    return value_and_grad


# ---------------------------------------------------------------------------------------------------
# The attack


@dataclasses.dataclass
class RestartResult:
    """One restart: final images ``[B, H, W, C]`` and label logits ``[B, K]`` (numpy), final ``J``,
    L-BFGS iterations and closure evaluations used, wall seconds, and how it ended."""

    images: np.ndarray
    label_logits: np.ndarray
    loss: float
    iterations: int
    evaluations: int
    steps: int
    seconds: float
    converged: bool
    failed: bool


def dlg_restart(net: nn.Module, target_grads, images: np.ndarray, label_logits: np.ndarray, *,
                steps: int = 300, max_iter: int = 20, history_size: int = 100,
                tolerance: float | None = None, compiled: bool = False) -> RestartResult:
    """One DLG restart from ``images [B, H, W, C]``, ``label_logits [B, K]``: ``steps`` calls of
    ``LBFGS.step`` (each up to ``max_iter`` iterations). ``tolerance``: stop after the step whose
    last evaluated ``J`` is ``<= tolerance`` (``None``: run all steps, as DLG). A non-finite ``J``
    stops the restart as failed. The closure differentiates ``J`` w.r.t. the dummy only (DLG's
    ``backward()`` also fills the parameters' ``.grad``, work the attack never uses). ``seconds`` covers
    the optimisation, not the final evaluation of ``J`` for the report.

    ``compiled``: the closure evaluates ``J`` and its gradient with the ``torch.compile``d
    :func:`functional_objective` on a batch of one restart (compiled on first use per net and dummy
    shape; warm it up before timing) instead of eager double backward."""
    started = time.perf_counter()
    device = device_of(net)
    dummy_x = to_nchw(images, device).requires_grad_(True)
    dummy_y = to_tensor(label_logits, device).requires_grad_(True)
    optimizer = torch.optim.LBFGS([dummy_x, dummy_y], lr=1, max_iter=max_iter, history_size=history_size)
    last = [float("inf")]
    objective = functional_objective(net, target_grads, compiled=True) if compiled else None

    def closure():
        if objective is None:
            value = matching_loss(net, dummy_x, dummy_y, target_grads)
            dummy_x.grad, dummy_y.grad = torch.autograd.grad(value, [dummy_x, dummy_y])
        else:
            values, (grad_x, grad_y) = objective(dummy_x.detach()[None], dummy_y.detach()[None])
            value, dummy_x.grad, dummy_y.grad = values[0], grad_x[0], grad_y[0]
        last[0] = value.item()
        return value

    converged = failed = False
    done = 0
    for done in range(1, steps + 1):
        optimizer.step(closure)
        if not np.isfinite(last[0]):
            failed = True
            break
        if tolerance is not None and last[0] <= tolerance:
            converged = True
            break
    seconds = time.perf_counter() - started
    final = matching_loss(net, dummy_x, dummy_y, target_grads, create_graph=False).item()
    failed = failed or not np.isfinite(final)
    state = optimizer.state[dummy_x]
    return RestartResult(
        images=to_nhwc(dummy_x), label_logits=dummy_y.detach().cpu().numpy().copy(), loss=final,
        iterations=int(state.get("n_iter", 0)), evaluations=int(state.get("func_evals", 0)), steps=done,
        seconds=seconds, converged=converged and not failed, failed=failed,
    )


@dataclasses.dataclass
class ReferenceAttack:
    """The restarts of one target that were run (in order) and the best: the lowest final ``J``
    among the non-failed ones (restart 0 if all failed)."""

    restarts: list[RestartResult]
    best: int

    @property
    def best_restart(self) -> RestartResult:
        return self.restarts[self.best]

    @property
    def seconds(self) -> float:
        return sum(r.seconds for r in self.restarts)

    @property
    def iterations(self) -> int:
        return sum(r.iterations for r in self.restarts)

    @property
    def evaluations(self) -> int:
        return sum(r.evaluations for r in self.restarts)


def dlg_attack(net: nn.Module, target_grads, images: np.ndarray, label_logits: np.ndarray, *,
               stop_at_convergence: bool = True, **restart_options) -> ReferenceAttack:
    """Restarts from ``images [R, B, H, W, C]``, ``label_logits [R, B, K]`` run one after another (as
    DLG, iDLG and breaching do); with ``stop_at_convergence`` the loop ends at the first converged
    restart. ``restart_options`` go to :func:`dlg_restart`."""
    results = []
    for start_images, start_logits in zip(images, label_logits):
        results.append(dlg_restart(net, target_grads, start_images, start_logits, **restart_options))
        if stop_at_convergence and results[-1].converged:
            break
    ranking = [np.inf if r.failed else r.loss for r in results]
    return ReferenceAttack(results, int(np.argmin(ranking)))
