"""The utility side of a defense: train a model with the defense on every step's gradient, report test accuracy.

The embedded set is split deterministically: the last ``test_fraction`` of the indices is the test set,
the rest the training set (for ``colour`` the last 20% are crops 8-9 of every photo, for ``faces`` an
equal number of faces and non-faces, so both halves hold every class). A step draws a minibatch of
``batch_size`` training examples (a fresh permutation every epoch), computes the gradient of the victim's
loss (:func:`dlg_jax.victim.gradients.batch_loss`) and updates with

    optimiser = optax.chain(defense.transform, optax.sgd(learning_rate, momentum))

i.e. the *same* transform that defends the shared gradient in the attack experiment sees every
training gradient first (a per-example defense such as ``dp`` gets the per-example gradients
``[batch_size, ...]`` from ``jax.vmap``, DP-SGD; a defense that needs the client's data, ``soteria``,
gets ``model=`` and the step's minibatch ``inputs=`` as optax extra arguments). ``runs`` independent
trainings (their own weights, batch order and defense keys) are vmapped into one compiled ``lax.scan``
over all steps.

:func:`train_victim` trains one victim before it is attacked (``dlg-jax attack --train-steps N``) and
returns its parameters: researchers attack checkpoints, not only freshly initialised networks.
"""

import dataclasses
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlg_jax.data.datasets import get_dataset
from dlg_jax.errors import DLGInputError, check_choice, check_number, check_positive_int
from dlg_jax.models import FixedCollections, Model, build_model
from dlg_jax.victim.defenses import Defense, with_key
from dlg_jax.victim.gradients import batch_loss, one_hot, soft_cross_entropy


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train (validated on construction). ``runs``: independent trainings averaged in the report."""

    model: str = "lenet"
    dataset: str = "colour"
    norm: str = "none"
    steps: int = 500
    batch_size: int = 16
    learning_rate: float = 0.01
    momentum: float = 0.9
    runs: int = 3
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self):
        check_positive_int("training steps", self.steps)
        check_positive_int("training batch size", self.batch_size)
        check_positive_int("training runs", self.runs)
        check_number("training learning rate", self.learning_rate, low=0.0, low_inclusive=False)
        check_number("training momentum", self.momentum, low=0.0, high=1.0)
        check_number("test fraction", self.test_fraction, low=0.0, low_inclusive=False, high=1.0)


@dataclasses.dataclass
class TrainResult:
    """``test_accuracy`` / ``train_accuracy [runs]`` after the last step, ``loss [runs, steps]`` (the
    minibatch loss before each update), ``seconds`` (compile + run)."""

    test_accuracy: np.ndarray
    train_accuracy: np.ndarray
    loss: np.ndarray
    seconds: float


def split_indices(size: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(train, test)`` indices: the last ``round(test_fraction * size)`` indices are the test set."""
    test = int(round(test_fraction * size))
    if not 0 < test < size:
        raise DLGInputError(f"test fraction {test_fraction} leaves no train or no test data in {size} examples")
    return np.arange(size - test), np.arange(size - test, size)


def _accuracy(model, params, images, labels):
    return jnp.mean(jnp.argmax(model.apply(params, images), axis=-1) == labels)


def train(config: TrainConfig, defense: Defense) -> TrainResult:
    """Train ``config.runs`` models with ``defense`` on every gradient; see the module docstring."""
    source = get_dataset(config.dataset)
    train_ids, test_ids = split_indices(source.size, config.test_fraction)
    if config.batch_size > len(train_ids):
        raise DLGInputError(f"training batch size {config.batch_size} exceeds the {len(train_ids)} training examples")
    options = {"norm": config.norm} if config.model.startswith("resnet") else {}
    model = build_model(config.model, source.input_shape, source.num_classes, **options)
    train_x, train_y = (jnp.asarray(a) for a in source.examples(train_ids))
    test_x, test_y = (jnp.asarray(a) for a in source.examples(test_ids))
    optimiser = optax.chain(defense.transform, optax.sgd(config.learning_rate, config.momentum))
    per_epoch = len(train_ids) // config.batch_size
    epochs = -(-config.steps // per_epoch)

    def loss_fn(params, x, y):
        return batch_loss(model, params, x, one_hot(y, model.num_classes, x.dtype))

    def one_run(key):
        init_key, order_key, defense_key = jax.random.split(key, 3)
        params = model.init(init_key)
        state = with_key(optimiser.init(params), defense_key)
        order = jax.vmap(lambda k: jax.random.permutation(k, len(train_ids)))(jax.random.split(order_key, epochs))
        batches = order[:, :per_epoch * config.batch_size].reshape(-1, config.batch_size)[:config.steps]

        def step(carry, batch):
            params, state = carry
            x, y = train_x[batch], train_y[batch]
            if defense.per_example:
                loss = loss_fn(params, x, y)
                grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0, 0))(params, x[:, None], y[:, None])
            else:
                loss, grads = jax.value_and_grad(loss_fn)(params, x, y)
            extra = {"model": model, "inputs": x} if defense.needs_inputs else {}  # soteria ranks on this batch
            updates, state = optimiser.update(grads, state, params, **extra)
            return (optax.apply_updates(params, updates), state), loss

        (params, _), losses = jax.lax.scan(step, (params, state), batches)
        return (_accuracy(model, params, test_x, test_y), _accuracy(model, params, train_x, train_y), losses)

    started = time.perf_counter()
    keys = jax.random.split(jax.random.key(config.seed), config.runs)
    test_accuracy, train_accuracy, losses = jax.jit(jax.vmap(one_run))(keys)
    test_accuracy = np.asarray(test_accuracy)
    return TrainResult(test_accuracy, np.asarray(train_accuracy), np.asarray(losses), time.perf_counter() - started)


# ---------------------------------------------------------------------------------------------------
# Training the victim before the attack.

VICTIM_OPTIMISERS = ("sgd", "adam")


@dataclasses.dataclass(frozen=True)
class VictimTraining:
    """How the victim is trained before it shares a gradient (validated on construction).

    ``steps`` optimiser steps, or ``epochs`` passes over the training images (one of the two; ``0`` means
    untrained); minibatches of ``batch_size`` drawn without replacement, reshuffled every epoch from
    ``seed``; ``optimiser`` ``sgd`` (with ``momentum``) or ``adam`` at ``learning_rate``."""

    steps: int | None = None
    epochs: int | None = None
    batch_size: int = 32
    learning_rate: float = 0.05
    optimiser: str = "sgd"
    momentum: float = 0.9
    seed: int = 0

    def __post_init__(self):
        if (self.steps is None) == (self.epochs is None):
            raise DLGInputError("give either training steps or training epochs, not both or neither")
        for what, value in (("training steps", self.steps), ("training epochs", self.epochs)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer))
                                      or value < 0):
                raise DLGInputError(f"{what} must be an integer >= 0, got {value!r}")
        check_positive_int("training batch size", self.batch_size)
        check_choice("training optimiser", self.optimiser, VICTIM_OPTIMISERS)
        check_number("training learning rate", self.learning_rate, low=0.0, low_inclusive=False)
        check_number("training momentum", self.momentum, low=0.0, high=1.0)

    def total_steps(self, examples: int) -> int:
        """The number of optimiser steps on ``examples`` training images."""
        return int(self.steps) if self.steps is not None else int(self.epochs) * self.steps_per_epoch(examples)

    def steps_per_epoch(self, examples: int) -> int:
        return max(1, examples // min(self.batch_size, examples))

    def describe(self) -> str:
        amount = f"{self.steps} steps" if self.steps is not None else f"{self.epochs} epochs"
        return f"{amount} of {self.optimiser} at lr {self.learning_rate:g}, batch {self.batch_size}, seed {self.seed}"


class TrainedVictim(NamedTuple):
    """The trained victim: ``params``, the ``model`` (with updated running statistics when it keeps
    batch norm's ``batch_stats``), ``loss [steps]`` (each minibatch's loss before its update) and
    ``train_accuracy`` on the training images after the last step."""

    model: Model
    params: Any
    loss: np.ndarray
    train_accuracy: float


TRAIN_BLOCK = 50  # steps per compiled block between progress reports


def train_victim(model: Model, params: Any, images: np.ndarray, labels: np.ndarray, training: VictimTraining,
                 progress: Callable[[int, int, float], None] | None = None) -> TrainedVictim:
    """Train ``params`` on ``images [N, *input_shape]``, ``labels [N]`` with the victim's loss
    (:func:`dlg_jax.victim.gradients.batch_loss`): ``W <- W - update(grad_W loss(W; x_batch, y_batch))`` with optax
    ``sgd`` or ``adam``. A model whose calls update collections (batch norm's running averages in train
    mode) carries them along and gets them back updated. ``progress(step, total, loss)`` is called after
    every block of steps. Deterministic for a seed."""
    images, labels = np.asarray(images), np.asarray(labels, np.int32)
    if len(images) == 0 or len(images) != len(labels):
        raise DLGInputError(f"training needs as many labels as images, at least one; got {len(images)} images "
                            f"and {len(labels)} labels")
    total = training.total_steps(len(images))
    batch = min(training.batch_size, len(images))
    per_epoch = training.steps_per_epoch(len(images))
    optimiser = (optax.sgd(training.learning_rate, training.momentum or None) if training.optimiser == "sgd"
                 else optax.adam(training.learning_rate))
    x_all = jnp.asarray(images, jax.tree.leaves(params)[0].dtype)
    y_all = jnp.asarray(labels)
    fixed = {} if model.fixed is None else model.fixed.collections

    def loss_fn(weights, collections, x, y):
        current = dataclasses.replace(model, fixed=FixedCollections(collections)) if collections else model
        logits, updates = current.apply_collecting(weights, x)
        return soft_cross_entropy(logits, one_hot(y, model.num_classes, x.dtype)), {**collections, **updates}

    @jax.jit
    def block(carry, batches):
        def step(carry, ids):
            weights, collections, state = carry
            (loss, collections), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                weights, collections, x_all[ids], y_all[ids])
            updates, state = optimiser.update(grads, state, weights)
            return (optax.apply_updates(weights, updates), collections, state), loss

        return jax.lax.scan(step, carry, batches)

    epochs = -(-total // per_epoch) if total else 0
    rng = np.random.default_rng([training.seed, 0x7A1])
    order = np.concatenate([rng.permutation(len(images))[:per_epoch * batch] for _ in range(epochs)]) if epochs \
        else np.zeros(0, np.int64)
    schedule = order.reshape(-1, batch)[:total]
    carry = (params, fixed, optimiser.init(params))
    losses = []
    for start in range(0, total, TRAIN_BLOCK):
        carry, loss = block(carry, jnp.asarray(schedule[start:start + TRAIN_BLOCK]))
        losses.append(np.asarray(loss))
        if progress is not None:
            progress(min(start + TRAIN_BLOCK, total), total, float(losses[-1][-1]))
    params, fixed, _ = carry
    if model.fixed is not None:
        model = dataclasses.replace(model, fixed=FixedCollections(fixed))
    logits = model.apply(params, x_all)
    accuracy = float(jnp.mean(jnp.argmax(logits, axis=-1) == y_all))
    return TrainedVictim(model, params, np.concatenate(losses) if losses else np.zeros(0, np.float32), accuracy)
