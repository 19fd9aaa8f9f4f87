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
- :func:`lockstep_attack`: not DLG's procedure but *our* attack's algorithm in PyTorch, to separate the
  framework from the algorithm in speed claims: all restarts together (chunks of 16), each step one
  evaluation of the ``torch.func`` objective over the chunk and the lockstep L-BFGS update of
  :mod:`dlg_jax.attack.lockstep_lbfgs` (same memory, matrix-form two-loop recursion, Armijo backtracking unrolled
  across steps, resets, curvature test) with :mod:`dlg_jax.attack.engine`'s stopping rules; ``compiled=True``
  runs each step, objective included, through ``torch.compile``.

Every function works on the device of ``net`` (:func:`twin` ``device=``).
"""

import dataclasses
import functools
import time
from typing import Callable, NamedTuple

import numpy as np

from benchmarks.common import require_torch

torch = require_torch()
nn = torch.nn
F = torch.nn.functional

from dlg_jax.attack.lockstep_lbfgs import ARMIJO_C1, CURVATURE_EPS, MIN_STEP  # noqa: E402
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


def _named(net: nn.Module, target_grads) -> tuple[dict, dict]:
    """``net``'s parameters (detached) and ``target_grads`` (``net.parameters()`` order) as dicts keyed by
    parameter name: the first two arguments of :func:`_batched_matching`."""
    params = {name: p.detach() for name, p in net.named_parameters()}
    return params, dict(zip(params, target_grads))


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
    params, targets = _named(net, target_grads)
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


# ---------------------------------------------------------------------------------------------------
# The lockstep attack, written in PyTorch


class LockstepState(NamedTuple):
    """One chunk of ``R`` restarts (leading axis) under :func:`lockstep_attack`; ``n`` unknowns per restart
    (the images, then the label logits, flattened in torch's NCHW order: L-BFGS only sees inner products,
    so the order of the unknowns changes nothing), ``m`` memory slots.

    The attack's per-problem state (:class:`dlg_jax.attack.engine._Problem`): ``images [R, B, C, H, W]``,
    ``label_logits [R, B, K]``, ``loss [R]`` (objective at the dummy), ``failed``/``converged [R]`` bool,
    ``iterations``/``evaluations [R]`` int64, ``threshold [R]``. The solver's
    (:class:`dlg_jax.attack.lockstep_lbfgs.LockstepLBFGSState`, same meanings): ``value [R]``, ``grad [R, n]``,
    ``s_memory``/``y_memory [R, m, n]`` (written in place, one row per restart), ``rho [R, m]``,
    ``sy``/``yy [R, m, m]``, ``s_grad``/``y_grad [R, m]``, ``head [R]`` int64, ``step_size [R]``."""

    images: "torch.Tensor"
    label_logits: "torch.Tensor"
    loss: "torch.Tensor"
    failed: "torch.Tensor"
    converged: "torch.Tensor"
    iterations: "torch.Tensor"
    evaluations: "torch.Tensor"
    threshold: "torch.Tensor"
    value: "torch.Tensor"
    grad: "torch.Tensor"
    s_memory: "torch.Tensor"
    y_memory: "torch.Tensor"
    rho: "torch.Tensor"
    sy: "torch.Tensor"
    yy: "torch.Tensor"
    s_grad: "torch.Tensor"
    y_grad: "torch.Tensor"
    head: "torch.Tensor"
    step_size: "torch.Tensor"


def _flat(images, label_logits):
    """``([R, B, C, H, W], [R, B, K]) -> [R, n]``."""
    return torch.cat([images.flatten(1), label_logits.flatten(1)], dim=1)


def _split(flat, images, label_logits):
    """``[R, n]`` -> views ``([R, B, C, H, W], [R, B, K])`` shaped like ``images`` and ``label_logits``
    (the state always holds such views, so that ``torch.compile``'s guards see one memory layout)."""
    split = images[0].numel()
    return flat[:, :split].view_as(images), flat[:, split:].view_as(label_logits)


def _lockstep_direction(state: LockstepState):
    """``-H grad [R, n]``: :func:`dlg_jax.attack.lockstep_lbfgs._direction` for every restart, the two-loop
    recursion in its matrix form (pairs in age order, newest first; two unit-triangular ``m x m`` solves)."""
    restarts, memory = state.rho.shape
    order = (state.head[:, None] - 1 - torch.arange(memory, device=state.head.device)) % memory  # [R, m]
    square = (restarts, memory, memory)
    rows, columns = order[:, :, None].expand(square), order[:, None, :].expand(square)
    by_age = lambda matrix: matrix.gather(1, rows).gather(2, columns)
    rho, sy, yy = state.rho.gather(1, order), by_age(state.sy), by_age(state.yy)
    solve = torch.linalg.solve_triangular  # the diagonal is taken as 1 (unitriangular)
    lower = rho[:, :, None] * torch.tril(sy, -1)
    alpha = solve(lower, (rho * state.s_grad.gather(1, order))[:, :, None], upper=False, unitriangular=True)
    have_pair = rho[:, 0] > 0
    gamma = 1.0 / torch.where(have_pair, rho[:, 0] * yy[:, 0, 0], 1.0)
    first_scale = torch.clamp(1.0 / torch.clamp(state.grad.abs().sum(1), min=1e-30), max=1.0)
    scale = torch.where(have_pair, gamma, first_scale)[:, None]
    upper = torch.triu(sy.transpose(1, 2), 1)
    y_r0 = scale[:, :, None] * (state.y_grad.gather(1, order)[:, :, None] - yy @ alpha)
    beta = solve(rho[:, :, None] * upper, rho[:, :, None] * (y_r0 + upper @ alpha), upper=True, unitriangular=True)
    # Back to slot order (the age -> slot map is its own inverse), then the two products with the memory.
    alpha, beta = alpha[:, :, 0].gather(1, order), beta[:, :, 0].gather(1, order)
    r = scale * (state.grad - (alpha[:, None] @ state.y_memory)[:, 0])
    return -(r + ((alpha - beta)[:, None] @ state.s_memory)[:, 0])


def _lockstep_step(batched, params, targets, state: LockstepState):
    """One iteration of :func:`dlg_jax.attack.lockstep_lbfgs.make_lockstep_lbfgs`'s ``step`` for every restart
    (one evaluation of ``J`` each, at the trial point) followed by the attack's bookkeeping of
    :func:`dlg_jax.attack.engine._programs` (converged / failed problems frozen). Returns the new state and the
    loss history entry ``[R]``."""
    flat = _flat(state.images, state.label_logits)
    direction = _lockstep_direction(state)
    slope = torch.sum(state.grad * direction, 1)
    descent = slope < 0
    direction = torch.where(descent[:, None], direction, -state.grad)
    slope = torch.where(descent, slope, -torch.sum(state.grad * state.grad, 1))
    a = state.step_size
    trial = flat + a[:, None] * direction
    (grad_images, grad_logits), value = batched(params, targets, *_split(trial, state.images, state.label_logits))
    grad = _flat(grad_images, grad_logits)
    finite = torch.isfinite(value) & torch.isfinite(grad).all(1)
    accept = finite & (value <= state.value + ARMIJO_C1 * a * slope)

    s, y = trial - flat, grad - state.grad
    sy = torch.sum(s * y, 1)
    store = accept & (sy > CURVATURE_EPS * torch.linalg.vector_norm(s, dim=1) * torch.linalg.vector_norm(y, dim=1))
    rows, head = torch.arange(len(store), device=store.device), state.head
    keep = store[:, None]
    state.s_memory[rows, head] = torch.where(keep, s, state.s_memory[rows, head])
    state.y_memory[rows, head] = torch.where(keep, y, state.y_memory[rows, head])
    rho = state.rho.clone()
    rho[rows, head] = torch.where(store, 1.0 / torch.where(store, sy, 1.0), state.rho[rows, head])
    s_products = state.s_memory @ torch.stack([grad, y], 2)      # [R, m, 2]: <s_i, g'>, <s_i, y>
    y_products = state.y_memory @ torch.stack([grad, s, y], 2)   # [R, m, 3]: <y_i, g'>, <y_i, s>, <y_i, y>
    sy_matrix, yy_matrix = state.sy.clone(), state.yy.clone()
    sy_matrix[rows, head, :] = torch.where(keep, y_products[:, :, 1], sy_matrix[rows, head, :])
    sy_matrix[rows, :, head] = torch.where(keep, s_products[:, :, 1], sy_matrix[rows, :, head])
    yy_matrix[rows, head, :] = torch.where(keep, y_products[:, :, 2], yy_matrix[rows, head, :])
    yy_matrix[rows, :, head] = torch.where(keep, y_products[:, :, 2], yy_matrix[rows, :, head])
    s_grad = torch.where(accept[:, None], s_products[:, :, 0], state.s_grad)
    y_grad = torch.where(accept[:, None], y_products[:, :, 0], state.y_grad)
    head = torch.where(store, (head + 1) % rho.shape[1], head)

    curvature = value - state.value - a * slope
    shrink = torch.where(finite & (curvature > 0), -slope * a / (2.0 * curvature), 0.5)
    next_step = torch.where(accept, 1.0, a * torch.clamp(shrink, 0.1, 0.5))
    reset = ~accept & (next_step < MIN_STEP)
    rho = torch.where(reset[:, None], 0.0, rho)
    next_step = torch.where(reset, 1.0, next_step)
    new_flat = torch.where(accept[:, None], trial, flat)

    # The attack's step (dlg_jax.attack.engine._programs.run_one): the value reported is the one at the dummy.
    reported = state.value
    active = ~(state.failed | state.converged)
    value_ok = torch.isfinite(reported)
    converged = active & value_ok & (reported <= state.threshold)
    moving = active & value_ok & ~converged
    step_ok = moving & torch.isfinite(new_flat).all(1)
    failed = state.failed | (active & ~value_ok) | (moving & ~step_ok)
    new_flat = torch.where(step_ok[:, None], new_flat, flat)
    loss = torch.where(active & value_ok, reported, state.loss)
    images, label_logits = _split(new_flat, state.images, state.label_logits)
    new_state = state._replace(
        images=images, label_logits=label_logits, loss=loss, failed=failed, converged=state.converged | converged,
        iterations=state.iterations + step_ok.long(), evaluations=state.evaluations + active.long(),
        value=torch.where(accept, value, state.value),
        grad=torch.where(accept[:, None], grad, state.grad), rho=rho, sy=sy_matrix, yy=yy_matrix,
        s_grad=s_grad, y_grad=y_grad, head=head, step_size=next_step)
    return new_state, loss


@functools.lru_cache(maxsize=16)
def _lockstep_program(net: nn.Module, compiled: bool) -> Callable:
    """``step(params, targets, state) -> (state, loss)``: :func:`_lockstep_step` with ``net``'s batched
    objective bound; ``compiled``: through ``torch.compile``, objective included (whole graph, static
    shapes; compiled on first use per chunk shape)."""
    step = functools.partial(_lockstep_step, _batched_matching(net))
    if compiled:
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, _RECOMPILE_LIMIT)
        step = torch.compile(step, fullgraph=True, dynamic=False)
    return step


def lockstep_init(net: nn.Module, target_grads, images, label_logits, history_size: int,
                  tolerance: float) -> LockstepState:
    """The state of restarts ``images [R, B, C, H, W]``, ``label_logits [R, B, K]`` (tensors): one evaluation
    of ``J``, empty memory, first trial step 1; converged when ``J <= tolerance * ||dW||^2`` (the attack's
    l2 threshold), failed when ``J`` is not finite."""
    images, label_logits = _split(_flat(images, label_logits), images, label_logits)
    value, (grad_images, grad_logits) = functional_objective(net, target_grads)(images, label_logits)
    grad = _flat(grad_images, grad_logits)
    restarts, n = grad.shape
    zeros = lambda *shape: torch.zeros(shape, dtype=value.dtype, device=value.device)
    threshold = torch.full_like(value, tolerance) * sum(torch.sum(t * t) for t in target_grads)
    count = lambda start: torch.full((restarts,), start, dtype=torch.int64, device=value.device)
    # Every field its own tensor: torch.compile guards on aliasing between its inputs.
    return LockstepState(images, label_logits, value.clone(), ~torch.isfinite(value), value <= threshold, count(0),
                         count(1), threshold, value, grad, zeros(restarts, history_size, n),
                         zeros(restarts, history_size, n), zeros(restarts, history_size),
                         zeros(restarts, history_size, history_size), zeros(restarts, history_size, history_size),
                         zeros(restarts, history_size), zeros(restarts, history_size), count(0), torch.ones_like(value))


@dataclasses.dataclass
class LockstepResult:
    """All restarts of one target, as :class:`dlg_jax.attack.engine.AttackResult` keeps them for one target (numpy):
    ``images [R, B, H, W, C]``, ``label_logits [R, B, K]``, ``loss [R]`` (``J`` at the final dummy),
    ``failed``/``converged [R]``, ``iterations``/``evaluations [R]``, ``loss_history [R, I]``; ``seconds``:
    the iterations' wall time, all chunks (the initial evaluations and compilation excluded);
    ``restart_iterations``: steps run times restarts."""

    images: np.ndarray
    label_logits: np.ndarray
    loss: np.ndarray
    failed: np.ndarray
    converged: np.ndarray
    iterations: np.ndarray
    evaluations: np.ndarray
    loss_history: np.ndarray
    seconds: float
    restart_iterations: int


def lockstep_attack(net: nn.Module, target_grads, images: np.ndarray, label_logits: np.ndarray, *,
                    iterations: int, history_size: int = 100, tolerance: float = 1e-8, chunk_size: int = 16,
                    block: int = 100, compiled: bool = False) -> LockstepResult:
    """The JAX attack's algorithm in PyTorch: restarts from ``images [R, B, H, W, C]``,
    ``label_logits [R, B, K]`` run together, ``chunk_size`` at a time (the attack's CPU default; a shorter
    last chunk runs as it is), each chunk ``iterations`` steps of lockstep L-BFGS (:mod:`dlg_jax.attack.lockstep_lbfgs`:
    one evaluation of ``J`` per step for every restart, backtracking unrolled across steps) on the
    ``torch.func`` objective batched over the chunk (:func:`_batched_matching`), with the attack's stopping
    rules (:func:`lockstep_init`; converged and failed restarts are frozen; a chunk stops at the first
    multiple of ``block`` steps at which all its restarts are). ``compiled``: each step through
    ``torch.compile`` (compiled on first use per net and chunk shape; warm it up before timing)."""
    device = device_of(net)
    step = _lockstep_program(net, compiled)
    params, targets = _named(net, target_grads)
    outputs, seconds, restart_iterations = [], 0.0, 0
    for start in range(0, len(images), chunk_size):
        state = lockstep_init(net, target_grads, to_nchw(images[start:start + chunk_size], device),
                              to_tensor(label_logits[start:start + chunk_size], device), history_size, tolerance)
        history = []
        started = time.perf_counter()
        for done in range(1, iterations + 1):
            state, loss = step(params, targets, state)
            history.append(loss)
            if (done % block == 0 or done == iterations) and bool((state.failed | state.converged).all()):
                break
        history = torch.stack(history, 1).cpu().numpy()
        seconds += time.perf_counter() - started
        restart_iterations += history.size
        outputs.append((state, history))
    final = functional_objective(net, target_grads)
    columns = max(h.shape[1] for _, h in outputs)  # a chunk that stopped early repeats its last value
    pad = lambda h: np.concatenate([h, np.repeat(h[:, -1:], columns - h.shape[1], 1)], 1)
    gather = lambda field: np.concatenate([getattr(s, field).detach().cpu().numpy() for s, _ in outputs])
    return LockstepResult(
        images=np.concatenate([to_nhwc(s.images) for s, _ in outputs]), label_logits=gather("label_logits"),
        loss=np.concatenate([final(s.images, s.label_logits)[0].detach().cpu().numpy() for s, _ in outputs]),
        failed=gather("failed"), converged=gather("converged"), iterations=gather("iterations"),
        evaluations=gather("evaluations"), loss_history=np.concatenate([pad(h) for _, h in outputs]),
        seconds=seconds, restart_iterations=restart_iterations)
