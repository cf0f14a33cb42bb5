"""Bulk rows for the database benchmarks: one `INSERT … SELECT generate_series` in PostgreSQL, not the ORM.
The few rows around them (worker groups, a user and a token per tenant) go through the product's services.

The task table's secondary indexes are dropped for the load and rebuilt from their own definitions
(`pg_indexes`), foreign-key triggers are skipped (``session_replication_role = replica``: the bench
writes only ids it has just created), and the table is vacuumed and analysed at the end, so the planner
and the visibility map look like a table that has been in service for a while.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

TASK_TABLE = "tasks_app_task"
# Shares of the rows: a big tenant, a middle one and a small one; claude takes half the work.
TENANTS = (("acme", 0.5), ("globex", 0.3), ("initech", 0.2))
TOOLS = (("claude", 0.5), ("codex", 0.25), ("gemini", 0.25))
# "history": a service's table after a month: mostly finished rows, a tenth still queued.
HISTORY_STATUSES = (("succeeded", 0.75), ("failed", 0.08), ("canceled", 0.05), ("queued", 0.12))
SECONDS_BETWEEN_ROWS = 2.5  # 1M rows span about a month of created_at, oldest first on disk
GROUPS = (("claude", "team-a"), ("claude", "team-b"), ("codex", "team-a"), ("gemini", "team-a"))


@dataclass(frozen=True)
class SeedResult:
    rows: int
    insert_seconds: float
    index_seconds: float
    vacuum_seconds: float

    @property
    def total_seconds(self) -> float:
        return self.insert_seconds + self.index_seconds + self.vacuum_seconds


def create_groups(max_concurrent: int) -> dict[str, list[int]]:
    """The worker groups (GROUPS) through the product's service; returns the group ids of each tool."""
    from tasks_app.services.groups import group_create

    ids: dict[str, list[int]] = {}
    for tool, account in GROUPS:
        ids.setdefault(tool, []).append(group_create(tool=tool, account=account, max_concurrent=max_concurrent).pk)
    return ids


def create_tokens() -> dict[str, str]:
    """A user and an API token per tenant, through the product's services; returns the token of each tenant."""
    from tasks_app.services.accounts import token_create, user_create

    keys = {}
    for tenant, _share in TENANTS:
        user_create(username=f"bench-{tenant}", tenant=tenant)
        keys[tenant] = token_create(username=f"bench-{tenant}", name="bench")[1]
    return keys


def _case(column: str, shares: tuple[tuple[str, float], ...]) -> str:
    """A CASE over a uniform random column that picks each value with its share."""
    parts, edge = [], 0.0
    for value, share in shares[:-1]:
        edge += share
        parts.append(f"WHEN {column} < {edge:.4f} THEN '{value}'")
    return f"CASE {' '.join(parts)} ELSE '{shares[-1][0]}' END"


def seed_tasks(database_url: str, *, rows: int, groups: dict[str, list[int]], queued_only: bool,
               active_rows: int = 0) -> SeedResult:
    """Insert `rows` tasks. `groups` maps a tool to its worker group ids (finished rows name one of them).

    queued_only: every row queued (the deep-queue bench); otherwise a month of history (HISTORY_STATUSES),
    with `active_rows` of the newest finished rows turned into running tasks of their group.
    """
    import psycopg

    status = "'queued'" if queued_only else _case("r3", HISTORY_STATUSES)
    group_case = " ".join(
        f"WHEN '{tool}' THEN (ARRAY{ids})[1 + (i %% {len(ids)})]" for tool, ids in sorted(groups.items())
    )
    # Every NOT NULL column is given: Django keeps defaults in Python, not in the table.
    insert = f"""
        INSERT INTO {TASK_TABLE} (
            id, tenant, created_by, tool, model, prompt, output_files, priority, status, scheduled_at,
            worker_group_pinned, attempt, attempt_base, max_attempts, next_attempt_at, timeout_seconds,
            request_fingerprint, result, error_message, started_at, finished_at, metadata, cancel_source,
            cancel_actor, cancel_reason, created_at, updated_at, worker_group_id
        )
        SELECT
            gen_random_uuid(), tenant, 'bench-' || tenant, tool, '',
            'Refactor module ' || i || ' and update its tests; keep the public API stable.',
            '[]'::jsonb, priority, status,
            CASE WHEN status = 'queued' AND r4 < 0.01 THEN now() + interval '1 day' END,
            false, CASE WHEN status = 'queued' THEN 0 ELSE 1 END, 0, 3,
            CASE WHEN status = 'queued' AND r4 BETWEEN 0.01 AND 0.02 THEN now() + interval '10 minutes' END,
            3600, '',
            CASE WHEN status = 'succeeded' THEN '{{"text": "done", "cost_usd": 0.012}}'::jsonb END,
            CASE WHEN status = 'failed' THEN 'exit code 1' ELSE '' END,
            CASE WHEN status <> 'queued' THEN created_at + interval '5 seconds' END,
            CASE WHEN status <> 'queued' THEN created_at + interval '65 seconds' END,
            '{{}}'::jsonb, '', '', '', created_at, created_at,
            CASE WHEN status = 'queued' THEN NULL ELSE CASE tool {group_case} END END
        FROM (
            SELECT i, r3, r4,
                   {_case("r1", TENANTS)} AS tenant,
                   {_case("r2", TOOLS)} AS tool,
                   CASE WHEN r4 < 0.7 THEN 5 ELSE 1 + (i %% 9) END AS priority,
                   {status} AS status,
                   now() - make_interval(secs => (%(rows)s - i) * {SECONDS_BETWEEN_ROWS}) AS created_at
            FROM (
                SELECT i, random() AS r1, random() AS r2, random() AS r3, random() AS r4
                FROM generate_series(1, %(rows)s) AS i
            ) AS draws
        ) AS picked
    """
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute("SET synchronous_commit = off")
        conn.execute("SET maintenance_work_mem = '512MB'")
        definitions = [
            (name, definition) for name, definition in conn.execute(
                "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = %s AND indexname NOT IN "
                "(SELECT conname FROM pg_constraint WHERE conrelid = %s::regclass)",
                [TASK_TABLE, TASK_TABLE],
            ).fetchall()
        ]
        started = time.perf_counter()
        with conn.transaction():
            for name, _definition in definitions:
                conn.execute(f'DROP INDEX "{name}"')
            conn.execute("SET LOCAL session_replication_role = replica")
            conn.execute("SELECT setseed(0.42)")
            conn.execute(insert, {"rows": rows})
            if active_rows:
                conn.execute(
                    f"UPDATE {TASK_TABLE} SET status = 'running', finished_at = NULL, result = NULL, "
                    "lease_token = gen_random_uuid(), lease_expires_at = now() + interval '1 minute' "
                    f"WHERE id IN (SELECT id FROM {TASK_TABLE} WHERE worker_group_id IS NOT NULL "
                    "ORDER BY created_at DESC LIMIT %s)",
                    [active_rows],
                )
        inserted = time.perf_counter()
        for _name, definition in definitions:
            conn.execute(definition)
        indexed = time.perf_counter()
        conn.execute(f"VACUUM (ANALYZE) {TASK_TABLE}")
        vacuumed = time.perf_counter()
    return SeedResult(rows=rows, insert_seconds=inserted - started, index_seconds=indexed - inserted,
                      vacuum_seconds=vacuumed - indexed)


def status_counts(database_url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return dict(conn.execute(f"SELECT status, count(*) FROM {TASK_TABLE} GROUP BY status").fetchall())
