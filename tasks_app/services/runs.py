"""Runs: start (lease → running), heartbeat, finish, and the reconciler for leases nobody renews.

Every write is a short transaction; nothing here runs while a CLI runs. The lease token fences a worker:
a late heartbeat or result from a worker whose lease moved on (it was paused, or its box was presumed
dead) matches no row and is dropped.
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models.functions import Now
from django.utils import timezone

from executors.base import (
    ACCOUNT_FAILURES,
    CHANGES_PATCH,
    RETRYABLE_FAILURES,
    Control,
    EventKind,
    ExecutionResult,
    FailureKind,
    RunEvent,
)
from executors.confinement import missing_outputs
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.models import (
    ACTIVE_STATUSES,
    EventSource,
    Task,
    TaskFile,
    TaskLogChunk,
    TaskRun,
    TaskStatus,
    WorkerGroup,
)
from tasks_app.models import RunEvent as RunEventRow
from tasks_app.sanitize import Sanitiser, storable_json, storable_text
from tasks_app.services.chains import chain_inputs
from tasks_app.services.enqueue import enqueue_dispatch
from tasks_app.services.groups import group_quarantine_locked, undecryptable_reason
from tasks_app.services.tasks import stored_file
from tasks_app.transitions import lease_expiry, task_lock, task_transition

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Everything a worker needs to execute one attempt, read in one short transaction."""

    task_id: uuid.UUID
    run_id: int
    attempt: int
    lease_token: uuid.UUID
    tool: str
    model: str
    prompt: str
    group_name: str
    group_env: dict[str, str]
    credentials: dict[str, str] = field(repr=False)
    extra_args: list[Any]
    allow_dangerous_flags: bool
    input_files: list[tuple[str, bytes]]
    output_patterns: list[str]
    timeout_seconds: int
    idle_timeout_seconds: int = 0
    max_cost_usd: float | None = None
    max_turns: int | None = None
    # A run on a repository (issue 17): where to check out from, and what to put on top before the CLI starts.
    repository_url: str = ""
    repository_credentials: dict[str, str] = field(default_factory=dict, repr=False)
    ref: str = ""
    base_patches: tuple[bytes, ...] = ()
    push_branch: str = ""
    resume_session: str = ""  # the CLI session this attempt continues ("" a new one)
    conversation_id: str = ""  # the first task of the chain of follow-ups: names the work dir the CLI sees
    setup_error: str = ""  # why this attempt cannot be set up (it fails without starting the CLI)
    chained_dirs: tuple[str, ...] = ()  # parents' ids: their outputs arrive under these dirs (chains)


def run_start(*, task_id: Any, lease_token: Any, worker: str, celery_task_id: str = "",
              sandbox: str = "") -> RunContext | None:
    """Move a leased task to running and open its TaskRun. None if the lease is no longer ours.

    The caller must take the time *before* this call as the start of its lease (executors.LeaseClock)."""
    token = uuid.UUID(str(lease_token))
    now = timezone.now()
    with transaction.atomic():
        task = task_lock(task_id=task_id)
        if task is None or task.status != TaskStatus.LEASED or task.lease_token != token:
            logger.info("dropping stale execute message for task %s", task_id)
            return None
        group = WorkerGroup.objects.get(pk=task.worker_group_id)
        try:
            credentials = group.credentials
        except CredentialsUnreadable:
            # This box's key cannot read the account's credentials: nothing can run for the group here. The task
            # goes back to the queue untouched (never running, then worker_lost) and the group is set aside.
            group_quarantine_locked(WorkerGroup.objects.select_for_update().get(pk=group.pk),
                                    reason=undecryptable_reason(worker))
            task_transition(
                locked=task, to=TaskStatus.QUEUED, source=EventSource.WORKER, actor=worker,
                reason=f"not started: {worker} cannot decrypt the credentials of {group.name}",
                updates={"worker_group": task.worker_group if task.worker_group_pinned else None,
                         **_lease_cleared()},
            )
            return None
        attempt = task.attempt + 1
        task_transition(
            locked=task, to=TaskStatus.RUNNING, source=EventSource.WORKER, actor=worker,
            reason=f"attempt {attempt} started on {worker}", expect=[TaskStatus.LEASED],
            data={"attempt": attempt, "worker_group": group.name},
            updates={
                "attempt": attempt,
                "started_at": task.started_at or now,
                "lease_expires_at": lease_expiry(settings.SCHEDULER_LEASE_SECONDS),
            },
        )
        run = TaskRun.objects.create(
            task=task, attempt=attempt, worker_group=group, worker=worker, celery_task_id=celery_task_id,
            lease_token=token, started_at=now, sandbox=sandbox, resumed_session_id=task.resume_session_id,
        )
    inputs = [(f.path, f.read_bytes()) for f in task.files.filter(direction=TaskFile.Direction.INPUT, run=None)]
    chained = chain_inputs(task_id=task.pk)
    inputs += chained.files
    continuation = _continuation(task)
    prompt = continuation.pop("prompt", task.prompt)
    return RunContext(
        task_id=task.pk, run_id=run.pk, attempt=attempt, lease_token=token, tool=task.tool, model=task.model,
        prompt=prompt, group_name=group.name, group_env=dict(group.env or {}),
        credentials=credentials, extra_args=list(group.extra_args or []),
        allow_dangerous_flags=group.allow_dangerous_flags, input_files=inputs,
        output_patterns=list(task.output_files or []), timeout_seconds=task.timeout_seconds,
        idle_timeout_seconds=(task.idle_timeout_seconds if task.idle_timeout_seconds is not None
                              else settings.SCHEDULER_IDLE_TIMEOUT),
        max_cost_usd=float(task.max_cost_usd) if task.max_cost_usd is not None else None,
        max_turns=task.max_turns, chained_dirs=chained.dirs,
        **continuation,
    )


def _continuation(task: Task) -> dict[str, Any]:
    """What carries over into this attempt: the CLI session it resumes (a follow-up's parent's, or this task's own
    after a usage limit) and, on a repository, the commit and the change that session had made, so the CLI finds
    its work where it left it. Also the conversation's id, which names the work dir the CLI sees."""
    conversation = task
    for _ in range(1000):  # follow-ups form a chain to the first task; bounded against a corrupted cycle
        if conversation.parent_id is None:
            break
        conversation = Task.objects.only("id", "parent_id").get(pk=conversation.parent_id)
    carried: dict[str, Any] = {"conversation_id": str(conversation.pk), "resume_session": task.resume_session_id}
    resumed = _resumed_run(task)
    if task.resume_session_id and resumed is None:
        logger.warning("task %s resumes session %s, but no run recorded it", task.pk, task.resume_session_id)
    if resumed is not None and resumed.task_id == task.pk:
        # Its own session, cut off by a usage limit: the session already holds the task; the CLI is told to go on.
        carried["prompt"] = settings.SCHEDULER_RESUME_PROMPT
    if task.repository_id is None:
        return carried
    repository = task.repository
    try:
        credentials = repository.credentials
    except CredentialsUnreadable:
        carried["setup_error"] = (f"this box's SCHEDULER_ENCRYPTION_KEY cannot decrypt the credentials of repository "
                                  f"{repository.name}")
        return carried
    patch = (TaskFile.objects.filter(run=resumed, direction=TaskFile.Direction.OUTPUT, path=CHANGES_PATCH)
             .order_by("-id").first() if resumed is not None else None)
    carried.update(
        repository_url=repository.url, repository_credentials=credentials,
        ref=(resumed.base_sha if resumed is not None and resumed.base_sha else task.ref or repository.default_ref),
        base_patches=(patch.read_bytes(),) if patch is not None else (),
        push_branch=f"{repository.push_prefix}{task.pk}" if repository.push_prefix else "",
    )
    return carried


def _resumed_run(task: Task) -> TaskRun | None:
    """The run whose session this task resumes: its own latest cut off by a usage limit (a retry resumes it), else
    its parent's (a follow-up). An own attempt that failed otherwise is not continued: its retry starts again from
    what the attempt itself started from."""
    if not task.resume_session_id:
        return None
    own = (TaskRun.objects.filter(task=task, session_id=task.resume_session_id,
                                  failure_kind=FailureKind.RATE_LIMITED).order_by("-attempt").first())
    if own is not None or task.parent_id is None:
        return own
    return (TaskRun.objects.filter(task_id=task.parent_id, session_id=task.resume_session_id)
            .order_by("-attempt").first())


def run_heartbeat(*, task_id: Any, lease_token: Any) -> Control:
    """Renew the lease (a compare-and-swap on the token) and report whether the run should go on. The caller
    takes the time before this call as the renewal's start (executors.LeaseClock)."""
    renewed = Task.objects.filter(pk=task_id, status=TaskStatus.RUNNING, lease_token=lease_token).update(
        lease_expires_at=lease_expiry(settings.SCHEDULER_LEASE_SECONDS)
    )
    if not renewed:
        return Control.LEASE_LOST
    canceled = Task.objects.filter(pk=task_id, cancel_requested_at__isnull=False).exists()
    return Control.CANCEL if canceled else Control.CONTINUE


def run_log_append(*, run_id: int, chunks: list[tuple[str, str]], first_seq: int) -> int:
    """Store live output chunks of a running attempt; returns the next sequence number."""
    rows = [TaskLogChunk(run_id=run_id, seq=first_seq + i, stream=stream, data=storable_text(text)[0])
            for i, (stream, text) in enumerate((stream, text) for stream, text in chunks if text)]
    TaskLogChunk.objects.bulk_create(rows)
    return first_seq + len(rows)


# Kept past SCHEDULER_RUN_EVENTS_MAX: what says how the run ends or why it stops, never the chatter.
_ALWAYS_KEPT = frozenset({EventKind.RESULT, EventKind.ERROR, EventKind.RATE_LIMIT})


def run_events_append(*, run_id: int, events: list[RunEvent], first_seq: int) -> int:
    """Store a batch of a running attempt's timeline and carry its running usage onto the TaskRun (cost so far
    counts toward the account's budget while the run is in flight). Returns the next sequence number. At most
    SCHEDULER_RUN_EVENTS_MAX events per run; beyond it only result, error and rate_limit events are kept."""
    room = max(0, settings.SCHEDULER_RUN_EVENTS_MAX - first_seq)
    rows: list[RunEvent] = []
    for event in events:
        if len(rows) >= room and event.kind not in _ALWAYS_KEPT:
            continue
        data, _ = storable_json(event.data)
        rows.append(RunEventRow(run_id=run_id, seq=first_seq + len(rows), kind=str(event.kind), data=data,
                                created_at=datetime.fromtimestamp(event.at, tz=UTC)))
    RunEventRow.objects.bulk_create(rows)
    usage = next((e.data for e in reversed(events) if e.kind == EventKind.USAGE), None)
    if usage is not None:
        fields = {name: usage[key] for name, key in (("input_tokens", "input_tokens"),
                                                      ("output_tokens", "output_tokens"), ("turns", "turns"))
                  if isinstance(usage.get(key), int)}
        if isinstance(usage.get("cost_usd"), int | float):
            fields["cost_usd"] = round(float(usage["cost_usd"]), 6)
            fields["cost_is_estimate"] = bool(usage.get("estimate"))
        if fields:
            TaskRun.objects.filter(pk=run_id, status=TaskRun.Status.RUNNING).update(**fields)
    return first_seq + len(rows)


def run_logs_prune(*, now: datetime | None = None) -> int:
    """Drop live chunks and timeline events of runs that finished long ago (their TaskRun keeps the result)."""
    cutoff = (now or timezone.now()) - timedelta(hours=settings.SCHEDULER_LIVE_LOG_RETENTION_HOURS)
    deleted, _ = TaskLogChunk.objects.filter(run__finished_at__lt=cutoff).delete()
    events, _ = RunEventRow.objects.filter(run__finished_at__lt=cutoff).delete()
    return deleted + events


def run_check(*, task_id: Any, lease_token: Any) -> Control:
    """A read-only look between renewals: is the lease still ours, and was a cancel requested?"""
    row = Task.objects.filter(pk=task_id).values_list("status", "lease_token", "cancel_requested_at").first()
    if row is None or row[0] != TaskStatus.RUNNING or row[1] != uuid.UUID(str(lease_token)):
        return Control.LEASE_LOST
    return Control.CANCEL if row[2] is not None else Control.CONTINUE


def backoff_seconds(attempt: int, retry_after: float | None) -> float:
    """Exponential backoff with jitter, capped; never sooner than the reset time the CLI reported."""
    ceiling = min(settings.SCHEDULER_RETRY_MAX_SECONDS, settings.SCHEDULER_RETRY_BASE_SECONDS * 2 ** (attempt - 1))
    delay = ceiling / 2 + random.uniform(0, ceiling / 2)
    return max(delay, retry_after or 0.0)


def run_finish(*, run_id: int, lease_token: Any, result: ExecutionResult, worker: str = "") -> Task | None:
    """Record the attempt and settle the task. None when the lease was lost (the result is dropped)."""
    token = uuid.UUID(str(lease_token))
    run = TaskRun.objects.select_related("task").get(pk=run_id)
    result, notes = _storable(result)
    # Large outputs are written to storage before the transaction: no file I/O under the row lock.
    output_rows = [
        stored_file(task=run.task, run=run, direction=TaskFile.Direction.OUTPUT, path=f.path, data=f.data)
        for f in result.outputs
    ]
    change = result.change
    if (change is not None and change.changed and not result.succeeded and _worth_resuming(run.task, result)
            and not any(f.path == CHANGES_PATCH for f in result.outputs)):
        # Work cut off by a usage limit: its patch is what the resuming attempt starts from.
        output_rows.append(stored_file(task=run.task, run=run, direction=TaskFile.Direction.OUTPUT,
                                       path=CHANGES_PATCH, data=change.patch))
    now = timezone.now()
    with transaction.atomic():
        task = task_lock(task_id=run.task_id)
        if task is None or task.status != TaskStatus.RUNNING or task.lease_token != token:
            logger.warning("dropping result of task %s run %s: the lease moved on", run.task_id, run.attempt)
            for row in output_rows:
                if row.file:
                    row.file.delete(save=False)
            return None
        kind, message = _failure_kind(result, task), result.error_message
        # Outputs are collected only from a run that went well otherwise; what it was asked for and did not
        # deliver fails it, unless the task allows that (then it succeeds, marked). The job is the problem, not
        # the box: never retried.
        missing = missing_outputs(task.output_files or [], [f.path for f in result.outputs]) if not kind else []
        if missing and task.require_outputs:
            kind, message = FailureKind.MISSING_OUTPUT, _missing_outputs_message(missing, result.output_errors)
        run.status = {
            "": TaskRun.Status.SUCCEEDED, FailureKind.CANCELED: TaskRun.Status.CANCELED,
        }.get(kind, TaskRun.Status.FAILED)
        run.finished_at = now
        run.exit_code = result.exit_code
        run.stdout, run.stdout_truncated = result.stdout, result.stdout_truncated
        run.stderr, run.stderr_truncated = result.stderr, result.stderr_truncated
        run.failure_kind = kind
        run.error_message = message if kind else ""
        run.retry_after_seconds = result.retry_after_seconds
        run.input_tokens, run.output_tokens = result.input_tokens, result.output_tokens
        run.cost_usd = result.cost_usd
        run.cost_is_estimate = result.cost_is_estimate
        run.turns = result.turns
        run.session_id = result.session_id[:200]
        run.latency_ms = result.latency_ms
        run.command = result.command
        run.notes = notes
        if change is not None:
            run.base_sha, run.pushed_branch, run.pushed_sha = change.base_sha, change.pushed_branch, change.pushed_sha
            run.diff_stat = {"files": change.files, "insertions": change.insertions, "deletions": change.deletions}
            if change.error:
                run.notes = [*run.notes, f"change: {change.error}"]
        run.save()
        TaskFile.objects.bulk_create(output_rows)
        summary = {
            "exit_code": result.exit_code,
            "final_message": result.final_message,
            "input_tokens": result.input_tokens,
            "output_tokens": result.output_tokens,
            "cost_usd": result.cost_usd,
            **({"cost_is_estimate": True} if result.cost_is_estimate else {}),
            **({"session_id": result.session_id} if result.session_id else {}),
            "latency_ms": result.latency_ms,
            "outputs": [f.path for f in result.outputs],
            **({"output_errors": result.output_errors} if result.output_errors else {}),
            **({"missing_outputs": missing} if missing else {}),
            **({"change": _change_summary(change)} if change is not None else {}),
        }
        if not kind or kind == FailureKind.MISSING_OUTPUT:  # the account worked: its failure streak ends
            WorkerGroup.objects.filter(pk=run.worker_group_id, account_failures__gt=0).update(account_failures=0)
        if not kind:
            task_transition(
                locked=task, to=TaskStatus.SUCCEEDED, source=EventSource.WORKER, actor=worker,
                reason=f"attempt {run.attempt} succeeded", data={"attempt": run.attempt},
                updates={"result": summary, "error_message": "", "finished_at": now, **_lease_cleared()},
            )
        elif kind == FailureKind.CANCELED:
            _end_canceled(task, run, message=message, actor=worker, now=now, summary=summary)
        else:
            _settle_failure(task, run, kind=kind, message=message,
                            retry_after=result.retry_after_seconds, actor=worker, now=now, summary=summary,
                            resume=_worth_resuming(task, result))
    # The freed slot is refilled by the caller's dispatch pass (the worker runs one right away).
    return task


def _missing_outputs_message(missing: list[str], output_errors: list[str]) -> str:
    """Names the missing outputs, and why a file the run did write was not taken (a symlink, too large), in the
    collector's words; its "declared output … was not produced" sentences would only repeat the names."""
    reasons = [error for error in output_errors if not error.startswith("declared output ")]
    return (f"missing declared output{'s' if len(missing) > 1 else ''}: {', '.join(missing)}"
            + (f" ({'; '.join(reasons)})" if reasons else ""))


def _change_summary(change: Any) -> dict[str, Any]:
    return {"base_sha": change.base_sha, "files": change.files, "insertions": change.insertions,
            "deletions": change.deletions, **({"pushed_branch": change.pushed_branch} if change.pushed_branch else {}),
            **({"error": change.error} if change.error else {})}


def _worth_resuming(task: Task, result: ExecutionResult) -> bool:
    """Should the retry of a run cut off by a usage limit resume its CLI session (on the same account) rather than
    start over (maybe elsewhere)? When the session holds work: the run had changed its checkout, had gone past its
    first turn, or was itself continuing a conversation."""
    if result.failure_kind != FailureKind.RATE_LIMITED or not result.session_id:
        return False
    changed = result.change is not None and result.change.changed
    return changed or (result.turns or 0) > 1 or bool(task.resume_session_id)


def _storable(result: ExecutionResult) -> tuple[ExecutionResult, list[str]]:
    """The result with everything the database would refuse replaced (NUL, lone surrogates), and a note for
    each field that needed it: odd output never loses a run."""
    clean = Sanitiser()
    outputs, output_errors = [], [clean.text("output_errors", e) for e in result.output_errors]
    for item in result.outputs:
        path, replaced = storable_text(item.path)
        if replaced:
            output_errors.append(f"output {path!r} skipped: its name is not valid UTF-8")
        else:
            outputs.append(item)
    result = replace(
        result, stdout=clean.text("stdout", result.stdout), stderr=clean.text("stderr", result.stderr),
        error_message=clean.text("error_message", result.error_message),
        final_message=clean.text("final_message", result.final_message),
        command=clean.json("command", result.command), outputs=outputs, output_errors=output_errors,
    )
    return result, clean.notes


def _failure_kind(result: ExecutionResult, task: Task) -> str:
    """The kind to record. A kind the executors do not define is an internal error, and only a cancel that was
    requested makes a run canceled: a CLI that exits as if interrupted on its own has failed."""
    if not result.failure_kind:
        return ""
    try:
        kind = FailureKind(result.failure_kind)
    except ValueError:
        logger.error("executor reported an unknown failure kind %r", result.failure_kind)
        return FailureKind.INTERNAL
    if kind == FailureKind.CANCELED and task.cancel_requested_at is None:
        return FailureKind.EXIT_CODE
    return kind


def _lease_cleared() -> dict[str, Any]:
    return {"lease_token": None, "lease_expires_at": None}


def _end_canceled(task: Task, run: TaskRun, *, message: str, actor: str, now: datetime,
                  summary: dict[str, Any] | None) -> None:
    """Running → canceled, in the name of whoever requested the cancel (its own fields, never metadata)."""
    task_transition(
        locked=task, to=TaskStatus.CANCELED, source=task.cancel_source or EventSource.SYSTEM,
        actor=task.cancel_actor, reason=task.cancel_reason or "canceled while running",
        data={"attempt": run.attempt, **({"killed_by": actor} if actor else {})},
        updates={"result": summary, "error_message": message, "finished_at": now, **_lease_cleared()},
    )


def _retryable(task: Task, run: TaskRun, kind: str) -> bool:
    """Another attempt? Retryable kinds while attempts are left; a stall once (a second stall in a row says the
    job hangs, not the box); a budget crossed, never."""
    if task.attempts_left <= 0:
        return False
    if kind == FailureKind.STALLED:
        previous = TaskRun.objects.filter(task=task, attempt__lt=run.attempt).order_by("-attempt").first()
        return previous is None or previous.failure_kind != FailureKind.STALLED
    return kind in RETRYABLE_FAILURES


def _settle_failure(task: Task, run: TaskRun, *, kind: str, message: str, retry_after: float | None, actor: str,
                    now: datetime, summary: dict[str, Any] | None = None, resume: bool = False) -> None:
    """Retry with backoff (retryable kinds, attempts left) or fail. `task` is locked by the caller. With `resume`
    (a run cut off by a usage limit, its session holding work) the retry resumes that session on the same account,
    after its reset."""
    if kind == FailureKind.RATE_LIMITED and retry_after is not None:
        retry_after = max(retry_after, settings.SCHEDULER_RATE_LIMIT_MIN_COOLDOWN_SECONDS)
    if kind == FailureKind.RATE_LIMITED and run.worker_group_id:
        cooldown = retry_after if retry_after is not None else settings.SCHEDULER_RATE_LIMIT_COOLDOWN_SECONDS
        until = now + timedelta(seconds=cooldown)
        group = WorkerGroup.objects.select_for_update().get(pk=run.worker_group_id)
        if group.rate_limited_until is None or group.rate_limited_until < until:
            group.rate_limited_until = until
            group.save(update_fields=["rate_limited_until", "updated_at"])
    if kind in ACCOUNT_FAILURES and run.worker_group_id:
        _account_failed(run.worker_group_id, kind=kind, message=message, now=now)
    if task.cancel_requested_at is not None:
        # The attempt failed before the kill landed (or its box died): a task whose cancel was requested never
        # runs again. The run keeps its own failure kind.
        _end_canceled(task, run, message=message, actor=actor, now=now, summary=summary)
        return
    data = {"attempt": run.attempt, "failure_kind": kind}
    if kind in ACCOUNT_FAILURES and not task.worker_group_pinned:
        # The account's problem, not the task's: another account of its tool takes it, and the attempt is not
        # charged. A failing account is quarantined after a few of these, so this cannot loop for long.
        retry_at = now + timedelta(seconds=settings.SCHEDULER_ACCOUNT_FAILURE_RETRY_SECONDS)
        enqueue_dispatch(at=retry_at)
        task_transition(
            locked=task, to=TaskStatus.QUEUED, source=EventSource.WORKER if actor else EventSource.SYSTEM,
            actor=actor, reason=f"attempt {run.attempt} failed ({kind}), an account problem: moving to another account",
            data={**data, "charged": False},
            updates={"attempt_base": task.attempt_base + 1, "next_attempt_at": retry_at, "error_message": message,
                     "worker_group": None, **_lease_cleared()},
        )
        return
    if _retryable(task, run, kind):
        resuming: dict[str, Any] = {}
        if resume and run.worker_group_id:
            # The session lives in this account's state dir: the retry stays here and continues it.
            resuming = {"resume_session_id": run.session_id, "worker_group": run.worker_group,
                        "worker_group_pinned": True}
            data = {**data, "resume_session": run.session_id}
        # The reset time belongs to the account: an unpinned task may run elsewhere sooner (the limited group
        # takes nothing until its reset); a pinned one has to wait for it.
        wait_for_reset = retry_after if task.worker_group_pinned or resuming else None
        delay = backoff_seconds(task.attempt - task.attempt_base, wait_for_reset)
        retry_at = now + timedelta(seconds=delay)
        enqueue_dispatch(at=retry_at)
        task_transition(
            locked=task, to=TaskStatus.QUEUED, source=EventSource.WORKER if actor else EventSource.SYSTEM,
            actor=actor, reason=f"attempt {run.attempt} failed ({kind}): retrying in {delay:.0f}s"
            + (f", resuming session {run.session_id}" if resuming else ""),
            data={**data, "retry_in_seconds": round(delay, 3)},
            updates={
                "next_attempt_at": retry_at, "error_message": message,
                # An unpinned task may move to another account of its tool.
                "worker_group": task.worker_group if task.worker_group_pinned else None,
                **_lease_cleared(), **resuming,
            },
        )
        return
    why = "no attempts left" if kind in RETRYABLE_FAILURES else (
        "stalled twice" if kind == FailureKind.STALLED else "not retryable")
    task_transition(
        locked=task, to=TaskStatus.FAILED, source=EventSource.WORKER if actor else EventSource.SYSTEM,
        actor=actor, reason=f"attempt {run.attempt} failed ({kind}, {why}): {message}"[:1000], data=data,
        updates={"error_message": message, "finished_at": now, "result": summary, **_lease_cleared()},
    )


def _account_failed(group_id: int, *, kind: str, message: str, now: datetime) -> None:
    """One more account-level failure in a row for the group; at the threshold it is quarantined."""
    group = WorkerGroup.objects.select_for_update().get(pk=group_id)
    group.account_failures += 1
    group.save(update_fields=["account_failures", "updated_at"])
    if group.account_failures >= settings.SCHEDULER_ACCOUNT_FAILURE_THRESHOLD:
        group_quarantine_locked(group, reason=f"{group.account_failures} account failures in a row; the last: "
                                              f"{kind}: {message}")


def leases_reconcile(*, now: datetime | None = None, limit: int = 500) -> int:
    """Expired leases: leased → queued (never started); running → worker_lost, then retry or fail.

    Expired by the database's clock (the one that set them), unless a test passes `now`."""
    expired_before: Any = now or Now()
    now = now or timezone.now()
    expired = list(
        Task.objects.filter(status__in=ACTIVE_STATUSES, lease_expires_at__lt=expired_before)
        .values_list("pk", flat=True)[:limit]
    )
    handled = 0
    for task_id in expired:
        with transaction.atomic():
            task = task_lock(task_id=task_id)
            # Renewed since it was listed? Checked again under the row lock, by the same clock.
            if task is None or not Task.objects.filter(pk=task.pk, status__in=ACTIVE_STATUSES,
                                                       lease_expires_at__lt=expired_before).exists():
                continue
            if task.status == TaskStatus.LEASED:
                task_transition(
                    locked=task, to=TaskStatus.QUEUED, source=EventSource.SYSTEM, actor="reconciler",
                    reason="lease expired before the run started",
                    updates={"worker_group": task.worker_group if task.worker_group_pinned else None,
                             **_lease_cleared()},
                )
            else:
                run = task.runs.filter(status=TaskRun.Status.RUNNING).order_by("-attempt").first()
                if run is None:
                    run = TaskRun.objects.create(task=task, attempt=task.attempt, worker_group=task.worker_group,
                                                 lease_token=task.lease_token or uuid.uuid4(), started_at=now)
                message = f"worker {run.worker or '?'} stopped renewing its lease"
                run.status, run.failure_kind, run.finished_at = TaskRun.Status.FAILED, FailureKind.WORKER_LOST, now
                run.error_message = message
                run.save(update_fields=["status", "failure_kind", "error_message", "finished_at"])
                _settle_failure(task, run, kind=FailureKind.WORKER_LOST, message=message, retry_after=None,
                                actor="", now=now)
            handled += 1
    return handled  # the tick dispatches right after reconciling
