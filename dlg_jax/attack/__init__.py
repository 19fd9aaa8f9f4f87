"""The attack engine: what is solved and how.

- :mod:`~dlg_jax.attack.engine`: :class:`AttackConfig` (what is solved), :class:`RunOptions` (how it runs),
  :func:`run_attack` (targets x restarts vmapped, chunked and sharded; from drawn starts or given ones,
  e.g. :func:`continue_from` another attack), :class:`AttackResult`;
- :mod:`~dlg_jax.attack.objectives`: the gradient-matching objectives (L2, cosine, TAG, priors) and the
  least-squares residual;
- :mod:`~dlg_jax.attack.solvers`: :class:`SolverConfig` and the solver factory (lockstep L-BFGS in
  :mod:`~dlg_jax.attack.lockstep_lbfgs`, Levenberg-Marquardt in :mod:`~dlg_jax.attack.levenberg_marquardt`,
  optax/jaxopt L-BFGS, Adam);
- :mod:`~dlg_jax.attack.coarse`: continuation from low resolution (``AttackConfig.coarse``: coarse stages
  whose ends start the full-resolution attack);
- :mod:`~dlg_jax.attack.labels`: label recovery from the last layer's gradient (iDLG and batch rules);
- :mod:`~dlg_jax.attack.presets`: the published attacks' settings (DLG, iDLG, Inverting Gradients);
- placement and numerics: :mod:`~dlg_jax.attack.memory` (chunk sizes from a memory budget),
  :mod:`~dlg_jax.attack.precision`, :mod:`~dlg_jax.attack.compile_cache`.
"""

from dlg_jax.attack.engine import AttackConfig, AttackResult, RunOptions, continue_from, run_attack
from dlg_jax.attack.labels import recover_labels
from dlg_jax.attack.presets import attack_preset
from dlg_jax.attack.solvers import SolverConfig, make_solver

__all__ = ["AttackConfig", "AttackResult", "RunOptions", "SolverConfig", "attack_preset", "continue_from", "make_solver",
           "recover_labels", "run_attack"]
