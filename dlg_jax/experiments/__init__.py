"""Experiments: a grid of points (:mod:`~dlg_jax.experiments.grid`; the shipped studies are grid files in
``specs/``) run by :mod:`~dlg_jax.experiments.sweep` on an executor (:mod:`~dlg_jax.experiments.executors`:
local or Ray) into a resumable Parquet :mod:`~dlg_jax.experiments.store`, reported as tables and figures
(:mod:`~dlg_jax.experiments.studies` per study, :mod:`~dlg_jax.experiments.report` for any store,
:mod:`~dlg_jax.experiments.defense_report`).
"""

from dlg_jax.experiments.grid import load_grid, load_spec, spec_names
from dlg_jax.experiments.store import Store
from dlg_jax.experiments.studies import write_study
from dlg_jax.experiments.sweep import run_grid

__all__ = ["Store", "load_grid", "load_spec", "run_grid", "spec_names", "write_study"]
