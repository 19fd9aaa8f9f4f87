"""Named attacks: :func:`attack_preset` turns a name into an :class:`~dlg_jax.attack.engine.AttackConfig`.

- ``dlg`` (Zhu, Liu & Han 2019): the default :class:`AttackConfig`: joint labels, squared-L2 gradient
  matching, L-BFGS, dummies ~ N(0, 1), no prior, no box.
- ``ig`` (Inverting Gradients, Geiping et al. 2020): labels read off the gradient (``auto``: iDLG's
  analytic rule for ``B = 1``, the label-count rule for ``B > 1``; :mod:`dlg_jax.attack.labels`), cosine
  gradient matching plus a total-variation prior,

      J(x') = 1 - <g(x'), dW> / (|g(x')| |dW|) + IG_TV_WEIGHT * TV(x'),

  minimised by Adam on the *sign* of the gradient (learning rate 0.1, divided by 10 at 3/8, 5/8 and 7/8
  of the iterations, as in IG's code) with the images clipped to the data range [0, 1] after every step.

Both run on the same vmapped engine (:func:`dlg_jax.attack.engine.run_attack`) and give the same outputs.
:data:`VARIANTS` names the variants the studies compare: a preset plus fixed settings, e.g. ``dlg-cyclic``
(DLG updating slot ``i mod B`` only) or ``ig-gi`` (GradInversion's batch-norm prior and group consistency).
"""

import dataclasses

from dlg_jax.attack.engine import AttackConfig
from dlg_jax.attack.solvers import SolverConfig
from dlg_jax.errors import DLGInputError, check_choice, check_positive_int

PRESET_NAMES = ("dlg", "ig")
GI_BN_PRIOR = 0.01             # GradInversion's weights here: cosine distance ~ 0..1; R_bn ~ 30 at a random
GI_GROUP_CONSISTENCY = 0.1     # dummy on resnet20-sigmoid-bn/digits, 0.5 at the private batch
# name -> (preset, AttackConfig settings on top of it)
VARIANTS = {
    "dlg-cyclic": ("dlg", {"batch_update": "cyclic"}),                      # DLG's slot i mod B update
    "dlg-uniform": ("dlg", {"dummy_init": "uniform"}),                      # dummy images ~ U(0, 1)
    "dlg-count-uniform": ("dlg", {"labels": "count", "dummy_init": "uniform"}),  # + labels off the gradient
    "ig-bn": ("ig", {"bn_prior": GI_BN_PRIOR}),                             # batch-norm models only
    "ig-group": ("ig", {"group_consistency": GI_GROUP_CONSISTENCY}),        # restarts >= 2
    "ig-gi": ("ig", {"bn_prior": GI_BN_PRIOR, "group_consistency": GI_GROUP_CONSISTENCY}),
    "dlg-bn": ("dlg", {"bn_prior": GI_BN_PRIOR}),
    "dlg-group": ("dlg", {"group_consistency": GI_GROUP_CONSISTENCY}),
    "dlg-gi": ("dlg", {"bn_prior": GI_BN_PRIOR, "group_consistency": GI_GROUP_CONSISTENCY}),
}
ATTACK_NAMES = (*PRESET_NAMES, *VARIANTS)
IG_TV_WEIGHT = 1e-3
IG_LEARNING_RATE = 0.1
IG_RESTARTS = 4
IG_ITERATIONS = 3000


def ig_decay_steps(iterations: int) -> tuple[int, ...]:
    """IG's learning-rate milestones: ``floor(f * iterations)`` for ``f`` in 3/8, 5/8, 7/8."""
    iterations = check_positive_int("iterations", iterations)
    return tuple(sorted({iterations * k // 8 for k in (3, 5, 7)}))


def attack_preset(name: str, **overrides) -> AttackConfig:
    """The :class:`AttackConfig` of attack ``name`` (``dlg``, ``ig`` or a :data:`VARIANTS` name), with
    ``overrides`` (any ``AttackConfig`` field) applied on top.

    For ``ig`` the learning-rate milestones follow the final ``iterations`` (so
    ``attack_preset("ig", iterations=1000)`` decays at 375, 625, 875) unless ``solver`` is overridden.
    Raises :class:`DLGInputError` for an unknown name or field.
    """
    check_choice("attack", name, ATTACK_NAMES)
    if name in VARIANTS:
        preset, settings = VARIANTS[name]
        return attack_preset(preset, **{**settings, **overrides})
    fields = {field.name for field in dataclasses.fields(AttackConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise DLGInputError(f"unknown attack setting {unknown[0]!r}; allowed: {', '.join(sorted(fields))}")
    if name == "dlg":
        return AttackConfig(**overrides)
    iterations = overrides.get("iterations", IG_ITERATIONS)
    settings = dict(
        restarts=IG_RESTARTS, iterations=iterations, distance="cosine", labels="auto", tv_weight=IG_TV_WEIGHT,
        box=(0.0, 1.0),
        solver=SolverConfig("adam", learning_rate=IG_LEARNING_RATE, lr_decay_steps=ig_decay_steps(iterations),
                            signed=True),
    )
    settings.update(overrides)
    return AttackConfig(**settings)
