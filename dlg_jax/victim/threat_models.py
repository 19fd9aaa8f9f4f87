"""Threat models: what the attacker sees of the target client's private batch.

Every client ``k`` holds a private batch ``(x_k [B, H, W, C], y_k [B])`` and the shared weights ``W``;
client 0 is the target. The attacker knows ``W``, the model, ``B`` and the threat model below, and sees

- **one client, one step** (``clients=1, local_steps=1``, DLG's setting, FedSGD): the target's gradient
  ``g_0 = grad_W loss(W; x_0, y_0)`` (:func:`dlg_jax.victim.gradients.shared_gradient`, unchanged);
- **K clients aggregated** (``clients=K``): a parameter server or an all-reduce combines what the clients
  share, ``sum_k s_k`` (``aggregate="sum"``) or ``(1 / K) sum_k s_k`` (``"mean"``, the usual average). With
  ``"mean"`` and one step each this *is* the gradient of the union batch of ``K B`` images, of which the
  attacker wants the target's ``B``;
- **FedAvg, S local steps** (``local_steps=S``, McMahan et al. 2017): each client runs
  ``S`` plain SGD steps on its *same* batch from ``W``, ``W_{s+1} = W_s - lr * grad_W loss(W_s)``, and shares
  its new weights ``W_S``. The attacker turns the weight change into the gradient it matches with the
  standard approximation ``dW ~= (W - W_S) / (S * lr) = (1 / S) sum_s grad_W loss(W_s)`` (exact for
  ``S = 1``) and attacks at the original ``W``; the approximation's error grows with ``S * lr``. (Inverting
  Gradients, Geiping et al. 2020, section 6, instead unrolls the ``S`` steps on the dummy; not built here.)

Both combine: ``K`` clients each run ``S`` local steps and the aggregate of their weight changes, divided
by ``S * lr``, is matched (:func:`client_shares` is each client's ``s_k``; the division is linear, so
aggregating ``s_k`` equals aggregating the weight changes). With ``S = 1`` a client shares its gradient
itself (FedSGD), bit for bit the single-client victim; ``local_lr`` is then unused.

The other clients' batches are other images of the same dataset, disjoint from the target's, drawn
without replacement from the seed (:func:`co_client_indices`); the attacker never sees them.

**Defenses** (:mod:`dlg_jax.victim.defenses`) act where a client applies them. A per-example defense (DP-SGD,
``dp``, and a chain that starts with it) replaces the gradient of *every local step*:
``W_{s+1} = W_s - lr * D(per-example grads at W_s)``, with fresh noise each step, so with ``S = 1`` the
share is ``D(g_i)`` itself. Every other defense (noise, pruning, precision, Soteria) acts on what the
client sends: ``s_k~ = D(s_k)`` after its ``S`` steps (Soteria ranks the features at the round's ``W`` on
the client's own batch). Each client draws its own noise: client ``k`` of target ``t`` uses
``c = fold_in(fold_in(key, t), k)``, its local step ``s`` ``fold_in(c, s)`` and its send ``fold_in(c, S)``.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlg_jax.attack.precision import DEFAULT_PRECISION, matmul_precision
from dlg_jax.errors import DLGInputError, check_choice, check_number, check_positive_int
from dlg_jax.models import Model
from dlg_jax.victim.gradients import shared_gradient

AGGREGATES = ("mean", "sum")


@dataclasses.dataclass(frozen=True)
class ThreatModel:
    """What the attacker observes (module docstring): ``clients`` ``K >= 1`` aggregated by ``aggregate``
    (``mean`` or ``sum``), each after ``local_steps`` ``S >= 1`` SGD steps of size ``local_lr > 0``."""

    clients: int = 1
    aggregate: str = "mean"
    local_steps: int = 1
    local_lr: float = 0.1

    def __post_init__(self):
        check_positive_int("number of clients K", self.clients)
        check_choice("aggregate", self.aggregate, AGGREGATES)
        check_positive_int("local steps S", self.local_steps)
        check_number("local learning rate", self.local_lr, low=0.0, low_inclusive=False)

    @property
    def single_client(self) -> bool:
        """True for DLG's own setting: the target alone shares one step's gradient."""
        return self.clients == 1 and self.local_steps == 1

    def describe(self) -> str:
        """A one-line name of the threat model (for tables and logs)."""
        if self.single_client:
            return "one client, one gradient step"
        parts = [f"{self.aggregate} of {self.clients} clients"] if self.clients > 1 else ["one client"]
        if self.local_steps > 1:
            parts.append(f"FedAvg {self.local_steps} local steps at lr {self.local_lr:g}")
        return ", ".join(parts)


def defend_once(defense: Any, grads: Any, key: jax.Array, model: Model, params: Any, images: jnp.ndarray) -> Any:
    """``defense``'s transform applied once to ``grads`` from a fresh state keyed ``key`` (Soteria and other
    ``needs_inputs`` defenses also get ``model``, ``params`` and the client's ``images``)."""
    from dlg_jax.victim.defenses import with_key

    transform = optax.with_extra_args_support(defense.transform)
    state = with_key(transform.init(grads), key)
    extra = {"model": model, "inputs": images} if defense.needs_inputs else {}
    return transform.update(grads, state, params, **extra)[0]


def local_update(model: Model, params: Any, images: jnp.ndarray, labels: jnp.ndarray, steps: int,
                 lr: float, defense: Any = None, key: jax.Array | None = None) -> Any:
    """One client's share ``s`` for ``images [B, H, W, C]``, ``labels [B]``: its gradient at ``W`` when
    ``steps == 1``, else the attacker's estimate ``(W - W_S) / (S * lr)`` from the weights ``W_S`` after
    ``S`` SGD steps ``W_{s+1} = W_s - lr * grad_W loss(W_s)`` on the same batch. Parameter-shaped pytree.

    ``defense`` (a :class:`~dlg_jax.victim.defenses.Defense`, with the client's ``key``): a per-example one
    replaces each step's gradient, any other defends the share (module docstring)."""
    per_example = defense is not None and defense.per_example

    def gradient(weights, step):
        if not per_example:
            return shared_gradient(model, weights, images, labels)
        examples = jax.vmap(lambda x, y: shared_gradient(model, weights, x[None], y[None]))(images, labels)
        return defend_once(defense, examples, jax.random.fold_in(key, step), model, weights, images)

    if steps == 1:
        share = gradient(params, 0)
    else:
        def step(weights, index):
            return jax.tree.map(lambda w, g: w - lr * g, weights, gradient(weights, index)), None

        final, _ = jax.lax.scan(step, params, jnp.arange(steps))
        share = jax.tree.map(lambda w, w_s: (w - w_s) / (steps * lr), params, final)
    if defense is not None and not per_example:
        share = defend_once(defense, share, jax.random.fold_in(key, steps), model, params, images)
    return share


def client_shares(model: Model, params: Any, images: jnp.ndarray, labels: jnp.ndarray, threat: ThreatModel,
                  precision: str = DEFAULT_PRECISION, defense: Any = None, key: jax.Array | int = 0) -> Any:
    """Every client's share ``s_k`` (:func:`local_update`) for ``images [T, K, B, H, W, C]``, ``labels
    [T, K, B]`` (``T`` targets, ``K`` clients each): a parameter-shaped pytree with leading ``[T, K]``.
    ``defense``: every client's, keyed from ``key`` (module docstring)."""
    key = jax.random.key(key) if isinstance(key, int) else key
    with matmul_precision(precision):
        return _client_shares(model, threat.local_steps, float(threat.local_lr), defense, params,
                              jnp.asarray(images), jnp.asarray(labels), key)


@jax.jit(static_argnums=(0, 1, 2, 3))
def _client_shares(model, steps, lr, defense, params, images, labels, key):
    def one(x, y, client_key):
        return local_update(model, params, x, y, steps, lr, defense, client_key)

    targets, clients = images.shape[:2]
    keys = jax.vmap(lambda t: jax.vmap(lambda k: jax.random.fold_in(jax.random.fold_in(key, t), k))(
        jnp.arange(clients)))(jnp.arange(targets))
    return jax.vmap(jax.vmap(one))(images, labels, keys)


def aggregate(shares: Any, how: str) -> Any:
    """``sum_k s_k`` or ``(1 / K) sum_k s_k`` over axis 1 (the clients) of every leaf ``[T, K, ...]``."""
    check_choice("aggregate", how, AGGREGATES)
    reduce = jnp.sum if how == "sum" else jnp.mean
    return jax.tree.map(lambda leaf: reduce(leaf, axis=1), shares)


def observed_gradients(model: Model, params: Any, images: jnp.ndarray, labels: jnp.ndarray, threat: ThreatModel,
                       precision: str = DEFAULT_PRECISION, defense: Any = None, key: jax.Array | int = 0) -> Any:
    """What the attacker matches for each of ``T`` targets: the aggregate of the ``K`` clients' (defended)
    shares, ``images [T, K, B, H, W, C]``, ``labels [T, K, B]`` (client 0: the target). Leading ``T`` axis."""
    if np.shape(images)[1] != threat.clients or np.shape(labels)[1] != threat.clients:
        raise DLGInputError(f"expected {threat.clients} clients on axis 1 of images and labels, "
                            f"got {np.shape(images)[1]} and {np.shape(labels)[1]}")
    return aggregate(client_shares(model, params, images, labels, threat, precision, defense, key), threat.aggregate)


def co_client_indices(dataset_size: int, targets: np.ndarray, clients: int, seed: int) -> np.ndarray:
    """Dataset indices ``[T, K - 1, B]`` of the other clients' batches for the targets' ``[T, B]``:
    drawn without replacement from the images not in target ``t``'s batch, by a generator seeded from
    ``(seed, t)``; so the same seed gives the same clients, and a target never shares an image with them."""
    targets = np.asarray(targets, dtype=np.int64)
    count, batch = targets.shape
    needed = clients * batch
    if needed > dataset_size:
        raise DLGInputError(f"{clients} clients x batch size {batch} need {needed} distinct images; "
                            f"the dataset has {dataset_size}")
    rows = []
    for t in range(count):
        pool = np.setdiff1d(np.arange(dataset_size), targets[t])
        rng = np.random.default_rng([seed, 0x7EA7, t])
        rows.append(rng.choice(pool, size=(clients - 1) * batch, replace=False).reshape(clients - 1, batch))
    return np.stack(rows).astype(np.int64)


__all__ = ["AGGREGATES", "ThreatModel", "defend_once", "local_update", "client_shares", "aggregate", "observed_gradients",
           "co_client_indices"]
