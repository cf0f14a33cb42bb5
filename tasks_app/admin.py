"""The operators' admin. Thin by design: every write goes through a service (`task_cancel`, `task_retry`,
`group_create`, `group_update`, …), so a status never changes without its TaskEvent. Tasks, runs, files,
events and schedule firings are read-only here; credentials are write-only and shown as key names with masked
values. Schedules are edited through `schedule_create` / `schedule_update` and deleted through `schedule_delete`,
so their beat entry always follows."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from datetime import datetime
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import ValidationError
from django.db.models import Count, QuerySet
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html, format_html_join
from django.utils.http import content_disposition_header
from django.utils.safestring import SafeString, mark_safe

from tasks_app import logstream, selectors, stats, svg, timing
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.forms import ConcurrencyLimitForm, ScheduleForm, WorkerGroupForm
from tasks_app.models import (
    FAILURE_KIND_CHOICES,
    ApiToken,
    ConcurrencyLimit,
    EventSource,
    Membership,
    Schedule,
    ScheduleFiring,
    Task,
    TaskEvent,
    TaskFile,
    TaskLogChunk,
    TaskRun,
    TaskStatus,
    WorkerGroup,
)
from tasks_app.services.accounts import token_create, token_revoke
from tasks_app.services.groups import group_pause, group_resume
from tasks_app.services.schedules import schedule_delete, schedule_fire, schedule_set_enabled
from tasks_app.services.tasks import TaskStateError, task_cancel, task_retry
from tasks_app.transitions import InvalidTransition

MASK = "••••••"
RECENT_ROWS = 20  # firings and spawned tasks listed on a schedule's page; the rest are a link away
_PRE_STYLE = (
    "white-space: pre-wrap; word-break: break-all; font-family: monospace; font-size: 12px; "
    "max-height: 30em; overflow: auto; margin: 0; padding: 6px; background: var(--darkened-bg); "
    "border: 1px solid var(--hairline-color);"
)


def _pre(text: str, *, truncated: bool = False) -> SafeString:
    if not text:
        return format_html("<em>{}</em>", "empty")
    note = format_html("<p><em>{}</em></p>", "truncated: only the start was kept") if truncated else ""
    return format_html('<pre style="{}">{}</pre>{}', _PRE_STYLE, text, note)


def _credential_names(group: WorkerGroup) -> list[str] | None:
    """Key names only; None when the stored credentials cannot be decrypted with the configured key."""
    try:
        return group.credential_names
    except CredentialsUnreadable:
        return None


def _task_link(task_id: Any) -> SafeString:
    url = reverse("admin:tasks_app_task_change", args=[task_id])
    return format_html('<a href="{}">{}</a>', url, str(task_id)[:8])


class ReadOnlyAdminMixin:
    """An audit trail: viewable by staff with view permission, never added, changed or deleted here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


def _report(modeladmin: admin.ModelAdmin, request: HttpRequest, done: list[str], verb: str,
            failures: list[str]) -> None:
    if done:
        modeladmin.message_user(request, f"{verb}: {', '.join(done)}", messages.SUCCESS)
    for failure in failures:
        modeladmin.message_user(request, failure, messages.WARNING)


# --- Worker groups --------------------------------------------------------------------------------


@admin.register(WorkerGroup)
class WorkerGroupAdmin(admin.ModelAdmin):
    form = WorkerGroupForm
    list_display = ("name", "tool", "enabled", "max_concurrent", "running_count", "queued_count",
                    "rate_limited_until", "heartbeating_workers", "credential_keys")
    list_filter = ("tool", "enabled", "allow_dangerous_flags")
    search_fields = ("name", "account")
    ordering = ("name",)
    actions = ("pause_groups", "resume_groups")

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerGroup]:
        return selectors.group_list()

    def get_fieldsets(self, request: HttpRequest, obj: WorkerGroup | None = None) -> list[tuple[Any, dict]]:
        if obj is None:
            return [
                (None, {"fields": ("tool", "account", "max_concurrent", "enabled")}),
                ("CLI settings", {"fields": ("env", "extra_args", "allow_dangerous_flags")}),
                ("Credentials", {"fields": ("credentials_set",)}),
            ]
        return [
            (None, {"fields": ("name", "tool", "account", "max_concurrent", "enabled",
                               "rate_limited_until", "heartbeating_workers")}),
            ("CLI settings", {"fields": ("env", "extra_args", "allow_dangerous_flags")}),
            ("Credentials", {"fields": ("credential_keys_masked", "credentials_set", "credentials_unset")}),
            ("Audit", {"fields": ("created_at", "updated_at")}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: WorkerGroup | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Name, tool and account are the group's identity (and queue name); group_update cannot change them.
        return ("name", "tool", "account", "rate_limited_until", "heartbeating_workers", "credential_keys_masked",
                "created_at", "updated_at")

    @admin.display(description="workers heartbeating")
    def heartbeating_workers(self, group: WorkerGroup) -> str:
        return ", ".join(selectors.group_heartbeating_workers(group)) or "-"

    def save_model(self, request: HttpRequest, obj: WorkerGroup, form: Any, change: bool) -> None:
        """Nothing to do: WorkerGroupForm saved through group_create / group_update while validating."""

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[WorkerGroup]) -> None:
        # The changelist queryset carries group_list()'s aggregates; delete by primary key instead.
        WorkerGroup.objects.filter(pk__in=[group.pk for group in queryset]).delete()

    @admin.display(description="running", ordering="running")
    def running_count(self, group: WorkerGroup) -> int:
        return group.running

    @admin.display(description="queued", ordering="queued")
    def queued_count(self, group: WorkerGroup) -> int:
        return group.queued

    @admin.display(description="credential keys")
    def credential_keys(self, group: WorkerGroup) -> str:
        names = _credential_names(group)
        if names is None:
            return "unreadable (encryption key changed)"
        return ", ".join(names) or "-"

    @admin.display(description="stored credentials")
    def credential_keys_masked(self, group: WorkerGroup) -> SafeString:
        names = _credential_names(group)
        if names is None:
            return format_html(
                "<strong>{}</strong>",
                "Stored credentials cannot be decrypted: SCHEDULER_ENCRYPTION_KEY differs from the one used "
                "to store them.",
            )
        if not names:
            return format_html("<em>{}</em>", "none")
        return format_html_join("\n", "<code>{}</code> = {}<br>", ((name, MASK) for name in names))

    def _toggle(self, request: HttpRequest, queryset: QuerySet[WorkerGroup],
                service: Callable[..., WorkerGroup], verb: str) -> None:
        done, failures = [], []
        for name in queryset.values_list("name", flat=True):
            try:
                service(name=name)
            except ValidationError as exc:
                failures.append(f"{name}: {'; '.join(exc.messages)}")
            except CredentialsUnreadable as exc:
                failures.append(f"{name}: {exc}")
            else:
                done.append(name)
        _report(self, request, done, verb, failures)

    @admin.action(description="Pause selected groups (no new work)", permissions=["change"])
    def pause_groups(self, request: HttpRequest, queryset: QuerySet[WorkerGroup]) -> None:
        self._toggle(request, queryset, group_pause, "Paused")

    @admin.action(description="Resume selected groups", permissions=["change"])
    def resume_groups(self, request: HttpRequest, queryset: QuerySet[WorkerGroup]) -> None:
        self._toggle(request, queryset, group_resume, "Resumed")


@admin.register(ConcurrencyLimit)
class ConcurrencyLimitAdmin(admin.ModelAdmin):
    form = ConcurrencyLimitForm
    list_display = ("scope", "max_concurrent")
    search_fields = ("scope",)
    ordering = ("scope",)


# --- Tasks and their audit trail ------------------------------------------------------------------


class FailureKindFilter(admin.SimpleListFilter):
    title = "failure kind"
    parameter_name = "failure_kind"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return FAILURE_KIND_CHOICES

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() is None:
            return queryset
        if queryset.model is TaskRun:
            return queryset.filter(failure_kind=self.value())
        return queryset.filter(runs__failure_kind=self.value()).distinct()


class TaskRunInline(ReadOnlyAdminMixin, admin.StackedInline):
    model = TaskRun
    extra = 0
    ordering = ("-attempt",)
    fields = (
        ("attempt", "status", "failure_kind", "exit_code"),
        ("worker_group", "worker", "celery_task_id"),
        ("started_at", "finished_at", "latency_ms", "retry_after_seconds"),
        ("input_tokens", "output_tokens", "cost_usd"),
        "command_line",
        "stdout_block",
        "stderr_block",
    )
    readonly_fields = flatten_fieldsets([(None, {"fields": fields})])
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRun]:
        return super().get_queryset(request).select_related("worker_group")


    @admin.display(description="command")
    def command_line(self, run: TaskRun) -> SafeString:
        return format_html("<code>{}</code>", " ".join(str(arg) for arg in run.command))

    @admin.display(description="stdout")
    def stdout_block(self, run: TaskRun) -> SafeString:
        return _pre(run.stdout, truncated=run.stdout_truncated)

    @admin.display(description="stderr")
    def stderr_block(self, run: TaskRun) -> SafeString:
        return _pre(run.stderr, truncated=run.stderr_truncated)


class TaskFileInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = TaskFile
    extra = 0
    fields = ("direction", "path", "size_bytes", "content_type", "attempt", "sha256", "download")
    readonly_fields = fields
    ordering = ("direction", "path")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskFile]:
        return super().get_queryset(request).select_related("run").defer("content")


    @admin.display(description="attempt")
    def attempt(self, item: TaskFile) -> int | str:
        return item.run.attempt if item.run_id else "-"

    @admin.display(description="download")
    def download(self, item: TaskFile) -> SafeString:
        return _download_link(item)


class TaskEventInline(ReadOnlyAdminMixin, admin.TabularInline):
    model = TaskEvent
    extra = 0
    ordering = ("created_at", "id")
    fields = ("created_at", "from_status", "to_status", "source", "actor", "reason", "data")
    readonly_fields = fields



def _download_link(item: TaskFile) -> SafeString:
    url = reverse("admin:tasks_app_task_file_download", args=[item.task_id, item.pk])
    return format_html('<a href="{}">{}</a>', url, "download")


@admin.register(Task)
class TaskAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Tasks are created by API, CLI, schedules and intake, and edited only through services.
    """View-only: status and lifecycle fields change only through the services (the actions below)."""

    list_display = ("short_id", "tool", "status", "priority", "tenant", "worker_group", "schedule", "attempts",
                    "created_at", "finished_at", "prompt_excerpt")
    list_filter = ("status", "tool", "worker_group", "tenant", "schedule", FailureKindFilter, "created_at")
    search_fields = ("id", "prompt", "idempotency_key", "created_by")
    list_select_related = ("worker_group", "schedule")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    actions = ("cancel_tasks", "retry_tasks")
    inlines = (TaskRunInline, TaskFileInline, TaskEventInline)
    change_form_template = "admin/tasks_app/task/change_form.html"  # adds the live output panel
    fieldsets = (
        (None, {"fields": ("id", "status", "tool", "model", "tenant", "created_by", "schedule", "prompt_block")}),
        ("Scheduling", {"fields": ("priority", "scheduled_at", "worker_group", "worker_group_pinned",
                                   "timeout_seconds", "idempotency_key", "output_files")}),
        ("Lifecycle", {"fields": ("attempt", "max_attempts", "attempt_base", "next_attempt_at", "started_at",
                                  "finished_at", "lease_expires_at", "cancel_requested_at", "created_at",
                                  "updated_at")}),
        ("Outcome", {"fields": ("error_message", "result", "metadata")}),
    )
    readonly_fields = ("id", "status", "tool", "model", "tenant", "created_by", "schedule", "prompt_block",
                       "priority",
                       "scheduled_at", "worker_group", "worker_group_pinned", "timeout_seconds",
                       "idempotency_key", "output_files", "attempt", "max_attempts", "attempt_base",
                       "next_attempt_at", "started_at", "finished_at", "lease_expires_at",
                       "cancel_requested_at", "created_at", "updated_at", "error_message", "result",
                       "metadata")

    def get_urls(self) -> list[URLPattern]:
        download = path(
            "<uuid:task_id>/files/<int:file_id>/download/",
            self.admin_site.admin_view(self.file_download_view),
            name="tasks_app_task_file_download",
        )
        live_log = path(
            "<uuid:task_id>/live-log/",
            self.admin_site.admin_view(self.live_log_view),
            name="tasks_app_task_live_log",
        )
        # Before the defaults: their "<path:object_id>/" pattern would swallow these URLs.
        return [download, live_log, *super().get_urls()]

    def live_log_view(self, request: HttpRequest, task_id: Any) -> JsonResponse:
        """New output of the latest attempt after `?after=SEQ`, for the task page's live panel."""
        task = get_object_or_404(Task, pk=task_id)
        if not self.has_view_permission(request, task):
            raise Http404("no such task")
        after = request.GET.get("after", "0")
        after_seq = int(after) if after.isdigit() and len(after) < 10 else 0
        run = task.runs.order_by("-attempt").first()
        chunks = logstream.chunks_after(run.pk, after_seq) if run else []
        return JsonResponse({
            "status": task.status,
            "terminal": task.is_terminal,
            "attempt": run.attempt if run else None,
            "chunks": [{"seq": c.seq, "stream": c.stream, "data": c.data} for c in chunks],
        })

    def file_download_view(self, request: HttpRequest, task_id: Any, file_id: int) -> HttpResponse:
        task = get_object_or_404(Task, pk=task_id)
        if not self.has_view_permission(request, task):
            raise Http404("no such task")
        item = get_object_or_404(TaskFile, pk=file_id, task=task)
        content_type = item.content_type or "application/octet-stream"
        response = HttpResponse(item.read_bytes(), content_type=content_type)
        response.headers["Content-Disposition"] = content_disposition_header(
            as_attachment=True, filename=posixpath.basename(item.path)
        )
        return response


    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Cancel and retry: for staff who may change tasks (the form itself stays read-only)."""
        return request.user.has_perm("tasks_app.change_task")

    @admin.display(description="id", ordering="id")
    def short_id(self, task: Task) -> str:
        return str(task.pk)[:8]

    @admin.display(description="attempts")
    def attempts(self, task: Task) -> str:
        return f"{task.attempt - task.attempt_base}/{task.max_attempts}"

    @admin.display(description="prompt")
    def prompt_excerpt(self, task: Task) -> str:
        text = " ".join(task.prompt.split())
        return text if len(text) <= 80 else f"{text[:79]}…"

    @admin.display(description="prompt")
    def prompt_block(self, task: Task) -> SafeString:
        return _pre(task.prompt)

    def _operate(self, request: HttpRequest, queryset: QuerySet[Task], service: Callable[..., Task]) -> list[
            tuple[Any, Task | None, str]]:
        outcomes: list[tuple[Any, Task | None, str]] = []
        for task_id in list(queryset.values_list("pk", flat=True)):
            try:
                task = service(task_id=task_id, source=EventSource.ADMIN, actor=request.user.get_username())
            except (TaskStateError, InvalidTransition) as exc:
                outcomes.append((task_id, None, str(exc)))
            except Task.DoesNotExist:
                outcomes.append((task_id, None, f"task {task_id} no longer exists"))
            else:
                outcomes.append((task_id, task, ""))
        return outcomes

    @admin.action(description="Cancel selected tasks", permissions=["operate"])
    def cancel_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        canceled, requested, failures = [], [], []
        for task_id, task, error in self._operate(request, queryset, task_cancel):
            if task is None:
                failures.append(error)
            elif task.status == TaskStatus.CANCELED:
                canceled.append(str(task_id)[:8])
            else:
                requested.append(str(task_id)[:8])
        _report(self, request, canceled, "Canceled", failures)
        if requested:
            self.message_user(request, f"Cancel requested (the worker stops the run): {', '.join(requested)}",
                              messages.INFO)

    @admin.action(description="Retry selected tasks", permissions=["operate"])
    def retry_tasks(self, request: HttpRequest, queryset: QuerySet[Task]) -> None:
        done, failures = [], []
        for task_id, task, error in self._operate(request, queryset, task_retry):
            if task is None:
                failures.append(error)
            else:
                done.append(str(task_id)[:8])
        _report(self, request, done, "Re-queued", failures)


@admin.register(TaskRun)
class TaskRunAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("id", "task_link", "attempt", "status", "worker_group", "worker", "failure_kind",
                    "exit_code", "started_at", "finished_at", "latency_ms", "cost_usd")
    list_filter = ("status", FailureKindFilter, "worker_group", "started_at")
    search_fields = ("task__id", "task__prompt", "worker", "celery_task_id")
    list_select_related = ("task", "worker_group")
    ordering = ("-started_at",)
    date_hierarchy = "started_at"
    fields = (
        ("task_link", "attempt", "status", "failure_kind", "exit_code"),
        ("worker_group", "worker", "celery_task_id"),
        ("started_at", "finished_at", "latency_ms", "retry_after_seconds"),
        ("input_tokens", "output_tokens", "cost_usd"),
        "command_line",
        "stdout_block",
        "stderr_block",
    )
    readonly_fields = ("task_link", "command_line", "stdout_block", "stderr_block")

    @admin.display(description="task", ordering="task__created_at")
    def task_link(self, run: TaskRun) -> SafeString:
        return _task_link(run.task_id)

    command_line = TaskRunInline.command_line
    stdout_block = TaskRunInline.stdout_block
    stderr_block = TaskRunInline.stderr_block


@admin.register(TaskFile)
class TaskFileAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("path", "task_link", "direction", "size_bytes", "content_type", "created_at", "download")
    list_filter = ("direction", "content_type", "created_at")
    search_fields = ("path", "task__id", "sha256")
    list_select_related = ("task",)
    ordering = ("-created_at",)
    fields = ("task_link", "run", "direction", "path", "size_bytes", "sha256", "content_type", "created_at",
              "download")
    readonly_fields = ("task_link", "download")

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskFile]:
        return super().get_queryset(request).defer("content")

    @admin.display(description="task", ordering="task__created_at")
    def task_link(self, item: TaskFile) -> SafeString:
        return _task_link(item.task_id)

    @admin.display(description="download")
    def download(self, item: TaskFile) -> SafeString:
        return _download_link(item)


@admin.register(TaskEvent)
class TaskEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ("created_at", "task_link", "from_status", "to_status", "source", "actor", "reason")
    list_filter = ("source", "to_status", "created_at")
    search_fields = ("task__id", "actor", "reason")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    fields = ("task_link", "from_status", "to_status", "source", "actor", "reason", "data", "created_at")
    readonly_fields = ("task_link",)

    @admin.display(description="task")
    def task_link(self, event: TaskEvent) -> SafeString:
        return _task_link(event.task_id)


# --- Schedules ------------------------------------------------------------------------------------


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


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]], empty: str) -> SafeString:
    if not rows:
        return format_html("<em>{}</em>", empty)
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)


def _changelist_link(model: str, schedule: Schedule, text: str) -> SafeString:
    url = reverse(f"admin:tasks_app_{model}_changelist")
    return format_html('<p><a href="{}?schedule__id__exact={}">{}</a></p>', url, schedule.pk, text)


@admin.register(Schedule)
class ScheduleAdmin(admin.ModelAdmin):
    """Every write goes through the schedule services, which keep the django-celery-beat entry in step.

    The recent firings and spawned tasks are read-only tables rather than inlines: the form saves while it is
    validated, so the change view must not also depend on inline formsets posted with it."""

    form = ScheduleForm
    list_display = ("name", "tenant", "tool", "timing_summary", "enabled", "overlap_policy", "next_run_local",
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

    # A paused schedule keeps its stale next_run_at (resuming recomputes it), so it is not shown as upcoming.
    @admin.display(description="next run (schedule's zone)", ordering="next_run_at")
    def next_run_local(self, schedule: Schedule) -> str:
        if schedule.next_run_at is not None and not schedule.enabled:
            return "paused"
        return _in_zone(schedule.next_run_at, schedule.timezone)

    @admin.display(description="next run (UTC)", ordering="next_run_at")
    def next_run_utc(self, schedule: Schedule) -> str:
        if schedule.next_run_at is not None and not schedule.enabled:
            return "paused"
        return _in_zone(schedule.next_run_at, "UTC")

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
        firings = schedule.firings.order_by("-fire_time")[:RECENT_ROWS]
        rows = [
            (_in_zone_and_utc(firing.fire_time, schedule.timezone), firing.source, firing.get_outcome_display(),
             firing.missed, firing.reason, _task_link(firing.task_id) if firing.task_id else "-")
            for firing in firings
        ]
        table = _table(("fire time", "source", "outcome", "missed", "reason", "task"), rows, "never fired")
        return format_html("{}{}", table, _changelist_link("schedulefiring", schedule, "all firings"))

    @admin.display(description="tasks")
    def spawned_tasks(self, schedule: Schedule) -> SafeString:
        tasks = schedule.tasks.order_by("-created_at")[:RECENT_ROWS]
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


# --- Dashboard ------------------------------------------------------------------------------------


def _chart(markup: str) -> SafeString:
    return mark_safe(markup)  # noqa: S308 -- tasks_app.svg escapes every label and value it embeds


def dashboard_view(request: HttpRequest) -> TemplateResponse:
    """Figures and charts from `tasks_app.stats`; staff only (wrapped in `admin_view` below)."""
    data = stats.dashboard()
    days = [day.strftime("%a %d") for day in data.usage_days]
    groups = sorted({row.group for row in data.usage})
    per_day = {(row.day, row.group): row for row in data.usage}

    def series(value: Callable[[stats.DailyUsage], float]) -> list[tuple[str, list[float]]]:
        return [(group, [value(per_day[day, group]) if (day, group) in per_day else 0 for day in data.usage_days])
                for group in groups]

    charts = {
        "status": svg.bar_chart(data.status_counts, title="Tasks by status"),
        "groups": svg.stacked_bar(
            [(group.name, (group.running, max(group.max_concurrent - group.running, 0)),
              f"{group.running}/{group.max_concurrent}") for group in data.groups],
            series=("running", "free"), title="Running vs max_concurrent per group"),
        "success": svg.bar_chart([(tool.tool, tool.success_percent) for tool in data.tools if tool.finished],
                                 title="Success rate per tool, last 24 h", maximum=100,
                                 format_value=lambda value: f"{value:.1f}%", color=svg.PALETTE[4]),
        "tokens": svg.column_chart(days, series(lambda row: row.tokens), title="Tokens per day per account"),
        "cost": svg.column_chart(days, series(lambda row: float(row.cost_usd)), title="Cost (USD) per day",
                                 format_value=lambda value: f"${value:.2f}"),
        "failures": svg.bar_chart(data.failure_counts, title="Failed runs by kind, last 24 h",
                                  color=svg.PALETTE[3]),
    }
    context = {**admin.site.each_context(request), "title": "Dashboard", "data": data,
               "charts": {name: _chart(markup) for name, markup in charts.items()}}
    return TemplateResponse(request, "admin/cockpit/dashboard.html", context)


_site_urls = admin.site.get_urls


def _site_urls_with_dashboard() -> list[URLPattern]:
    dashboard = path("dashboard/", admin.site.admin_view(dashboard_view), name="cockpit-dashboard")
    return [dashboard, *_site_urls()]


admin.site.get_urls = _site_urls_with_dashboard  # type: ignore[method-assign]
admin.site.index_template = "admin/cockpit/index.html"  # the default index plus a link to the dashboard


class ApiTokenAddForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API keys: created here or with `schedulerctl tokens create`; the key is shown once, only its hash kept."""

    list_display = ("prefix_shown", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name", "prefix")
    actions = ("revoke_tokens",)
    readonly_fields = ("prefix_shown", "user", "name", "created_at", "last_used_at", "revoked_at")

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, **kwargs: Any) -> Any:
        return ApiTokenAddForm if obj is None else super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return ("user", "name") if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return
        token, key = token_create(username=obj.user.get_username(), name=obj.name)
        obj.pk = token.pk
        self.message_user(request, format_html(
            "New API key for {}: <code>{}</code> — copy it now, it is not stored and cannot be shown again.",
            obj.user, key), messages.WARNING)

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False

    @admin.display(description="key")
    def prefix_shown(self, token: ApiToken) -> str:
        return f"{token.prefix}…"

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            token_revoke(token_id=token.pk)
        self.message_user(request, f"revoked {queryset.count()} token(s)", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    """Which tenant each API user acts for (staff users see every tenant)."""

    list_display = ("user", "tenant")
    search_fields = ("user__username", "tenant")
    list_filter = ("tenant",)


@admin.register(TaskLogChunk)
class TaskLogChunkAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Live output as the workers flushed it (pruned after SCHEDULER_LIVE_LOG_RETENTION_HOURS)."""

    list_display = ("run", "seq", "stream", "excerpt", "created_at")
    list_filter = ("stream", "created_at")
    list_select_related = ("run",)
    search_fields = ("run__task__id",)
    ordering = ("-created_at", "-seq")

    @admin.display(description="data")
    def excerpt(self, chunk: TaskLogChunk) -> str:
        return chunk.data[:120]
