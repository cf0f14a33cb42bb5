"""The operators' admin. Thin by design: every write goes through a service (`task_cancel`, `task_retry`,
`group_create`, `group_update`, `repository_create`, …), so a status never changes without its TaskEvent and a
configuration change never without its AuditEvent. Tasks, runs, files, events and schedule firings are read-only
here; credentials are write-only and shown as key names with masked values. Schedules are edited through
`schedule_create` / `schedule_update` and deleted through `schedule_delete`, so their beat entry always follows."""

from __future__ import annotations

from django.conf import settings
from django.contrib import admin
from django.urls import URLPattern, path, reverse_lazy
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

# Importing each module runs its @admin.register: Django autodiscovers this package only.
from tasks_app.admin import accounts, groups, repositories, runs, schedules, tasks  # noqa: F401
from tasks_app.admin.dashboard import dashboard_view

_site_urls = admin.site.get_urls


def _site_urls_with_dashboard() -> list[URLPattern]:
    dashboard = path("dashboard/", admin.site.admin_view(dashboard_view), name="cockpit-dashboard")
    return [dashboard, *_site_urls()]


admin.site.get_urls = _site_urls_with_dashboard  # type: ignore[method-assign]
admin.site.index_template = "admin/cockpit/index.html"  # the default index plus a link to the dashboard
admin.site.site_header = admin.site.site_title = "CLI Scheduler"
# The app list beside every page costs a quarter of a 1366 px screen: the task list's columns and the task page's
# timeline need it more. The index and the breadcrumbs lead everywhere the sidebar did.
admin.site.enable_nav_sidebar = False
# "View site" leads to what the site serves besides the admin: the API's docs (nothing, when the API is off).
admin.site.site_url = reverse_lazy("swagger-ui") if settings.SCHEDULER_API_ENABLED else None

# django-celery-beat's own tables hold the beat entries our schedule services write (tasks_app.services.schedules)
# and keep in step with each Schedule: edited by hand there, they would no longer match it. Schedules are edited
# on their own page; django_celery_beat's app (registered before ours) keeps its models, not its admin pages.
for _model in (ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
