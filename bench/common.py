"""What the bench parts share (`python -m bench`, api, deep, latency, footprint, fairness, all).

* A part's life: `begin` (its command line and the machine, printed; a fresh `Stack`), `add_output_arguments`
  (--no-docs, --plans, --summary), `finish` (its figures printed, written for `bench all`, its docs section).
* `wait_for`: poll until something is done, or fail after a timeout.
* `Figure`: one line of the summary table, written as JSON by each part and read back by `bench all`.
* `machine`, `machine_details`: the box the figures were measured on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console

from bench.docs import write_section
from bench.stack import PG_ADMIN_URL, REDIS_URL, ROOT, Stack

console = Console(width=None if sys.stdout.isatty() else 130)


# --- a part's life -----------------------------------------------------------------------------------------
def command_line(part: str, argv: list[str]) -> str:
    return f"python -m bench {part}" + (" " + " ".join(argv) if argv else "")


def begin(part: str, argv: list[str], parse_args: Callable[[list[str]], argparse.Namespace], *,
          sizes: str = "") -> tuple[argparse.Namespace, str, dict[str, str], Stack]:
    """A part's preamble: its arguments, its command line and the machine, printed with `sizes` (formatted with
    the arguments, e.g. "N={n}"), and a fresh stack (with the part's --database-url-query, if it has one)."""
    args = parse_args(argv)
    command = command_line(part, argv)
    info = machine()
    console.print(f"[bold]bench {part}[/] {command}; " + (sizes.format(**vars(args)) + "; " if sizes else "")
                  + "; ".join(f"{k}: {v}" for k, v in info.items()))
    stack = Stack(embedded=False, database_url_query=getattr(args, "database_url_query", ""))
    console.print(f"database {stack.database_name}, Redis key prefix {stack.prefix!r}")
    return args, command, info, stack


def part_parser(part: str, description: str | None) -> argparse.ArgumentParser:
    """`python -m bench <part>`'s arguments; the description (the part's docstring) is shown as written."""
    return argparse.ArgumentParser(prog=command_line(part, []), description=description,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


def count(text: str) -> int:
    """An argparse type: a whole number of at least 1 (jobs, runs, processes)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def add_output_arguments(parser: argparse.ArgumentParser, *, plans: str = "", summary: bool = False) -> None:
    """--no-docs; --plans (EXPLAIN output, default bench/plans/<plans>.txt); --summary (figures for `bench all`)."""
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite the section in docs/benchmarks.md")
    if plans:
        parser.add_argument("--plans", type=Path, default=ROOT / "bench" / "plans" / f"{plans}.txt",
                            help=f"where to write the EXPLAIN output (default bench/plans/{plans}.txt)")
    if summary:
        parser.add_argument("--summary", type=Path, help="write the summary figures (JSON) here, for `bench all`")


def publish(key: str, markdown: str) -> None:
    """Rewrite the part's own section of docs/benchmarks.md."""
    write_section(key, markdown)
    console.print(f"section '{key}' of docs/benchmarks.md rewritten")


def finish(key: str, args: argparse.Namespace, figures: list[Figure], meta: dict[str, object],
           markdown: Callable[[str, float], str], *, started: float) -> int:
    """The end of a part with figures: each figure against its target, the load and time the part ran, the
    figures for `bench all` (--summary), its docs section (`markdown(load, elapsed)`, unless --no-docs).
    Returns the exit code (0)."""
    elapsed = time.monotonic() - started
    load = load_average()
    for f in figures:
        colour = "green" if f.met or f.met is None else "red"
        console.print(f"[{colour}]{f.name}: {f.value} (baseline {f.baseline}) - target {f.target} {f.verdict}[/]")
    console.print(f"load average at the end: {load}; {elapsed:.0f} s")
    write_figures(args.summary, figures, {**meta, "seconds": elapsed, "load_end": load})
    if not args.no_docs:
        publish(key, markdown(load, elapsed))
    return 0


# --- polling ---------------------------------------------------------------------------------------------
def wait_for(done: Callable[[], bool], *, timeout: float, what: str, interval: float = 0.02) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


# --- figures -----------------------------------------------------------------------------------------------
@dataclass
class Figure:
    part: str
    name: str
    value: str
    baseline: str
    target: str
    met: bool | None  # None: no target

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "NOT met")


def write_figures(path: Path | None, figures: list[Figure], meta: dict[str, object]) -> None:
    if path is not None:
        path.write_text(json.dumps({"meta": meta, "figures": [asdict(f) for f in figures]}, indent=2))


def read_figures(path: Path) -> tuple[list[Figure], dict[str, object]]:
    data = json.loads(path.read_text())
    return [Figure(**f) for f in data["figures"]], data["meta"]


# --- the machine -------------------------------------------------------------------------------------------
def memory_total() -> str:
    mem_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                  if line.startswith("MemTotal:"))
    return f"{mem_kb / 1024 / 1024:.1f} GiB"


def machine() -> dict[str, str]:
    """What every part prints at its start and writes with its figures."""
    return {
        "cpus": str(os.cpu_count()),
        "memory": memory_total(),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load average (1/5/15 min) at start": load_average(),
    }


def machine_details() -> dict[str, str]:
    """nproc, memory, CPU model, load and the versions of everything in the path of a job."""
    import celery
    import django

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    details = {
        "nproc": str(os.cpu_count()),
        "memory": memory_total(),
        "CPU": cpu,
        "kernel": platform.release(),
        "Python": platform.python_version(),
        "Django": django.get_version(),
        "Celery": celery.__version__,
    }
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL) as conn:
            details["PostgreSQL"] = str(conn.execute("SHOW server_version").fetchone()[0])
    except Exception as exc:  # reported, not fatal: the parts will fail on their own if it is really down
        details["PostgreSQL"] = f"unknown ({type(exc).__name__})"
    try:
        import redis

        client = redis.Redis.from_url(REDIS_URL)
        details["Redis"] = str(client.info("server")["redis_version"])
        client.close()
    except Exception as exc:
        details["Redis"] = f"unknown ({type(exc).__name__})"
    return details


def load_average() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def git_revision() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              check=False, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return done.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")
