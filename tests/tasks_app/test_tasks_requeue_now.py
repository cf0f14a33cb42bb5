from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from django.utils import timezone

from tasks_app.models import TaskEvent, TaskStatus
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.tasks import task_requeue_now
from tasks_app.transitions import TaskStateError
from tests.factories import TaskFactory, WorkerGroupFactory

pytestmark = pytest.mark.django_db


def test_requeue_now_clears_a_retry_backoff_records_the_operator_and_asks_for_a_dispatch(
        django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    WorkerGroupFactory(account="main")
    backoff = timezone.now() + timedelta(minutes=10)
    task = TaskFactory(status=TaskStatus.QUEUED, attempt=1, next_attempt_at=backoff)
    assert dispatch_runnable() == []  # waiting for its backoff

    with django_capture_on_commit_callbacks() as callbacks:
        requeued = task_requeue_now(task_id=task.pk, source="admin", actor="ops")

    task.refresh_from_db()
    assert (requeued.next_attempt_at, task.next_attempt_at, task.status) == (None, None, "queued")
    (event,) = TaskEvent.objects.filter(task=task)
    assert (event.from_status, event.to_status, event.source, event.actor, event.reason) == (
        "queued", "queued", "admin", "ops", "re-queued now: by ops")
    assert event.data == {"requeue_now": True, "cleared": {"next_attempt_at": backoff.isoformat()}}
    assert len(callbacks) == 1  # the dispatch pass, after commit
    (lease,) = dispatch_runnable()
    assert lease.task_id == task.pk


def test_requeue_now_clears_a_future_scheduled_at_and_keeps_a_past_one() -> None:
    later = timezone.now() + timedelta(hours=2)
    earlier = timezone.now() - timedelta(hours=2)
    future = TaskFactory(status=TaskStatus.QUEUED, scheduled_at=later)
    past = TaskFactory(status=TaskStatus.QUEUED, scheduled_at=earlier)

    task_requeue_now(task_id=future.pk, source="admin", actor="ops", reason="the window opened early")
    task_requeue_now(task_id=past.pk, source="api")

    future.refresh_from_db()
    past.refresh_from_db()
    assert (future.scheduled_at, past.scheduled_at) == (None, earlier)
    future_event, past_event = (TaskEvent.objects.get(task=task) for task in (future, past))
    assert future_event.data["cleared"] == {"scheduled_at": later.isoformat()}
    assert future_event.reason == "re-queued now: the window opened early"
    assert (past_event.data["cleared"], past_event.reason) == ({}, "re-queued now: by api")


@pytest.mark.parametrize("status", ["leased", "running", "succeeded", "failed", "canceled"])
def test_requeue_now_refuses_a_task_that_is_not_queued_and_writes_nothing(
        status: str, django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    backoff = timezone.now() + timedelta(minutes=10)
    task = TaskFactory(status=status, next_attempt_at=backoff)

    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(TaskStateError, match="only queued"):
        task_requeue_now(task_id=task.pk, source="admin", actor="ops")

    task.refresh_from_db()
    assert (task.status, task.next_attempt_at) == (status, backoff)
    assert not TaskEvent.objects.filter(task=task).exists()
    assert callbacks == []
