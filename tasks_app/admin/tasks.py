"""Tasks: view-only pages with their runs, files and events inline; cancel, retry and re-queue now through the
services (list actions, and buttons on the task page); the live endpoints behind the task page's panels and the
file download."""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.utils import flatten_fieldsets
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.urls import URLPattern, path
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.http import content_disposition_header
from django.utils.safestring import SafeString
from django.views.decorators.http import require_POST

from tasks_app import selectors
from tasks_app.admin.common import ReadOnlyAdminMixin, _download_link, _pre, _report, _task_link
from tasks_app.admin.task_page import task_header
from tasks_app.logstream import timeline_dict
from tasks_app.models import FAILURE_KIND_CHOICES, EventSource, Task, TaskEvent, TaskFile, TaskRun, TaskStatus
from tasks_app.presenters import diff_stat_text
from tasks_app.services.tasks import TaskStateError, task_cancel, task_requeue_now, task_retry
from tasks_app.transitions import InvalidTransition


def _task_links(task_ids: list[str]) -> SafeString:
    if not task_ids:
        return format_html("<em>{}</em>", "none")
    return format_html_join(", ", "{}", ((_task_link(task_id),) for task_id in task_ids))


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


# An attempt's page and its inline on the task page show the same rows.
RUN_FIELDS = (
    ("attempt", "status", "failure_kind", "exit_code"),
    "error_message",
    ("worker_group", "worker", "celery_task_id", "sandbox"),
    ("started_at", "finished_at", "latency_ms", "retry_after_seconds"),
    ("input_tokens", "output_tokens", "cost_usd"),
    ("base_sha", "change_summary", "pushed_branch", "pushed_sha"),
    "command_line",
    "stdout_block",
    "stderr_block",
)


class TaskRunInline(ReadOnlyAdminMixin, admin.StackedInline):
    model = TaskRun
    extra = 0
    ordering = ("-attempt",)
    fields = RUN_FIELDS
    readonly_fields = flatten_fieldsets([(None, {"fields": fields})])
    show_change_link = True

    def get_queryset(self, request: HttpRequest) -> QuerySet[TaskRun]:
        return super().get_queryset(request).select_related("worker_group")

    @admin.display(description="change")
    def change_summary(self, run: TaskRun) -> str:
        return diff_stat_text(run.diff_stat) or "-"

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


@admin.register(Task)
class TaskAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    # Tasks are created by API, CLI, schedules and intake, and edited only through services.
    """View-only: status and lifecycle fields change only through the services (the actions below)."""

    # What a person scans for comes first (the prompt, when it finished): at 1366 px, with the filters beside it,
    # the last columns may scroll out of view. A task that finished without some declared outputs says so by its
    # status.
    list_display = ("short_id", "status", "missing_outputs", "tool", "prompt_excerpt", "finished_at", "created_at",
                    "attempts", "worker_group", "priority", "tenant", "schedule")
    list_filter = ("status", "tool", "worker_group", "tenant", "schedule", FailureKindFilter, "created_at")
    search_fields = ("id", "prompt", "idempotency_key", "created_by")
    list_select_related = ("worker_group", "schedule", "repository")
    ordering = ("-created_at",)
    date_hierarchy = "created_at"
    actions = ("cancel_tasks", "retry_tasks")
    inlines = (TaskRunInline, TaskFileInline, TaskEventInline)
    # The page (its template): a header with the state and the buttons, the outcome or the live panels, the runs,
    # files and events; then these, folded, below them.
    change_form_template = "admin/tasks_app/task/change_form.html"
    change_list_template = "admin/tasks_app/task/change_list.html"
    fieldsets = (
        ("Task", {"classes": ("collapse",),
                  "fields": ("id", "status", "tool", "model", "tenant", "created_by", "schedule", "repository", "ref",
                             "prompt_block")}),
        ("Scheduling", {"classes": ("collapse",),
                        "fields": ("priority", "scheduled_at", "worker_group", "worker_group_pinned",
                                   "timeout_seconds", "idempotency_key", "output_files", "require_outputs")}),
        ("Limits", {"classes": ("collapse",), "fields": ("max_cost_usd", "max_turns", "idle_timeout_seconds")}),
        ("Lifecycle", {"classes": ("collapse",),
                       "fields": ("attempt", "max_attempts", "attempt_base", "next_attempt_at", "started_at",
                                  "finished_at", "lease_expires_at", "cancel_requested_at", "created_at",
                                  "updated_at")}),
        ("Chain", {"classes": ("collapse",), "fields": ("depends_on_links", "waiting_on_links", "dependents_links")}),
        ("Conversation", {"classes": ("collapse",),
                          "fields": ("resume_session_id", "conversation_turns", "follow_up_links")}),
        ("Outcome", {"classes": ("collapse",), "fields": ("error_message", "result", "metadata")}),
    )
    readonly_fields = ("id", "status", "tool", "model", "tenant", "created_by", "schedule", "repository", "ref",
                       "prompt_block",
                       "priority",
                       "scheduled_at", "worker_group", "worker_group_pinned", "timeout_seconds",
                       "idempotency_key", "output_files", "require_outputs", "max_cost_usd", "max_turns",
                       "idle_timeout_seconds", "attempt", "max_attempts", "attempt_base",
                       "next_attempt_at", "started_at", "finished_at", "lease_expires_at",
                       "cancel_requested_at", "created_at", "updated_at", "error_message", "result",
                       "metadata", "depends_on_links", "waiting_on_links", "dependents_links",
                       "resume_session_id", "conversation_turns", "follow_up_links")

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
        live_timeline = path(
            "<uuid:task_id>/live-timeline/",
            self.admin_site.admin_view(self.live_timeline_view),
            name="tasks_app_task_live_timeline",
        )
        operations = [
            path(f"<uuid:task_id>/{name}/", self.admin_site.admin_view(require_POST(view)),
                 name=f"tasks_app_task_{name.replace('-', '_')}")
            for name, view in (("cancel", self.cancel_view), ("retry", self.retry_view),
                               ("requeue-now", self.requeue_now_view))
        ]
        # Before the defaults: their "<path:object_id>/" pattern would swallow these URLs.
        return [download, live_log, live_timeline, *operations, *super().get_urls()]

    def change_view(self, request: HttpRequest, object_id: str, form_url: str = "",
                    extra_context: dict[str, Any] | None = None) -> HttpResponse:
        task = self.get_object(request, object_id)
        if task is not None:
            runs = list(selectors.task_runs(task_id=task.pk))
            header = task_header(task, runs=runs, now=timezone.now(),
                                 may_operate=self.has_operate_permission(request))
            extra_context = {**(extra_context or {}), "header": header}
        return super().change_view(request, object_id, form_url, extra_context)

    def _operate_one(self, request: HttpRequest, task_id: Any, service: Callable[..., Task],
                     done: Callable[[Task], tuple[str, int]]) -> HttpResponseRedirect:
        """A button of the task page: the service with the operator recorded, then back to the page with what
        happened (or why nothing did). The admin's view wrapper checks the CSRF token."""
        task = get_object_or_404(Task, pk=task_id)
        if not (self.has_view_permission(request, task) and self.has_operate_permission(request)):
            raise PermissionDenied
        outcome = self._operate(request, Task.objects.filter(pk=task.pk), service)
        _, changed, error = outcome[0]
        if changed is None:
            self.message_user(request, error, messages.WARNING)
        else:
            self.message_user(request, *done(changed))
        return redirect("admin:tasks_app_task_change", task.pk)

    def cancel_view(self, request: HttpRequest, task_id: Any) -> HttpResponseRedirect:
        return self._operate_one(request, task_id, task_cancel, lambda task: (
            ("Canceled.", messages.SUCCESS) if task.status == TaskStatus.CANCELED
            else ("Cancel requested: the worker stops the run within seconds.", messages.INFO)))

    def retry_view(self, request: HttpRequest, task_id: Any) -> HttpResponseRedirect:
        return self._operate_one(request, task_id, task_retry,
                                 lambda task: ("Re-queued with a fresh attempt budget.", messages.SUCCESS))

    def requeue_now_view(self, request: HttpRequest, task_id: Any) -> HttpResponseRedirect:
        return self._operate_one(request, task_id, task_requeue_now,
                                 lambda task: ("Re-queued now: it starts when a slot is free.", messages.SUCCESS))

    def _latest_run_after(self, request: HttpRequest, task_id: Any) -> tuple[Task, Any, int]:
        """The task (404 unless this user may view it), its latest run, and `?after=SEQ` (0 when absent or odd)."""
        task = get_object_or_404(Task, pk=task_id)
        if not self.has_view_permission(request, task):
            raise Http404("no such task")
        after = request.GET.get("after", "0")
        after_seq = int(after) if after.isdigit() and len(after) < 10 else 0
        return task, selectors.task_latest_run(task_id=task.pk), after_seq

    def live_timeline_view(self, request: HttpRequest, task_id: Any) -> JsonResponse:
        """Timeline events of the latest attempt after `?after=SEQ`, for the task page's timeline panel."""
        task, run, after_seq = self._latest_run_after(request, task_id)
        events = selectors.run_events(run_id=run.pk, after=after_seq) if run else []
        return JsonResponse({
            "status": task.status,
            "terminal": task.is_terminal,
            "attempt": run.attempt if run else None,
            "events": [timeline_dict(e) for e in events],
        })

    def live_log_view(self, request: HttpRequest, task_id: Any) -> JsonResponse:
        """New output of the latest attempt after `?after=SEQ`, for the task page's live panel."""
        task, run, after_seq = self._latest_run_after(request, task_id)
        chunks = selectors.run_log_chunks(run_id=run.pk, after=after_seq) if run else []
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
        item = get_object_or_404(selectors.task_files(task_id=task.pk), pk=file_id)
        content_type = item.content_type or "application/octet-stream"
        response = HttpResponse(item.read_bytes(), content_type=content_type)
        response.headers["Content-Disposition"] = content_disposition_header(
            as_attachment=True, filename=posixpath.basename(item.path)
        )
        return response

    def has_operate_permission(self, request: HttpRequest) -> bool:
        """Cancel, retry, re-queue now: for staff who may change tasks (the form itself stays read-only)."""
        return request.user.has_perm("tasks_app.change_task")

    @admin.display(description="id", ordering="id")
    def short_id(self, task: Task) -> str:
        return str(task.pk)[:8]

    @admin.display(description="attempts")
    def attempts(self, task: Task) -> str:
        return f"{task.attempt - task.attempt_base}/{task.max_attempts}"

    @admin.display(description="missing outputs")
    def missing_outputs(self, task: Task) -> str:
        """Declared outputs the finished task did not deliver: a succeeded task may lack some (require_outputs off)."""
        return ", ".join(task.missing_outputs) or "-"

    @admin.display(description="prompt")
    def prompt_excerpt(self, task: Task) -> str:
        text = " ".join(task.prompt.split())
        return text if len(text) <= 80 else f"{text[:79]}…"

    @admin.display(description="depends on")
    def depends_on_links(self, task: Task) -> SafeString:
        return _task_links(selectors.task_chain(task=task).depends_on)

    @admin.display(description="waiting on")
    def waiting_on_links(self, task: Task) -> SafeString:
        return _task_links(selectors.task_chain(task=task).waiting_on)

    @admin.display(description="dependents")
    def dependents_links(self, task: Task) -> SafeString:
        return _task_links(selectors.task_chain(task=task).dependents)

    @admin.display(description="turns")
    def conversation_turns(self, task: Task) -> SafeString:
        """The chain of follow-ups that led here, first to last: each turn's prompt, outcome and change."""
        turns = selectors.task_conversation_turns(task)
        if len(turns) == 1:
            return format_html("<em>{}</em>", "a first turn (no parent)")
        rows = format_html_join("", "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>", (
            (number, _task_link(str(turn["id"])) if turn["id"] != task.pk else format_html("<b>{}</b>", "this task"),
             turn["status"], turn["prompt"][:200], diff_stat_text(turn["diff_stat"]))
            for number, turn in enumerate(turns, start=1)))
        return format_html("<table><tr><th>#</th><th>task</th><th>status</th><th>prompt</th><th>change</th></tr>"
                           "{}</table>", rows)

    @admin.display(description="follow-ups")
    def follow_up_links(self, task: Task) -> SafeString:
        return _task_links([str(pk) for pk in selectors.task_follow_up_ids(task_id=task.pk)])

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
