"""`python -m bench fairness`: two tenants on one small group (issue 9, part 5), against bare Celery's FIFO.

Tenant A submits N_A jobs (`task_create` one after the other, as through the API), then tenant B submits N_B;
one group with cap C (`-c C`) runs them. The dispatcher takes tenants in turns within a priority, so B's jobs
should start in the first free slots after B submits, not after A's backlog. Measured from the stand-in's
own start lines (`FAKE_CLI_LOG`, matched by tag), per B job:

* position: how many of A's jobs started before it (in all, and since B submitted);
* wait: its CLI start minus its `created_at`.

Between runs the rest of A's backlog is set to canceled by a raw UPDATE and this run's control queue (one
dispatch message per create) is deleted from its Redis prefix: bench shortcuts, not product paths.

Baseline: the same submission order to a bare Celery queue (bench/bare.py `run_fake`, `-c C`), measured with
--bare-a-jobs A jobs; for N_A it is computed: FIFO starts every A job first, so B's position is N_A and its
wait is A's remaining backlog divided by the bare rate.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass

from rich.table import Table

from bench.common import Figure, add_output_arguments, begin, console, count, finish, part_parser, wait_for
from bench.docs import figures_section, spread
from bench.standin import FakeLog, tagged_prompt


@dataclass
class Outcome:
    """One run: where B's jobs started among A's."""

    side: str
    a_jobs: int
    b_jobs: int
    before_total: list[int]  # per B job: A jobs started before it
    before_since_submit: list[int]  # per B job: A jobs started after B submitted and before it
    waits: list[float]  # per B job, seconds from created/sent to CLI start
    a_started_at_submit: int
    a_rate: float  # A jobs started per second around B's submission
    submit_seconds: float  # time to submit A's jobs
    not_started: int = 0  # B jobs still waiting after --max-wait (their figures are lower bounds)

    @property
    def a_remaining(self) -> int:
        return self.a_jobs - self.a_started_at_submit


def positions(log: FakeLog, a_tags: list[str], b_tags: list[str], b_submitted: float, runnable: dict[str, float],
              side: str, submit_seconds: float) -> Outcome:
    a_starts = sorted(log.starts[t] for t in a_tags if t in log.starts)
    now = time.time()  # a B job that has not started yet counts as starting now: its figures are lower bounds
    b_starts = {t: log.starts.get(t, now) for t in b_tags}
    at_submit = sum(1 for t in a_starts if t < b_submitted)
    recent = [t for t in a_starts if b_submitted - 10 <= t < b_submitted]  # the rate just before B arrives
    rate = (len(recent) - 1) / (recent[-1] - recent[0]) if len(recent) > 2 else float("nan")
    return Outcome(
        side=side, a_jobs=len(a_tags), b_jobs=len(b_tags),
        before_total=[sum(1 for a in a_starts if a < b) for b in b_starts.values()],
        before_since_submit=[sum(1 for a in a_starts if b_submitted <= a < b) for b in b_starts.values()],
        waits=[b_starts[t] - runnable[t] for t in b_tags], a_started_at_submit=at_submit, a_rate=rate,
        submit_seconds=submit_seconds, not_started=sum(1 for t in b_tags if t not in log.starts),
    )


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("fairness", __doc__)
    parser.add_argument("--a-jobs", type=count, default=10_000, help="tenant A's jobs (default 10,000)")
    parser.add_argument("--b-jobs", type=count, default=10, help="tenant B's jobs (default 10)")
    parser.add_argument("--cap", type=count, default=2, help="the group's max_concurrent and -c (default 2)")
    parser.add_argument("--repeat", type=count, default=3, help="runs (default 3)")
    parser.add_argument("--bare-a-jobs", type=count, default=200,
                        help="A's jobs in the measured bare FIFO run (default 200; N_A is extrapolated)")
    parser.add_argument("--max-wait", type=float, default=900.0,
                        help="seconds to wait for B's jobs per run; later ones are reported as lower bounds "
                             "(default 900)")
    add_output_arguments(parser, summary=True)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args, command, info, stack = begin("fairness", argv, parse_args,
                                       sizes="N_A={a_jobs}, N_B={b_jobs}, cap {cap}, {repeat} runs")
    fake_log_path = stack.var_dir / "fake-cli.jsonl"
    log = FakeLog(fake_log_path)
    runs: list[Outcome] = []
    bare_run: Outcome | None = None
    started = time.monotonic()
    try:
        stack.create_database()
        stack.setup_django()
        from django.db import connection

        from tasks_app.models import ACTIVE_STATUSES, EventSource, Task, TaskStatus
        from tasks_app.services.tasks import TaskSpec, task_create

        stack.start_pipeline(args.cap, group_env={"FAKE_CLI_LOG": str(fake_log_path)})

        def submit(tenant: str, tags: list[str]) -> dict[str, float]:
            created = {}
            for tag in tags:
                task, _ = task_create(spec=TaskSpec(tool="claude", prompt=tagged_prompt(tag)), tenant=tenant,
                                      source=EventSource.API, created_by="bench")
                created[tag] = task.created_at.timestamp()
            return created

        def drain(tenant: str) -> None:
            with connection.cursor() as cursor:
                cursor.execute("UPDATE tasks_app_task SET status = 'canceled', finished_at = now() "
                               "WHERE tenant = %s AND status = 'queued'", [tenant])
            stack.delete_redis_keys_matching("control*")
            wait_for(lambda: not Task.objects.filter(status__in=ACTIVE_STATUSES).exists(), timeout=120,
                     what="the leased and running jobs to finish", interval=0.2)

        submit("warmup", [f"warmup-{i}" for i in range(2 * args.cap)])
        wait_for(lambda: Task.objects.filter(tenant="warmup", status=TaskStatus.SUCCEEDED).count() == 2 * args.cap,
                 timeout=120, what="the warm-up jobs")
        for r in range(args.repeat):
            a_tags = [f"a{r}-{i}" for i in range(args.a_jobs)]
            b_tags = [f"b{r}-{j}" for j in range(args.b_jobs)]
            began = time.time()
            submit(f"tenant-a-{r}", a_tags)
            b_submitted = time.time()
            created = submit(f"tenant-b-{r}", b_tags)
            try:
                wait_for(lambda b_tags=b_tags: log.started(b_tags), timeout=args.max_wait,
                         what="tenant B's jobs to start", interval=0.05)
            except RuntimeError:  # reported as a lower bound: the figure is then "not within --max-wait"
                console.print(f"  [yellow]not all of B's jobs started within {args.max_wait:g} s[/]")
            runs.append(positions(log, a_tags, b_tags, b_submitted, created, "pipeline", b_submitted - began))
            progress(runs[-1])
            drain(f"tenant-a-{r}")

        from bench import bare

        stack.start_bare(args.cap)

        def bare_send(tags: list[str]) -> dict[str, float]:
            sent = {}
            for tag in tags:
                sent[tag] = time.time()
                bare.run_fake.apply_async(args=[tagged_prompt(tag), str(fake_log_path)], queue=bare.QUEUE)
            return sent

        warm = [f"bare-warmup-{i}" for i in range(2 * args.cap)]
        bare_send(warm)
        wait_for(lambda: log.ended(warm), timeout=120, what="the bare warm-up jobs")
        a_tags = [f"bare-a-{i}" for i in range(args.bare_a_jobs)]
        b_tags = [f"bare-b-{j}" for j in range(args.b_jobs)]
        began = time.time()
        bare_send(a_tags)
        b_submitted = time.time()
        sent = bare_send(b_tags)
        wait_for(lambda: log.started(b_tags), timeout=120 + args.bare_a_jobs, what="the bare B jobs to start")
        bare_run = positions(log, a_tags, b_tags, b_submitted, sent, "bare", b_submitted - began)
        a_starts = sorted(log.starts[t] for t in a_tags)
        bare_run.a_rate = (len(a_starts) - 1) / (a_starts[-1] - a_starts[0])  # FIFO: the whole backlog's rate
        progress(bare_run)
    except (RuntimeError, KeyboardInterrupt) as exc:
        return stack.report_failure(console, "bench fairness", exc)
    finally:
        stack.close()
    figures = report(args, runs, bare_run)
    return finish("fairness", args, figures,
                  {"command": command, "a_jobs": args.a_jobs, "b_jobs": args.b_jobs, "repeat": args.repeat},
                  lambda load, elapsed: markdown(args, info, command, runs, bare_run, figures, load, elapsed),
                  started=started)


def progress(o: Outcome) -> None:
    console.print(f"  {o.side:8} N_A={o.a_jobs} (submitted in {o.submit_seconds:.1f} s, {o.a_started_at_submit} "
                  f"started by then), N_B={o.b_jobs}: A jobs started before each B job {o.before_total}; since B "
                  f"submitted {o.before_since_submit}; B waits {', '.join(f'{w:.2f}' for w in o.waits)} s"
                  + (f"; {o.not_started} not started yet (lower bounds)" if o.not_started else ""))


def fifo_wait(args: argparse.Namespace, runs: list[Outcome], bare_run: Outcome) -> float:
    """FIFO for N_A: B waits for the A backlog left when it arrives (as in the pipeline runs) at the bare rate."""
    remaining = statistics.median(o.a_remaining for o in runs)
    return remaining / bare_run.a_rate


def report(args: argparse.Namespace, runs: list[Outcome], bare_run: Outcome) -> list[Figure]:
    table = Table(title=f"Fairness: tenant A {args.a_jobs:,} jobs then tenant B {args.b_jobs}, cap {args.cap}; "
                        "per run, median (min..max) over B's jobs")
    for column in ("run", "A submitted in s", "A started when B came", "A before B's job (all)",
                   "A before B's job (since B came)", "B wait s"):
        table.add_column(column, justify="left" if column == "run" else "right")
    for i, o in enumerate([*runs, bare_run]):
        table.add_row(f"{o.side} {i + 1 if o.side == 'pipeline' else f'(N_A={o.a_jobs})'}", f"{o.submit_seconds:.1f}",
                      str(o.a_started_at_submit), spread(o.before_total, "{:.0f}"),
                      spread(o.before_since_submit, "{:.0f}"), spread(o.waits, "{:.2f}"))
    console.print(table)
    limit = args.b_jobs + args.cap  # perfect turns: B's j-th job after at most j A jobs, plus the leases in flight
    worst = [max(o.before_since_submit) for o in runs]
    last_wait = [max(o.waits) for o in runs]
    median_wait = [statistics.median(o.waits) for o in runs]
    wait_fifo = fifo_wait(args, runs, bare_run)
    figures = [
        Figure(part="5 fairness",
               name=f"A jobs started between B's submission and B's last start (N_A={args.a_jobs:,})",
               value=spread(worst, "{:.0f}") + f" for {args.b_jobs} B jobs"
                     + (f" (>=: {sum(o.not_started for o in runs)} B jobs not started in {args.max_wait:g} s)"
                        if any(o.not_started for o in runs) else ""),
               baseline=f"FIFO: {args.a_jobs:,} (all of A; measured {max(bare_run.before_total)} of "
                        f"{bare_run.a_jobs} on bare Celery)",
               target=f"<= N_B + cap = {limit}", met=statistics.median(worst) <= limit),
        Figure(part="5 fairness", name="B's wait, median job / last job",
               value=f"{spread(median_wait, '{:.2f}')} / {spread(last_wait, '{:.2f}')} s",
               baseline=f"FIFO: ~{wait_fifo:.0f} s for N_A (computed); {statistics.median(bare_run.waits):.1f} / "
                        f"{max(bare_run.waits):.1f} s measured with N_A={bare_run.a_jobs}",
               target="-", met=None),
    ]
    return figures


def markdown(args: argparse.Namespace, info: dict[str, str], command: str, runs: list[Outcome], bare_run: Outcome,
             figures: list[Figure], load: str, elapsed: float) -> str:
    setup = (f"One group, cap {args.cap} (`-c {args.cap}`), control worker `-c 1`; A's jobs created one by one with "
             f"`task_create` (jobs start while A is still submitting), then B's. {args.repeat} runs; B's positions "
             f"and waits from the stand-in's start lines. Bare Celery FIFO measured with N_A={bare_run.a_jobs} (rate "
             f"{bare_run.a_rate:.1f} jobs/s); for N_A={args.a_jobs:,} its wait is A's remaining backlog at B's "
             "arrival / that rate.")
    lines = ["| run | A submitted in s | A started when B came | A before each B job (all) | A before each B job "
             "(since B came) | B wait s |", "|---|---|---|---|---|---|"]
    for i, o in enumerate([*runs, bare_run]):
        name = f"pipeline {i + 1}" if o.side == "pipeline" else f"bare Celery FIFO, N_A={o.a_jobs}"
        lines.append(f"| {name} | {o.submit_seconds:.1f} | {o.a_started_at_submit} | "
                     f"{', '.join(map(str, o.before_total))} | {', '.join(map(str, o.before_since_submit))} | "
                     f"{', '.join(f'{w:.2f}' for w in o.waits)} |")
    title = (f"Fairness: tenant A {args.a_jobs:,} jobs, then tenant B {args.b_jobs} (issue 9 part 5, generated "
             f"{time.strftime('%Y-%m-%d')})")
    return figures_section(title, command, f"(bench/fairness.py, {elapsed:.0f} s)", info=info, load=load,
                           setup=setup, table=lines, figures=figures)
