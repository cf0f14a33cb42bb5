"""Worker groups (edited through group_create / group_update; credentials write-only) and concurrency limits."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from tasks_app import selectors
from tasks_app.admin.common import MASK, ReadOnlyAdminMixin, _report
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.forms import ConcurrencyLimitForm, WorkerGroupForm
from tasks_app.models import AuditEvent, ConcurrencyLimit, Heartbeat, Worker, WorkerGroup
from tasks_app.presenters import worker_command
from tasks_app.services.groups import MANAGE_CREDENTIALS, group_pause, group_resume


def _credential_names(group: WorkerGroup) -> list[str] | None:
    """Key names only; None when the stored credentials cannot be decrypted with the configured key."""
    try:
        return group.credential_names
    except CredentialsUnreadable:
        return None


BUDGETS_HELP = ("Once the runs started in the current UTC day or calendar month cost this much (runs in flight "
                "with their cost so far), the group takes no new work until the window rolls over; its unpinned "
                "tasks go to the tool's other accounts. Empty: no budget.")


def _spend(spent: Decimal, budget: Decimal | None) -> str:
    return f"${spent:.2f}" if budget is None else f"${spent:.2f} of ${budget:.2f}"


@admin.register(WorkerGroup)
class WorkerGroupAdmin(admin.ModelAdmin):
    form = WorkerGroupForm
    list_display = ("name", "tool", "health", "enabled", "max_concurrent", "running_count", "queued_count",
                    "live_worker_count", "spend_today", "spend_month", "rate_limited_until", "credential_keys")
    list_filter = ("tool", "enabled", "allow_dangerous_flags")
    search_fields = ("name", "account")
    ordering = ("name",)
    actions = ("pause_groups", "resume_groups")

    def get_queryset(self, request: HttpRequest) -> QuerySet[WorkerGroup]:
        return selectors.group_list()

    def get_form(self, request: HttpRequest, obj: WorkerGroup | None = None, change: bool = False,
                 **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})

    def get_fieldsets(self, request: HttpRequest, obj: WorkerGroup | None = None) -> list[tuple[Any, dict]]:
        if not request.user.has_perm(MANAGE_CREDENTIALS):
            return [(title, {"fields": tuple(f for f in opts["fields"]
                                              if f not in ("credentials_set", "credentials_unset"))})
                    for title, opts in self._fieldsets(obj)]
        return self._fieldsets(obj)

    def _fieldsets(self, obj: WorkerGroup | None) -> list[tuple[Any, dict]]:
        if obj is None:
            return [
                (None, {"fields": ("tool", "account", "max_concurrent", "enabled")}),
                ("Budgets", {"fields": ("daily_budget_usd", "monthly_budget_usd"), "description": BUDGETS_HELP}),
                ("CLI settings", {"fields": ("env", "extra_args", "allow_dangerous_flags")}),
                ("Credentials", {"fields": ("credentials_set",)}),
            ]
        return [
            (None, {"fields": ("name", "tool", "account", "max_concurrent", "enabled", "health",
                               "rate_limited_until", "quarantined_at", "quarantine_reason")}),
            ("Workers", {"fields": ("registered_workers", "heartbeating_workers", "start_command")}),
            ("Budgets", {"fields": ("daily_budget_usd", "monthly_budget_usd", "spend_today", "spend_month"),
                         "description": BUDGETS_HELP}),
            ("CLI settings", {"fields": ("env", "extra_args", "allow_dangerous_flags")}),
            ("Credentials", {"fields": ("credential_keys_masked", "credentials_set", "credentials_unset")}),
            ("Audit", {"fields": ("created_at", "updated_at")}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: WorkerGroup | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Name, tool and account are the group's identity (and queue name); group_update cannot change them.
        return ("name", "tool", "account", "health", "rate_limited_until", "quarantined_at", "quarantine_reason",
                "registered_workers", "heartbeating_workers", "start_command", "credential_keys_masked", "created_at",
                "updated_at", "spend_today", "spend_month")

    @admin.display(description="health")
    def health(self, group: WorkerGroup) -> str:
        return group.health

    @admin.display(description="spent today (UTC)")
    def spend_today(self, group: WorkerGroup) -> str:
        return _spend(group.spend.today_usd, group.daily_budget_usd)

    @admin.display(description="spent this month")
    def spend_month(self, group: WorkerGroup) -> str:
        return _spend(group.spend.month_usd, group.monthly_budget_usd)

    @admin.display(description="running its jobs now")
    def heartbeating_workers(self, group: WorkerGroup) -> str:
        return ", ".join(selectors.group_heartbeating_workers(group)) or "-"

    @admin.display(description="live workers")
    def live_worker_count(self, group: WorkerGroup) -> int:
        return group.live_workers

    @admin.display(description="live workers on its queue")
    def registered_workers(self, group: WorkerGroup) -> str:
        return ", ".join(selectors.group_live_workers(group)) or "none: the group gets no work until one starts"

    @admin.display(description="start a worker for it")
    def start_command(self, group: WorkerGroup) -> SafeString:
        return format_html("<code>{}</code>", worker_command(group))

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # One query for every row's live workers (and so its health), not one per row.
        changelist.result_list = selectors.groups_attach_live_workers(changelist.result_list)
        return changelist

    def save_model(self, request: HttpRequest, obj: WorkerGroup, form: Any, change: bool) -> None:
        """Nothing to do: WorkerGroupForm saved through group_create / group_update while validating."""

    def response_add(self, request: HttpRequest, obj: WorkerGroup, post_url_continue: str | None = None) -> Any:
        group = selectors.group_get(name=obj.name) or obj
        if not group.live_workers:
            messages.info(request, format_html(
                "No worker consumes {} yet, so it gets no work. Start one on a box: <code>{}</code>",
                group.name, worker_command(group)))
        return super().response_add(request, obj, post_url_continue)

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


@admin.register(Heartbeat)
class HeartbeatAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """When periodic duties last ran (`tick`: beat's safety net, executed by a control worker)."""

    list_display = ("name", "at")


@admin.register(Worker)
class WorkerAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only: workers register and heartbeat themselves."""

    list_display = ("hostname", "pid", "is_alive", "queue_list", "concurrency", "sandbox", "last_heartbeat",
                    "started_at", "stopped_at")
    list_filter = ("sandbox",)
    search_fields = ("hostname",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[Worker]:
        return selectors.worker_list()

    @admin.display(description="alive", boolean=True, ordering="alive")
    def is_alive(self, worker: Worker) -> bool:
        return worker.alive

    @admin.display(description="queues")
    def queue_list(self, worker: Worker) -> str:
        return ", ".join(worker.queues)


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Who changed which configuration, from where (SPEC §8); field and key names only, never values."""

    list_display = ("created_at", "actor", "source", "action", "object_type", "object_id", "changed_fields")
    list_filter = ("source", "action", "object_type")
    search_fields = ("actor", "object_id")
    date_hierarchy = "created_at"

    @admin.display(description="changed")
    def changed_fields(self, event: AuditEvent) -> str:
        return ", ".join(event.changed) or "-"
