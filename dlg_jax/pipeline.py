"""The end-to-end DLG experiment: private data -> shared gradients -> attack -> metrics.

:func:`run_dlg` is what ``dlg-jax attack`` runs and the shortest way to use the library::

    from dlg_jax import run_dlg, AttackConfig
    run = run_dlg(model="lenet", dataset="colour", indices=[0, 1], config=AttackConfig(restarts=8))
    run.metrics.summary()          # {'psnr_mean': ..., 'label_accuracy': ..., ...}
    run.result.best_images         # [T, B, H, W, C]

``model`` may also be one's own :class:`~dlg_jax.models.Model` (``Model.from_flax(module, variables,
input_shape)``) with its ``params``, and :func:`save_run` writes the figures and
``metrics.json`` of any run.

Target ``t`` with start index ``i`` is the private batch of images ``i, i+1, ..., i+B-1``.
"""

import dataclasses
import os
from typing import Any, Callable, Sequence

import jax
import numpy as np

from dlg_jax.attack.engine import AttackConfig, AttackResult, Progress, RunOptions, run_attack
from dlg_jax.attack.labels import recover_labels
from dlg_jax.attack.precision import matmul_precision
from dlg_jax.data.datasets import DataSource, get_dataset
from dlg_jax.errors import DLGInputError, check_positive_int
from dlg_jax.files import atomic_write_json, prepare_output_dir
from dlg_jax.metrics import ReconstructionMetrics, evaluate
from dlg_jax.models import Model, build_model, victim_params
from dlg_jax.models.batchnorm import reference_statistics
from dlg_jax.models.checkpoints import load_checkpoint
from dlg_jax.victim.defenses import Defense, defended_gradients
from dlg_jax.victim.gradients import shared_gradients
from dlg_jax.victim.threat_models import (
    ThreatModel,
    co_client_indices,
    observed_gradients,
)
from dlg_jax.victim.training import VictimTraining, train_victim


@dataclasses.dataclass
class DLGRun:
    """A finished experiment: the private batches ``images [T, B, H, W, C]``, ``labels [T, B]``, the
    model and its parameters, the (defended) shared gradients the attacker saw (leading ``T`` axis), the
    attack result and its metrics."""

    model: Model
    params: Any
    dataset: DataSource
    indices: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    shared_grads: Any
    result: AttackResult
    metrics: ReconstructionMetrics
    threat: ThreatModel = ThreatModel()
    client_indices: np.ndarray | None = None
    config: AttackConfig | None = None
    training_loss: np.ndarray | None = None


def target_indices(dataset: DataSource, batch_size: int, indices: Sequence[int] | None,
                   targets: int | None) -> np.ndarray:
    """``[T, B]`` dataset indices: each start index ``i`` gives the batch ``i .. i+B-1``; ``targets=N``
    (without indices) gives the first ``N * B`` images in order."""
    batch_size = check_positive_int("batch size", batch_size)
    if indices is not None and targets is not None:
        raise DLGInputError("give either indices or a number of targets, not both")
    if indices is None:
        targets = check_positive_int("targets", 1 if targets is None else targets)
        starts = np.arange(targets) * batch_size
    else:
        starts = np.asarray(list(indices), dtype=np.int64).reshape(-1)
        if starts.size == 0:
            raise DLGInputError("indices is empty; give at least one dataset index")
    grid = starts[:, None] + np.arange(batch_size)[None, :]
    dataset.check_indices(grid)
    return grid


BN_REFERENCE_IMAGES = 512


def bn_reference(model: Model, params: Any, source: DataSource, grid: np.ndarray, config: AttackConfig) -> Any:
    """The BN prior's "stored" statistics: :func:`~dlg_jax.models.batchnorm.reference_statistics` of the
    first ``BN_REFERENCE_IMAGES`` images of ``source`` that are not in any target batch (``grid``), as if
    the model had been trained on the rest of the data (a DLG victim is untrained and keeps none)."""
    others = np.setdiff1d(np.arange(source.size), grid.reshape(-1))[:BN_REFERENCE_IMAGES]
    if others.size == 0:
        raise DLGInputError(f"the BN prior needs reference images besides the targets; dataset {source.name!r} "
                            f"has {source.size} images, all of them targets")
    return reference_statistics(model, params, source.examples(others)[0].astype(config.dtype))


def victim_model(model: str | Model, source: DataSource, num_classes: int | None,
                 model_options: dict | None) -> Model:
    """The attacked :class:`Model`: a registered ``model`` name built for ``source``'s images, or one's own
    ``Model`` checked against them (its input shape must be the images', its classes cover the labels)."""
    if num_classes is not None and num_classes < source.num_classes:
        raise DLGInputError(f"num_classes must be >= the dataset's {source.num_classes} classes, got {num_classes}")
    if not isinstance(model, Model):
        return build_model(model, source.input_shape, num_classes or source.num_classes, **(model_options or {}))
    if model_options or num_classes is not None:
        raise DLGInputError("model_options and num_classes are for a registered model name; "
                            f"model {model.name!r} is built already")
    if tuple(model.input_shape) != tuple(source.input_shape):
        raise DLGInputError(f"model {model.name!r} takes inputs {tuple(model.input_shape)}; dataset "
                            f"{source.name!r} has images {tuple(source.input_shape)} (resize with image_size)")
    if model.num_classes < source.num_classes:
        raise DLGInputError(f"model {model.name!r} has {model.num_classes} outputs; dataset {source.name!r} "
                            f"has {source.num_classes} classes")
    return model


def run_dlg(
    model: str | Model = "lenet",
    dataset: str | DataSource = "colour",
    *,
    indices: Sequence[int] | None = None,
    targets: int | None = None,
    batch_size: int = 1,
    config: AttackConfig = AttackConfig(),
    model_options: dict | None = None,
    defense: Defense | None = None,
    split: str | None = None,
    data_dir: str | None = None,
    image_size: int | None = None,
    run: RunOptions = RunOptions(),
    progress: Callable[[Progress], None] | None = None,
    num_classes: int | None = None,
    threat: ThreatModel = ThreatModel(),
    params: Any = None,
    checkpoint: str | os.PathLike | None = None,
    training: VictimTraining | None = None,
    training_progress: Callable[[int, int, float], None] | None = None,
) -> DLGRun:
    """Build the model (weights from ``config.seed``), compute each target's shared gradient, attack it
    and score the best restart per target.

    ``model``: a registered name (:data:`~dlg_jax.models.MODEL_NAMES`, with ``model_options``) or a
    :class:`~dlg_jax.models.Model` (e.g. ``Model.from_flax``); ``params``: the victim's weights (default:
    a fresh initialisation from ``config.seed``), checked against the model's tree; ``checkpoint``: a path
    to load them from instead (:func:`dlg_jax.models.checkpoints.load_checkpoint`). ``training``: train the
    victim first (:func:`dlg_jax.victim.training.train_victim`) on the dataset's images that are in no target's
    batch (the other clients' included), reporting to ``training_progress(step, total, loss)``; the run
    then holds the trained params and ``training_loss``.

    ``defense``: an optional victim-side :class:`~dlg_jax.victim.defenses.Defense` applied to each client's
    gradient before the attacker sees it (per-example defenses such as DP-SGD get per-example gradients).
    Labels are recovered from the (defended) gradient by ``config.labels`` unless it is ``joint``.
    ``num_classes``: the model's outputs (default: the dataset's classes; more, e.g. 100 as DLG's CIFAR-100
    LeNet, widens the final layer and with it the shared gradient). With ``config.bn_prior`` the reference
    statistics come from the dataset's other images (:func:`bn_reference`).
    ``threat``: what the attacker sees (:class:`~dlg_jax.victim.threat_models.ThreatModel`; default: the target's
    own gradient); a ``defense`` then acts in every client at its place (per-example defenses in each
    local step, the others on what a client sends). With ``K`` clients, ``K - 1`` other batches join each target's from the same dataset
    (:func:`~dlg_jax.victim.threat_models.co_client_indices`, from ``config.seed``); metrics score the target's.
    ``run``: how the attack runs (:class:`~dlg_jax.attack.engine.RunOptions`: chunks, devices, snapshots).
    """
    with matmul_precision(config.precision):  # the victim's gradient, label recovery and metrics too
        source = dataset if isinstance(dataset, DataSource) else get_dataset(
            dataset, split=split, data_dir=data_dir, image_size=image_size)
        grid = target_indices(source, batch_size, indices, targets)
        others = co_client_indices(source.size, grid, threat.clients, config.seed)  # [T, K - 1, B]
        net = victim_model(model, source, num_classes, model_options)
        if params is not None and checkpoint is not None:
            raise DLGInputError("give either params or a checkpoint, not both")
        if checkpoint is not None:
            net, params = load_checkpoint(checkpoint, net)
        elif params is None:
            params = victim_params(net, config.seed, dtype=np.dtype(config.dtype))
        net.check_params(params)
        params = jax.tree.map(lambda p: jax.numpy.asarray(p, config.dtype), params)
        training_loss = None
        if training is not None:
            rest = np.setdiff1d(np.arange(source.size), grid.reshape(-1))
            if rest.size == 0:
                raise DLGInputError(f"training needs images besides the targets; dataset {source.name!r} has "
                                    f"{source.size} images, all of them targets")
            trained = train_victim(net, params, *source.examples(rest), training, training_progress)
            net, params, training_loss = trained.model, trained.params, trained.loss
        bn_statistics = bn_reference(net, params, source, grid, config) if config.bn_prior else None
        images, labels = source.examples(grid.reshape(-1))
        images = images.reshape(*grid.shape, *source.input_shape).astype(config.dtype)
        labels = labels.reshape(grid.shape)
        if not threat.single_client:
            client_images, client_labels = images[:, None], labels[:, None]  # [T, K, B, ...], [T, K, B]
            if threat.clients > 1:
                more_images, more_labels = source.examples(others.reshape(-1))
                client_images = np.concatenate([client_images, more_images.reshape(
                    *others.shape, *source.input_shape).astype(config.dtype)], axis=1)
                client_labels = np.concatenate([client_labels, more_labels.reshape(others.shape)], axis=1)
            grads = observed_gradients(net, params, client_images, client_labels, threat, config.precision, defense,
                                       jax.random.fold_in(jax.random.key(config.seed), 0xDEF))
        elif defense is None:
            grads = shared_gradients(net, params, images, labels, config.precision)
        else:
            grads = defended_gradients(defense, net, params, images, labels,
                                       jax.random.fold_in(jax.random.key(config.seed), 0xDEF))
        fixed_labels = recover_labels(config.labels, net, params, grads, batch_size)
        result = run_attack(net, params, grads, batch_size, config, fixed_labels=fixed_labels,
                            bn_statistics=bn_statistics, run=run, progress=progress)
        metrics = evaluate(result.best_images, images, result.best_labels, labels)
        return DLGRun(net, params, source, grid, images, labels, grads, result, metrics, threat, others, config,
                      training_loss)


def save_run(run, out, extra: dict | None = None) -> dict:
    """Write a finished :class:`~dlg_jax.pipeline.DLGRun`'s ``reconstruction.png``, ``convergence.png`` and
    ``metrics.json`` into the directory ``out`` (created if needed; each file written atomically) and
    return the ``metrics.json`` payload: the model, dataset, batch size, attack config, summary, one row
    per target, the threat model, and ``extra`` (e.g. timing) on top."""
    from dlg_jax.figures import (  # matplotlib only when writing
        convergence_plot,
        reconstruction_grid,
    )

    out = prepare_output_dir(out)
    attack, metrics = run.result, run.metrics
    reconstruction_grid(os.path.join(out, "reconstruction.png"), run.images, attack.snapshots,
                        attack.snapshot_iterations, attack.best_images, metrics.assignment, metrics.slot_psnr)
    convergence_plot(os.path.join(out, "convergence.png"), attack.loss_history, attack.best_restart)
    rows = []
    for t, entry in enumerate(metrics.per_target()):
        best = attack.best_restart[t]
        entry.update(
            indices=run.indices[t].tolist(), true_labels=run.labels[t].tolist(),
            recovered_labels=attack.best_labels[t].tolist(), best_restart=int(best),
            best_loss=float(attack.loss[t, best]), restart_losses=attack.loss[t].tolist(),
            converged_restarts=int(attack.converged[t].sum()), failed_restarts=int(attack.failed[t].sum()),
            iterations_best=int(attack.iterations[t, best]), evaluations_best=int(attack.evaluations[t, best]),
            other_clients_indices=run.client_indices[t].tolist(),
        )
        rows.append(entry)
    payload = {
        "model": run.model.name, "dataset": run.dataset.name, "batch_size": int(run.images.shape[1]),
        "config": None if run.config is None else dataclasses.asdict(run.config),
        "summary": metrics.summary(), "targets": rows,
        "threat_model": {**dataclasses.asdict(run.threat), "description": run.threat.describe()},
        **(extra or {}),
    }
    atomic_write_json(os.path.join(out, "metrics.json"), payload)
    return payload
