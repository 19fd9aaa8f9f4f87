"""Shared fixtures: small models, one real embedded image and its shared gradient."""

import gc
import os

import jax
import numpy as np
import pytest

from dlg_jax.attack.engine import clear_compiled
from dlg_jax.data.datasets import get_dataset
from dlg_jax.models import build_model
from dlg_jax.victim.gradients import shared_gradients

# The CLI turns on JAX's persistent compilation cache under ~/.cache; tests that want it pass a folder.
os.environ.setdefault("DLG_JAX_COMPILATION_CACHE", "off")


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
    """Each test module's compiled programs are freed when it ends: the suite compiles hundreds of distinct
    programs in one process, and keeping them all grew it past 6 GB."""
    yield
    clear_compiled()
    gc.collect()
# What benchmarks.common.require_torch sets, here because a test module may import torch first: OpenMP
# threads that spin while descheduled make PyTorch tens of times slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session")
def colour():
    return get_dataset("colour")


@pytest.fixture(scope="session")
def lenet(colour):
    model = build_model("lenet", colour.input_shape, colour.num_classes)
    return model, model.init(jax.random.key(0))


@pytest.fixture(scope="session")
def two_targets(colour, lenet):
    """Two single-image targets (colour indices 0 and 1) and their shared gradients [2, ...]."""
    model, params = lenet
    images, labels = colour.examples([0, 1])
    images, labels = images[:, None], labels[:, None]
    return images, labels, shared_gradients(model, params, images, labels)


def recovery_chunk(default: int) -> int:
    """The chunk size (problems per vmapped batch) of a recovery test: ``default``, or
    ``$DLG_JAX_TEST_CHUNK_SIZE`` when set. Another chunk size batches the same matmuls differently and so
    rounds differently: ``.ci/run`` reruns the tests marked ``recovery`` that way (and on another
    instruction set, single-threaded) to show that their margins hold on a CPU that rounds otherwise."""
    return int(os.environ.get("DLG_JAX_TEST_CHUNK_SIZE", default))


def psnr(a, b):
    return float(10 * np.log10(1.0 / np.mean((np.clip(a, 0, 1) - b) ** 2)))
