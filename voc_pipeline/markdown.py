"""Markdown tables, the one writer shared by tune's, evaluate's and attack's reports."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def table(header: Sequence[str], rows: Iterable[Sequence], float_format: str = "{:.4f}") -> str:
    """A Markdown table: a header row, its rule, then one line per row.

    Args:
        header: the column titles.
        rows: the cells of each row; floats are written with `float_format`, anything else as str().
    """
    def cell(value) -> str:
        return float_format.format(value) if isinstance(value, float) else str(value)

    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
