"""The ``dlg-jax`` command: a thin layer over the library, one module per subcommand in this package.

Bad input (a :class:`~dlg_jax.errors.DLGInputError` or an argparse error) prints one line
``dlg-jax: error: ...`` to stderr and exits with status 2.
"""

import argparse
import re
import sys

from dlg_jax.cli import attack, attack_text, data, defend, experiment, report, sweep
from dlg_jax.errors import QUOTE_LIMIT, DLGInputError, quote

COMMANDS = (attack, attack_text, data, defend, experiment, sweep, report)
"""Each has ``register(subparsers)``, which adds its parser and sets ``handler`` (a function of the parsed
args returning the exit status)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2 (argparse would print the usage too)
        # argparse quotes the bad value whole: shorten a long one as the library's own messages do
        raise DLGInputError(re.sub(f"'([^']{{{QUOTE_LIMIT},}})'", lambda m: quote(m.group(1)), message))


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dlg-jax", description="Deep Leakage from Gradients in JAX.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return int(args.handler(args) or 0)
    except DLGInputError as error:
        print(f"dlg-jax: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dlg-jax: interrupted", file=sys.stderr)
        return 130

