"""The attacker inside a real federation: a Flower (``flwr``) server that records what clients send and
attacks it with the same engine.

A Flower simulation runs ``K`` virtual clients (``ClientApp``), client ``k`` holding the private batch
``client_data[k] = (x_k [B, *input_shape], y_k [B])``, and a ``ServerApp`` whose strategy,
:class:`RecordingStrategy`, is Flower's ``FedAvg`` plus a record of every reply. Each round the server
sends the global weights ``W`` (a flax params pytree as a Flower ``ArrayRecord``, leaves in tree order)
and each client answers with

- ``protocol="fedsgd"``: its gradient ``g_k = grad_W loss(W; x_k, y_k)``; the server steps
  ``W <- W - lr * sum_k n_k g_k / sum_k n_k``;
- ``protocol="fedavg"``: its weights ``W_S`` after ``S`` local SGD steps of size ``lr`` on its batch
  (:func:`dlg_jax.victim.threat_models.local_update`); the server averages them (Flower's ``FedAvg``).

The honest-but-curious server keeps each reply (:class:`Recorded`: round, client, the ``W`` it was sent,
the arrays it returned) and :func:`observed_gradient` turns one into what the attack matches: ``g_k``
itself, or ``(W - W_S) / (S * lr)`` (the threat models' FedAvg estimate), attacked at ``W`` by
:func:`dlg_jax.attack.engine.run_attack`. A client may apply a :class:`~dlg_jax.victim.defenses.Defense` before
sending (at its place, as in :mod:`dlg_jax.victim.threat_models`).

Needs the optional extra ``flower`` (``pip install 'dlg-jax[flower]'``: ``flwr``); Flower's simulation
engine runs clients on Ray in this process's machine (``ray`` is installed with ``flwr``'s simulation
extra or ours; set ``RAY_AUTH_MODE=disabled`` for local runs).
"""

import dataclasses
import os
from typing import Any, Sequence

import jax
import numpy as np

from dlg_jax.errors import DLGInputError, check_choice, check_positive_int
from dlg_jax.models import Model

try:
    from flwr.serverapp.strategy import FedAvg as _FedAvg
except ImportError:  # the optional extra is absent: every entry point raises DLGInputError
    _FedAvg = object

PROTOCOLS = ("fedsgd", "fedavg")


@dataclasses.dataclass
class Recorded:
    """One client's reply as the server saw it: ``round`` (1-based), ``client`` (its partition id), the
    global ``weights`` sent that round and the ``arrays`` it returned (both flax params pytrees)."""

    round: int
    client: int
    weights: Any
    arrays: Any


def _require_flwr():
    try:
        import flwr  # noqa: F401
    except ImportError:
        raise DLGInputError("the Flower federation needs the optional package flwr: "
                            "pip install 'dlg-jax[flower]'") from None


def to_array_record(tree: Any):
    from flwr.app import ArrayRecord

    return ArrayRecord([np.asarray(leaf, np.float32) for leaf in jax.tree.leaves(tree)])


def from_array_record(record, reference: Any) -> Any:
    return jax.tree.unflatten(jax.tree.structure(reference), record.to_numpy_ndarrays())


def flower_apps(model: Model, params: Any, client_data: Sequence[tuple[np.ndarray, np.ndarray]], *,
                protocol: str = "fedsgd", local_steps: int = 1, lr: float = 0.1, rounds: int = 1,
                defense: Any = None, seed: int = 0):
    """``(server_app, client_app, records)``: Flower apps of the federation in the module docstring,
    and the list the server's :class:`RecordingStrategy` appends every reply to."""
    _require_flwr()
    from flwr.app import Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp

    check_choice("protocol", protocol, PROTOCOLS)
    local_steps = check_positive_int("local steps", local_steps)
    rounds = check_positive_int("rounds", rounds)
    if protocol == "fedsgd" and local_steps != 1:
        raise DLGInputError(f"protocol 'fedsgd' sends one gradient; local steps must be 1, got {local_steps}")
    if len(client_data) < 2:
        raise DLGInputError(f"a Flower federation needs at least 2 clients, got {len(client_data)}")
    client_data = [(np.asarray(x, np.float32), np.asarray(y, np.int32)) for x, y in client_data]
    params = jax.tree.map(lambda p: np.asarray(p, np.float32), params)
    records: list[Recorded] = []
    client_app = ClientApp()

    @client_app.train()
    def train(message: Message, context: Context) -> Message:
        from dlg_jax.victim.threat_models import local_update

        client = int(context.node_config["partition-id"])
        x, y = client_data[client]
        weights = from_array_record(message.content["arrays"], params)
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), int(message.content["config"]["server-round"])),
                                 client)
        share = local_update(model, weights, x, y, local_steps, lr, defense, key)
        if protocol == "fedavg":
            share = jax.tree.map(lambda w, s: w - local_steps * lr * s, weights, share)  # W_S
        metrics = MetricRecord({"num-examples": len(x), "partition-id": client})
        return Message(content=RecordDict({"arrays": to_array_record(share), "metrics": metrics}), reply_to=message)

    strategy = RecordingStrategy(records, params, protocol, lr, min_available_nodes=len(client_data),
                                 min_train_nodes=len(client_data), fraction_evaluate=0.0)
    server_app = ServerApp()

    @server_app.main()
    def main(grid: Grid, context: Context) -> None:
        strategy.start(grid=grid, initial_arrays=to_array_record(params), num_rounds=rounds)

    return server_app, client_app, records


class RecordingStrategy(_FedAvg):
    """Flower's ``FedAvg`` that appends every reply to ``records`` as a :class:`Recorded` (module
    docstring); with ``protocol="fedsgd"`` the replies are gradients and the new weights
    ``W - lr * (their weighted mean)``. ``reference``: a params pytree giving the arrays' tree."""

    def __init__(self, records: list, reference: Any, protocol: str, lr: float, **options):
        _require_flwr()
        super().__init__(**options)
        self.records, self.reference, self.protocol, self.lr = records, reference, protocol, lr
        self.current = {}

    def configure_train(self, server_round, arrays, config, grid):
        self.current[server_round] = from_array_record(arrays, self.reference)
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        weights = self.current[server_round]
        for reply in replies:
            if not reply.has_error():
                self.records.append(Recorded(server_round, int(reply.content["metrics"]["partition-id"]),
                                             weights, from_array_record(reply.content["arrays"], self.reference)))
        arrays, metrics = super().aggregate_train(server_round, replies)
        if self.protocol == "fedsgd" and arrays is not None:
            mean = from_array_record(arrays, self.reference)
            arrays = to_array_record(jax.tree.map(lambda w, g: w - self.lr * g, weights, mean))
        return arrays, metrics


def run_federation(model: Model, params: Any, client_data: Sequence[tuple[np.ndarray, np.ndarray]], *,
                   protocol: str = "fedsgd", local_steps: int = 1, lr: float = 0.1, rounds: int = 1,
                   defense: Any = None, seed: int = 0, cpus: int | None = None) -> list[Recorded]:
    """Run the Flower simulation of :func:`flower_apps` with one virtual client per ``client_data`` entry
    and return the server's records (one per client and round)."""
    server_app, client_app, records = flower_apps(model, params, client_data, protocol=protocol,
                                                  local_steps=local_steps, lr=lr, rounds=rounds, defense=defense,
                                                  seed=seed)
    from flwr.simulation import run_simulation

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    cpus = cpus or min(len(client_data), os.cpu_count() or 1)
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(client_data),
                   backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
                                   "init_args": {"num_cpus": cpus, "num_gpus": 0, "include_dashboard": False}})
    if len(records) != rounds * len(client_data):
        raise RuntimeError(f"the Flower simulation recorded {len(records)} replies, expected "
                           f"{rounds * len(client_data)}; see Flower's log above")
    return records


def observed_gradient(record: Recorded, protocol: str = "fedsgd", local_steps: int = 1, lr: float = 0.1) -> Any:
    """What the attack matches for one recorded reply, with a leading targets axis of 1: the gradient
    itself (``fedsgd``) or ``(W - W_S) / (S * lr)`` (``fedavg``)."""
    check_choice("protocol", protocol, PROTOCOLS)
    if protocol == "fedsgd":
        grads = record.arrays
    else:
        grads = jax.tree.map(lambda w, w_s: (w - w_s) / (local_steps * lr), record.weights, record.arrays)
    return jax.tree.map(lambda g: np.asarray(g)[None], grads)


__all__ = ["PROTOCOLS", "Recorded", "RecordingStrategy", "flower_apps", "run_federation", "observed_gradient"]
