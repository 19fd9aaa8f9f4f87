"""What the attacker observes: the victim's shared gradients and everything between the client and the
attacker.

- :mod:`~dlg_jax.victim.gradients`: the shared gradient of one client step (:func:`shared_gradients`);
- :mod:`~dlg_jax.victim.threat_models`: several clients and FedAvg local steps (:class:`ThreatModel`);
- :mod:`~dlg_jax.victim.defenses`: noise, pruning, precision, DP-SGD and Soteria
  (:mod:`~dlg_jax.victim.soteria`) on what the client sends;
- :mod:`~dlg_jax.victim.training`: a victim trained before the attack (:class:`VictimTraining`);
- :mod:`~dlg_jax.victim.federation`: a Flower strategy that records what clients send (needs ``flwr``).
"""

from dlg_jax.victim.defenses import make_defense
from dlg_jax.victim.gradients import shared_gradient, shared_gradients
from dlg_jax.victim.threat_models import ThreatModel
from dlg_jax.victim.training import VictimTraining, train_victim

__all__ = ["ThreatModel", "VictimTraining", "make_defense", "shared_gradient", "shared_gradients", "train_victim"]
