"""`python -m bench api`: latency of GET/POST /api/v1/tasks/ under gunicorn, over a million-row task table.

A throwaway PostgreSQL database is migrated and seeded in SQL (bench.seed), gunicorn serves the product
(`scheduler_site.wsgi`, the production entry point), and C client threads hit it for a fixed time each:
the filtered list, the unfiltered first page, and create. Then the same requests once more in-process to
split a request's time into SQL and Python, and EXPLAIN (ANALYZE, BUFFERS) of every statement they send.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import socket
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from psycopg import DatabaseError
from rich.table import Table

from bench.common import add_output_arguments, begin, console, publish
from bench.docs import machine_line, percentile, section_head, spread
from bench.plans import Plan, api_request, explain, label_statement, write_plans
from bench.seed import TENANTS, create_groups, create_tokens, seed_tasks, status_counts
from bench.stack import ROOT
from tests.procs import stop_process_groups

DEFAULT_ROWS = 1_000_000
LIST_P95_TARGET_MS = 50.0
CREATE_P95_TARGET_MS = 30.0
CREATE_BODY = {"tool": "claude", "prompt": "Summarise the open issues in one paragraph.", "priority": 5}


@dataclass(frozen=True)
class Scenario:
    name: str
    method: str
    path: str
    target_p95_ms: float | None = None

    @property
    def body(self) -> dict[str, object] | None:
        return CREATE_BODY if self.method == "POST" else None


SCENARIOS = (
    Scenario("list filtered (status=succeeded&tool=claude)", "GET", "/api/v1/tasks/?status=succeeded&tool=claude",
             LIST_P95_TARGET_MS),
    Scenario("list first page (no filter)", "GET", "/api/v1/tasks/"),
    Scenario("create", "POST", "/api/v1/tasks/", CREATE_P95_TARGET_MS),
)


@dataclass
class Run:
    scenario: str
    clients: int
    seconds: float
    latencies_ms: list[float]
    errors: dict[str, int] = field(default_factory=dict)

    @property
    def requests_per_second(self) -> float:
        return len(self.latencies_ms) / self.seconds

    def p(self, fraction: float) -> float:
        return percentile(sorted(self.latencies_ms), fraction)


# --- the server ----------------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Gunicorn:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @classmethod
    def start(cls, env: dict[str, str], var_dir: Path, workers: int) -> Gunicorn:
        port = free_port()
        log = var_dir / "gunicorn.log"
        binary = Path(sys.executable).parent / "gunicorn"
        command = [str(binary)] if binary.exists() else [sys.executable, "-m", "gunicorn"]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*command, "scheduler_site.wsgi", "-w", str(workers), "-b", f"127.0.0.1:{port}"],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )
        server = cls(proc=proc, port=port, log=log)
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                output = log.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"gunicorn exited with {proc.returncode}:\n{output}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
                conn.request("GET", "/healthz")
                conn.getresponse().read()
                conn.close()
                return server
            if time.monotonic() > deadline:
                raise RuntimeError(f"gunicorn not answering after 60 s; see {log}")
            time.sleep(0.2)

    def stop(self) -> None:
        stop_process_groups([self.proc])


# --- the clients ---------------------------------------------------------------------------------------
def load(port: int, scenario: Scenario, keys: list[str], *, clients: int, seconds: float) -> Run:
    """`clients` threads, each with its own connection, requesting back to back for `seconds`.

    http.client reuses the connection when the server keeps it open; gunicorn's sync workers close it
    after every response, so each request also pays a TCP connect on loopback (~0.1 ms).
    """
    body = json.dumps(scenario.body).encode() if scenario.body is not None else None
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[dict[str, int]] = [{} for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    def client(index: int) -> None:
        headers = {"Authorization": f"Token {keys[index % len(keys)]}", "Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        own, own_errors = latencies[index], errors[index]
        start.wait()
        while time.perf_counter() < deadline[0]:
            began = time.perf_counter()
            try:
                conn.request(scenario.method, scenario.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                own_errors[type(exc).__name__] = own_errors.get(type(exc).__name__, 0) + 1
                continue
            elapsed = time.perf_counter() - began
            if status >= 300:
                own_errors[f"HTTP {status}"] = own_errors.get(f"HTTP {status}", 0) + 1
            else:
                own.append(1000 * elapsed)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    began = time.perf_counter()
    deadline[0] = began + seconds
    start.wait()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - began
    merged_errors: dict[str, int] = {}
    for own in errors:
        for kind, n in own.items():
            merged_errors[kind] = merged_errors.get(kind, 0) + n
    return Run(scenario=scenario.name, clients=clients, seconds=elapsed,
               latencies_ms=[v for own in latencies for v in own], errors=merged_errors)


# --- in-process breakdown --------------------------------------------------------------------------------
@dataclass
class Breakdown:
    scenario: str
    request_ms: float  # median wall time of the whole request in-process (no HTTP, no gunicorn)
    sql_ms: float  # median time inside the database calls of one request
    statements: int
    plans: list[Plan]


def breakdown(scenario: Scenario, key: str, *, samples: int) -> Breakdown:
    from django.db import connection

    requests, sql, count = [], [], 0
    statements = []
    for _ in range(samples):
        status, statements, elapsed = api_request(scenario.method, scenario.path, key, scenario.body)
        if status >= 300:
            raise RuntimeError(f"{scenario.method} {scenario.path} in-process answered {status}")
        requests.append(1000 * elapsed)
        sql.append(1000 * sum(s.seconds for s in statements))
        count = len(statements)
    connection.close()  # the next explain starts on a fresh connection, like a gunicorn request
    plans = explain(statements, label=label_statement) if scenario.method == "GET" else []
    return Breakdown(scenario=scenario.name, request_ms=statistics.median(requests), sql_ms=statistics.median(sql),
                     statements=count, plans=plans)


# --- the run -------------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench api", description=__doc__)
    parser.add_argument("--rows", type=int, default=DEFAULT_ROWS, help=f"tasks seeded (default {DEFAULT_ROWS:,})")
    parser.add_argument("--clients", type=int, default=20, help="concurrent client threads (default 20)")
    parser.add_argument("--seconds", type=float, default=8.0, help="per measurement (default 8)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per scenario and level (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers (default 2)")
    parser.add_argument("--database-url-query", default="", metavar="QUERY",
                        help="appended to DATABASE_URL, e.g. 'conn_max_age=600' (an experiment)")
    add_output_arguments(parser, plans="api")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args, command, info, stack = begin("api", argv, parse_args)
    server: Gunicorn | None = None
    try:
        stack.create_database()
        env = stack.setup_django({"SCHEDULER_API_THROTTLE_RATE": "1000000/s"})
        groups = create_groups(max_concurrent=4)
        keys = create_tokens()
        from django.db import connections

        connections.close_all()
        seeded = seed_tasks(stack.database_url.split("?")[0], rows=args.rows, groups=groups, queued_only=False,
                            active_rows=16)
        counts = status_counts(stack.database_url.split("?")[0])
        console.print(f"seeded {seeded.rows:,} tasks in {seeded.total_seconds:.1f} s "
                      f"(insert {seeded.insert_seconds:.1f}, "
                      f"indexes {seeded.index_seconds:.1f}, vacuum+analyze {seeded.vacuum_seconds:.1f}): {counts}")
        server = Gunicorn.start(env, stack.var_dir, args.workers)
        console.print(f"gunicorn -w {args.workers} on 127.0.0.1:{server.port}")
        tenant_keys = list(keys.values())
        runs: list[Run] = []
        for scenario in SCENARIOS:
            load(server.port, scenario, tenant_keys, clients=args.clients, seconds=1.0)  # warm-up, not counted
            for clients in sorted({1, args.clients}):
                for _ in range(args.repeat):
                    run = load(server.port, scenario, tenant_keys, clients=clients, seconds=args.seconds)
                    runs.append(run)
                    console.print(f"  {scenario.name:48} C={clients:<3} {len(run.latencies_ms):6} req "
                                  f"{run.requests_per_second:7.1f} req/s  p50 {run.p(0.5):6.1f}  "
                                  f"p95 {run.p(0.95):6.1f}  p99 {run.p(0.99):6.1f} ms"
                                  + (f"  errors {run.errors}" if run.errors else ""))
        server.stop()
        server = None
        biggest = TENANTS[0][0]
        breakdowns = [breakdown(s, keys[biggest], samples=30) for s in SCENARIOS]
    except (RuntimeError, KeyboardInterrupt, subprocess.CalledProcessError, DatabaseError) as exc:
        return stack.report_failure(console, "bench api", exc)
    finally:
        if server is not None:
            server.stop()
        stack.close()
    markdown = report(args, info, command, seeded.total_seconds, counts, runs, breakdowns)
    args.plans.parent.mkdir(parents=True, exist_ok=True)
    write_plans(args.plans, f"EXPLAIN (ANALYZE, BUFFERS) of the API list requests, {args.rows:,} tasks",
                [plan for b in breakdowns for plan in b.plans],
                preamble=f"Command: {command}\nEach statement as Django sent it for tenant {TENANTS[0][0]!r}.\n")
    console.print(f"plans written to {args.plans}")
    if not args.no_docs:
        publish("api", markdown)
    return 0


def report(args: argparse.Namespace, info: dict[str, str], command: str, seed_seconds: float,
           counts: dict[str, int], runs: list[Run], breakdowns: list[Breakdown]) -> str:
    table = Table(title=f"API latency - {args.rows:,} tasks, gunicorn -w {args.workers}, {args.seconds:g} s x "
                        f"{args.repeat}; median (min..max) over repeats")
    columns = ("scenario", "clients", "p50 ms", "p95 ms", "p99 ms", "req/s", "target p95")
    for column in columns:
        table.add_column(column, justify="left" if column == "scenario" else "right")
    lines = [f"| {' | '.join(columns)} |", f"|{'---|' * len(columns)}"]
    verdicts = []
    for scenario in SCENARIOS:
        for clients in sorted({1, args.clients}):
            mine = [r for r in runs if r.scenario == scenario.name and r.clients == clients]
            if not mine:
                continue
            p95s = [r.p(0.95) for r in mine]
            target = "-"
            if scenario.target_p95_ms is not None and clients == args.clients:
                met = statistics.median(p95s) < scenario.target_p95_ms
                target = f"< {scenario.target_p95_ms:g}: {'met' if met else 'NOT met'}"
                verdicts.append((scenario.name, met, statistics.median(p95s), scenario.target_p95_ms))
            cells = [scenario.name, str(clients), spread([r.p(0.5) for r in mine]), spread(p95s),
                     spread([r.p(0.99) for r in mine]), spread([r.requests_per_second for r in mine]), target]
            errors = sum(sum(r.errors.values()) for r in mine)
            if errors:
                cells[0] += f" ({errors} errors)"
            table.add_row(*cells)
            lines.append(f"| {' | '.join(cells)} |")
    console.print(table)

    split = Table(title="One request in-process (test client, no HTTP/gunicorn), tenant "
                        f"{TENANTS[0][0]!r}, median of 30")
    split_columns = ("scenario", "request ms", "of which SQL ms", "statements", "task-table plan (EXPLAIN ANALYZE)")
    for column in split_columns:
        split.add_column(column, justify="left" if column in ("scenario", split_columns[-1]) else "right")
    split_lines = [f"| {' | '.join(split_columns)} |", f"|{'---|' * len(split_columns)}"]
    for b in breakdowns:
        task_plans = [p for p in b.plans if p.label.endswith(" task")]
        summary = "; ".join(
            f"{', '.join(p.indexes) or 'no index'}{' + Seq Scan on ' + ', '.join(p.seq_scans) if p.seq_scans else ''}"
            f", {p.execution_ms:.2f} ms" for p in task_plans
        ) or "-"
        cells = [b.scenario, f"{b.request_ms:.1f}", f"{b.sql_ms:.1f}", str(b.statements), summary]
        split.add_row(*cells)
        split_lines.append(f"| {' | '.join(cells)} |")
    console.print(split)
    for name, met, value, target in verdicts:
        colour = "green" if met else "red"
        console.print(f"[{colour}]{name}: p95 {value:.1f} ms at C={args.clients} - target < {target:g} ms "
                      f"{'met' if met else 'NOT met'}[/]")

    plans_path = args.plans.relative_to(ROOT) if args.plans.is_relative_to(ROOT) else args.plans
    return "\n".join([
        *section_head(f"API latency: list and create over {args.rows:,} tasks (issue 5, generated "
                      f"{time.strftime('%Y-%m-%d')})", command, "(bench/api.py)"),
        f"Machine: {machine_line(info)}. PostgreSQL 15 and the bench client on the same box; gunicorn "
        f"`-w {args.workers}` (sync workers), {args.clients} client threads with http.client (and 1 for service "
        f"time), {args.seconds:g} s per measurement, {args.repeat} repeats; figures are median "
        "(min\N{EN DASH}max) over "
        "the repeats. Throttle set out of the way (`SCHEDULER_API_THROTTLE_RATE=1000000/s`).",
        "",
        f"Data: {args.rows:,} tasks seeded in SQL in {seed_seconds:.0f} s, 3 tenants (50/30/20 %), 4 worker "
        f"groups, statuses {', '.join(f'{k} {v:,}' for k, v in sorted(counts.items()))}. Each client thread "
        "uses its tenant's token (non-staff, so every list is tenant-scoped).",
        "",
        *lines,
        "",
        "One request in-process (DRF test client: middleware, token auth, throttle, view, serializer; no HTTP):",
        "",
        *split_lines,
        "",
        f"Full plans: `{plans_path}`.",
    ])
