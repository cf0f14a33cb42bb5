from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from tasks_app.models import ConcurrencyLimit, Task, TaskEvent
from tasks_app.services.dispatch import dispatch_runnable, queued_tenants
from tests.factories import TaskFactory, WorkerGroupFactory

pytestmark = pytest.mark.django_db


def _leased_ids() -> set:
    return set(Task.objects.filter(status="leased").values_list("pk", flat=True))


def test_leases_up_to_each_groups_cap_and_names_the_queue() -> None:
    main = WorkerGroupFactory(account="main", max_concurrent=2)
    team = WorkerGroupFactory(account="team-a", max_concurrent=1)
    tasks = [TaskFactory() for _ in range(5)]

    leases = dispatch_runnable()

    assert len(leases) == 3
    assert sorted(lease.queue for lease in leases) == ["claude-main", "claude-main", "claude-team-a"]
    assert Task.objects.filter(worker_group=main, status="leased").count() == 2
    assert Task.objects.filter(worker_group=team, status="leased").count() == 1
    # Oldest first within one priority.
    assert _leased_ids() == {t.pk for t in tasks[:3]}
    for lease in leases:
        task = Task.objects.get(pk=lease.task_id)
        assert task.lease_token == lease.lease_token and task.lease_expires_at > timezone.now()
        event = TaskEvent.objects.get(task=task)
        assert (event.from_status, event.to_status, event.actor) == ("queued", "leased", "dispatcher")
    assert dispatch_runnable() == []  # full: a second pass leases nothing


def test_counts_running_tasks_against_the_cap() -> None:
    group = WorkerGroupFactory(max_concurrent=2)
    TaskFactory(status="running", worker_group=group)
    TaskFactory()
    TaskFactory()

    assert len(dispatch_runnable()) == 1


def test_highest_priority_first_then_oldest() -> None:
    WorkerGroupFactory(max_concurrent=1)
    [TaskFactory(priority=1) for _ in range(3)]
    urgent = TaskFactory(priority=9)

    (lease,) = dispatch_runnable()

    assert lease.task_id == urgent.pk


def test_tenants_take_turns_within_a_priority() -> None:
    WorkerGroupFactory(max_concurrent=4)
    now = timezone.now()
    big = [TaskFactory(tenant="big", created_at=now - timedelta(minutes=10) + timedelta(seconds=i)) for i in range(20)]
    small = [TaskFactory(tenant="small", created_at=now) for _ in range(2)]

    dispatch_runnable()

    leased = _leased_ids()
    assert {t.pk for t in small} <= leased
    assert len(leased & {t.pk for t in big}) == 2
    assert queued_tenants("claude") == ["big"]


def test_a_freed_slot_goes_to_the_tenant_holding_fewer_slots() -> None:
    group = WorkerGroupFactory(max_concurrent=2)
    now = timezone.now()
    TaskFactory(tenant="big", status="running", worker_group=group)
    backlog = [TaskFactory(tenant="big", created_at=now - timedelta(minutes=30 - i)) for i in range(10)]
    newcomer = TaskFactory(tenant="small", created_at=now)

    (lease,) = dispatch_runnable()  # one slot free

    assert lease.task_id == newcomer.pk
    assert not {t.pk for t in backlog} & _leased_ids()


def test_priority_still_beats_tenant_turns() -> None:
    group = WorkerGroupFactory(max_concurrent=2)
    TaskFactory(tenant="big", status="running", worker_group=group)
    urgent = TaskFactory(tenant="big", priority=9)
    TaskFactory(tenant="small", priority=5)

    (lease,) = dispatch_runnable()

    assert lease.task_id == urgent.pk


def test_skips_tasks_not_yet_runnable_and_other_tools() -> None:
    WorkerGroupFactory(max_concurrent=5)
    later = TaskFactory(scheduled_at=timezone.now() + timedelta(hours=1))
    backing_off = TaskFactory(next_attempt_at=timezone.now() + timedelta(minutes=5))
    codex = TaskFactory(tool="codex")
    due = TaskFactory(scheduled_at=timezone.now() - timedelta(seconds=1))

    leases = dispatch_runnable()

    assert [lease.task_id for lease in leases] == [due.pk]
    assert {later.pk, backing_off.pk, codex.pk}.isdisjoint(_leased_ids())


def test_pinned_task_waits_for_its_group_and_unpinned_goes_to_most_free() -> None:
    busy = WorkerGroupFactory(account="busy", max_concurrent=1)
    free = WorkerGroupFactory(account="free", max_concurrent=3)
    TaskFactory(status="running", worker_group=busy)
    pinned = TaskFactory(worker_group=busy, worker_group_pinned=True)
    loose = TaskFactory()

    leases = dispatch_runnable()

    assert [(lease.task_id, lease.queue) for lease in leases] == [(loose.pk, free.name)]
    pinned.refresh_from_db()
    assert pinned.status == "queued"


def test_paused_and_rate_limited_groups_get_nothing() -> None:
    WorkerGroupFactory(account="paused", enabled=False, max_concurrent=5)
    WorkerGroupFactory(account="limited", max_concurrent=5,
                       rate_limited_until=timezone.now() + timedelta(minutes=1))
    TaskFactory()

    assert dispatch_runnable() == []


def test_concurrency_limits_hold_across_groups() -> None:
    WorkerGroupFactory(account="a", max_concurrent=5)
    WorkerGroupFactory(account="b", max_concurrent=5)
    ConcurrencyLimit.objects.create(scope="tool:claude", max_concurrent=3)
    ConcurrencyLimit.objects.create(scope="model:opus", max_concurrent=1)
    [TaskFactory(model="opus") for _ in range(3)]
    [TaskFactory() for _ in range(5)]

    leases = dispatch_runnable()

    assert len(leases) == 3
    assert Task.objects.filter(status="leased", model="opus").count() == 1


def test_canceled_between_read_and_lease_is_skipped(monkeypatch) -> None:
    from tasks_app.services import dispatch

    WorkerGroupFactory(max_concurrent=2)
    victim, other = TaskFactory(), TaskFactory()
    original = dispatch.candidates

    def candidates_then_cancel(*args, **kwargs):
        rows = original(*args, **kwargs)
        Task.objects.filter(pk=victim.pk).update(status="canceled")
        return rows

    monkeypatch.setattr(dispatch, "candidates", candidates_then_cancel)

    leases = dispatch_runnable()

    assert [lease.task_id for lease in leases] == [other.pk]


def test_skipped_candidates_never_hide_a_runnable_task_behind_them() -> None:
    full = WorkerGroupFactory(account="full", max_concurrent=1)
    free = WorkerGroupFactory(account="free", max_concurrent=1)
    TaskFactory(status="running", worker_group=full, worker_group_pinned=True)
    now = timezone.now()
    # Twenty older tasks pinned to the full group (more than any look-ahead), then one that may run anywhere.
    for minutes in range(20):
        TaskFactory(worker_group=full, worker_group_pinned=True, created_at=now - timedelta(minutes=60 - minutes))
    runnable = TaskFactory(created_at=now)

    (lease,) = dispatch_runnable()

    assert (lease.task_id, lease.queue) == (runnable.pk, free.name)


def test_a_model_at_its_limit_does_not_hide_other_models_of_the_same_tenant() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    ConcurrencyLimit.objects.create(scope="model:opus", max_concurrent=1)
    TaskFactory(status="running", model="opus", worker_group=WorkerGroupFactory(account="other", max_concurrent=1))
    now = timezone.now()
    for minutes in range(20):
        TaskFactory(model="opus", created_at=now - timedelta(minutes=60 - minutes))
    sonnet = TaskFactory(model="sonnet", created_at=now)

    (lease,) = dispatch_runnable()

    assert lease.task_id == sonnet.pk
