"""One plain-dict shape per entity, for `schedulerctl --json` and anything else that is not the API (which
has its serializers). Credentials appear only as key names, token keys never."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from tasks_app import selectors, timing
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.models import ApiToken, Repository, Schedule, Task, TaskEvent, TaskFile, TaskRun, Worker, WorkerGroup
from tasks_app.selectors import DailyUsage


def _iso(value: Any) -> str | None:
    return value.isoformat() if value is not None else None


def task_dict(task: Task, *, detail: bool = False) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": str(task.pk),
        "tenant": task.tenant,
        "created_by": task.created_by,
        "tool": task.tool,
        "model": task.model,
        "status": task.status,
        "priority": task.priority,
        "worker_group": task.worker_group.name if task.worker_group_id else None,
        "repository": task.repository.name if task.repository_id else None,
        "ref": task.ref,
        "attempt": task.attempt,  # runs in all, earlier attempt budgets included
        "attempts_in_budget": task.attempts_in_budget,  # of max_attempts (an explicit retry starts a new budget)
        "max_attempts": task.max_attempts,
        "schedule": task.schedule.name if task.schedule_id else None,
        "prompt_excerpt": excerpt(task.prompt),
        "require_outputs": task.require_outputs,
        "missing_outputs": task.missing_outputs,
        "scheduled_at": _iso(task.scheduled_at),
        "next_attempt_at": _iso(task.next_attempt_at),
        "timeout_seconds": task.timeout_seconds,
        "idle_timeout_seconds": task.idle_timeout_seconds,
        "max_cost_usd": float(task.max_cost_usd) if task.max_cost_usd is not None else None,
        "max_turns": task.max_turns,
        "idempotency_key": task.idempotency_key,
        "error_message": task.error_message,
        "created_at": _iso(task.created_at),
        "started_at": _iso(task.started_at),
        "finished_at": _iso(task.finished_at),
    }
    if detail:
        chain = selectors.task_chain(task=task)
        data.update(
            depends_on=chain.depends_on,
            dependents=chain.dependents,
            waiting_on=chain.waiting_on,
            prompt=task.prompt,
            output_files=task.output_files,
            result=task.result,
            metadata=task.metadata,
            files=[file_dict(f) for f in selectors.task_files(task_id=task.pk)],
            runs=[run_dict(r) for r in selectors.task_runs(task_id=task.pk)],
            events=[event_dict(e) for e in selectors.task_events(task_id=task.pk)],
            parent=str(task.parent_id) if task.parent_id else None,
            resume_session_id=task.resume_session_id,
            follow_ups=[str(pk) for pk in selectors.task_follow_up_ids(task_id=task.pk)],
            conversation=[{**turn, "id": str(turn["id"]), "created_at": _iso(turn["created_at"])}
                          for turn in selectors.task_conversation_turns(task)],
        )
    return data


def excerpt(text: str, width: int = 60) -> str:
    """The start of a text on one line, for tables."""
    line = " ".join(text.split())
    return line if len(line) <= width else line[: width - 1] + "…"


def run_dict(run: TaskRun, *, with_output: bool = False) -> dict[str, Any]:
    data = {
        "attempt": run.attempt,
        "status": run.status,
        "worker_group": run.worker_group.name if run.worker_group_id else None,
        "worker": run.worker,
        "started_at": _iso(run.started_at),
        "finished_at": _iso(run.finished_at),
        "exit_code": run.exit_code,
        "failure_kind": run.failure_kind,
        "error_message": run.error_message,
        "retry_after_seconds": run.retry_after_seconds,
        "input_tokens": run.input_tokens,
        "output_tokens": run.output_tokens,
        "cost_usd": float(run.cost_usd) if run.cost_usd is not None else None,
        "cost_is_estimate": run.cost_is_estimate,
        "turns": run.turns,
        "session_id": run.session_id,
        "latency_ms": run.latency_ms,
        "command": run.command,
        "sandbox": run.sandbox,
        "resumed_session_id": run.resumed_session_id,
        "base_sha": run.base_sha,
        "diff_stat": run.diff_stat,
        "pushed_branch": run.pushed_branch,
        "pushed_sha": run.pushed_sha,
        "stdout_truncated": run.stdout_truncated,
        "stderr_truncated": run.stderr_truncated,
    }
    if with_output:
        data.update(stdout=run.stdout, stderr=run.stderr)
    return data


def file_dict(item: TaskFile) -> dict[str, Any]:
    return {
        "id": item.pk,
        "direction": item.direction,
        "path": item.path,
        "size_bytes": item.size_bytes,
        "sha256": item.sha256,
        "content_type": item.content_type,
        "attempt": item.run.attempt if item.run_id else None,
        "created_at": _iso(item.created_at),
    }


def event_dict(event: TaskEvent) -> dict[str, Any]:
    return {
        "from_status": event.from_status,
        "to_status": event.to_status,
        "source": event.source,
        "actor": event.actor,
        "reason": event.reason,
        "data": event.data,
        "created_at": _iso(event.created_at),
    }


def group_dict(group: WorkerGroup) -> dict[str, Any]:
    return {
        "name": group.name,
        "tool": group.tool,
        "account": group.account,
        "max_concurrent": group.max_concurrent,
        "enabled": group.enabled,
        "running": getattr(group, "running", None),
        "queued": getattr(group, "queued", None),
        "health": group.health,
        "live_workers": group.live_workers,
        "worker_command": worker_command(group),
        "rate_limited_until": _iso(group.rate_limited_until),  # may be past: see rate_limited
        "rate_limited": group.rate_limited,
        "quarantined_at": _iso(group.quarantined_at),
        "quarantine_reason": group.quarantine_reason,
        "credentials": group.credential_names,  # names only, never values
        "env": group.env,
        "allow_dangerous_flags": group.allow_dangerous_flags,
        "extra_args": group.extra_args,
        "daily_budget_usd": _usd(group.daily_budget_usd),
        "monthly_budget_usd": _usd(group.monthly_budget_usd),
        "spend_today_usd": _usd(group.spend.today_usd),
        "spend_month_usd": _usd(group.spend.month_usd),
    }


def _usd(value: Decimal | None) -> float | None:
    return float(value) if value is not None else None


def usage_dict(row: DailyUsage, *, by: str) -> dict[str, Any]:
    """One day of one group (`by` "group") or tenant: the shape of `GET /api/v1/usage/`'s rows."""
    return {
        "day": row.day.isoformat(),
        "worker_group": row.key if by == "group" else None,
        "tenant": row.key if by == "tenant" else None,
        "runs": row.runs,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cost_usd": float(row.cost_usd),
    }


def usage_totals(rows: list[DailyUsage]) -> dict[str, Any]:
    return {
        "runs": sum(row.runs for row in rows),
        "input_tokens": sum(row.input_tokens for row in rows),
        "output_tokens": sum(row.output_tokens for row in rows),
        "cost_usd": float(sum((row.cost_usd for row in rows), Decimal(0))),
    }


def worker_command(group: WorkerGroup) -> str:
    """What an operator runs on a box (in the project's directory and environment) to serve the group."""
    return f"celery -A workers worker -Q {group.name} -c {group.max_concurrent} -n {group.name}@%h"


def worker_dict(worker: Worker) -> dict[str, Any]:
    return {
        "hostname": worker.hostname,
        "pid": worker.pid,
        "queues": worker.queues,
        "concurrency": worker.concurrency,
        "sandbox": worker.sandbox,
        "alive": worker.alive,
        "started_at": _iso(worker.started_at),
        "last_heartbeat": _iso(worker.last_heartbeat),
        "stopped_at": _iso(worker.stopped_at),
    }


def schedule_dict(schedule: Schedule) -> dict[str, Any]:
    """The fields of the API's schedule (ScheduleSerializer), timestamps in the ISO form of the other dicts here."""
    return {
        "id": schedule.pk,
        "name": schedule.name,
        "tenant": schedule.tenant,
        "created_by": schedule.created_by,
        "cron": schedule.cron,
        "timezone": schedule.timezone,
        "interval_seconds": schedule.interval_seconds,
        "run_at": _iso(schedule.run_at),
        "overlap_policy": schedule.overlap_policy,
        "enabled": schedule.enabled,
        "state": schedule.state,
        "tool": schedule.tool,
        "model": schedule.model,
        "prompt": schedule.prompt,
        "input_files": [item["path"] for item in schedule.input_files],
        "output_files": schedule.output_files,
        "priority": schedule.priority,
        "max_attempts": schedule.max_attempts,
        "timeout_seconds": schedule.timeout_seconds,
        "worker_group": schedule.worker_group.name if schedule.worker_group_id else None,
        "next_run_at": _iso(schedule.next_run_at),
        "next_run_at_local": _iso(timing.local(schedule.next_run_at, schedule.timezone)),
        "last_fired_at": _iso(schedule.last_fired_at),
        "created_at": _iso(schedule.created_at),
        "updated_at": _iso(schedule.updated_at),
    }


def credential_names(holder: Repository) -> list[str] | None:
    """Key names only; None when the stored credentials cannot be decrypted with the configured key."""
    try:
        return holder.credential_names
    except CredentialsUnreadable:
        return None


def repository_dict(repository: Repository) -> dict[str, Any]:
    """The fields of the API's repository (RepositorySerializer): credentials as key names, never values."""
    return {
        "name": repository.name,
        "tenant": repository.tenant,
        "url": repository.url,
        "default_ref": repository.default_ref,
        "push_prefix": repository.push_prefix,
        "has_credentials": bool(repository.credentials_encrypted),
        "credential_names": credential_names(repository),
        "created_by": repository.created_by,
        "created_at": _iso(repository.created_at),
        "updated_at": _iso(repository.updated_at),
    }


def diff_stat_text(diff_stat: dict[str, int] | None) -> str:
    """A run's change in a few words: "3 files, +10 -2", "no change", or "" before (or without) a checkout."""
    if diff_stat is None:
        return ""
    files = diff_stat.get("files", 0)
    if not files:
        return "no change"
    return (f"{files} file{'s' if files != 1 else ''}, +{diff_stat.get('insertions', 0)} "
            f"-{diff_stat.get('deletions', 0)}")


def token_dict(token: ApiToken) -> dict[str, Any]:
    """A token's metadata: the key itself is shown once, at creation, and never stored."""
    return {
        "id": token.pk,
        "user": token.user.get_username(),
        "name": token.name,
        "prefix": token.prefix,
        "created_at": _iso(token.created_at),
        "last_used_at": _iso(token.last_used_at),
        "revoked": token.revoked_at is not None,
    }
