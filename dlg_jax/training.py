"""The utility side of a defense: train a model with the defense on every step's gradient, report test accuracy.

The embedded set is split deterministically: the last ``test_fraction`` of the indices is the test set,
the rest the training set (for ``colour`` the last 20% are crops 8-9 of every photo, for ``faces`` an
equal number of faces and non-faces, so both halves hold every class). A step draws a minibatch of
``batch_size`` training examples (a fresh permutation every epoch), computes the gradient of the victim's
loss (:func:`dlg_jax.victim.batch_loss`) and updates with

    optimiser = optax.chain(defense.transform, optax.sgd(learning_rate, momentum))

i.e. the *same* transform that defends the shared gradient in the attack experiment sees every
training gradient first (a per-example defense such as ``dp`` gets the per-example gradients
``[batch_size, ...]`` from ``jax.vmap``, DP-SGD; a defense that needs the client's data, ``soteria``,
gets ``model=`` and the step's minibatch ``inputs=`` as optax extra arguments). ``runs`` independent
trainings (their own weights, batch order and defense keys) are vmapped into one compiled ``lax.scan``
over all steps.
"""

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlg_jax.data import get_dataset
from dlg_jax.defenses import Defense, with_key
from dlg_jax.errors import DLGInputError, check_number, check_positive_int
from dlg_jax.models import build_model
from dlg_jax.victim import batch_loss, one_hot


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
