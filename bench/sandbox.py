"""`python -m bench sandbox`: what the sandbox costs per run (issue 13).

Start-to-exit of a no-op CLI (`true`) through the runner, measured in one process, interleaved, in three ways:
a bare `subprocess.run` (the baseline), the runner with `SCHEDULER_SANDBOX=off` (its supervisor and pipes, no
sandbox) and the runner with bubblewrap. The sandbox's cost is bwrap minus off; the supervisor's is off minus
bare. No database or broker: the pipeline's jobs/s with the sandbox on is `python -m bench` (its workers run
sandboxed, the bare Celery baseline runs the same stand-in unsandboxed).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import Figure, add_output_arguments, console, count, finish, machine, part_parser
from bench.docs import figures_section, spread
from executors import ExecutionSpec
from executors.base import Sandbox
from executors.runner import execute
from executors.sandbox import bwrap_check

TARGET_MS = 50.0
NOOP = shutil.which("true") or "/bin/true"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("sandbox", __doc__)
    parser.add_argument("--runs", type=count, default=200, help="runs of each kind (default 200)")
    add_output_arguments(parser, summary=True)
    return parser.parse_args(argv)


def _bare(_: Path) -> None:
    subprocess.run([NOOP], check=True)


def _runner(mode: str) -> Callable[[Path], None]:
    def run(work: Path) -> None:
        spec = ExecutionSpec(tool="claude", argv=[NOOP], stdin=b"", env={"PATH": "/usr/bin:/bin"},
                             work_dir=work / "run", sandbox=Sandbox(mode=mode), kill_grace_seconds=1.0)
        result = execute(spec)
        if result.exit_code != 0:
            raise RuntimeError(f"the no-op CLI exited {result.exit_code} ({mode}): {result.error_message}")
    return run


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    problem = bwrap_check()
    if problem:
        console.print(f"[red]bench sandbox: {problem}[/]")
        return 1
    command = "python -m bench sandbox" + (" " + " ".join(argv) if argv else "")
    info = machine()
    console.print(f"[bold]bench sandbox[/] {command}; runs {args.runs}")
    started = time.monotonic()
    kinds = {"bare subprocess": _bare, "runner, sandbox off": _runner("off"), "runner, bwrap": _runner("bwrap")}
    times: dict[str, list[float]] = {name: [] for name in kinds}
    with tempfile.TemporaryDirectory(prefix="bench-sandbox-") as folder:
        for run in kinds.values():  # warm-up: page cache, the interpreter's first imports
            for _ in range(5):
                run(Path(folder))
        for _ in range(args.runs):  # interleaved, so background load hits every kind alike
            for name, run in kinds.items():
                begun = time.perf_counter()
                run(Path(folder))
                times[name].append((time.perf_counter() - begun) * 1000)
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, values in times.items():
        console.print(f"  {name:22} {spread(values, '{:.1f}')} ms")
    sandbox_ms = medians["runner, bwrap"] - medians["runner, sandbox off"]
    supervisor_ms = medians["runner, sandbox off"] - medians["bare subprocess"]
    figures = [
        Figure("sandbox", "sandbox cost per run (bwrap - off, median)", f"{sandbox_ms:.1f} ms",
               f"off {medians['runner, sandbox off']:.1f} ms", f"< {TARGET_MS:.0f} ms", sandbox_ms < TARGET_MS),
        Figure("sandbox", "runner + supervisor over a bare subprocess (median)", f"{supervisor_ms:.1f} ms",
               f"bare {medians['bare subprocess']:.1f} ms", "-", None),
    ]

    def markdown(load: str, elapsed: float) -> str:
        table = ["| kind | start to exit, ms: median (min-max) |", "|---|---|",
                 *(f"| {name} | {spread(values)} |" for name, values in times.items())]
        return figures_section(
            "Sandbox cost per run", command, f"in {elapsed:.0f} s", info=info, load=load,
            setup=f"{args.runs} runs of each kind, interleaved, of `{NOOP}` as the CLI.", table=table,
            figures=figures)

    return finish("sandbox", args, figures, {"command": command, "runs": args.runs}, markdown, started=started)
