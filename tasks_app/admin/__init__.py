"""The operators' admin. Thin by design: every write goes through a service (`task_cancel`, `task_retry`,
`group_create`, `group_update`, `repository_create`, …), so a status never changes without its TaskEvent and a
configuration change never without its AuditEvent. Tasks, runs, files, events and schedule firings are read-only
here; credentials are write-only and shown as key names with masked values. Schedules are edited through
`schedule_create` / `schedule_update` and deleted through `schedule_delete`, so their beat entry always follows."""

from __future__ import annotations

from django.contrib import admin
from django.urls import URLPattern, path

# Importing each module runs its @admin.register: Django autodiscovers this package only.
from tasks_app.admin import accounts, groups, repositories, runs, schedules, tasks  # noqa: F401
from tasks_app.admin.dashboard import dashboard_view

_site_urls = admin.site.get_urls


def _site_urls_with_dashboard() -> list[URLPattern]:
    dashboard = path("dashboard/", admin.site.admin_view(dashboard_view), name="cockpit-dashboard")
    return [dashboard, *_site_urls()]


admin.site.get_urls = _site_urls_with_dashboard  # type: ignore[method-assign]
admin.site.index_template = "admin/cockpit/index.html"  # the default index plus a link to the dashboard
