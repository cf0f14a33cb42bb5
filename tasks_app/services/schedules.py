"""Schedule writes: create, update, pause/resume, delete, and firing (beat or trigger-now).

The timing lives in django-celery-beat (a PeriodicTask per schedule, with its CrontabSchedule, IntervalSchedule
or ClockedSchedule) so that beat wakes `workers.fire_schedule` at the right moments, and picks up changes
without a restart (saving a PeriodicTask bumps PeriodicTasks.last_update, which DatabaseScheduler watches).
What is *due* is decided here, from `Schedule.next_run_at`, computed with `tasks_app.timing`:

* every firing is a `ScheduleFiring` row unique per (schedule, fire time), and its task carries the
  idempotency key `schedule:<id>:<fire time>`, so a second beat, a restarted beat (django-celery-beat
  writes last_run_at lazily, #828) or a duplicated message never creates a second task;
* after downtime, the missed window fires once (for its latest slot) and says how many were missed;
* a wake-up for a slot that is not due yet (beat's DST misfires, #134) creates nothing.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask

from tasks_app import timing, validation
from tasks_app.audit import audit
from tasks_app.models import TERMINAL_STATUSES, EventSource, OverlapPolicy, Schedule, ScheduleFiring, Task
from tasks_app.services.enqueue import FIRE_SCHEDULE, enqueue_schedule_fire
from tasks_app.services.tasks import InputFile, TaskSpec, task_create, task_spec_clean

EARLY_TOLERANCE = timedelta(seconds=1)  # beat may wake a hair before the slot
MAX_MISSED_COUNTED = 10_000
MAX_INTERVAL_SECONDS = 366 * 24 * 3600


@dataclass
class ScheduleSpec:
    name: str
    tool: str
    prompt: str
    cron: str = ""
    timezone: str = "UTC"
    interval_seconds: int | None = None
    run_at: datetime | None = None
    overlap_policy: str = OverlapPolicy.SKIP
    enabled: bool = True
    model: str = ""
    input_files: list[InputFile] = field(default_factory=list)
    output_files: list[str] = field(default_factory=list)
    priority: int = 5
    max_attempts: int = 3
    timeout_seconds: int | None = None
    worker_group: str | None = None

    def template(self) -> TaskSpec:
        return TaskSpec(
            tool=self.tool, prompt=self.prompt, model=self.model, input_files=self.input_files,
            output_files=self.output_files, priority=self.priority, max_attempts=self.max_attempts,
            timeout_seconds=self.timeout_seconds, worker_group=self.worker_group,
        )


def spec_from_schedule(schedule: Schedule) -> ScheduleSpec:
    return ScheduleSpec(
        name=schedule.name, tool=schedule.tool, prompt=schedule.prompt, cron=schedule.cron,
        timezone=schedule.timezone, interval_seconds=schedule.interval_seconds, run_at=schedule.run_at,
        overlap_policy=schedule.overlap_policy, enabled=schedule.enabled, model=schedule.model,
        input_files=[InputFile(f["path"], base64.b64decode(f["content_base64"])) for f in schedule.input_files],
        output_files=list(schedule.output_files), priority=schedule.priority, max_attempts=schedule.max_attempts,
        timeout_seconds=schedule.timeout_seconds,
        worker_group=schedule.worker_group.name if schedule.worker_group_id else None,
    )


def schedule_clean(spec: ScheduleSpec, *, now: datetime | None = None, check_run_at: bool = True) -> Any:
    """Every rule, or a ValidationError naming each field. Returns (spec, pinned group). Writes nothing."""
    now = now or timezone.now()
    errors: dict[str, list[str]] = {}
    if not isinstance(spec.name, str) or not spec.name.strip() or len(spec.name) > 200 or "\x00" in spec.name:
        errors["name"] = ["must be a non-empty string of at most 200 characters"]
    timings = [bool(spec.cron), spec.interval_seconds is not None, spec.run_at is not None]
    if sum(timings) != 1:
        errors["timing"] = ["give exactly one of cron (with timezone), interval_seconds or run_at"]
    try:
        timing.zone(spec.timezone if isinstance(spec.timezone, str) else "")
    except timing.TimingError as exc:
        errors["timezone"] = [str(exc)]
    minimum = max(1, settings.SCHEDULER_MIN_SCHEDULE_INTERVAL)
    if spec.cron:
        try:
            spec = replace(spec, cron=timing.check_cron(spec.cron))
            # The expression's own spacing, read in UTC: a DST change shortens one gap by an hour, once a year,
            # and a daily job is no more frequent for it.
            gap = timing.cron_min_gap(spec.cron, "UTC", now, below=minimum)
            if gap is not None and gap < minimum:
                errors["cron"] = [f"{spec.cron!r} fires {gap:.0f} seconds apart at its closest; the minimum is "
                                  f"{minimum} seconds (SCHEDULER_MIN_SCHEDULE_INTERVAL)"]
        except timing.TimingError as exc:
            errors["cron"] = [str(exc)]
    if spec.interval_seconds is not None:
        if not isinstance(spec.interval_seconds, int) or isinstance(spec.interval_seconds, bool):
            errors["interval_seconds"] = ["must be a whole number of seconds"]
        elif spec.interval_seconds < minimum:
            errors["interval_seconds"] = [f"must be at least {minimum} seconds (SCHEDULER_MIN_SCHEDULE_INTERVAL); "
                                          f"got {spec.interval_seconds}"]
        elif spec.interval_seconds > MAX_INTERVAL_SECONDS:
            errors["interval_seconds"] = [f"must be at most {MAX_INTERVAL_SECONDS} seconds (366 days)"]
    if spec.run_at is not None:
        try:
            spec = replace(spec, run_at=validation.utc_timestamp(spec.run_at, field="run_at"))
        except ValidationError as exc:
            errors.update(exc.message_dict)
        else:
            if check_run_at and spec.run_at <= now:
                errors["run_at"] = [f"{spec.run_at.isoformat()} is in the past; a one-off must be in the future"]
    if spec.overlap_policy not in OverlapPolicy.values:
        errors["overlap_policy"] = [f"must be one of {', '.join(OverlapPolicy.values)}"]
    if not isinstance(spec.enabled, bool):
        errors["enabled"] = ["must be true or false"]
    group = None
    try:
        _, group = task_spec_clean(spec.template())  # the same template rules as any task
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            errors.setdefault(name, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return spec, group


def next_fire(schedule: Schedule, after: datetime) -> datetime | None:
    if schedule.cron:
        return timing.next_cron(schedule.cron, schedule.timezone, after)
    if schedule.interval_seconds:
        # Relative to the last firing (or `after`), like beat's own interval cadence: a fixed grid would drift
        # against beat's wake-ups and make a slot look not-yet-due for a whole interval.
        return after + timedelta(seconds=schedule.interval_seconds)
    return schedule.run_at if schedule.run_at and schedule.run_at > after else None


def _apply(schedule: Schedule, spec: ScheduleSpec, group: Any) -> None:
    for name in ("name", "cron", "timezone", "interval_seconds", "run_at", "overlap_policy", "enabled", "tool",
                 "model", "prompt", "output_files", "priority", "max_attempts", "timeout_seconds"):
        setattr(schedule, name, getattr(spec, name))
    schedule.input_files = [
        {"path": f.path, "content_base64": base64.b64encode(f.content).decode()} for f in spec.input_files
    ]
    schedule.worker_group = group


def _sync_periodic_task(schedule: Schedule) -> None:
    """The beat entry that wakes this schedule up; saving it tells a running beat to reload."""
    kwargs: dict[str, Any] = {"interval": None, "crontab": None, "clocked": None, "one_off": False}
    if schedule.cron:
        minute, hour, day_of_month, month_of_year, day_of_week = schedule.cron.split(" ")
        kwargs["crontab"], _ = CrontabSchedule.objects.get_or_create(
            minute=minute, hour=hour, day_of_month=day_of_month, month_of_year=month_of_year,
            day_of_week=day_of_week, timezone=schedule.timezone,
        )
    elif schedule.interval_seconds:
        kwargs["interval"], _ = IntervalSchedule.objects.get_or_create(
            every=schedule.interval_seconds, period=IntervalSchedule.SECONDS
        )
    else:
        kwargs["clocked"], _ = ClockedSchedule.objects.get_or_create(clocked_time=schedule.run_at)
        kwargs["one_off"] = True
    task = schedule.periodic_task or PeriodicTask(name=f"schedule:{schedule.pk}")
    for name, value in kwargs.items():
        setattr(task, name, value)
    task.task = FIRE_SCHEDULE
    task.args = json.dumps([schedule.pk])
    task.queue = "control"
    task.enabled = schedule.enabled and schedule.next_run_at is not None
    task.description = f"CLI Scheduler schedule {schedule.name!r} ({schedule.tenant})"
    task.save()
    if schedule.periodic_task_id != task.pk:
        schedule.periodic_task = task
        schedule.save(update_fields=["periodic_task"])


def schedule_create(*, spec: ScheduleSpec, tenant: str = "default", created_by: str = "") -> Schedule:
    spec, group = schedule_clean(spec)
    now = timezone.now()
    try:
        with transaction.atomic():
            schedule = Schedule(tenant=tenant, created_by=created_by)
            _apply(schedule, spec, group)
            schedule.next_run_at = next_fire(schedule, now)
            schedule.save()
            _sync_periodic_task(schedule)
            audit("create", "schedule", schedule.pk,
                  [f.name for f in fields(ScheduleSpec) if getattr(spec, f.name) not in (None, "", [], {})])
    except IntegrityError:
        raise ValidationError({"name": [f"a schedule named {spec.name!r} already exists"]}) from None
    return schedule


def schedule_update(*, schedule_id: int, changes: dict[str, Any]) -> Schedule:
    """Partial update; timing changes recompute next_run_at from now. Takes effect in a running beat."""
    known = {f.name for f in fields(ScheduleSpec)}
    unknown = set(changes) - known
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["is not a schedule field"]})
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule_id)
        current = before = spec_from_schedule(schedule)
        timing_keys = {"cron", "interval_seconds", "run_at"}
        if timing_keys & set(changes):  # a new timing replaces the old one entirely
            current = replace(current, cron="", interval_seconds=None, run_at=None)
        merged = replace(current, **changes)
        spec, group = schedule_clean(merged, check_run_at="run_at" in changes)
        _apply(schedule, spec, group)
        now = timezone.now()
        if timing_keys & set(changes) or "timezone" in changes or ("enabled" in changes and spec.enabled):
            schedule.next_run_at = next_fire(schedule, now)
        try:
            with transaction.atomic():
                schedule.save()
        except IntegrityError:
            raise ValidationError({"name": [f"a schedule named {spec.name!r} already exists"]}) from None
        _sync_periodic_task(schedule)
        changed = [name for name in changes if getattr(spec, name) != getattr(before, name)]
        if changed:
            audit("update", "schedule", schedule.pk, changed)
    return schedule


def schedule_set_enabled(*, schedule_id: int, enabled: bool) -> Schedule:
    """Pause or resume. Resuming recomputes the next slot from now: a long pause fires nothing retroactively."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule_id)
        schedule.enabled = enabled
        if enabled:
            schedule.next_run_at = next_fire(schedule, timezone.now())
        schedule.save(update_fields=["enabled", "next_run_at", "updated_at"])
        _sync_periodic_task(schedule)
        audit("resume" if enabled else "pause", "schedule", schedule.pk, ["enabled"])
    return schedule


def schedule_delete(*, schedule_id: int) -> None:
    """Delete the definition and its beat entry; the tasks it spawned stay (their `schedule` becomes null)."""
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().get(pk=schedule_id)
        if schedule.periodic_task_id:
            PeriodicTask.objects.filter(pk=schedule.periodic_task_id).delete()
        audit("delete", "schedule", schedule.pk)
        schedule.delete()


def _unfinished_instance(schedule: Schedule) -> Task | None:
    return Task.objects.filter(schedule=schedule).exclude(status__in=TERMINAL_STATUSES).order_by("-created_at").first()


def schedule_fire(*, schedule_id: int, source: str = "beat", actor: str = "",
                  now: datetime | None = None) -> ScheduleFiring | None:
    """Fire once if due (`source="beat"`), or now regardless of timing and pause (`source="trigger"`).

    Returns the firing (created or skipped), or None when beat woke us for nothing (not due, paused, gone).
    """
    now = (now or timezone.now()).replace(microsecond=0)
    with transaction.atomic():
        schedule = Schedule.objects.select_for_update().filter(pk=schedule_id).first()
        if schedule is None:
            return None
        missed = 0
        if source == "trigger":
            fire_time = now
        else:
            due = schedule.next_run_at
            if not schedule.enabled or due is None:
                return None
            if due > now + EARLY_TOLERANCE:
                enqueue_schedule_fire(schedule_id=schedule.pk, at=due)  # woken early: come back on time
                return None
            fire_time, missed = due, 0
            while (following := next_fire(schedule, fire_time)) is not None and following <= now:
                fire_time, missed = following, missed + 1  # fire the latest missed slot, once
                if missed >= MAX_MISSED_COUNTED:
                    break
            schedule.next_run_at = next_fire(schedule, max(now, fire_time))
            if schedule.kind == "once":
                schedule.enabled = False
        if ScheduleFiring.objects.filter(schedule=schedule, fire_time=fire_time).exists():
            return None  # a duplicate wake-up for a slot already handled
        firing = ScheduleFiring(schedule=schedule, fire_time=fire_time, source=source, missed=missed)
        previous = _unfinished_instance(schedule)
        if source != "trigger" and schedule.overlap_policy == OverlapPolicy.SKIP and previous is not None:
            firing.outcome = ScheduleFiring.Outcome.SKIPPED
            firing.reason = f"the previous instance {previous.pk} is still {previous.status}"
        else:
            spec = replace(spec_from_schedule(schedule).template(),
                           idempotency_key=f"schedule:{schedule.pk}:{fire_time.isoformat()}")
            reason = f"fired by {source}" + (f"; {missed} earlier slot(s) missed during downtime" if missed else "")
            task, _ = task_create(spec=spec, tenant=schedule.tenant, created_by=actor or f"schedule:{schedule.name}",
                                  source=EventSource.SCHEDULE, reason=reason, schedule=schedule)
            firing.outcome, firing.task, firing.reason = ScheduleFiring.Outcome.CREATED, task, reason
        firing.save()
        schedule.last_fired_at = now
        schedule.save(update_fields=["last_fired_at", "next_run_at", "enabled", "updated_at"])
        if source != "trigger" and (schedule.next_run_at is None or not schedule.enabled):
            _sync_periodic_task(schedule)
    return firing
