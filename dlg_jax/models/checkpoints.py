"""Victim checkpoints: save and load a model's weights (and batch norm's stored statistics).

Formats, chosen by the path:

- a file ``*.msgpack`` (what training writes): flax serialization of the variables
  ``{"params": ..., "batch_stats": ...}`` (``flax.serialization.msgpack_serialize``);
- a directory: an orbax ``PyTreeCheckpointer`` checkpoint of the same variables (or of the params alone);
- a file ``*.pt`` / ``*.pth``: a PyTorch ``state_dict`` of the twin of our LeNet or ResNets
  (:mod:`dlg_jax.models.torch_twin`; needs PyTorch), so a network trained in PyTorch is attacked here.

Loading checks the variables against the model: a missing, unexpected or wrongly shaped leaf raises
:class:`~dlg_jax.errors.DLGInputError` naming the first one.
"""

import dataclasses
import os
from typing import Any

import flax.serialization
import jax
import numpy as np

from dlg_jax.errors import DLGInputError
from dlg_jax.files import atomic_write_bytes
from dlg_jax.models import FixedCollections, Model, check_same_tree

CHECKPOINT_SUFFIXES = (".msgpack", ".pt", ".pth")


def save_checkpoint(path: str | os.PathLike, model: Model, params: Any) -> None:
    """Write ``{"params": params, **model's fixed collections}`` to ``path`` (``*.msgpack``), atomically."""
    path = os.fspath(path)
    if not path.endswith(".msgpack"):
        raise DLGInputError(f"checkpoint path {path!r} must end in .msgpack")
    variables = model.variables(jax.tree.map(np.asarray, params))
    atomic_write_bytes(path, flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables)))


def _read_variables(path: str, model: Model) -> dict:
    if os.path.isdir(path):
        import orbax.checkpoint as ocp

        try:
            tree = ocp.PyTreeCheckpointer().restore(os.path.abspath(path))
        except Exception as error:
            raise DLGInputError(f"cannot read orbax checkpoint {path!r}: {_first_line(error)}") from None
        return tree if isinstance(tree, dict) and "params" in tree else {"params": tree}
    if not os.path.isfile(path):
        raise DLGInputError(f"checkpoint {path!r} does not exist; give a .msgpack or .pt file or an orbax directory")
    if path.endswith((".pt", ".pth")):
        try:
            import torch
        except ImportError:
            raise DLGInputError(f"checkpoint {path!r} is a PyTorch file; loading it needs PyTorch "
                                "(pip install torch)") from None
        from dlg_jax.models.torch_twin import params_from_state_dict

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise DLGInputError(f"cannot read PyTorch checkpoint {path!r}: {_first_line(error)}") from None
        if not isinstance(state, dict):
            raise DLGInputError(f"PyTorch checkpoint {path!r} holds a {type(state).__name__}, not a state_dict")
        return {"params": params_from_state_dict(model, state)}
    if not path.endswith(".msgpack"):
        raise DLGInputError(f"unknown checkpoint format {path!r}; allowed: a .msgpack or .pt/.pth file, "
                            "or an orbax checkpoint directory")
    try:
        with open(path, "rb") as handle:
            tree = flax.serialization.msgpack_restore(handle.read())
    except Exception as error:
        raise DLGInputError(f"cannot read checkpoint {path!r}: {_first_line(error)}") from None
    if not isinstance(tree, dict) or "params" not in tree:
        raise DLGInputError(f"checkpoint {path!r} holds no 'params' entry; expected flax variables "
                            "{'params': ..., ...}")
    return tree


def load_checkpoint(path: str | os.PathLike, model: Model) -> tuple[Model, Any]:
    """``(model, params)`` from the checkpoint at ``path`` (module docstring): the params checked against
    ``model``'s tree and shapes, and the model holding the checkpoint's other collections (batch norm's
    ``batch_stats``) when it has any."""
    path = os.fspath(path)
    variables = _read_variables(path, model)
    params = variables["params"]
    check_same_tree(f"checkpoint {path!r}", params, jax.eval_shape(model.init, jax.random.key(0)),
                    f"model {model.name!r}")
    others = {name: tree for name, tree in variables.items() if name != "params"}
    if model.fixed is not None:
        for name, reference in model.fixed.collections.items():
            if name not in others:
                raise DLGInputError(f"checkpoint {path!r} lacks the collection {name!r} model {model.name!r} uses")
            check_same_tree(f"checkpoint {path!r} collection {name!r}", others[name], reference,
                            f"model {model.name!r}")
        model = dataclasses.replace(model, fixed=FixedCollections(others))
    return model, jax.tree.map(np.asarray, params)


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


__all__ = ["CHECKPOINT_SUFFIXES", "load_checkpoint", "save_checkpoint"]
