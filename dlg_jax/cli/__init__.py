"""The ``dlg-jax`` command line: :mod:`~dlg_jax.cli.main` builds the parser from one module per subcommand
(``attack``, ``attack-text``, ``data``, ``defend``, ``experiment``, ``sweep``, ``report``); :mod:`~dlg_jax.cli.options`
holds what they share (typed option values, progress bars, help text)."""

from dlg_jax.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
