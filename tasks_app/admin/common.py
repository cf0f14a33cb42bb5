"""What every admin module shares: the read-only mixin, the message summary, links and HTML blocks."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from tasks_app.models import TaskFile

MASK = "••••••"
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


def _download_link(item: TaskFile) -> SafeString:
    url = reverse("admin:tasks_app_task_file_download", args=[item.task_id, item.pk])
    return format_html('<a href="{}">{}</a>', url, "download")


def _table(headers: tuple[str, ...], rows: list[tuple[Any, ...]], empty: str) -> SafeString:
    if not rows:
        return format_html("<em>{}</em>", empty)
    head = format_html_join("", "<th>{}</th>", ((header,) for header in headers))
    body = format_html_join(
        "", "<tr>{}</tr>", ((format_html_join("", "<td>{}</td>", ((cell,) for cell in row)),) for row in rows)
    )
    return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)
