"""`python -m bench footprint`: a group worker's memory (issue 9, part 4), against a bare Celery worker.

RSS = VmRSS (/proc/<pid>/status) of the worker's main process plus its pool processes (its direct children);
the CLI processes (the pool processes' children) are not counted. For each side:

1. warm-up (2 x C jobs), settle, RSS "before";
2. N no-op jobs through the worker (pipeline: `task_create` N times, control worker + group worker `-c C`; bare:
   N `bench.bare.run_fake` messages), RSS sampled every second; after the last job and a settle, RSS "after";
3. one job whose CLI (the stand-in, `stdout_bytes`) prints --big-mb MB of stdout, RSS sampled every 100 ms
   while it runs: the peak, over the RSS just before it.

Pool recycling is switched off for both sides (`SCHEDULER_WORKER_MAX_TASKS_PER_CHILD=1000000`; the product's
default of 500 would replace the pool processes along the way and hide a leak). The bare task captures the
CLI's output as a plain Celery task would (`subprocess.run(capture_output=True)`).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table

from bench.common import Figure, add_output_arguments, begin, console, count, finish, part_parser, wait_for
from bench.docs import figures_section
from bench.stack import stat_fields
from bench.standin import tagged_prompt

NO_RECYCLING = {"SCHEDULER_WORKER_MAX_TASKS_PER_CHILD": "1000000"}
GROWTH_TARGET_FRACTION = 0.10  # "no growth beyond noise": under 10 % of the starting RSS
BIG_PEAK_TARGET_MB = 64.0  # bounded: the peak over the pre-job RSS stays far below the CLI's output


@dataclass
class Side:
    name: str
    before: int = 0
    after: int = 0
    during: list[int] = field(default_factory=list)
    big_base: int = 0
    big_peak: int = 0
    big_after: int = 0
    big_seconds: float = 0.0
    jobs_seconds: float = 0.0
    children: int = 0

    @property
    def growth(self) -> int:
        return self.after - self.before

    @property
    def big_growth(self) -> int:
        return self.big_peak - self.big_base


def vm_rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def children_of(pid: int) -> list[int]:
    """Direct children, by the ppid field of every /proc/<pid>/stat (no /proc/…/children on this kernel)."""
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = stat_fields(int(entry.name))
        if fields is not None and int(fields[1]) == pid:
            found.append(int(entry.name))
    return found


def worker_rss_bytes(pid: int) -> tuple[int, int]:
    """(main process RSS + its pool children's RSS, number of pool children). CLI grandchildren are left out."""
    children = children_of(pid)
    return vm_rss_bytes(pid) + sum(vm_rss_bytes(c) for c in children), len(children)


class Sampler:
    """RSS of one worker every `interval` seconds in a thread, until stopped."""

    def __init__(self, pid: int, interval: float) -> None:
        self.pid, self.interval = pid, interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(worker_rss_bytes(self.pid)[0])
            self._stop.wait(self.interval)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.samples.append(worker_rss_bytes(self.pid)[0])


def settled_rss(pid: int, seconds: float = 2.0) -> int:
    """The median of a few samples once the worker is idle (the trailing dispatch passes are over)."""
    time.sleep(seconds)
    samples = []
    for _ in range(5):
        samples.append(worker_rss_bytes(pid)[0])
        time.sleep(0.1)
    return int(statistics.median(samples))


def measure(side: Side, pid: int, *, n: int, warmup: int, big_bytes: int, submit: Callable[[int, str], None],
            done: Callable[[str, int], bool]) -> None:
    submit(warmup, "warmup")
    wait_for(lambda: done("warmup", warmup), timeout=120, what=f"{side.name} warm-up", interval=0.1)
    side.before = settled_rss(pid)
    started = time.monotonic()
    with Sampler(pid, 1.0) as sampler:
        submit(n, "jobs")
        wait_for(lambda: done("jobs", n), timeout=120 + n, what=f"{n} {side.name} jobs", interval=0.2)
    side.jobs_seconds = time.monotonic() - started
    side.during = sampler.samples
    side.after = settled_rss(pid)
    side.children = worker_rss_bytes(pid)[1]
    console.print(f"  {side.name:8} {n} jobs in {side.jobs_seconds:.0f} s: RSS before {mb(side.before)}, "
                  f"max during {mb(max(side.during))}, after {mb(side.after)} MB ({side.children} pool processes)")
    side.big_base = settled_rss(pid, 0.5)
    started = time.monotonic()
    with Sampler(pid, 0.1) as sampler:
        submit(1, "big")
        wait_for(lambda: done("big", 1), timeout=300, what=f"the {side.name} {big_bytes >> 20} MB job", interval=0.1)
    side.big_seconds = time.monotonic() - started
    side.big_peak = max(sampler.samples)
    side.big_after = settled_rss(pid)
    console.print(f"  {side.name:8} {big_bytes / 1e6:.0f} MB stdout job ({side.big_seconds:.1f} s): RSS "
                  f"{mb(side.big_base)} -> peak {mb(side.big_peak)} -> {mb(side.big_after)} MB "
                  f"({len(sampler.samples)} samples)")


def mb(value: float) -> str:
    return f"{value / 1024 / 1024:.1f}"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("footprint", __doc__)
    parser.add_argument("--n", type=count, default=10_000, help="no-op jobs per side (default 10,000)")
    parser.add_argument("--concurrency", type=count, default=2, help="pool processes and group cap (default 2)")
    parser.add_argument("--big-mb", type=count, default=200, help="stdout of the big job, in MB (default 200)")
    add_output_arguments(parser, summary=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args, command, info, stack = begin("footprint", argv, parse_args,
                                       sizes="N={n}, C={concurrency}, big job {big_mb} MB")
    big_bytes = args.big_mb * 1_000_000
    warmup = 2 * args.concurrency
    pipeline, bare_side = Side("pipeline"), Side("bare")
    started = time.monotonic()
    try:
        stack.create_database()
        stack.setup_django(NO_RECYCLING)
        from django.db.models import Count

        from tasks_app.models import EventSource, Task, TaskStatus
        from tasks_app.services.tasks import TaskSpec, task_create

        worker = stack.start_pipeline(args.concurrency, extra_env=NO_RECYCLING)

        def submit(n: int, label: str) -> None:
            prompt = tagged_prompt(label, stdout_bytes=big_bytes) if label == "big" else "noop"
            for _ in range(n):
                task_create(spec=TaskSpec(tool="claude", prompt=prompt), tenant=label, source=EventSource.API,
                            created_by="bench")

        def done(label: str, n: int) -> bool:
            counts = dict(Task.objects.filter(tenant=label).values_list("status").annotate(n=Count("id")))
            broken = {s: counts[s] for s in (TaskStatus.FAILED, TaskStatus.CANCELED) if counts.get(s)}
            if broken and label == "big":  # its memory is the figure; how the run ended is reported
                task = Task.objects.get(tenant=label)
                console.print(f"  [yellow]the big job ended {task.status}: {task.error_message[:200]!r}[/]")
                return True
            if broken:
                task = Task.objects.filter(tenant=label, status__in=list(broken)).first()
                raise RuntimeError(f"{label} jobs ended {broken}; e.g. {task.pk}: {task.error_message!r}")
            return counts.get(TaskStatus.SUCCEEDED, 0) == n

        measure(pipeline, worker.proc.pid, n=args.n, warmup=warmup, big_bytes=big_bytes, submit=submit, done=done)

        from bench import bare

        bare_worker = stack.start_bare(args.concurrency, NO_RECYCLING)
        fake_log = str(stack.var_dir / "bare-fake-cli.jsonl")

        def bare_submit(n: int, label: str) -> None:
            prompt = tagged_prompt(label, stdout_bytes=big_bytes) if label == "big" else "noop"
            for _ in range(n):
                bare.run_fake.apply_async(args=[prompt, fake_log, f"{stack.prefix}footprint-{label}"], queue=bare.QUEUE)

        def bare_done(label: str, n: int) -> bool:
            return bare.completions(f"{stack.prefix}footprint-{label}") >= n

        measure(bare_side, bare_worker.proc.pid, n=args.n, warmup=warmup, big_bytes=big_bytes, submit=bare_submit,
                done=bare_done)
    except (RuntimeError, KeyboardInterrupt) as exc:
        return stack.report_failure(console, "bench footprint", exc)
    finally:
        stack.close()
    figures = report(args, pipeline, bare_side)
    return finish("footprint", args, figures, {"command": command, "n": args.n, "big_mb": args.big_mb},
                  lambda load, elapsed: markdown(args, info, command, pipeline, bare_side, figures, load, elapsed),
                  started=started)


def rows(sides: tuple[Side, ...]) -> list[list[str]]:
    return [[s.name, mb(s.before), f"{mb(min(s.during))}..{mb(max(s.during))}", mb(s.after),
             f"{s.growth / 1024 / 1024:+.1f} ({100 * s.growth / s.before:+.1f} %)", mb(s.big_base), mb(s.big_peak),
             f"{s.big_growth / 1024 / 1024:+.1f}", mb(s.big_after)] for s in sides]


COLUMNS = ("worker", "RSS before MB", "during N jobs MB", "after MB", "growth MB", "before big job MB",
           "peak during big job MB", "peak over before MB", "after big job MB")


def report(args: argparse.Namespace, pipeline: Side, bare_side: Side) -> list[Figure]:
    table = Table(title=f"Worker RSS (main + {args.concurrency} pool processes), N={args.n} jobs, "
                        f"{args.big_mb} MB stdout job")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column == "worker" else "right")
    for row in rows((pipeline, bare_side)):
        table.add_row(*row)
    console.print(table)
    growth_met = pipeline.growth < GROWTH_TARGET_FRACTION * pipeline.before
    big_met = pipeline.big_growth / 1024 / 1024 < BIG_PEAK_TARGET_MB
    figures = [
        Figure(part="4 worker footprint", name=f"RSS growth over {args.n:,} jobs",
               value=f"{pipeline.growth / 1024 / 1024:+.1f} MB ({100 * pipeline.growth / pipeline.before:+.1f} % of "
                     f"{mb(pipeline.before)})",
               baseline=f"{bare_side.growth / 1024 / 1024:+.1f} MB ({100 * bare_side.growth / bare_side.before:+.1f} "
                        f"% of {mb(bare_side.before)}) bare",
               target=f"< {100 * GROWTH_TARGET_FRACTION:g} % of start", met=growth_met),
        Figure(part="4 worker footprint", name=f"peak RSS over pre-job RSS, {args.big_mb} MB stdout job",
               value=f"{pipeline.big_growth / 1024 / 1024:+.1f} MB (peak {mb(pipeline.big_peak)})",
               baseline=f"{bare_side.big_growth / 1024 / 1024:+.1f} MB (peak {mb(bare_side.big_peak)}) bare",
               target=f"< {BIG_PEAK_TARGET_MB:g} MB", met=big_met),
    ]
    return figures


def markdown(args: argparse.Namespace, info: dict[str, str], command: str, pipeline: Side, bare_side: Side,
             figures: list[Figure], load: str, elapsed: float) -> str:
    setup = (f"RSS = VmRSS of the worker's main process + its {args.concurrency} pool processes (CLIs not counted), "
             f"`-c {args.concurrency}`, pool recycling off on both sides "
             "(`SCHEDULER_WORKER_MAX_TASKS_PER_CHILD=1000000`; the product default 500 would mask a leak). "
             f"N={args.n:,} no-op jobs (pipeline {pipeline.jobs_seconds:.0f} s, bare {bare_side.jobs_seconds:.0f} "
             "s), sampled every second; the big job sampled every 100 ms. The bare task keeps the CLI's output the way "
             "a plain Celery task would (`subprocess.run(capture_output=True)`); the product's executor keeps a "
             "bounded head + tail (`SCHEDULER_STDOUT_LIMIT`).")
    table = [f"| {' | '.join(COLUMNS)} |", f"|{'---|' * len(COLUMNS)}"]
    table += [f"| {' | '.join(row)} |" for row in rows((pipeline, bare_side))]
    title = (f"Worker footprint: RSS over {args.n:,} jobs and a {args.big_mb} MB stdout job (issue 9 part 4, "
             f"generated {time.strftime('%Y-%m-%d')})")
    return figures_section(title, command, f"(bench/footprint.py, {elapsed:.0f} s)", info=info, load=load,
                           setup=setup, table=table, figures=figures)
