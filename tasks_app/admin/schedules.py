"""Schedules, edited through schedule_create / schedule_update and deleted through schedule_delete so their
beat entry always follows; their firings are read-only history."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.contrib import admin
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from tasks_app import selectors, timing
from tasks_app.admin.common import ReadOnlyAdminMixin, _report, _table, _task_link
from tasks_app.forms import ScheduleForm
from tasks_app.models import Schedule, ScheduleFiring
from tasks_app.services.schedules import schedule_delete, schedule_fire, schedule_set_enabled

RECENT_ROWS = 20  # firings and spawned tasks listed on a schedule's page; the rest are a link away


def _in_zone(value: datetime | None, zone_name: str) -> str:
    """A UTC instant as wall-clock time in the schedule's zone (UTC if the stored zone is unreadable)."""
    if value is None:
        return "-"
    try:
        wall_clock = timing.local(value, zone_name)
    except timing.TimingError:
        wall_clock, zone_name = timing.local(value, "UTC"), "UTC"
    return f"{wall_clock:%Y-%m-%d %H:%M:%S} {zone_name}"


def _in_zone_and_utc(value: datetime | None, zone_name: str) -> str:
    if value is None or zone_name == "UTC":
        return _in_zone(value, "UTC")
    return f"{_in_zone(value, zone_name)} ({_in_zone(value, 'UTC')})"


def _timing_summary(schedule: Schedule) -> str:
    if schedule.cron:
        return f"cron {schedule.cron} ({schedule.timezone})"
    if schedule.interval_seconds:
        return f"every {schedule.interval_seconds} s"
    if schedule.run_at:
        return f"once at {_in_zone(schedule.run_at, schedule.timezone)}"
    return "-"


def _changelist_link(model: str, schedule: Schedule, text: str) -> SafeString:
    url = reverse(f"admin:tasks_app_{model}_changelist")
    return format_html('<p><a href="{}?schedule__id__exact={}">{}</a></p>', url, schedule.pk, text)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Every write goes through the schedule services, which keep the django-celery-beat entry in step.

    The recent firings and spawned tasks are read-only tables rather than inlines: the form saves while it is
    validated, so the change view must not also depend on inline formsets posted with it."""

    form = ScheduleForm
    list_display = ("name", "tenant", "tool", "timing_summary", "state", "overlap_policy", "next_run_local",
                    "next_run_utc", "last_fired_at", "spawned_count")
    list_filter = ("enabled", "tool", "tenant", "overlap_policy")
    search_fields = ("name", "prompt")
    list_select_related = ("worker_group",)
    ordering = ("tenant", "name")
    actions = ("pause_schedules", "resume_schedules", "trigger_schedules")

    def get_queryset(self, request: HttpRequest) -> QuerySet[Schedule]:
        return super().get_queryset(request).annotate(spawned=Count("tasks"))

    def get_fieldsets(self, request: HttpRequest, obj: Schedule | None = None) -> list[tuple[Any, dict]]:
        timing_help = {"description": "Give exactly one of: a cron expression (read in the timezone), an interval "
                                      "in seconds, or a one-off time."}
        template = ("tool", "model", "prompt", "output_files", "priority", "max_attempts", "timeout_seconds",
                    "worker_group", "overlap_policy")
        if obj is None:
            return [
                (None, {"fields": ("name", "tenant", "enabled")}),
                ("Timing", {"fields": ("cron", "timezone", "interval_seconds", "run_at"), **timing_help}),
                ("Task template", {"fields": template}),
            ]
        return [
            (None, {"fields": ("name", "tenant", "enabled")}),
            ("Timing", {"fields": ("cron", "timezone", "interval_seconds", "run_at", "next_run",
                                   "last_fired_at", "beat_entry"), **timing_help}),
            ("Task template", {"fields": (*template, "input_file_paths")}),
            ("Recent firings", {"fields": ("recent_firings",)}),
            ("Spawned tasks", {"fields": ("spawned_tasks",)}),
            ("Audit", {"fields": ("created_by", "created_at", "updated_at")}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Schedule | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # schedule_update cannot move a schedule to another tenant; input files are set through the API or CLI.
        return ("tenant", "next_run", "last_fired_at", "beat_entry", "input_file_paths", "recent_firings",
                "spawned_tasks", "created_by", "created_at", "updated_at")

    def get_form(self, request: HttpRequest, obj: Schedule | None = None, change: bool = False,
                 **kwargs: Any) -> type[ScheduleForm]:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"created_by": request.user.get_username()})

    def save_model(self, request: HttpRequest, obj: Schedule, form: Any, change: bool) -> None:
        """Nothing to do: ScheduleForm saved through schedule_create / schedule_update while validating."""

    def delete_model(self, request: HttpRequest, obj: Schedule) -> None:
        schedule_delete(schedule_id=obj.pk)

    def get_deleted_objects(self, objs: Any, request: HttpRequest) -> tuple[Any, Any, set[str], Any]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Firings are the schedule's own history: never deleted alone, but they go with their schedule.
        perms_needed.discard(str(ScheduleFiring._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        for schedule_id in list(queryset.values_list("pk", flat=True)):
            try:
                schedule_delete(schedule_id=schedule_id)
            except Schedule.DoesNotExist:
                continue  # deleted meanwhile: the outcome the operator asked for

    @admin.display(description="timing")
    def timing_summary(self, schedule: Schedule) -> str:
        return _timing_summary(schedule)

    @admin.display(description="state", ordering="enabled")
    def state(self, schedule: Schedule) -> str:
        return schedule.state

    # A paused schedule keeps its stale next_run_at (resuming recomputes it), so it is not shown as upcoming.
    @admin.display(description="next run (schedule's zone)", ordering="next_run_at")
    def next_run_local(self, schedule: Schedule) -> str:
        return "paused" if schedule.state == "paused" else _in_zone(schedule.next_run_at, schedule.timezone)

    @admin.display(description="next run (UTC)", ordering="next_run_at")
    def next_run_utc(self, schedule: Schedule) -> str:
        return "paused" if schedule.state == "paused" else _in_zone(schedule.next_run_at, "UTC")

    @admin.display(description="next run")
    def next_run(self, schedule: Schedule) -> str:
        if schedule.next_run_at is None:
            return "none: the one-off has fired" if schedule.run_at else "none"
        if not schedule.enabled:
            return "paused (resuming computes the next slot from then)"
        return _in_zone_and_utc(schedule.next_run_at, schedule.timezone)

    @admin.display(description="tasks", ordering="spawned")
    def spawned_count(self, schedule: Schedule) -> int:
        return schedule.spawned

    @admin.display(description="beat entry")
    def beat_entry(self, schedule: Schedule) -> str:
        entry = schedule.periodic_task
        if entry is None:
            return "none"
        return f"{entry.name} ({'enabled' if entry.enabled else 'disabled'})"

    @admin.display(description="input files")
    def input_file_paths(self, schedule: Schedule) -> SafeString:
        paths = [item.get("path", "?") for item in schedule.input_files]
        if not paths:
            return format_html("<em>{}</em>", "none")
        return format_html_join("\n", "<code>{}</code><br>", ((item,) for item in paths))

    @admin.display(description="firings")
    def recent_firings(self, schedule: Schedule) -> SafeString:
        firings = selectors.schedule_firings(schedule=schedule)[:RECENT_ROWS]
        rows = [
            (_in_zone_and_utc(firing.fire_time, schedule.timezone), firing.source, firing.get_outcome_display(),
             firing.missed, firing.reason, _task_link(firing.task_id) if firing.task_id else "-")
            for firing in firings
        ]
        table = _table(("fire time", "source", "outcome", "missed", "reason", "task"), rows, "never fired")
        return format_html("{}{}", table, _changelist_link("schedulefiring", schedule, "all firings"))

    @admin.display(description="tasks")
    def spawned_tasks(self, schedule: Schedule) -> SafeString:
        tasks = selectors.schedule_tasks(schedule=schedule)[:RECENT_ROWS]
        rows = [(_task_link(task.pk), task.status, _in_zone(task.created_at, "UTC"),
                 _in_zone(task.finished_at, "UTC")) for task in tasks]
        table = _table(("task", "status", "created", "finished"), rows, "none yet")
        return format_html("{}{}", table, _changelist_link("task", schedule, "all tasks of this schedule"))

    def _toggle(self, request: HttpRequest, queryset: QuerySet[Schedule], *, enabled: bool, verb: str) -> None:
        done, failures = [], []
        for schedule_id, name in list(queryset.values_list("pk", "name")):
            try:
                schedule = schedule_set_enabled(schedule_id=schedule_id, enabled=enabled)
            except Schedule.DoesNotExist:
                failures.append(f"{name}: no longer exists")
                continue
            done.append(name)
            if enabled and schedule.next_run_at is None:
                failures.append(f"{name}: resumed, but it has no future firing (a one-off whose time has passed)")
        _report(self, request, done, verb, failures)

    @admin.action(description="Pause selected schedules", permissions=["change"])
    def pause_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._toggle(request, queryset, enabled=False, verb="Paused")

    @admin.action(description="Resume selected schedules (next slot from now)", permissions=["change"])
    def resume_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        self._toggle(request, queryset, enabled=True, verb="Resumed")

    @admin.action(description="Trigger selected schedules now (one task each)", permissions=["change"])
    def trigger_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        done, failures = [], []
        for schedule_id, name in list(queryset.values_list("pk", "name")):
            try:
                firing = schedule_fire(schedule_id=schedule_id, source="trigger",
                                       actor=request.user.get_username())
            except ValidationError as exc:
                failures.append(f"{name}: {'; '.join(exc.messages)}")
                continue
            if firing is None:
                failures.append(f"{name}: not fired (deleted meanwhile, or already triggered this second)")
            elif firing.task_id is None:
                failures.append(f"{name}: {firing.reason or firing.get_outcome_display()}")
            else:
                done.append(f"{name} (task {str(firing.task_id)[:8]})")
        _report(self, request, done, "Triggered", failures)


@admin.register(ScheduleFiring)
class ScheduleFiringAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("fire_time", "schedule", "source", "outcome", "missed", "task_link", "reason")
    list_filter = ("outcome", "source", "schedule")
    search_fields = ("schedule__name", "reason")
    list_select_related = ("schedule",)
    ordering = ("-fire_time",)
    date_hierarchy = "fire_time"
    fields = ("schedule", "fire_time", "source", "outcome", "missed", "task_link", "reason", "created_at")
    readonly_fields = ("task_link",)

    @admin.display(description="task")
    def task_link(self, firing: ScheduleFiring) -> SafeString | str:
        return _task_link(firing.task_id) if firing.task_id else "-"
