"""`python -m bench`: jobs/s of the full pipeline against a bare Celery task running the same stand-in CLI.

Subcommands, each with its own `--help`: `api` (API latency, bench/api.py), `deep` (dispatch over a deep queue,
bench/deep.py), `latency` (dispatch latency), `footprint` (worker RSS), `fairness` (two tenants), `sandbox` (the
sandbox's cost per run, bench/sandbox.py), `streams` (200 live followers beside the API, bench/streams.py),
`parsing` (memory and CPU of reading a 200 MB event stream, bench/parsing.py), `workspace` (time to a ready
checkout of a 100 MB repository, bench/workspace.py) and
`all` (the whole issue-9 suite with one summary table, bench/suite.py; `--quick` fits in well under 15 minutes).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import pstats
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path

from rich.table import Table

from bench.common import console, count, machine, wait_for
from bench.docs import spread
from bench.stack import Stack, self_cpu_seconds, system_cpu_seconds

POLL_SECONDS = 0.05
TARGET_RATIO = 0.7


@dataclass
class Sample:
    kind: str  # "pipeline" or "bare"
    n: int
    concurrency: int
    wall_seconds: float
    submit_seconds: float  # time to create (pipeline) or send (bare) all N
    worker_cpu_seconds: float  # worker process trees, CLI children included
    worker_cpu_by_name: dict[str, float]
    system_cpu_seconds: float  # the whole machine: database, broker, bench process, anything else
    bench_cpu_seconds: float  # this process: creating/sending and polling
    phases: dict[str, float] = field(default_factory=dict)  # pipeline: mean ms per job, from the database

    @property
    def jobs_per_second(self) -> float:
        return self.n / self.wall_seconds


def settle_cpu(stack: Stack, *, max_seconds: float = 3.0) -> dict[str, float]:
    """Worker CPU once trailing work (the dispatch passes that follow the last finish) has stopped."""
    previous = stack.worker_cpu_seconds()
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        time.sleep(0.3)
        current = stack.worker_cpu_seconds()
        if current == previous:
            break
        previous = current
    return previous


def measure(stack: Stack, kind: str, n: int, concurrency: int, submit: Callable[[], None],
            finished: Callable[[], bool], timeout: float) -> Sample:
    worker0, system0, self0 = stack.worker_cpu_seconds(), system_cpu_seconds(), self_cpu_seconds()
    started = time.perf_counter()
    submit()
    submitted = time.perf_counter()
    wait_for(finished, timeout=timeout, what=f"{n} {kind} jobs", interval=POLL_SECONDS)
    ended = time.perf_counter()
    worker1 = settle_cpu(stack)
    by_name = {name: worker1[name] - worker0.get(name, 0.0) for name in worker1}
    return Sample(
        kind=kind, n=n, concurrency=concurrency, wall_seconds=ended - started, submit_seconds=submitted - started,
        worker_cpu_seconds=sum(by_name.values()), worker_cpu_by_name=by_name,
        system_cpu_seconds=system_cpu_seconds() - system0, bench_cpu_seconds=self_cpu_seconds() - self0,
    )


def run_pipeline(stack: Stack, *, n: int, concurrency: int, repeat: int, warmup: int, timeout: float,
                 progress: Callable[[Sample], None], profile_dir: Path | None = None,
                 group_max_concurrent: int | None = None) -> list[Sample]:
    stack.setup_django()
    from django.db import connection
    from django.db.models import Count

    from tasks_app.models import EventSource, Task, TaskStatus
    from tasks_app.services.tasks import TaskSpec, task_create

    app, extra_env = "workers", None
    if profile_dir is not None:
        app, extra_env = "bench.instrumented", {"BENCH_PROFILE_DIR": str(profile_dir)}
    stack.start_pipeline(concurrency, max_concurrent=group_max_concurrent, app=app, extra_env=extra_env)
    submit_queries: Counter[str] = Counter()

    def batch(tenant: str, size: int) -> Sample:
        def submit() -> None:
            counted = connection.execute_wrapper(counting(submit_queries)) if profile_dir else nullcontext()
            with counted:
                for _ in range(size):
                    task_create(spec=TaskSpec(tool="claude", prompt="noop"), tenant=tenant,
                                source=EventSource.API, created_by="bench")

        def finished() -> bool:
            counts = dict(Task.objects.filter(tenant=tenant).values_list("status").annotate(n=Count("id")))
            broken = {s: counts[s] for s in (TaskStatus.FAILED, TaskStatus.CANCELED) if counts.get(s)}
            if broken:
                task = Task.objects.filter(tenant=tenant, status__in=list(broken)).first()
                raise RuntimeError(f"pipeline jobs ended {broken}; e.g. {task.pk}: {task.error_message!r}")
            return counts.get(TaskStatus.SUCCEEDED, 0) == size

        return measure(stack, "pipeline", size, concurrency, submit, finished, timeout)

    batch("bench-warmup", warmup)
    submit_queries.clear()
    samples = []
    for i in range(repeat):
        samples.append(batch(f"bench-{i}", n))
        samples[-1].phases = phase_breakdown(f"bench-{i}")
        progress(samples[-1])
    stack.stop_workers()
    if profile_dir is not None:
        jobs = n * repeat + warmup
        (profile_dir / "bench-process.json").write_text(json.dumps({
            "task_create (bench process)": {"calls": n * repeat, **submit_queries}, "jobs": jobs,
        }))
    return samples


def phase_breakdown(tenant: str) -> dict[str, float]:
    """Mean milliseconds per job of each step, from the TaskEvent/TaskRun timestamps the product writes.

    A worker slot (one pool process) is busy from its run's `running` event to its `succeeded` event; the
    slot gap is from a `succeeded` to the next `running` on the same pool process: the commit, the
    dispatch message, the dispatch pass, the execute message and `run_start` up to its event.
    """
    from tasks_app.models import TaskEvent, TaskRun, TaskStatus

    at: dict[tuple[str, str], float] = {}
    for task_id, status, created in TaskEvent.objects.filter(task__tenant=tenant).values_list(
            "task_id", "to_status", "created_at"):
        at[(str(task_id), status)] = created.timestamp()
    runs = list(TaskRun.objects.filter(task__tenant=tenant).values_list("task_id", "worker", "latency_ms"))
    lease_to_running, in_run_overhead, cli, gaps = [], [], [], []
    by_worker: dict[str, list[tuple[float, float]]] = {}
    for task_id, worker, latency_ms in runs:
        key = str(task_id)
        leased, running = at[(key, TaskStatus.LEASED)], at[(key, TaskStatus.RUNNING)]
        succeeded = at[(key, TaskStatus.SUCCEEDED)]
        lease_to_running.append(running - leased)
        cli.append((latency_ms or 0) / 1000)
        in_run_overhead.append(succeeded - running - (latency_ms or 0) / 1000)
        by_worker.setdefault(worker, []).append((running, succeeded))
    for spans in by_worker.values():
        spans.sort()
        gaps.extend(nxt[0] - prev[1] for prev, nxt in pairwise(spans))
    mean = statistics.fmean
    return {
        "leased -> running (execute message + run_start)": 1000 * mean(lease_to_running),
        "CLI (executor's latency_ms)": 1000 * mean(cli),
        "running -> succeeded minus CLI (executor + run_finish)": 1000 * mean(in_run_overhead),
        "slot gap: succeeded -> next running on the same process": 1000 * mean(gaps) if gaps else 0.0,
    }


def counting(counter: Counter[str]) -> Callable[..., object]:
    def wrapper(execute, sql, params, many, context):
        counter["queries"] += 1
        counter[f"sql {sql.lstrip().split(None, 1)[0].upper()}"] += 1
        return execute(sql, params, many, context)

    return wrapper


def run_bare(stack: Stack, *, n: int, concurrency: int, repeat: int, warmup: int, timeout: float,
             progress: Callable[[Sample], None]) -> list[Sample]:
    os.environ.update(stack.env())  # before the import: bench.bare reads the product settings from it
    from bench import bare

    stack.start_worker("bench.bare", bare.QUEUE, concurrency, "bare")

    def batch(label: str, size: int) -> Sample:
        # Embedded: a file grown by one byte per completion; Redis: an INCR key under the run's prefix.
        counter = str(stack.var_dir / f"bare-done-{label}") if stack.embedded else f"{stack.prefix}bare-done-{label}"

        def submit() -> None:
            for _ in range(size):
                bare.run_cli.apply_async(args=[counter], queue=bare.QUEUE)

        return measure(stack, "bare", size, concurrency, submit, lambda: bare.completions(counter) >= size, timeout)

    batch("warmup", warmup)
    samples = []
    for i in range(repeat):
        samples.append(batch(str(i), n))
        progress(samples[-1])
    stack.stop_workers()
    return samples


def report(pipeline: list[Sample], bare: list[Sample], *, n: int, concurrency: int, mode: str) -> None:
    table = Table(title=f"CLI Scheduler throughput - {mode}, N={n}, C={concurrency}, median (min..max)")
    for column in ("run", "repeats", "jobs/s", "wall s", "submit s", "worker CPU s/job",
                   "bench process CPU s/job", "machine CPU s/job"):
        table.add_column(column, justify="right" if column != "run" else "left")
    for name, samples in (("pipeline", pipeline), ("bare Celery", bare)):
        if not samples:
            continue
        rate_and_times = [[s.jobs_per_second for s in samples], [s.wall_seconds for s in samples],
                          [s.submit_seconds for s in samples]]
        cpu_per_job = [[s.worker_cpu_seconds / s.n for s in samples], [s.bench_cpu_seconds / s.n for s in samples],
                       [s.system_cpu_seconds / s.n for s in samples]]
        table.add_row(name, str(len(samples)), *(spread(values, "{:.2f}", "..") for values in rate_and_times),
                      *(spread(values, "{:.3f}", "..") for values in cpu_per_job))
    console.print(table)
    if pipeline and pipeline[0].phases:
        phases = Table(title="Pipeline job phases, mean ms per job (median over repeats), from DB timestamps")
        phases.add_column("phase")
        phases.add_column("ms", justify="right")
        for name in pipeline[0].phases:
            phases.add_row(name, f"{statistics.median(s.phases[name] for s in pipeline):.1f}")
        if bare:
            cycle = 1000 * concurrency / statistics.median(s.jobs_per_second for s in bare)
            phases.add_row("for comparison: bare Celery slot cycle (C / jobs/s)", f"{cycle:.1f}")
        console.print(phases)
    if pipeline and bare:
        p = [s.jobs_per_second for s in pipeline]
        b = [s.jobs_per_second for s in bare]
        ratio = statistics.median(p) / statistics.median(b)
        verdict = "[green]meets[/]" if ratio >= TARGET_RATIO else "[red]below[/]"
        console.print(
            f"pipeline/bare jobs/s: [bold]{ratio:.2f}[/] (median/median; worst {min(p) / max(b):.2f}, "
            f"best {max(p) / min(b):.2f}) - {verdict} the {TARGET_RATIO}x target"
        )


def profile_report(folder: Path) -> None:
    """Per-task SQL and time from the instrumented workers, per job; cProfile merged into pstats.txt."""
    bench_side = json.loads((folder / "bench-process.json").read_text())
    jobs = bench_side.pop("jobs")
    merged: dict[str, Counter[str]] = {}
    for path in [*glob.glob(str(folder / "[0-9]*.json")), str(folder / "bench-process.json")]:
        data = json.loads(Path(path).read_text())
        for task, stats in data.items():
            if isinstance(stats, dict):
                merged.setdefault(task, Counter()).update(stats)
    table = Table(title=f"Where a pipeline job goes ({jobs} jobs incl. warm-up; instrumented, so times are high)")
    for column in ("task", "calls/job", "SQL/call", "SQL/job", "DB ms/call", "task ms/call", "statements/job"):
        table.add_column(column, justify="left" if column in ("task", "statements/job") else "right")
    for task, stats in sorted(merged.items()):
        calls = stats["calls"] or 1
        per_job = jobs if task != "task_create (bench process)" else calls
        verbs = ", ".join(f"{k[4:]} {v / per_job:.1f}" for k, v in sorted(stats.items()) if k.startswith("sql "))
        table.add_row(
            task, f"{stats['calls'] / per_job:.2f}", f"{stats['queries'] / calls:.1f}",
            f"{stats['queries'] / per_job:.1f}", f"{1000 * stats['db_seconds'] / calls:.2f}",
            f"{1000 * stats['seconds'] / calls:.1f}" if stats["seconds"] else "-", verbs,
        )
    console.print(table)
    profiles = glob.glob(str(folder / "*.prof"))
    if profiles:
        with (folder / "pstats.txt").open("w") as out:
            stats = pstats.Stats(*profiles, stream=out)
            stats.sort_stats("cumulative").print_stats(60)
            stats.sort_stats("tottime").print_stats(40)
        console.print(f"cProfile of {len(profiles)} pool processes merged into {folder / 'pstats.txt'}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--n", type=count, default=200, help="jobs per measurement (default 200)")
    parser.add_argument("--concurrency", type=count, default=2, help="worker processes for the jobs (default 2)")
    parser.add_argument("--repeat", type=count, default=3, help="measurements of each kind (default 3)")
    parser.add_argument("--embedded", action="store_true",
                        help="SQLite + file-system broker in a temp dir instead of PostgreSQL + Redis")
    parser.add_argument("--only", choices=("pipeline", "bare"), help="run one side only")
    parser.add_argument("--warmup", type=int, default=None,
                        help="unmeasured jobs before the first measurement (default 2xconcurrency)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per measurement (default 60+N)")
    parser.add_argument("--database-url-query", default="", metavar="QUERY",
                        help="appended to DATABASE_URL for every process, e.g. 'conn_max_age=600' "
                             "(django-environ options; for experiments, the default is the product's)")
    parser.add_argument("--group-max-concurrent", type=int, metavar="M",
                        help="the group's max_concurrent (default: --concurrency); M > C lets the dispatcher "
                             "lease ahead of the worker, an experiment")
    parser.add_argument("--json", type=Path, help="also write the raw samples here")
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="pipeline only, instrumented workers (bench.instrumented): SQL statements and "
                             "DB time per task, cProfile; results kept in DIR. Not a throughput figure.")
    args = parser.parse_args(argv)
    if args.profile:
        args.only = "pipeline"
    return args


SUBCOMMANDS = {"api": "api", "deep": "deep", "latency": "latency", "footprint": "footprint",
               "fairness": "fairness", "sandbox": "sandbox", "streams": "streams", "parsing": "parsing",
               "workspace": "workspace", "all": "suite"}  # subcommand -> module in bench/


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in SUBCOMMANDS:
        from importlib import import_module

        return import_module(f"bench.{SUBCOMMANDS[argv[0]]}").main(argv[1:])
    args = parse_args(argv)
    warmup = args.warmup if args.warmup is not None else 2 * args.concurrency
    timeout = args.timeout or 60.0 + args.n
    mode = "embedded (SQLite + file broker)" if args.embedded else "PostgreSQL + Redis"
    info = machine()
    console.print(f"[bold]bench[/] {mode}; " + "; ".join(f"{k}: {v}" for k, v in info.items()))
    stack = Stack(embedded=args.embedded, database_url_query=args.database_url_query)
    if not args.embedded:
        console.print(f"database {stack.database_url}, Redis key prefix {stack.prefix!r}")

    def progress(sample: Sample) -> None:
        console.print(f"  {sample.kind:8} {sample.n} jobs in {sample.wall_seconds:6.2f} s = "
                      f"{sample.jobs_per_second:6.2f} jobs/s (submit {sample.submit_seconds:.2f} s, "
                      f"CPU s/job: workers {sample.worker_cpu_seconds / sample.n:.3f} ("
                      + ", ".join(f"{k} {v / sample.n:.3f}" for k, v in sample.worker_cpu_by_name.items())
                      + f"), bench {sample.bench_cpu_seconds / sample.n:.3f}, "
                      f"machine {sample.system_cpu_seconds / sample.n:.3f})")

    pipeline: list[Sample] = []
    bare: list[Sample] = []
    common = {"n": args.n, "concurrency": args.concurrency, "repeat": args.repeat, "warmup": warmup,
              "timeout": timeout, "progress": progress}
    try:
        stack.create_database()
        if args.only != "bare":
            if args.profile:
                args.profile.mkdir(parents=True, exist_ok=True)
            pipeline = run_pipeline(stack, **common, profile_dir=args.profile,
                                    group_max_concurrent=args.group_max_concurrent)
        if args.only != "pipeline":
            bare = run_bare(stack, **common)
    except (RuntimeError, KeyboardInterrupt) as exc:
        return stack.report_failure(console, "bench", exc)
    finally:
        stack.close()
    report(pipeline, bare, n=args.n, concurrency=args.concurrency, mode=mode)
    if args.profile:
        profile_report(args.profile)
    if args.json:
        args.json.write_text(json.dumps({
            "mode": mode, "machine": info, "database_url_query": args.database_url_query, "argv": sys.argv,
            "samples": [asdict(s) | {"jobs_per_second": s.jobs_per_second} for s in pipeline + bare],
        }, indent=2))
    return 0
