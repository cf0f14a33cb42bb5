from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from executors import Control, ExecutionResult, OutputFile
from tasks_app.models import Task, TaskEvent, TaskFile, TaskLogChunk, TaskRun
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.groups import group_resume
from tasks_app.services.runs import (
    backoff_seconds,
    leases_reconcile,
    run_finish,
    run_heartbeat,
    run_log_append,
    run_start,
)
from tasks_app.services.tasks import InputFile, TaskSpec, task_cancel, task_create
from tests.factories import WorkerGroupFactory

pytestmark = pytest.mark.django_db


def _leased(**spec_kwargs):
    group = WorkerGroupFactory(account="main", max_concurrent=5, env={"A": "1"})
    group.credentials = {"ANTHROPIC_API_KEY": "sk-secret-value"}
    group.save()
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", **spec_kwargs), source="api")
    (lease,) = dispatch_runnable()
    return task, lease, group


def _events(task) -> list[tuple[str, str]]:
    events = TaskEvent.objects.filter(task=task).order_by("created_at", "id")
    return list(events.values_list("from_status", "to_status"))


def test_run_start_opens_a_run_with_everything_the_worker_needs() -> None:
    task, lease, _ = _leased(input_files=[InputFile("in/a.txt", b"A")], output_files=["out.txt"])

    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="box:1", celery_task_id="c1")

    assert ctx is not None
    assert (ctx.attempt, ctx.group_name) == (1, "claude-main")
    assert (ctx.input_files, ctx.output_patterns) == ([("in/a.txt", b"A")], ["out.txt"])
    assert ctx.credentials == {"ANTHROPIC_API_KEY": "sk-secret-value"} and ctx.group_env == {"A": "1"}
    assert "sk-secret-value" not in repr(ctx)
    task.refresh_from_db()
    assert (task.status, task.attempt) == ("running", 1)
    run = TaskRun.objects.get(task=task)
    assert (run.attempt, run.worker, run.celery_task_id, run.status) == (1, "box:1", "c1", "running")


def test_run_start_drops_stale_or_duplicate_messages() -> None:
    task, lease, _ = _leased()

    assert run_start(task_id=task.pk, lease_token=uuid.uuid4(), worker="w") is None
    assert run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w") is not None
    assert run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w") is None  # redelivered
    assert TaskRun.objects.filter(task=task).count() == 1


def test_run_finish_success_stores_run_outputs_and_result() -> None:
    task, lease, _ = _leased(output_files=["out.txt"])
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    result = ExecutionResult(command=["claude", "-p"], exit_code=0, stdout="{}", final_message="ok",
                             input_tokens=10, output_tokens=5, cost_usd=0.01, latency_ms=120,
                             outputs=[OutputFile("out.txt", b"hello")])

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, result=result, worker="w")

    task.refresh_from_db()
    assert task.status == "succeeded" and task.result["final_message"] == "ok" and task.lease_token is None
    run = TaskRun.objects.get(pk=ctx.run_id)
    assert (run.status, run.exit_code, run.input_tokens, run.output_tokens, run.command) == (
        "succeeded", 0, 10, 5, ["claude", "-p"])
    out = TaskFile.objects.get(task=task, direction="output")
    assert (out.path, out.read_bytes(), out.run_id) == ("out.txt", b"hello", run.pk)
    assert out.sha256 == "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert _events(task) == [("", "queued"), ("queued", "leased"), ("leased", "running"), ("running", "succeeded")]


def test_rate_limited_unpinned_run_retries_soon_elsewhere_and_cools_the_group(settings) -> None:
    settings.SCHEDULER_RETRY_BASE_SECONDS, settings.SCHEDULER_RETRY_MAX_SECONDS = 1, 2
    task, lease, group = _leased()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    before = timezone.now()

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="rate_limited",
                                      error_message="limit", retry_after_seconds=120))

    task.refresh_from_db()
    group.refresh_from_db()
    assert task.status == "queued" and task.worker_group is None  # unpinned: may move to another account
    assert task.next_attempt_at <= before + timedelta(seconds=3)
    assert group.rate_limited_until >= before + timedelta(seconds=120)
    assert dispatch_runnable(now=task.next_attempt_at + timedelta(seconds=1)) == []  # its only group is cooling


def test_rate_limited_pinned_run_waits_for_the_reset(settings) -> None:
    settings.SCHEDULER_RETRY_BASE_SECONDS = 1
    task, lease, group = _leased(worker_group="claude-main")
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    before = timezone.now()

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="rate_limited",
                                      error_message="limit", retry_after_seconds=120))

    task.refresh_from_db()
    group.refresh_from_db()
    assert (task.status, task.worker_group) == ("queued", group)
    assert task.next_attempt_at >= before + timedelta(seconds=120)
    assert group.rate_limited_until >= before + timedelta(seconds=120)
    assert TaskRun.objects.get(pk=ctx.run_id).failure_kind == "rate_limited"


def test_non_retryable_failure_fails_at_once_and_exhausted_retries_fail() -> None:
    task, lease, _ = _leased()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="exit_code", error_message="boom"))

    task.refresh_from_db()
    assert (task.status, task.error_message) == ("failed", "boom")
    assert "not retryable" in TaskEvent.objects.filter(task=task).last().reason


def test_provider_errors_stop_after_max_attempts() -> None:
    task, lease, _ = _leased(max_attempts=1)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], failure_kind="provider_error", error_message="500"))

    task.refresh_from_db()
    assert task.status == "failed"
    assert "no attempts left" in TaskEvent.objects.filter(task=task).last().reason


def test_a_fenced_worker_result_is_dropped() -> None:
    task, lease, _ = _leased()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="slow")
    task.lease_expires_at = timezone.now() - timedelta(seconds=1)
    task.save(update_fields=["lease_expires_at"])
    assert leases_reconcile() == 1  # presumed lost: retried

    assert run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="slow",
                      result=ExecutionResult(command=[], exit_code=0)) is None
    assert run_heartbeat(task_id=task.pk, lease_token=lease.lease_token) is Control.LEASE_LOST
    task.refresh_from_db()
    assert task.status == "queued"
    assert TaskRun.objects.get(pk=ctx.run_id).failure_kind == "worker_lost"


def test_heartbeat_renews_and_reports_cancel() -> None:
    task, lease, _ = _leased()
    run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    task.refresh_from_db()
    old_expiry = task.lease_expires_at

    assert run_heartbeat(task_id=task.pk, lease_token=lease.lease_token) is Control.CONTINUE
    task.refresh_from_db()
    assert task.lease_expires_at >= old_expiry
    task_cancel(task_id=task.pk, source="cli", actor="ann")
    assert run_heartbeat(task_id=task.pk, lease_token=lease.lease_token) is Control.CANCEL


def test_canceled_run_ends_canceled_with_the_cancellers_name() -> None:
    task, lease, _ = _leased()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    task_cancel(task_id=task.pk, source="cli", actor="ann")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=-15, failure_kind="canceled"))

    task.refresh_from_db()
    assert task.status == "canceled"
    last = TaskEvent.objects.filter(task=task).last()
    assert (last.source, last.actor, last.to_status) == ("cli", "ann", "canceled")


def test_client_metadata_cannot_forge_who_canceled() -> None:
    task, lease, _ = _leased(metadata={"cancel": {"source": "admin", "actor": "mallory", "reason": "forged"}})
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    task_cancel(task_id=task.pk, source="api", actor="ann", reason="not needed")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=-15, failure_kind="canceled"))

    last = TaskEvent.objects.filter(task=task).last()
    assert (last.to_status, last.source, last.actor, last.reason) == ("canceled", "api", "ann", "not needed")


def test_an_exit_code_alone_never_makes_a_task_canceled() -> None:
    task, lease, _ = _leased(max_attempts=1)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    # A CLI interrupted by something other than our cancel (exit 130, say), reported as "canceled".
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=130, failure_kind="canceled", error_message="interrupted"))

    task.refresh_from_db()
    run = TaskRun.objects.get(pk=ctx.run_id)
    assert (task.status, run.status, run.failure_kind) == ("failed", "failed", "exit_code")


def test_an_unknown_failure_kind_is_recorded_as_internal_never_as_success() -> None:
    task, lease, _ = _leased(max_attempts=1)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="rate-limited"))  # a typo

    task.refresh_from_db()
    assert (task.status, TaskRun.objects.get(pk=ctx.run_id).failure_kind) == ("failed", "internal")


def test_a_task_whose_cancel_was_requested_is_not_retried_when_its_attempt_fails() -> None:
    task, lease, _ = _leased(max_attempts=3)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    task_cancel(task_id=task.pk, source="cli", actor="ann")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="provider_error"))

    task.refresh_from_db()
    run = TaskRun.objects.get(pk=ctx.run_id)
    assert (task.status, run.status, run.failure_kind) == ("canceled", "failed", "provider_error")
    last = TaskEvent.objects.filter(task=task).last()
    assert (last.from_status, last.to_status, last.source, last.actor) == ("running", "canceled", "cli", "ann")


@pytest.mark.skipif(not connection.features.has_select_for_update, reason="row locks need PostgreSQL")
def test_each_transition_locks_the_task_row_once() -> None:
    task, lease, _ = _leased(max_attempts=2)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    with CaptureQueriesContext(connection) as queries:
        run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
                   result=ExecutionResult(command=[], exit_code=1, failure_kind="provider_error"))
    locks = [q["sql"] for q in queries.captured_queries if "FOR UPDATE" in q["sql"] and '"tasks_app_task"' in q["sql"]]

    assert len(locks) == 1
    task.refresh_from_db()
    assert task.status == "queued"
    with CaptureQueriesContext(connection) as queries:
        task_cancel(task_id=task.pk, source="cli")
    assert sum("FOR UPDATE" in q["sql"] for q in queries.captured_queries) == 1


def test_odd_output_is_recorded_once_sanitised_and_says_so() -> None:
    task, lease, _ = _leased(output_files=["*.txt"])
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    odd = "a\x00b \ud800 c"  # PostgreSQL refuses NUL in text and jsonb, and lone surrogates anywhere
    result = ExecutionResult(command=["claude", "-p"], exit_code=0, stdout=odd, stderr=odd, final_message=odd,
                             outputs=[OutputFile("ok.txt", b"\x00fine"), OutputFile("bad\udcff.txt", b"x")])

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, result=result, worker="w")

    task.refresh_from_db()
    run = TaskRun.objects.get(pk=ctx.run_id)
    assert task.status == "succeeded" and run.status == "succeeded"
    assert run.stdout == run.stderr == task.result["final_message"] == "a\ufffdb \ufffd c"
    assert run.notes == [f"{name}: 2 NUL or invalid character(s) replaced with U+FFFD"
                         for name in ("stdout", "stderr", "final_message")]
    assert list(TaskFile.objects.filter(task=task, direction="output").values_list("path", flat=True)) == ["ok.txt"]
    assert TaskFile.objects.get(task=task, direction="output").read_bytes() == b"\x00fine"  # bytes stay bytes
    assert task.result["output_errors"] == ["output 'bad\ufffd.txt' skipped: its name is not valid UTF-8"]


def test_live_output_with_nul_bytes_is_stored_and_numbered_without_gaps() -> None:
    task, lease, _ = _leased()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    next_seq = run_log_append(run_id=ctx.run_id, chunks=[("stdout", "a\x00"), ("stderr", ""), ("stdout", "b")],
                              first_seq=0)
    next_seq = run_log_append(run_id=ctx.run_id, chunks=[("stdout", "c")], first_seq=next_seq)

    chunks = list(TaskLogChunk.objects.filter(run_id=ctx.run_id).order_by("seq").values_list("seq", "data"))
    assert chunks == [(0, "a\ufffd"), (1, "b"), (2, "c")] and next_seq == 3


def test_a_reset_time_that_just_passed_still_rests_the_account_for_the_minimum_cooldown(settings) -> None:
    settings.SCHEDULER_RATE_LIMIT_MIN_COOLDOWN_SECONDS = 30
    task, lease, group = _leased(max_attempts=3)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    before = timezone.now()

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="rate_limited", retry_after_seconds=0.0,
                                      error_message="try again at 3:28 PM."))

    group.refresh_from_db()
    task.refresh_from_db()
    assert group.rate_limited_until >= before + timedelta(seconds=30)
    assert task.status == "queued" and dispatch_runnable() == []  # the only account rests: nothing leased


def test_a_revoked_account_is_quarantined_and_every_task_succeeds_on_the_healthy_one(settings) -> None:
    settings.SCHEDULER_ACCOUNT_FAILURE_THRESHOLD = 3
    healthy = WorkerGroupFactory(account="main", max_concurrent=2)
    revoked = WorkerGroupFactory(account="revoked", max_concurrent=2)
    tasks = [task_create(spec=TaskSpec(tool="claude", prompt=f"job {i}", max_attempts=1), source="api")[0]
             for i in range(10)]

    for _ in range(30):  # passes of dispatch + run; bounded
        leases = dispatch_runnable(now=timezone.now() + timedelta(hours=1))
        if not leases:
            break
        for lease in leases:
            ctx = run_start(task_id=lease.task_id, lease_token=lease.lease_token, worker=lease.queue)
            ok = lease.queue == healthy.name
            run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker=lease.queue, result=ExecutionResult(
                command=[], exit_code=0 if ok else 1, final_message="done" if ok else "",
                failure_kind="" if ok else "auth", error_message="" if ok else "Invalid API key · Please run /login"))

    assert sorted({t.status for t in Task.objects.filter(pk__in=[t.pk for t in tasks])}) == ["succeeded"]
    revoked.refresh_from_db()
    failed_there = TaskRun.objects.filter(worker_group=revoked, failure_kind="auth").count()
    # The threshold, plus what was already leased to it in the same pass (its cap) when the third one failed.
    assert revoked.health == "quarantined" and revoked.account_failures == failed_there
    assert 3 <= failed_there <= 3 + revoked.max_concurrent - 1
    assert revoked.quarantine_reason.startswith("3 account failures in a row; the last: auth: Invalid API key")
    assert TaskRun.objects.filter(worker_group=healthy, status="succeeded").count() == 10
    moved = TaskEvent.objects.filter(to_status="queued", from_status="running").first()
    assert moved.data["charged"] is False and "moving to another account" in moved.reason

    group_resume(name=revoked.name)
    revoked.refresh_from_db()
    assert (revoked.health, revoked.account_failures, revoked.quarantine_reason) == ("ok", 0, "")


def test_a_task_pinned_to_a_failing_account_fails_and_a_success_resets_the_count(settings) -> None:
    settings.SCHEDULER_ACCOUNT_FAILURE_THRESHOLD = 3
    task, lease, group = _leased(worker_group="claude-main")
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")

    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="unreachable",
                                      error_message="Unable to connect to API (ConnectionRefused)"))

    task.refresh_from_db()
    group.refresh_from_db()
    assert (task.status, group.account_failures, group.health) == ("failed", 1, "ok")
    other, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=other.pk, lease_token=lease.lease_token, worker="w")
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=0, final_message="ok"))
    group.refresh_from_db()
    assert group.account_failures == 0


def test_a_box_that_cannot_decrypt_the_credentials_never_starts_the_run(settings) -> None:
    task, lease, group = _leased()  # its credentials stored with this process's key
    settings.SCHEDULER_ENCRYPTION_KEY = "a-different-key-on-this-box-" + "x" * 30

    assert run_start(task_id=task.pk, lease_token=lease.lease_token, worker="box:9") is None

    task.refresh_from_db()
    group.refresh_from_db()
    assert (task.status, task.lease_token, task.attempt) == ("queued", None, 0)  # never running, never worker_lost
    assert not TaskRun.objects.filter(task=task).exists()
    assert group.health == "quarantined" and group.quarantine_reason.startswith("worker box:9 cannot decrypt")
    assert dispatch_runnable() == []


def test_each_attempt_keeps_its_own_error_message(settings) -> None:
    settings.SCHEDULER_RETRY_BASE_SECONDS, settings.SCHEDULER_RETRY_MAX_SECONDS = 0, 0
    task, lease, _ = _leased(max_attempts=3)
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=1, failure_kind="provider_error",
                                      error_message="API Error: 500 first"))
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    task.refresh_from_db()
    task.lease_expires_at = timezone.now() - timedelta(seconds=1)
    task.save(update_fields=["lease_expires_at"])
    leases_reconcile()
    (lease,) = dispatch_runnable(now=timezone.now() + timedelta(hours=1))
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, worker="w",
               result=ExecutionResult(command=[], exit_code=0, final_message="ok"))

    messages = list(TaskRun.objects.filter(task=task).order_by("attempt").values_list("failure_kind", "error_message"))
    assert messages == [("provider_error", "API Error: 500 first"),
                        ("worker_lost", "worker w stopped renewing its lease"), ("", "")]


def test_a_running_task_whose_cancel_was_requested_ends_canceled_when_its_worker_dies() -> None:
    task, lease, _ = _leased(max_attempts=3)
    run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    task_cancel(task_id=task.pk, source="api", actor="ann")
    task.refresh_from_db()
    task.lease_expires_at = timezone.now() - timedelta(seconds=1)
    task.save(update_fields=["lease_expires_at"])

    assert leases_reconcile() == 1

    task.refresh_from_db()
    assert (task.status, task.lease_token) == ("canceled", None)  # never re-queued, never run again
    assert TaskRun.objects.get(task=task).failure_kind == "worker_lost"
    last = TaskEvent.objects.filter(task=task).last()
    assert (last.from_status, last.to_status, last.source, last.actor) == ("running", "canceled", "api", "ann")
    assert dispatch_runnable() == []


def test_reconcile_returns_expired_leases_to_the_queue() -> None:
    task, _, _ = _leased()
    task.refresh_from_db()
    task.lease_expires_at = timezone.now() - timedelta(seconds=1)
    task.save(update_fields=["lease_expires_at"])

    assert leases_reconcile() == 1

    task.refresh_from_db()
    assert (task.status, task.lease_token, task.attempt) == ("queued", None, 0)
    assert leases_reconcile() == 0


def test_backoff_grows_is_capped_and_respects_reset(settings) -> None:
    settings.SCHEDULER_RETRY_BASE_SECONDS, settings.SCHEDULER_RETRY_MAX_SECONDS = 30, 600
    assert 15 <= backoff_seconds(1, None) <= 30
    assert 60 <= backoff_seconds(3, None) <= 120
    assert 300 <= backoff_seconds(20, None) <= 600
    assert backoff_seconds(1, 900) == 900
