"""Experiments: a grid of points (:mod:`~dlg_jax.experiments.grid`) run by :mod:`~dlg_jax.experiments.sweep`
on an executor (:mod:`~dlg_jax.experiments.executors`: local or Ray) into a resumable Parquet
:mod:`~dlg_jax.experiments.store`, reported as tables and figures (:mod:`~dlg_jax.experiments.report`,
:mod:`~dlg_jax.experiments.defense_report`); the studies of the docs (:mod:`~dlg_jax.experiments.studies`,
:mod:`~dlg_jax.experiments.text`).
"""

from dlg_jax.experiments.grid import load_grid
from dlg_jax.experiments.store import Store
from dlg_jax.experiments.sweep import run_grid

__all__ = ["Store", "load_grid", "run_grid"]
