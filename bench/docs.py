"""Figures into docs/benchmarks.md: each bench owns one marked section and rewrites only that."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from bench.stack import ROOT

if TYPE_CHECKING:
    from bench.common import Figure

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


def spread(values: list[float], fmt: str = "{:.1f}", separator: str = "\N{EN DASH}") -> str:
    """median (min-max), with an en dash: the house format for repeated measurements."""
    if not values:
        return "-"
    median = statistics.median(values)
    return f"{fmt.format(median)} ({fmt.format(min(values))}{separator}{fmt.format(max(values))})"


def machine_line(info: dict[str, str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in info.items())


def section_head(title: str, command: str, provenance: str, *, comment: str = "") -> list[str]:
    """The opening of a docs section: its title, what wrote it (`provenance`) and the command to rerun."""
    return [f"## {title}", "", f"Written by `{command}` {provenance}; rerun it to refresh this section.", "",
            "```", f"cd /work/main && .venv/bin/{command}{comment}", "```", ""]


def figures_section(title: str, command: str, provenance: str, *, info: dict[str, str], load: str, setup: str,
                    table: list[str], figures: list[Figure]) -> str:
    """A docs section of a part with figures: the head, the machine and `setup`, its `table`, the verdicts."""
    return "\n".join([
        *section_head(title, command, provenance),
        f"Machine: {machine_line(info)}; load average at the end {load}. {setup}",
        "",
        *table,
        "",
        "| figure | measured | baseline | target | |",
        "|---|---|---|---|---|",
        *(f"| {f.name} | {f.value} | {f.baseline} | {f.target} | {f.verdict} |" for f in figures),
    ])
