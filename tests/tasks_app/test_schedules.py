from __future__ import annotations

import base64
import itertools
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone
from django_celery_beat.models import PeriodicTask, PeriodicTasks

from tasks_app.models import Schedule, ScheduleFiring, Task, TaskEvent
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.schedules import (
    ScheduleSpec,
    schedule_create,
    schedule_delete,
    schedule_fire,
    schedule_set_enabled,
    schedule_update,
)
from tasks_app.services.tasks import InputFile
from tasks_app.timing import cron_times, next_cron
from tests.factories import WorkerGroupFactory


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


# -- timing: DST, at unit level with fixed clocks ---------------------------------------------------
@pytest.mark.parametrize(
    ("tz", "after", "expected"),
    [
        # Berlin leaves summer time on 2026-10-25: 09:00 local is 07:00 UTC before, 08:00 UTC after.
        ("Europe/Berlin", utc(2026, 10, 23, 12), [utc(2026, 10, 24, 7), utc(2026, 10, 25, 8), utc(2026, 10, 26, 8)]),
        # Berlin enters summer time on 2026-03-29: 08:00 UTC before, 07:00 UTC after.
        ("Europe/Berlin", utc(2026, 3, 27, 12), [utc(2026, 3, 28, 8), utc(2026, 3, 29, 7), utc(2026, 3, 30, 7)]),
        # New York enters daylight time on 2026-03-08: 14:00 UTC before, 13:00 UTC after.
        ("America/New_York", utc(2026, 3, 6, 15), [utc(2026, 3, 7, 14), utc(2026, 3, 8, 13), utc(2026, 3, 9, 13)]),
        # ... and leaves it on 2026-11-01: 13:00 UTC before, 14:00 UTC after.
        ("America/New_York", utc(2026, 10, 30, 15),
         [utc(2026, 10, 31, 13), utc(2026, 11, 1, 14), utc(2026, 11, 2, 14)]),
    ],
)
def test_nine_am_local_stays_nine_am_across_dst(tz: str, after: datetime, expected: list[datetime]) -> None:
    assert list(itertools.islice(cron_times("0 9 * * *", tz, after), 3)) == expected


def test_a_time_skipped_by_dst_is_skipped_and_a_repeated_one_fires_once() -> None:
    skipped = list(itertools.islice(cron_times("30 2 * * *", "Europe/Berlin", utc(2026, 3, 28, 12)), 2))
    assert skipped == [utc(2026, 3, 30, 0, 30), utc(2026, 3, 31, 0, 30)]  # no 02:30 on 29 March
    repeated = list(itertools.islice(cron_times("30 2 * * *", "Europe/Berlin", utc(2026, 10, 24, 12)), 2))
    assert repeated == [utc(2026, 10, 25, 0, 30), utc(2026, 10, 26, 1, 30)]  # the first 02:30 only
    # Asking from inside the repeated hour does not fire the second 02:30 again.
    assert next_cron("30 2 * * *", "Europe/Berlin", utc(2026, 10, 25, 0, 45)) == utc(2026, 10, 26, 1, 30)


def test_weekday_schedule_in_shanghai() -> None:
    # Friday 2026-11-27 17:00 +08:00 → the next is Monday 2026-11-30.
    assert next_cron("0 17 * * 1-5", "Asia/Shanghai", utc(2026, 11, 27, 9, 0, 1)) == utc(2026, 11, 30, 9)


# -- create, validation -----------------------------------------------------------------------------
def _spec(**kwargs) -> ScheduleSpec:
    return ScheduleSpec(**{"name": "nightly", "tool": "codex", "prompt": "summarise", "cron": "0 9 * * 1-5",
                           "timezone": "Europe/Berlin", **kwargs})


@pytest.mark.django_db
def test_create_cron_schedule_makes_its_beat_entry_and_next_run() -> None:
    schedule = schedule_create(spec=_spec(output_files=["summary.md"], input_files=[InputFile("a.txt", b"A")]),
                               tenant="acme", created_by="ann")

    assert schedule.next_run_at == next_cron("0 9 * * 1-5", "Europe/Berlin", schedule.created_at)
    task = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert (task.task, task.args, task.queue, task.enabled) == ("workers.fire_schedule", f"[{schedule.pk}]",
                                                                "control", True)
    assert (task.crontab.hour, task.crontab.day_of_week, str(task.crontab.timezone)) == ("9", "1-5", "Europe/Berlin")


@pytest.mark.django_db
def test_interval_and_one_off_schedules_use_interval_and_clocked_entries() -> None:
    every = schedule_create(spec=_spec(name="every", cron="", interval_seconds=300))
    once_at = timezone.now() + timedelta(hours=2)
    once = schedule_create(spec=_spec(name="once", cron="", run_at=once_at))

    assert PeriodicTask.objects.get(pk=every.periodic_task_id).interval.every == 300
    clocked = PeriodicTask.objects.get(pk=once.periodic_task_id)
    assert (clocked.clocked.clocked_time, clocked.one_off, once.next_run_at) == (once_at, True, once_at)


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "* * * *"}, "cron"),
        ({"timezone": "Mars/Olympus"}, "timezone"),
        ({"cron": "", "interval_seconds": 0}, "interval_seconds"),
        ({"cron": "", "run_at": timezone.now() - timedelta(minutes=1)}, "run_at"),
        ({"cron": ""}, "timing"),
        ({"interval_seconds": 60}, "timing"),
        ({"prompt": ""}, "prompt"),
        ({"tool": "cursor"}, "tool"),
        ({"overlap_policy": "sometimes"}, "overlap_policy"),
        ({"output_files": ["../x"]}, "output_files[0]"),
        ({"worker_group": "codex-none"}, "worker_group"),
        ({"name": ""}, "name"),
    ],
)
def test_bad_schedules_are_refused_naming_the_field_and_write_nothing(changes: dict, field: str) -> None:
    with pytest.raises(ValidationError) as excinfo:
        schedule_create(spec=_spec(**changes))

    assert field in excinfo.value.message_dict
    assert (Schedule.objects.count(), PeriodicTask.objects.filter(task="workers.fire_schedule").count()) == (0, 0)


@pytest.mark.django_db
def test_duplicate_name_in_a_tenant_is_refused() -> None:
    schedule_create(spec=_spec(), tenant="acme")
    schedule_create(spec=_spec(), tenant="globex")
    with pytest.raises(ValidationError, match="already exists"):
        schedule_create(spec=_spec(), tenant="acme")


# -- firing -----------------------------------------------------------------------------------------
def _due(schedule: Schedule, at: datetime) -> None:
    Schedule.objects.filter(pk=schedule.pk).update(next_run_at=at)


@pytest.mark.django_db
def test_fire_creates_one_task_per_slot_with_the_schedule_key() -> None:
    schedule = schedule_create(spec=_spec(cron="*/5 * * * *", timezone="UTC", priority=7), tenant="acme")
    slot = utc(2026, 12, 1, 9, 0)
    _due(schedule, slot)

    firing = schedule_fire(schedule_id=schedule.pk, now=slot + timedelta(seconds=2))
    again = schedule_fire(schedule_id=schedule.pk, now=slot + timedelta(seconds=3))  # a second beat

    assert again is None
    assert firing.outcome == "created" and firing.fire_time == slot and firing.missed == 0
    task = Task.objects.get()
    assert (task.schedule_id, task.tenant, task.priority, task.tool) == (schedule.pk, "acme", 7, "codex")
    assert task.idempotency_key == f"schedule:{schedule.pk}:{slot.isoformat()}"
    assert TaskEvent.objects.get(task=task).source == "schedule"
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 12, 1, 9, 5)


@pytest.mark.django_db
def test_the_same_slot_fired_again_after_a_beat_restart_creates_nothing() -> None:
    schedule = schedule_create(spec=_spec(cron="0 * * * *", timezone="UTC"))
    slot = utc(2026, 12, 1, 9, 0)
    _due(schedule, slot)
    schedule_fire(schedule_id=schedule.pk, now=slot)
    _due(schedule, slot)  # as if the advance had been lost

    assert schedule_fire(schedule_id=schedule.pk, now=slot + timedelta(seconds=1)) is None
    assert Task.objects.count() == 1 and ScheduleFiring.objects.count() == 1


@pytest.mark.django_db
def test_not_due_yet_creates_nothing() -> None:
    schedule = schedule_create(spec=_spec(cron="0 * * * *", timezone="UTC"))
    _due(schedule, utc(2026, 12, 1, 10, 0))

    assert schedule_fire(schedule_id=schedule.pk, now=utc(2026, 12, 1, 9, 59, 50)) is None
    assert Task.objects.count() == 0


@pytest.mark.django_db
def test_after_downtime_the_missed_window_fires_once_and_says_so() -> None:
    schedule = schedule_create(spec=_spec(cron="*/10 * * * *", timezone="UTC"))
    _due(schedule, utc(2026, 12, 1, 8, 0))

    firing = schedule_fire(schedule_id=schedule.pk, now=utc(2026, 12, 1, 9, 5))

    assert (firing.fire_time, firing.missed) == (utc(2026, 12, 1, 9, 0), 6)
    assert "6 earlier slot(s) missed" in firing.reason
    assert Task.objects.count() == 1
    schedule.refresh_from_db()
    assert schedule.next_run_at == utc(2026, 12, 1, 9, 10)


@pytest.mark.django_db
def test_overlap_skip_records_the_skip_allow_creates_queue_waits_in_dispatch() -> None:
    WorkerGroupFactory(tool="codex", account="main", max_concurrent=5)
    skip = schedule_create(spec=_spec(name="skip", cron="* * * * *", timezone="UTC"))
    allow = schedule_create(spec=_spec(name="allow", cron="* * * * *", timezone="UTC", overlap_policy="allow"))
    queue = schedule_create(spec=_spec(name="queue", cron="* * * * *", timezone="UTC", overlap_policy="queue"))
    for minute, schedule in itertools.product((0, 1), (skip, allow, queue)):
        _due(schedule, utc(2026, 12, 1, 9, minute))
        schedule_fire(schedule_id=schedule.pk, now=utc(2026, 12, 1, 9, minute))

    skipped = ScheduleFiring.objects.get(schedule=skip, fire_time=utc(2026, 12, 1, 9, 1))
    assert skipped.outcome == "skipped" and "is still queued" in skipped.reason
    assert Task.objects.filter(schedule=skip).count() == 1
    assert Task.objects.filter(schedule=allow).count() == 2
    assert Task.objects.filter(schedule=queue).count() == 2

    dispatch_runnable()

    assert Task.objects.filter(schedule=allow, status="leased").count() == 2
    assert Task.objects.filter(schedule=queue, status="leased").count() == 1  # the second waits its turn


@pytest.mark.django_db
def test_trigger_fires_now_even_when_paused_and_keeps_the_timing() -> None:
    schedule = schedule_create(spec=_spec())
    schedule_set_enabled(schedule_id=schedule.pk, enabled=False)
    schedule.refresh_from_db()
    planned = schedule.next_run_at

    firing = schedule_fire(schedule_id=schedule.pk, source="trigger", actor="ann")

    assert firing.outcome == "created" and firing.source == "trigger"
    assert Task.objects.get().created_by == "ann"
    schedule.refresh_from_db()
    assert (schedule.next_run_at, schedule.enabled) == (planned, False)
    assert schedule_fire(schedule_id=schedule.pk, now=planned + timedelta(days=1)) is None  # paused: beat fires nothing


@pytest.mark.django_db
def test_pause_disables_the_beat_entry_and_resume_does_not_fire_the_missed_slots() -> None:
    schedule = schedule_create(spec=_spec(cron="* * * * *", timezone="UTC"))

    schedule_set_enabled(schedule_id=schedule.pk, enabled=False)
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled is False
    _due(schedule, timezone.now() - timedelta(hours=3))
    schedule_set_enabled(schedule_id=schedule.pk, enabled=True)

    schedule.refresh_from_db()
    assert schedule.next_run_at > timezone.now()
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled is True


@pytest.mark.django_db
def test_update_changes_the_beat_entry_and_tells_beat() -> None:
    schedule = schedule_create(spec=_spec())
    before = PeriodicTasks.last_change()

    schedule_update(schedule_id=schedule.pk, changes={"interval_seconds": 450, "prompt": "new prompt"})

    schedule.refresh_from_db()
    entry = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert (schedule.cron, schedule.interval_seconds, schedule.prompt) == ("", 450, "new prompt")
    assert entry.interval.every == 450 and entry.crontab is None
    assert PeriodicTasks.last_change() is not None and PeriodicTasks.last_change() != before
    with pytest.raises(ValidationError) as excinfo:
        schedule_update(schedule_id=schedule.pk, changes={"timezone": "Nowhere/Land"})
    assert "timezone" in excinfo.value.message_dict


@pytest.mark.django_db
def test_one_off_fires_once_then_disables_itself() -> None:
    at = timezone.now() + timedelta(minutes=5)
    schedule = schedule_create(spec=_spec(cron="", run_at=at))

    schedule_fire(schedule_id=schedule.pk, now=at)

    schedule.refresh_from_db()
    assert (schedule.enabled, schedule.next_run_at, Task.objects.count()) == (False, None, 1)
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).enabled is False


@pytest.mark.django_db
def test_delete_keeps_the_tasks_it_spawned() -> None:
    schedule = schedule_create(spec=_spec())
    schedule_fire(schedule_id=schedule.pk, source="trigger")
    entry_id = schedule.periodic_task_id

    schedule_delete(schedule_id=schedule.pk)

    assert Task.objects.get().schedule is None
    assert not PeriodicTask.objects.filter(pk=entry_id).exists()


@pytest.mark.django_db
@pytest.mark.skipif(not settings.CELERY_BROKER_URL.startswith("redis"), reason="reads the queue from Redis")
@pytest.mark.parametrize("spec", [{"cron": "", "interval_seconds": 60}, {"cron": "30 2 * * *"}])
def test_an_early_wake_up_comes_back_at_the_slot_instead_of_losing_it(spec: dict,
                                                                      django_capture_on_commit_callbacks) -> None:
    # A control queue that jitters by more than the tolerance, or beat's crontab waking an hour early around a
    # DST change: the wake-up finds nothing due. It must come back at the slot, not an interval (a day) later.
    schedule = schedule_create(spec=_spec(**spec))
    due = timezone.now().replace(microsecond=0) + timedelta(seconds=30)
    _due(schedule, due)
    broker = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = settings.CELERY_BROKER_TRANSPORT_OPTIONS.get("global_keyprefix", "") + "control"

    with django_capture_on_commit_callbacks(execute=True):
        assert schedule_fire(schedule_id=schedule.pk, now=due - timedelta(seconds=20)) is None

    wake_ups = [raw for raw in broker.lrange(queue, 0, -1)
                if json.loads(raw)["headers"]["task"] == "workers.fire_schedule"
                and json.loads(base64.b64decode(json.loads(raw)["body"]))[0] == [schedule.pk]]
    for raw in wake_ups:
        broker.lrem(queue, 1, raw)  # ours, in this run's own key space
    (wake_up,) = wake_ups
    assert datetime.fromisoformat(json.loads(wake_up)["headers"]["eta"]) == due
    assert Task.objects.count() == 0
    # The wake-up at the slot fires it; beat's own late one finds it fired.
    assert schedule_fire(schedule_id=schedule.pk, now=due).outcome == "created"
    assert schedule_fire(schedule_id=schedule.pk, now=due + timedelta(seconds=2)) is None
    assert Task.objects.count() == 1
