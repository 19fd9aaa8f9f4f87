"""dlg-jax: Deep Leakage from Gradients in JAX, vmapped over targets x restarts x batch slots.

The package, from the attacker's side inwards:

- :mod:`dlg_jax.attack`: the engine (configuration, objectives, solvers, label recovery, presets, placement);
- :mod:`dlg_jax.victim`: what the attacker observes (shared gradients, threat models, defenses, training);
- :mod:`dlg_jax.models`: the flax victims (LeNet, ResNets, MLPs, BERT-style), any flax module via
  :meth:`Model.from_flax`, checkpoints and the PyTorch twins;
- :mod:`dlg_jax.data`: embedded sets, user files, tensorflow-datasets, the text vocabulary;
- :mod:`dlg_jax.metrics`, :mod:`dlg_jax.pipeline` (one attack end to end: :func:`run_dlg`, :func:`save_run`),
  :mod:`dlg_jax.figures`, :mod:`dlg_jax.text` (the text attack);
- :mod:`dlg_jax.experiments`: grids, sweeps, stores, reports and the studies;
- :mod:`dlg_jax.cli`: the ``dlg-jax`` command.
"""

from dlg_jax.attack import AttackConfig, AttackResult, RunOptions, SolverConfig, run_attack
from dlg_jax.data import get_dataset
from dlg_jax.errors import DLGInputError
from dlg_jax.metrics import evaluate
from dlg_jax.models import Model, build_model, victim_params
from dlg_jax.pipeline import run_dlg, save_run
from dlg_jax.victim import ThreatModel, shared_gradient, shared_gradients

__all__ = ["AttackConfig", "AttackResult", "DLGInputError", "Model", "RunOptions", "SolverConfig", "ThreatModel", "build_model",
           "evaluate", "get_dataset", "run_attack", "run_dlg", "save_run", "shared_gradient", "shared_gradients",
           "victim_params"]
