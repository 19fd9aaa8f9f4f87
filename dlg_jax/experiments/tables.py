"""Markdown tables, the form every study, report and benchmark writes its numbers in."""

from typing import Iterable, Sequence


def markdown_table(header: Sequence, rows: Iterable[Sequence]) -> str:
    """A GitHub markdown table: the header row, the rule, then one line per row (``str`` of each cell); no
    trailing newline."""
    lines = ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(str, row)) + " |" for row in rows]
    return "\n".join(lines)
