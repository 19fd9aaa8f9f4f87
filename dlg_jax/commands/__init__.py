"""Subcommands of ``dlg-jax``: each module has ``register(subparsers)`` that adds its parser and sets
``handler`` (a function of the parsed args returning the exit status)."""

from dlg_jax.commands import attack, attack_text, data, defend, experiment, report, sweep

COMMANDS = (attack, attack_text, data, defend, experiment, sweep, report)
