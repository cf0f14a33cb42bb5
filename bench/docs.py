"""Figures into docs/benchmarks.md: each bench owns one marked section and rewrites only that."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from bench.stack import ROOT

BENCHMARKS_MD = ROOT / "docs" / "benchmarks.md"


def write_section(key: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between `<!-- bench:key -->` and `<!-- /bench:key -->`, or append the section.

    The other sections (hand-written history included) are kept as they are.
    """
    start, end = f"<!-- bench:{key} -->", f"<!-- /bench:{key} -->"
    block = f"{start}\n{markdown.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text)


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


def spread(values: list[float], fmt: str = "{:.1f}") -> str:
    """median (min-max) with an en dash, the house format for repeated measurements."""
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{fmt.format(median)} ({fmt.format(min(values))}\N{EN DASH}{fmt.format(max(values))})"
