"""dlg-jax: Deep Leakage from Gradients in JAX, vmapped over targets x restarts x batch slots."""

from dlg_jax.attack import AttackConfig, AttackResult, run_attack
from dlg_jax.data import get_dataset
from dlg_jax.errors import DLGInputError
from dlg_jax.metrics import evaluate
from dlg_jax.models import Model, build_model, victim_params
from dlg_jax.pipeline import run_dlg, save_run
from dlg_jax.solvers import SolverConfig
from dlg_jax.threat_models import ThreatModel
from dlg_jax.victim import shared_gradient, shared_gradients

__all__ = ["AttackConfig", "AttackResult", "DLGInputError", "Model", "SolverConfig", "ThreatModel", "build_model",
           "evaluate", "get_dataset", "run_attack", "run_dlg", "save_run", "shared_gradient", "shared_gradients",
           "victim_params"]
