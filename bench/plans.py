"""The SQL Django really sends, and PostgreSQL's plans for it (EXPLAIN (ANALYZE, BUFFERS)).

Used in-process, with Django set up against the bench database. Statements are captured with a
connection execute wrapper, then explained one by one inside a transaction that is rolled back, so an
explained UPDATE or INSERT changes nothing.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

SKIPPED_PREFIXES = ("SAVEPOINT", "RELEASE", "ROLLBACK", "BEGIN", "COMMIT")


@dataclass
class Statement:
    sql: str
    params: Any
    seconds: float = 0.0


@dataclass
class Plan:
    label: str
    sql: str
    text: str
    execution_ms: float | None = None
    seq_scans: list[str] = field(default_factory=list)  # relations read by a Seq Scan
    indexes: list[str] = field(default_factory=list)  # indexes the plan uses

    def seq_scan_on(self, table: str) -> bool:
        return table in self.seq_scans


@contextmanager
def capture() -> Iterator[list[Statement]]:
    """Every statement sent on the default connection inside the block, with its parameters and time."""
    from django.db import connection

    statements: list[Statement] = []

    def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(sql, params, many, context)
        finally:
            statements.append(Statement(sql=sql, params=params, seconds=time.perf_counter() - started))

    with connection.execute_wrapper(wrapper):
        yield statements


def explain(statements: list[Statement], *, label: Callable[[str], str] | None = None) -> list[Plan]:
    """EXPLAIN (ANALYZE, BUFFERS) of each statement, in order, in one transaction that is rolled back."""
    from django.db import connection, transaction

    plans = []
    with transaction.atomic():
        for statement in statements:
            head = statement.sql.lstrip().split(None, 1)[0].upper()
            if head in SKIPPED_PREFIXES:
                continue
            with connection.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, BUFFERS) " + statement.sql, statement.params)
                text = "\n".join(row[0] for row in cursor.fetchall())
            plans.append(parse(label(statement.sql) if label else head, inline(statement.sql, statement.params), text))
        transaction.set_rollback(True)
    return plans


def parse(label: str, sql: str, text: str) -> Plan:
    execution = re.search(r"Execution Time: ([0-9.]+) ms", text)
    return Plan(
        label=label, sql=sql, text=text, execution_ms=float(execution.group(1)) if execution else None,
        seq_scans=sorted(set(re.findall(r"Seq Scan on (\w+)", text))),
        indexes=sorted(set(re.findall(r"Index (?:Only )?Scan(?: Backward)? using (\w+)", text))
                       | set(re.findall(r"Bitmap Index Scan on (\w+)", text))),
    )


def inline(sql: str, params: Any) -> str:
    """The statement with its parameters, for the plans file (readable, not for execution)."""
    from django.db import connection

    if not params:
        return sql
    try:
        return connection.ops.compose_sql(sql, params)
    except Exception:  # a display helper: the raw SQL and its parameters will do
        return f"{sql}\n-- params: {params!r}"


def write_plans(path: Any, title: str, plans: list[Plan], preamble: str = "") -> None:
    with open(path, "w") as out:
        out.write(f"{title}\n{'=' * len(title)}\n\n{preamble}\n")
        for plan in plans:
            out.write(f"--- {plan.label}\n{plan.sql}\n\n{plan.text}\n\n")


def api_request(method: str, path: str, key: str,
                body: dict[str, Any] | None = None) -> tuple[int, list[Statement], float]:
    """One API request in-process with DRF's test client (the full middleware, auth, throttle and view).

    Returns the HTTP status, the statements it sent and the request's wall time in seconds.
    """
    from rest_framework.test import APIClient

    client = APIClient(SERVER_NAME="localhost")
    with capture() as statements:
        started = time.perf_counter()
        if method == "POST":
            response = client.post(path, body, format="json", HTTP_AUTHORIZATION=f"Token {key}")
        else:
            response = client.get(path, HTTP_AUTHORIZATION=f"Token {key}")
        elapsed = time.perf_counter() - started
    return response.status_code, statements, elapsed


def label_statement(sql: str) -> str:
    """A short name for a statement the API or the dispatcher sends."""
    head = sql.lstrip().split(None, 1)[0].upper()
    for table, name in (("tasks_app_apitoken", "token"), ("tasks_app_taskevent", "event"),
                        ("tasks_app_taskrun", "run"), ("tasks_app_taskfile", "file"),
                        ("tasks_app_concurrencylimit", "concurrency limits"),
                        ("tasks_app_task", "task"), ("tasks_app_workergroup", "worker group")):
        if f'"{table}"' in sql or f" {table} " in sql:
            if table == "tasks_app_task" and "WITH RECURSIVE" in sql:
                return "queued_tenants (recursive CTE)"
            return f"{head} {name}"
    return head if "advisory" not in sql else "advisory lock"
