"""`python -m bench all`: the whole issue-9 suite, one part after another, then one summary table.

1 pipeline vs bare Celery (jobs/s, CPU s/job)  `python -m bench`
2 dispatch latency (created, scheduled_at, slot freed)  `python -m bench latency`
3 dispatch over a deep queue (decision time, EXPLAIN)  `python -m bench deep` (its docs section is left alone:
  the suite's sizes are smaller than the 1M-row figures there; plans go to a temp dir)
4 worker footprint (RSS over N jobs, a 200 MB stdout job)  `python -m bench footprint`
5 fairness (tenant A's backlog, then tenant B)  `python -m bench fairness`
6 sandbox (a bwrap run's cost)  `python -m bench sandbox`
7 workspace (a 100 MB repository: first run, later runs, the checkout itself)  `python -m bench workspace`

Each part runs in its own process (its own throwaway database, Redis prefix and workers, all removed when it
ends). `--quick` scales every N down so the suite takes about 10-12 minutes on a 2-core box; the N used are
printed and written. The summary goes to the section `all` of docs/benchmarks.md; parts 2, 4 and 5 also
rewrite their own sections.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.table import Table

from bench.common import (
    Figure,
    command_line,
    console,
    git_revision,
    load_average,
    machine_details,
    part_parser,
    publish,
    read_figures,
)
from bench.docs import machine_line, section_head, spread
from bench.stack import ROOT

# Each part's arguments: {option: (issue-sized value, --quick value)}.
SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "pipeline": {"--n": (200, 100), "--repeat": (3, 3)},
    "latency": {"--n": (100, 40), "--n-scheduled": (40, 15), "--repeat": (3, 3)},
    "deep": {"--rows": (1_000_000, 100_000), "--repeat": (30, 10)},
    "footprint": {"--n": (10_000, 500), "--big-mb": (200, 200)},
    "fairness": {"--a-jobs": (10_000, 500), "--b-jobs": (10, 10), "--repeat": (3, 2), "--bare-a-jobs": (200, 100),
                 "--max-wait": (900, 120)},
    "sandbox": {"--runs": (200, 100)},
    "workspace": {"--mb": (100, 100), "--runs": (5, 3)},
}
PIPELINE_TARGET_RATIO = 0.7
DEEP_TARGET_MS = 10.0


def part_arguments(quick: bool) -> dict[str, list[str]]:
    """Each part's arguments as given on its command line, e.g. {"deep": ["--rows", "100000", ...]}."""
    return {part: [word for option, values in options.items() for word in (option, str(values[1 if quick else 0]))]
            for part, options in SIZES.items()}


def run_part(name: str, argv: list[str]) -> tuple[int, str, float]:
    """Run `python -m bench <argv>` with its output shown as it comes; returns (exit code, output, seconds)."""
    console.rule(f"[bold]{name}[/]: python -m bench {' '.join(argv)}")
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "bench", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    output = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        output.append(line)
    return proc.wait(), "".join(output), time.monotonic() - started


def pipeline_figures(path: Path) -> list[Figure]:
    import json

    samples = json.loads(path.read_text())["samples"]
    pipe = [s for s in samples if s["kind"] == "pipeline"]
    bare = [s for s in samples if s["kind"] == "bare"]
    rate_p, rate_b = [s["jobs_per_second"] for s in pipe], [s["jobs_per_second"] for s in bare]
    ratio = statistics.median(rate_p) / statistics.median(rate_b)
    cpu_p = [s["worker_cpu_seconds"] / s["n"] for s in pipe]
    cpu_b = [s["worker_cpu_seconds"] / s["n"] for s in bare]
    machine_p = [s["system_cpu_seconds"] / s["n"] for s in pipe]
    machine_b = [s["system_cpu_seconds"] / s["n"] for s in bare]
    return [
        Figure(part="1 pipeline", name=f"jobs/s, N={pipe[0]['n']}, C={pipe[0]['concurrency']}",
               value=f"{spread(rate_p, '{:.2f}')} = {ratio:.2f}x bare", baseline=f"{spread(rate_b, '{:.2f}')} bare",
               target=f">= {PIPELINE_TARGET_RATIO}x bare", met=ratio >= PIPELINE_TARGET_RATIO),
        Figure(part="1 pipeline", name="worker CPU s/job", value=spread(cpu_p, "{:.3f}"),
               baseline=f"{spread(cpu_b, '{:.3f}')} bare", target="-", met=None),
        Figure(part="1 pipeline", name="machine CPU s/job (everything on the box)", value=spread(machine_p, "{:.3f}"),
               baseline=f"{spread(machine_b, '{:.3f}')} bare", target="-", met=None),
    ]


def deep_figures(output: str, rows: str) -> list[Figure]:
    decision = re.search(r"dispatch decision median ([0-9.]+) ms \(max ([0-9.]+)\)", output)
    floor = re.search(r"SELECT 1 \(one round trip through Django\)\s*│\s*([0-9.]+)", output)
    seq = re.search(r"no Seq Scan on tasks_app_task in any of the (\d+) plans", output)
    if decision is None:
        return [Figure(part="3 deep queue", name="dispatch decision", value="not parsed (see the log above)",
                       baseline="-", target=f"< {DEEP_TARGET_MS:g} ms", met=False)]
    value = float(decision.group(1))
    return [
        Figure(part="3 deep queue", name=f"dispatch decision over {int(rows):,} queued, median",
               value=f"{value:.2f} ms (max {decision.group(2)})",
               baseline=f"one round trip {floor.group(1)} ms" if floor else "-",
               target=f"< {DEEP_TARGET_MS:g} ms", met=value < DEEP_TARGET_MS),
        Figure(part="3 deep queue", name="Seq Scan on tasks_app_task in the pass and API list plans",
               value=f"none in {seq.group(1)} plans" if seq else "found (see the log above)",
               baseline="-", target="none", met=seq is not None),
    ]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("all", __doc__)
    parser.add_argument("--quick", action="store_true", help="every N scaled down: ~10-12 minutes on 2 cores")
    parser.add_argument("--only", nargs="+", choices=list(SIZES), help="run these parts only")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone (parts included)")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    command = command_line("all", argv)
    sizes = part_arguments(args.quick)
    details = machine_details()
    load_start = load_average()
    console.print(f"[bold]bench all[/] {command}; " + "; ".join(f"{k}: {v}" for k, v in details.items())
                  + f"; load average at start {load_start}")
    figures: list[Figure] = []
    durations: dict[str, float] = {}
    loads: dict[str, str] = {}
    failed: list[str] = []
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cli-scheduler-bench-all-") as tmp:
        folder = Path(tmp)
        docs = ["--no-docs"] if args.no_docs else []
        for part in args.only or list(SIZES):
            loads[part] = load_average()
            if part == "pipeline":
                argv_part = [*sizes[part], "--json", str(folder / "pipeline.json")]
            elif part == "deep":
                argv_part = ["deep", *sizes[part], "--no-docs", "--plans", str(folder / "deep-plans.txt")]
            else:
                argv_part = [part, *sizes[part], *docs, "--summary", str(folder / f"{part}.json")]
            code, output, seconds = run_part(part, argv_part)
            durations[part] = seconds
            if code != 0:
                failed.append(part)
                figures.append(Figure(part=part, name="failed", value=f"exit {code}", baseline="-", target="-",
                                      met=False))
                continue
            if part == "pipeline":
                figures += pipeline_figures(folder / "pipeline.json")
            elif part == "deep":
                figures += deep_figures(output, sizes["deep"][1])
            else:
                figures += read_figures(folder / f"{part}.json")[0]
    elapsed = time.monotonic() - started
    load_end = load_average()
    table = Table(title=f"Issue 9 summary - {command} ({elapsed / 60:.1f} min); median (min..max) over runs")
    for column in ("part", "figure", "measured", "baseline (same invocation)", "target", "verdict"):
        table.add_column(column)
    for f in figures:
        colour = "green" if f.met else ("red" if f.met is False else "white")
        table.add_row(f.part, f.name, f.value, f.baseline, f.target, f"[{colour}]{f.verdict}[/]")
    console.print(table)
    console.print(f"load average: start {load_start}, end {load_end}; per part at its start: "
                  + ", ".join(f"{k} {v}" for k, v in loads.items()))
    if not args.no_docs:
        publish("all", markdown(command, sizes, details, figures, durations, loads, load_start, load_end, elapsed,
                                args.only))
    return 1 if failed else 0


def markdown(command: str, sizes: dict[str, list[str]], details: dict[str, str], figures: list[Figure],
             durations: dict[str, float], loads: dict[str, str], load_start: str, load_end: str, elapsed: float,
             only: list[str] | None) -> str:
    parts = ["| part | arguments (N used) | minutes | load average at its start |", "|---|---|---|---|"]
    for part in only or list(sizes):
        parts.append(f"| {part} | `{' '.join(sizes[part])}` | {durations.get(part, 0) / 60:.1f} | "
                     f"{loads.get(part, '-')} |")
    rows = ["| part | figure | measured | baseline (same invocation) | target | verdict |", "|---|---|---|---|---|---|"]
    rows += [f"| {f.part} | {f.name} | {f.value} | {f.baseline} | {f.target} | {f.verdict} |" for f in figures]
    return "\n".join([
        *section_head(f"Issue 9 suite: summary (generated {time.strftime('%Y-%m-%d %H:%M')}, revision "
                      f"{git_revision()})", command, f"(bench/suite.py) in {elapsed / 60:.1f} minutes",
                      comment="        # or: make bench"),
        f"Machine: {machine_line(details)}. Load average (1/5/15 min): {load_start} at the start, {load_end} at the "
        "end; the box is shared with other test runs, so single figures move by tens of per cent.",
        "",
        *parts,
        "",
        *rows,
    ])
