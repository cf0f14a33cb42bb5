"""`python -m bench latency`: dispatch latency (issue 9, part 2), from a task becoming runnable to its CLI starting.

Three triggers, each with free capacity and real processes (control worker, group workers, beat):

* created: `task_create` one job at a time into a group with a free slot (cap C, `-c C`); the next job is
  created 50-150 ms after the previous CLI started. Runnable at `Task.created_at`.
* scheduled_at reached: jobs created with `scheduled_at` ahead, spaced 1.618 x tick apart (so their phase
  against the tick is spread evenly and no job's own post-finish dispatch pass can pick up the next one);
  only beat's safety-net tick (`SCHEDULER_TICK_SECONDS`, here --tick) makes them due. Runnable at `scheduled_at`.
* slot freed: a cap-1 group (`-c 1`) with a queue of jobs; runnable when the previous run's `succeeded` event
  commits (the slot frees), also shown from the previous CLI's exit.

The CLI start is the stand-in's own log line (`FAKE_CLI_LOG` in the group's env, `"t": time.time()` when it
starts), matched to the task by the tag in its prompt. Baseline: the same stand-in run by a bare Celery task
(bench/bare.py `run_fake`) with the same spacing: send -> CLI start (`-c C`), and CLI exit -> next CLI start
for a queue on `-c 1`.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise

from rich.table import Table

from bench.common import Figure, add_output_arguments, begin, console, count, finish, part_parser, wait_for
from bench.docs import figures_section, percentile, spread
from bench.stack import GROUP
from bench.standin import FakeLog, tagged_prompt

P50_TARGET_MS = 100.0
P99_TARGET_MS = 1000.0
SERIAL_GROUP = "claude-serial"
BARE_SERIAL_QUEUE = "bench-bare-serial"


def percentiles_ms(seconds: list[float]) -> dict[str, float]:
    ordered = sorted(1000 * s for s in seconds)
    return {"p50": percentile(ordered, 0.5), "p95": percentile(ordered, 0.95), "p99": percentile(ordered, 0.99),
            "max": ordered[-1] if ordered else float("nan")}


@dataclass
class Trigger:
    key: str
    title: str
    runnable: str  # what "runnable" means for it
    runs: list[list[float]] = field(default_factory=list)  # seconds, one list per repeat

    def stat(self, name: str) -> list[float]:
        return [percentiles_ms(run)[name] for run in self.runs if run]

    def measure(self, run: Callable[[str, int], list[float]], n: int, repeat: int) -> None:
        """`repeat` runs of `run(prefix, n)`, each printed as it ends."""
        for r in range(repeat):
            self.runs.append(run(f"{self.key}-{r}", n))
            progress(self, r)


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("latency", __doc__)
    parser.add_argument("--n", type=count, default=100,
                        help="jobs per run for 'created' and 'slot freed' (default 100)")
    parser.add_argument("--n-scheduled", type=count, default=40,
                        help="jobs per run for 'scheduled_at reached' (1.6 x tick apart; default 40)")
    parser.add_argument("--repeat", type=count, default=3, help="runs of each trigger (default 3)")
    parser.add_argument("--concurrency", type=count, default=2, help="cap and -c of the free group (default 2)")
    parser.add_argument("--tick", type=float, default=1.0, help="SCHEDULER_TICK_SECONDS for beat (default 1)")
    add_output_arguments(parser, summary=True)
    args = parser.parse_args(argv)
    if args.tick <= 0:
        parser.error("--tick must be positive")
    return args


def main(argv: list[str]) -> int:
    args, command, info, stack = begin("latency", argv, parse_args, sizes="N={n} (scheduled {n_scheduled}) x {repeat} "
                                       "runs, C={concurrency}, tick {tick:g} s")
    fake_log_path = stack.var_dir / "fake-cli.jsonl"
    log = FakeLog(fake_log_path)
    created = Trigger("created", "created", "Task.created_at")
    scheduled = Trigger("scheduled", "scheduled_at reached", "Task.scheduled_at")
    slot = Trigger("slot", "slot freed", "previous run's `succeeded` event")
    slot_cli = Trigger("slot-cli", "slot freed, from the CLI's exit", "previous CLI's exit (its `end` log line)")
    bare_send = Trigger("bare-send", "bare Celery: send -> CLI start", "apply_async() called")
    bare_serial = Trigger("bare-serial", "bare Celery -c 1 queue: CLI exit -> next CLI start", "previous CLI's exit")
    tick_env = {"SCHEDULER_TICK_SECONDS": f"{args.tick:g}"}
    started = time.monotonic()
    try:
        stack.create_database()
        stack.setup_django(tick_env)
        from tasks_app.models import EventSource, TaskEvent, TaskStatus
        from tasks_app.services.groups import group_create
        from tasks_app.services.tasks import TaskSpec, task_create

        group_env = {"FAKE_CLI_LOG": str(fake_log_path)}
        stack.start_pipeline(args.concurrency, group_env=group_env, extra_env=tick_env)
        group_create(tool="claude", account="serial", max_concurrent=1, env=group_env)
        stack.start_worker("workers", SERIAL_GROUP, 1, SERIAL_GROUP, tick_env)

        def create(tag: str, group: str, at: datetime | None = None) -> tuple[str, float]:
            task, _ = task_create(spec=TaskSpec(tool="claude", prompt=tagged_prompt(tag), worker_group=group,
                                                scheduled_at=at), tenant="bench", source=EventSource.API,
                                  created_by="bench")
            return str(task.pk), task.created_at.timestamp()

        def one_at_a_time(prefix: str, n: int, start_one) -> list[float]:
            """Start a job, wait for its CLI, pause 50-150 ms, next: a slot is always free."""
            latencies = []
            for i in range(n):
                tag = f"{prefix}-{i}"
                runnable = start_one(tag)
                wait_for(lambda tag=tag: log.started([tag]), timeout=60, what=f"the CLI of {tag}")
                latencies.append(log.starts[tag] - runnable)
                time.sleep(random.uniform(0.05, 0.15))
            tags = [f"{prefix}-{i}" for i in range(n)]
            wait_for(lambda: log.ended(tags), timeout=60, what=f"the {prefix} jobs to end")
            return latencies

        def created_run(prefix: str, n: int) -> list[float]:
            return one_at_a_time(prefix, n, lambda tag: create(tag, GROUP)[1])

        def scheduled_run(prefix: str, n: int) -> list[float]:
            spacing = 1.618 * args.tick
            base = time.time() + 1.5 + 0.03 * n  # ahead of the time it takes to create them all
            due: dict[str, float] = {}
            for i in range(n):
                at = datetime.fromtimestamp(base + i * spacing, UTC)
                _task_id, created_at = create(f"{prefix}-{i}", GROUP, at)
                if created_at >= at.timestamp():
                    raise RuntimeError(f"{prefix}-{i} was created after its scheduled_at; raise the lead time")
                due[f"{prefix}-{i}"] = at.timestamp()
            wait_for(lambda: log.ended(list(due)), timeout=base - time.time() + n * spacing + 60,
                     what=f"the {prefix} jobs to end")
            return [log.starts[tag] - at for tag, at in due.items()]

        def slot_run(prefix: str, n: int) -> tuple[list[float], list[float]]:
            ids = {}
            for i in range(n):
                ids[f"{prefix}-{i}"] = create(f"{prefix}-{i}", SERIAL_GROUP)[0]
            wait_for(lambda: log.ended(list(ids)), timeout=60 + 2 * n, what=f"the {prefix} jobs to end")
            freed = {str(task_id): at for task_id, at in TaskEvent.objects.filter(
                task_id__in=list(ids.values()), to_status=TaskStatus.SUCCEEDED).values_list("task_id", "created_at")}
            order = sorted(ids, key=lambda tag: log.starts[tag])
            from_commit, from_exit = [], []
            for previous, following in pairwise(order):
                from_commit.append(log.starts[following] - freed[ids[previous]].timestamp())
                from_exit.append(log.starts[following] - log.ends[previous])
            return from_commit, from_exit

        created_run("warmup-created", 2 * args.concurrency)
        slot_run("warmup-slot", 3)
        created.measure(created_run, args.n, args.repeat)
        for r in range(args.repeat):
            commit_gaps, exit_gaps = slot_run(f"slot-{r}", args.n)
            slot.runs.append(commit_gaps)
            slot_cli.runs.append(exit_gaps)
            progress(slot, r)
        stack.start_beat(tick_env)  # only now: its passes would add noise to the other triggers
        scheduled.measure(scheduled_run, args.n_scheduled, args.repeat)

        from bench import bare

        stack.start_bare(args.concurrency)
        stack.start_worker("bench.bare", BARE_SERIAL_QUEUE, 1, "bare-serial")

        def bare_send_run(prefix: str, n: int) -> list[float]:
            def send(tag: str) -> float:
                sent = time.time()
                bare.run_fake.apply_async(args=[tagged_prompt(tag), str(fake_log_path)], queue=bare.QUEUE)
                return sent

            return one_at_a_time(prefix, n, send)

        def bare_serial_run(prefix: str, n: int) -> list[float]:
            tags = [f"{prefix}-{i}" for i in range(n)]
            for tag in tags:
                bare.run_fake.apply_async(args=[tagged_prompt(tag), str(fake_log_path)], queue=BARE_SERIAL_QUEUE)
            wait_for(lambda: log.ended(tags), timeout=60 + 2 * n, what=f"the {prefix} jobs to end")
            order = sorted(tags, key=lambda tag: log.starts[tag])
            return [log.starts[b] - log.ends[a] for a, b in pairwise(order)]

        bare_send_run("warmup-bare", 2 * args.concurrency)
        bare_serial_run("warmup-bare-serial", 3)
        bare_send.measure(bare_send_run, args.n, args.repeat)
        bare_serial.measure(bare_serial_run, args.n, args.repeat)
    except (RuntimeError, KeyboardInterrupt) as exc:
        return stack.report_failure(console, "bench latency", exc)
    finally:
        stack.close()
    triggers = [created, scheduled, slot, slot_cli, bare_send, bare_serial]
    figures = report(args, triggers)
    return finish("latency", args, figures,
                  {"command": command, "n": args.n, "n_scheduled": args.n_scheduled, "repeat": args.repeat},
                  lambda load, elapsed: markdown(args, info, command, triggers, figures, load, elapsed),
                  started=started)


def progress(trigger: Trigger, index: int) -> None:
    p = percentiles_ms(trigger.runs[-1])
    console.print(f"  {trigger.title:24} run {index + 1}: {len(trigger.runs[-1]):4} jobs  p50 {p['p50']:7.1f}  "
                  f"p95 {p['p95']:7.1f}  p99 {p['p99']:7.1f}  max {p['max']:7.1f} ms")


def verdict(value: float, target: float) -> bool:
    return value < target


def report(args: argparse.Namespace, triggers: list[Trigger]) -> list[Figure]:
    table = Table(title=f"Dispatch latency, runnable -> CLI start, ms; median (min..max) over {args.repeat} runs")
    for column in ("trigger", "runnable at", "jobs/run", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="left" if column in ("trigger", "runnable at") else "right")
    for t in triggers:
        table.add_row(t.title, t.runnable, str(len(t.runs[0]) if t.runs else 0),
                      *(spread(t.stat(s)) for s in ("p50", "p95", "p99", "max")))
    console.print(table)
    by_key = {t.key: t for t in triggers}
    figures = []
    pairs = (("created", "bare-send"), ("scheduled", "bare-send"), ("slot", "bare-serial"))
    for key, base_key in pairs:
        trigger, base = by_key[key], by_key[base_key]
        for stat, target in (("p50", P50_TARGET_MS), ("p99", P99_TARGET_MS)):
            value = statistics.median(trigger.stat(stat))
            met = verdict(value, target)
            figures.append(Figure(
                part="2 dispatch latency", name=f"{trigger.title}: {stat}",
                value=f"{spread(trigger.stat(stat))} ms",
                baseline=f"{spread(base.stat(stat))} ms ({base.title})", target=f"< {target:g} ms", met=met,
            ))
    return figures


def markdown(args: argparse.Namespace, info: dict[str, str], command: str, triggers: list[Trigger],
             figures: list[Figure], load: str, elapsed: float) -> str:
    setup = (f"PostgreSQL + Redis on the box; control worker `-c 1`, group `{GROUP}` (cap {args.concurrency}, "
             f"`-c {args.concurrency}`), group `{SERIAL_GROUP}` (cap 1, `-c 1`), beat with "
             f"`SCHEDULER_TICK_SECONDS={args.tick:g}` for the scheduled trigger only. CLI start = the stand-in's own "
             "`start` log line (`time.time()` in the CLI process, after its interpreter started, ~30-50 ms). "
             f"{args.repeat} runs of {args.n} jobs ({args.n_scheduled} for scheduled); percentiles per run, then "
             "median (min\N{EN DASH}max) over the runs. With this few jobs a run's p99 is one of its 2 largest values.")
    lines = ["| trigger | runnable at | jobs/run | p50 ms | p95 ms | p99 ms | max ms |",
             "|---|---|---|---|---|---|---|"]
    for t in triggers:
        lines.append(f"| {t.title} | {t.runnable} | {len(t.runs[0]) if t.runs else 0} | "
                     + " | ".join(spread(t.stat(s)) for s in ("p50", "p95", "p99", "max")) + " |")
    title = f"Dispatch latency: runnable -> CLI start (issue 9 part 2, generated {time.strftime('%Y-%m-%d')})"
    return figures_section(title, command, f"(bench/latency.py, {elapsed:.0f} s)", info=info, load=load, setup=setup,
                           table=lines, figures=figures)
