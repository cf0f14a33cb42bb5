"""`python -m bench deep`: the dispatcher over a deep queue (issue 9): a million queued tasks, measured in-process.

A throwaway PostgreSQL database gets N queued tasks (bench.seed) across 3 tenants, 3 tools and 4 worker
groups (claude x2, codex, gemini) with free slots. Timed, each call on its own:

* `queued_tenants(tool)` and `candidates(tool, capacity, now)` for every tool;
* `dispatch_runnable()` as a decision: inside an outer transaction that is rolled back, so nothing commits
  and no Celery message is sent (on_commit never fires);
* `dispatch_runnable()` as a whole pass: committed, its execute messages sent to this run's own Redis
  key prefix (deleted at the end). After each pass the leased tasks go back to queued by a raw UPDATE
  (a bench shortcut, not a product path), so the depth stays at N.

Then EXPLAIN (ANALYZE, BUFFERS) of every statement of one pass and of the API's task list query, and a
check that none of them reads the task table with a Seq Scan.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from psycopg import DatabaseError
from rich.table import Table

from bench.common import add_output_arguments, begin, console, part_parser, publish
from bench.docs import machine_line, percentile, section_head, spread
from bench.plans import Plan, api_request, capture, explain, label_statement, write_plans
from bench.seed import TASK_TABLE, TENANTS, create_groups, create_tokens, seed_tasks, status_counts
from bench.stack import ROOT

DEFAULT_ROWS = 1_000_000
DECISION_TARGET_MS = 10.0


@dataclass
class Anatomy:
    """One decision pass, statement by statement (captured, so a little slower than the timed passes)."""

    statements: int
    sql_ms: float  # round trips included: the time inside cursor.execute
    total_ms: float
    verbs: dict[str, int]

    def describe(self) -> str:
        verbs = ", ".join(f"{n} {verb}" for verb, n in sorted(self.verbs.items(), key=lambda item: -item[1]))
        return (f"{self.statements} statements, {self.sql_ms:.1f} ms of {self.total_ms:.1f} ms inside "
                f"cursor.execute ({verbs})")


@dataclass
class Timing:
    name: str
    seconds: list[float]
    note: str = ""

    @property
    def ms(self) -> list[float]:
        return [1000 * s for s in self.seconds]


def timed(name: str, call: Callable[[], object], repeat: int, *, warmup: int = 2,
          after: Callable[[object], None] | None = None, note: str = "") -> Timing:
    for _ in range(warmup):
        result = call()
        if after is not None:
            after(result)
    seconds = []
    for _ in range(repeat):
        started = time.perf_counter()
        result = call()
        seconds.append(time.perf_counter() - started)
        if after is not None:
            after(result)
    return Timing(name=name, seconds=seconds, note=note)


def requeue_leased() -> int:
    """Put every leased task back in the queue and drop the lease events: the depth stays at N."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {TASK_TABLE} SET status = 'queued', worker_group_id = NULL, lease_token = NULL, "
            "lease_expires_at = NULL WHERE status = 'leased'"
        )
        moved = cursor.rowcount
        cursor.execute("DELETE FROM tasks_app_taskevent WHERE to_status = 'leased'")
    return moved


def decision_only() -> int:
    """One dispatch pass whose transaction is rolled back: the decision and leases, no commit, no message."""
    from django.db import transaction

    from tasks_app.services.dispatch import dispatch_runnable

    with transaction.atomic():
        leases = dispatch_runnable()
        transaction.set_rollback(True)
    return len(leases)


def decision_reads_only() -> int:
    """A rolled-back pass with the lease write (`task_lease_batch`) stubbed out: the reads alone."""
    from unittest import mock

    from tasks_app.services import dispatch

    with mock.patch.object(dispatch, "task_lease_batch", lambda **kwargs: []):
        return decision_only()


def round_trip() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
        cursor.fetchone()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = part_parser("deep", __doc__)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"queued tasks (default {DEFAULT_ROWS:,})")
    parser.add_argument("--repeat", type=int, default=30, help="timed calls of each kind (default 30)")
    parser.add_argument("--cap", type=int, default=4, help="max_concurrent of each of the 4 groups (default 4)")
    add_output_arguments(parser, plans="deep")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args, command, info, stack = begin("deep", argv, parse_args)
    try:
        stack.create_database()
        stack.setup_django()
        from django.db import connection, connections
        from django.utils import timezone

        from tasks_app.services.dispatch import candidates, dispatch_runnable, queued_tenants

        groups = create_groups(max_concurrent=args.cap)
        keys = create_tokens()
        connections.close_all()
        seeded = seed_tasks(stack.database_url, rows=args.rows, groups=groups, queued_only=True)
        counts = status_counts(stack.database_url)
        console.print(f"seeded {seeded.rows:,} queued tasks in {seeded.total_seconds:.1f} s "
                      f"(insert {seeded.insert_seconds:.1f}, indexes {seeded.index_seconds:.1f}, "
                      f"vacuum+analyze {seeded.vacuum_seconds:.1f}): {counts}")
        capacity = {tool: args.cap * len(ids) for tool, ids in groups.items()}
        expected_leases = sum(capacity.values())
        connection.ensure_connection()  # a worker's connection is open before its pass; time the pass only

        timings: list[Timing] = [timed("SELECT 1 (one round trip through Django)", round_trip, args.repeat,
                                       note="the floor under every statement below")]
        for tool in sorted(groups):
            timings.append(timed(f"queued_tenants({tool!r})", lambda tool=tool: queued_tenants(tool), args.repeat))
        for tool in sorted(groups):
            timings.append(timed(
                f"candidates({tool!r}, {capacity[tool]}, now)",
                lambda tool=tool: candidates(tool, capacity[tool], timezone.now()), args.repeat,
            ))

        def check(leases: object) -> None:
            if leases != expected_leases:
                raise RuntimeError(f"a pass leased {leases} tasks, expected {expected_leases}")

        timings.append(timed("dispatch_runnable(): decision (rolled back)", decision_only, args.repeat,
                             after=check, note=f"{expected_leases} leases a pass, no commit, no message"))

        timings.append(timed("dispatch_runnable(): reads only (lease write stubbed)", decision_reads_only,
                             args.repeat,
                             note="groups, counts, queued_tenants + candidates per tool; no task_lease_batch"))

        def committed_pass() -> int:
            return len(dispatch_runnable())

        def after_commit(leases: object) -> None:
            check(leases)
            requeue_leased()

        timings.append(timed("dispatch_runnable(): pass (committed)", committed_pass, args.repeat, after=after_commit,
                             note=f"{expected_leases} leases + events, commit, {expected_leases} messages to Redis"))

        # The plans: one pass's statements (decision only), then the API's list query for the biggest tenant.
        with capture() as pass_statements:
            started = time.perf_counter()
            decision_only()
            pass_seconds = time.perf_counter() - started
        verbs: dict[str, int] = {}
        for statement in pass_statements:
            verb = label_statement(statement.sql)
            verbs[verb] = verbs.get(verb, 0) + 1
        anatomy = Anatomy(statements=len(pass_statements), sql_ms=1000 * sum(s.seconds for s in pass_statements),
                          total_ms=1000 * pass_seconds, verbs=verbs)
        plans = explain(pass_statements, label=label_statement)
        list_plans: list[Plan] = []
        for path in ("/api/v1/tasks/?status=queued&tool=claude", "/api/v1/tasks/"):
            status, statements, _elapsed = api_request("GET", path, keys[TENANTS[0][0]])
            if status != 200:
                raise RuntimeError(f"GET {path} answered {status}")
            for plan in explain(statements, label=label_statement):
                plan.label = f"GET {path}: {plan.label}"
                list_plans.append(plan)
        connections.close_all()
    except (RuntimeError, KeyboardInterrupt, DatabaseError) as exc:
        return stack.report_failure(console, "bench deep", exc)
    finally:
        stack.close()

    all_plans = plans + list_plans
    args.plans.parent.mkdir(parents=True, exist_ok=True)
    write_plans(args.plans, f"EXPLAIN (ANALYZE, BUFFERS), {args.rows:,} queued tasks", all_plans,
                preamble=f"Command: {command}\nOne dispatch pass (decision, rolled back), in order, then the API "
                         "task list for the biggest tenant.\n")
    console.print(f"plans written to {args.plans}")
    markdown = report(args, info, command, seeded.total_seconds, timings, plans, list_plans, anatomy)
    if not args.no_docs:
        publish("deep", markdown)
    return 0


def report(args: argparse.Namespace, info: dict[str, str], command: str, seed_seconds: float,
           timings: list[Timing], plans: list[Plan], list_plans: list[Plan], anatomy: Anatomy) -> str:
    table = Table(title=f"Dispatch over {args.rows:,} queued tasks, {args.repeat} calls each, ms")
    columns = ("call", "median", "min", "max", "p95", "note")
    for column in columns:
        table.add_column(column, justify="left" if column in ("call", "note") else "right")
    lines = ["| call | ms median (min\N{EN DASH}max) | note |", "|---|---|---|"]
    for timing in timings:
        ms = sorted(timing.ms)
        p95 = percentile(ms, 0.95)
        table.add_row(timing.name, f"{statistics.median(ms):.2f}", f"{ms[0]:.2f}", f"{ms[-1]:.2f}", f"{p95:.2f}",
                      timing.note)
        lines.append(f"| `{timing.name}` | {spread(ms, '{:.2f}')} | {timing.note} |")
    console.print(table)

    plan_table = Table(title="EXPLAIN (ANALYZE, BUFFERS): one dispatch pass, then the API list")
    plan_columns = ("statement", "exec ms", "indexes", "Seq Scan on")
    for column in plan_columns:
        plan_table.add_column(column, justify="right" if column == "exec ms" else "left")
    plan_lines = ["| statement | times in the pass | execution ms (max) | indexes used | Seq Scan on |",
                  "|---|---|---|---|---|"]
    grouped: dict[tuple[str, str, str], list[float]] = {}
    for plan in plans + list_plans:  # the per-lease statements repeat: one row per distinct plan shape
        key = (plan.label, ", ".join(plan.indexes) or "-", ", ".join(plan.seq_scans) or "-")
        grouped.setdefault(key, []).append(plan.execution_ms or 0.0)
    for (label, indexes, seq_scans), times in grouped.items():
        cells = [label, str(len(times)), f"{max(times):.3f}", indexes, seq_scans]
        plan_table.add_row(label, f"{max(times):.3f}", indexes, seq_scans)
        plan_lines.append(f"| {' | '.join(cells)} |")
    console.print(plan_table)

    decision = next(t for t in timings if t.name.startswith("dispatch_runnable(): decision"))
    decision_ms = statistics.median(decision.ms)
    met = decision_ms < DECISION_TARGET_MS
    seq_on_task = [p.label for p in plans + list_plans if p.seq_scan_on(TASK_TABLE)]
    colour = "green" if met else "red"
    console.print(f"[{colour}]dispatch decision median {decision_ms:.2f} ms (max {max(decision.ms):.2f}) - target "
                  f"< {DECISION_TARGET_MS:g} ms {'met' if met else 'NOT met'}[/]")
    console.print(f"one decision pass: {anatomy.describe()}")
    if seq_on_task:
        console.print(f"[red]Seq Scan on {TASK_TABLE} in: {', '.join(seq_on_task)}[/]")
    else:
        console.print(f"[green]no Seq Scan on {TASK_TABLE} in any of the {len(plans + list_plans)} plans[/]")

    plans_path = args.plans.relative_to(ROOT) if args.plans.is_relative_to(ROOT) else args.plans
    other_seq = sorted({t for p in plans + list_plans for t in p.seq_scans if t != TASK_TABLE})
    return "\n".join([
        *section_head(f"Dispatch over a deep queue: {args.rows:,} queued tasks (issue 9, generated "
                      f"{time.strftime('%Y-%m-%d')})", command, "(bench/deep.py)"),
        f"Machine: {machine_line(info)}. In-process against a throwaway PostgreSQL 15 database: {args.rows:,} queued "
        f"tasks (seeded in SQL in {seed_seconds:.0f} s) across 3 tenants (50/30/20 %), tools claude/codex/gemini "
        f"(50/25/25 %), priorities 1-9 (70 % at 5), 1 % scheduled in the future and 1 % waiting for a retry; 4 "
        f"groups (2 claude, codex, gemini) with max_concurrent {args.cap}, all free, so every pass leases "
        f"{args.cap * 4}. {args.repeat} timed calls of each, after 2 warm-up calls, on an open connection.",
        "",
        f"**Target: a dispatch decision < {DECISION_TARGET_MS:g} ms. Measured: {decision_ms:.2f} ms median "
        f"(max {max(decision.ms):.2f}): {'met' if met else 'NOT met'}.** "
        + (f"**No Seq Scan on `{TASK_TABLE}`** in the {len(plans + list_plans)} plans below."
           if not seq_on_task else f"**Seq Scan on `{TASK_TABLE}`** in: {', '.join(seq_on_task)}.")
        + (f" (Seq Scans on the small tables {', '.join(f'`{t}`' for t in other_seq)} are the planner's right "
           "choice for a handful of rows.)" if other_seq else ""),
        "",
        *lines,
        "",
        f"Anatomy of one decision pass: {anatomy.describe()}.",
        "",
        "EXPLAIN (ANALYZE, BUFFERS) of one pass (in order; the decision, rolled back) and of the API's task "
        f"list for tenant `{TENANTS[0][0]}`:",
        "",
        *plan_lines,
        "",
        f"Full plans: `{plans_path}`.",
    ])
