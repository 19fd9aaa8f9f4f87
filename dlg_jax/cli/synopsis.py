"""The synopsis of every ``dlg-jax`` subcommand, generated from the parsers, so the docs cannot drift from
them. ``python -m dlg_jax.cli.synopsis docs/cli.md`` rewrites the block between the markers below; a test
checks that the committed docs equal what the parsers say."""

import argparse
import functools
import sys

from dlg_jax.cli.main import build_parser
from dlg_jax.errors import DLGInputError
from dlg_jax.files import atomic_write_bytes

BEGIN = "<!-- synopsis: generated from the parsers by python -m dlg_jax.cli.synopsis docs/cli.md -->"
END = "<!-- end of synopsis -->"
WIDTH = 110


def _commands(parser: argparse.ArgumentParser):
    """``(parser)`` for every leaf subcommand, depth first, in the order they were registered."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield parser
    for action in nested:
        for child in dict.fromkeys(action.choices.values()):
            yield from _commands(child)


def synopsis() -> str:
    """One fenced usage block per subcommand (``usage:`` dropped), wrapped at ``WIDTH`` columns."""
    blocks = []
    for parser in _commands(build_parser()):
        parser.formatter_class = functools.partial(argparse.HelpFormatter, width=WIDTH)
        first, *rest = parser.format_usage().removeprefix("usage: ").rstrip().split("\n")
        usage = "\n".join([first, *(line.removeprefix(" " * len("usage: ")) for line in rest)])
        blocks.append(f"```\n{usage}\n```")
    return "\n\n".join(blocks)


def with_synopsis(text: str) -> str:
    """``text`` with the block between :data:`BEGIN` and :data:`END` replaced by :func:`synopsis`."""
    if BEGIN not in text or END not in text:
        raise DLGInputError(f"the file has no synopsis markers ({BEGIN} ... {END})")
    head, rest = text.split(BEGIN, 1)
    return head + BEGIN + "\n" + synopsis() + "\n" + END + rest.split(END, 1)[1]


if __name__ == "__main__":
    path = sys.argv[1]
    with open(path, encoding="utf-8") as handle:
        atomic_write_bytes(path, with_synopsis(handle.read()).encode())
