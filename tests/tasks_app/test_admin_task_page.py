"""The task page for the person watching a job (header, buttons, outcome, folded fields) and the admin-wide fixes
of issue 18: seconds in every timestamp, beat's raw tables hidden, the group's help text, "View site"."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule

from tasks_app.admin.task_page import duration_text, missing_outputs
from tasks_app.models import TaskEvent, TaskRun
from tests.factories import TaskFactory, WorkerGroupFactory

pytestmark = pytest.mark.django_db


def _page(client: Client, task: Any) -> str:
    response = client.get(reverse("admin:tasks_app_task_change", args=[task.pk]))
    assert response.status_code == 200
    return response.content.decode()


def _buttons(html: str) -> list[str]:
    return re.findall(r'id="task-(cancel|retry|requeue-now)-button"', html)


def _messages(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def _viewer(client: Client) -> Client:
    """Staff who may view tasks but not change them (no operate permission)."""
    user = get_user_model().objects.create_user("viewer", password="pw-123456789", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="view_task"))
    client.force_login(user)
    return client


def test_the_header_shows_status_tool_group_attempt_elapsed_and_cost_so_far(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main")
    started = timezone.now() - timedelta(minutes=3, seconds=5)
    task = TaskFactory(status="running", worker_group=group, attempt=4, attempt_base=2, max_attempts=3,
                       started_at=started, model="opus", prompt="Fix the   flaky\ntest in <b>app</b>")
    for attempt, cost in ((3, "0.0100"), (4, "0.0250")):
        TaskRun.objects.create(task=task, attempt=attempt, lease_token=uuid.uuid4(), worker_group=group,
                               status="failed" if attempt == 3 else "running", cost_usd=Decimal(cost),
                               cost_is_estimate=attempt == 4, input_tokens=12000, output_tokens=600,
                               started_at=started)

    html = _page(admin_client, task)

    assert 'class="task-status task-status-running">running</span>' in html
    assert "claude <small>(opus)</small>" in html
    assert f'<a href="/admin/tasks_app/workergroup/{group.pk}/change/">claude-main</a>' in html
    assert '<dd id="task-attempt">2 of 3 (4 in all)</dd>' in html
    assert re.search(r'<dd id="task-elapsed">3 min 0[5-9] s</dd>', html)
    assert '<span id="task-cost">$0.0350 (estimate)</span> <small id="task-tokens">24,000 in / 1,200 out tokens' in html
    assert "Fix the flaky test in &lt;b&gt;app&lt;/b&gt;" in html
    # Unfinished: the live panels, no outcome; Cancel is the only button that applies.
    assert 'id="timeline"' in html and 'id="live-log"' in html and 'id="task-outcome"' not in html
    assert _buttons(html) == ["cancel"]


def test_the_page_orders_header_panels_inlines_then_folded_fields(admin_client: Client) -> None:
    task = TaskFactory(status="running", attempt=1, started_at=timezone.now())
    TaskRun.objects.create(task=task, attempt=1, lease_token=uuid.uuid4())
    TaskEvent.objects.create(task=task, from_status="leased", to_status="running", source="worker")

    html = _page(admin_client, task)

    marks = ['id="task-header"', 'id="timeline-module"', 'id="live-log-module"', 'id="runs-group"',
             'id="files-group"', 'id="events-group"', ">Task</h2>", ">Outcome</h2>"]
    positions = [html.index(mark) for mark in marks]
    assert positions == sorted(positions)
    assert html.count('<fieldset class="module aligned collapse"') == 7  # every field folded


def test_a_finished_task_shows_its_final_message_and_error_instead_of_the_live_output(
        admin_client: Client) -> None:
    task = TaskFactory(status="failed", attempt=1, error_message="exit code 3: <boom>",
                       started_at=datetime(2026, 1, 15, 8, 0, 0, tzinfo=UTC),
                       finished_at=datetime(2026, 1, 15, 9, 2, 5, tzinfo=UTC),
                       result={"final_message": "Tried <i>twice</i>", "exit_code": 3})

    html = _page(admin_client, task)

    assert '<pre id="task-final-message">Tried &lt;i&gt;twice&lt;/i&gt;</pre>' in html
    assert "exit code 3: &lt;boom&gt;" in html
    assert '<dd id="task-elapsed">1 h 02 min 05 s</dd>' in html and '<span id="task-cost">-</span>' in html
    assert 'id="live-log"' not in html and 'id="timeline"' in html  # the timeline stays, folded
    assert _buttons(html) == ["retry"]


@pytest.mark.parametrize(("result", "shown"), [
    ({"output_errors": ["declared output 'hello.py' was not produced", "output 'big.bin' is over the limit"]},
     ["hello.py"]),
    ({"missing_outputs": ["report.md", "hello.py"],
      "output_errors": ["declared output 'hello.py' was not produced"]}, ["report.md", "hello.py"]),
])
def test_a_missing_output_is_a_warning_in_the_header(admin_client: Client, result: dict, shown: list[str]) -> None:
    task = TaskFactory(status="succeeded", output_files=["hello.py", "report.md"], result=result,
                       finished_at=timezone.now())

    html = _page(admin_client, task)

    warning = re.search(r'<div class="task-warning" id="task-missing-outputs".*?</div>', html, re.S)
    assert warning is not None and "not produced" in warning[0]
    assert re.findall(r"<code>(.*?)</code>", warning[0]) == shown


def test_no_missing_output_warning_when_every_output_was_produced(admin_client: Client) -> None:
    task = TaskFactory(status="succeeded", result={"outputs": ["hello.py"]}, finished_at=timezone.now())

    assert 'id="task-missing-outputs"' not in _page(admin_client, task)
    assert missing_outputs(None) == [] and missing_outputs({"output_errors": ["disk full"]}) == []


def test_buttons_follow_the_state(admin_client: Client) -> None:
    waiting = TaskFactory(status="queued", attempt=1, next_attempt_at=timezone.now() + timedelta(minutes=5))
    scheduled = TaskFactory(status="queued", scheduled_at=timezone.now() + timedelta(hours=1))
    due = TaskFactory(status="queued")
    canceling = TaskFactory(status="running", cancel_requested_at=timezone.now(), cancel_actor="ann")
    states = {"succeeded": [], "failed": ["retry"], "canceled": ["retry"], "leased": ["cancel"]}

    assert _buttons(_page(admin_client, waiting)) == ["cancel", "requeue-now"]
    assert "Waiting for its retry backoff: not before" in _page(admin_client, waiting)
    assert _buttons(_page(admin_client, scheduled)) == ["cancel", "requeue-now"]
    assert "Waiting for its scheduled time" in _page(admin_client, scheduled)
    assert _buttons(_page(admin_client, due)) == ["cancel"]
    assert _buttons(_page(admin_client, canceling)) == []
    assert "by ann: the worker stops the run" in _page(admin_client, canceling)
    for status, buttons in states.items():
        assert _buttons(_page(admin_client, TaskFactory(status=status))) == buttons, status


def test_staff_without_the_change_permission_see_no_buttons_and_cannot_post(client: Client) -> None:
    task = TaskFactory(status="queued", next_attempt_at=timezone.now() + timedelta(minutes=5))
    viewer = _viewer(client)

    html = _page(viewer, task)
    responses = [viewer.post(reverse(f"admin:tasks_app_task_{name}", args=[task.pk]))
                 for name in ("cancel", "retry", "requeue_now")]

    assert _buttons(html) == [] and 'id="task-header"' in html
    assert [response.status_code for response in responses] == [403, 403, 403]
    task.refresh_from_db()
    assert (task.status, task.events.count()) == ("queued", 0)


def test_cancel_button_cancels_a_queued_task_as_the_operator(admin_client: Client) -> None:
    task = TaskFactory(status="queued")
    url = reverse("admin:tasks_app_task_change", args=[task.pk])

    response = admin_client.post(reverse("admin:tasks_app_task_cancel", args=[task.pk]))

    assert (response.status_code, response["Location"]) == (302, url)
    task.refresh_from_db()
    assert task.status == "canceled"
    (event,) = task.events.all()
    assert (event.from_status, event.to_status, event.source, event.actor) == ("queued", "canceled", "admin", "admin")
    assert _messages(admin_client.get(url)) == [("success", "Canceled.")]


def test_cancel_button_on_a_running_task_asks_the_worker(admin_client: Client) -> None:
    task = TaskFactory(status="running", attempt=1)

    response = admin_client.post(reverse("admin:tasks_app_task_cancel", args=[task.pk]), follow=True)

    task.refresh_from_db()
    assert (task.status, task.cancel_actor, task.cancel_source) == ("running", "admin", "admin")
    assert _messages(response) == [("info", "Cancel requested: the worker stops the run within seconds.")]


def test_retry_button_requeues_a_failed_task_as_the_operator(admin_client: Client) -> None:
    task = TaskFactory(status="failed", attempt=3, max_attempts=3, error_message="boom")

    response = admin_client.post(reverse("admin:tasks_app_task_retry", args=[task.pk]), follow=True)

    task.refresh_from_db()
    assert (task.status, task.error_message, task.attempts_left) == ("queued", "", 3)
    (event,) = task.events.all()
    assert (event.from_status, event.to_status, event.source, event.actor) == ("failed", "queued", "admin", "admin")
    assert _messages(response) == [("success", "Re-queued with a fresh attempt budget.")]


def test_requeue_now_button_clears_the_backoff_as_the_operator(admin_client: Client) -> None:
    task = TaskFactory(status="queued", attempt=1, next_attempt_at=timezone.now() + timedelta(minutes=5))

    response = admin_client.post(reverse("admin:tasks_app_task_requeue_now", args=[task.pk]), follow=True)

    task.refresh_from_db()
    assert (task.status, task.next_attempt_at) == ("queued", None)
    (event,) = task.events.all()
    assert (event.source, event.actor, event.data["requeue_now"]) == ("admin", "admin", True)
    assert _messages(response) == [("success", "Re-queued now: it starts when a slot is free.")]


def test_a_button_that_no_longer_applies_warns_and_changes_nothing(admin_client: Client) -> None:
    task = TaskFactory(status="succeeded")

    responses = [admin_client.post(reverse(f"admin:tasks_app_task_{name}", args=[task.pk]), follow=True)
                 for name in ("cancel", "retry", "requeue_now")]

    assert [[level for level, _ in _messages(response)] for response in responses] == [["warning"]] * 3
    assert "already succeeded" in _messages(responses[0])[0][1]
    task.refresh_from_db()
    assert (task.status, task.events.count()) == ("succeeded", 0)


def test_buttons_take_post_only_with_a_csrf_token() -> None:
    task = TaskFactory(status="queued")
    user = get_user_model().objects.create_superuser("ops", "", "correct horse battery")
    strict = Client(enforce_csrf_checks=True)
    strict.force_login(user)
    url = reverse("admin:tasks_app_task_cancel", args=[task.pk])

    assert strict.get(url).status_code == 405
    assert strict.post(url).status_code == 403  # no token
    task.refresh_from_db()
    assert (task.status, task.events.count()) == ("queued", 0)


def test_timestamps_show_seconds_in_lists_and_in_the_events_inline(admin_client: Client) -> None:
    moment = datetime(2026, 1, 15, 8, 0, 5, tzinfo=UTC)
    task = TaskFactory(status="succeeded", created_at=moment, finished_at=moment + timedelta(seconds=42))
    event = TaskEvent.objects.create(task=task, from_status="running", to_status="succeeded", source="worker")
    TaskEvent.objects.filter(pk=event.pk).update(created_at=moment + timedelta(seconds=41))

    changelist = admin_client.get(reverse("admin:tasks_app_task_changelist")).content.decode()
    events = admin_client.get(reverse("admin:tasks_app_taskevent_changelist")).content.decode()
    page = _page(admin_client, task)

    assert "2026-01-15 08:00:05" in changelist and "2026-01-15 08:00:47" in changelist
    assert "2026-01-15 08:00:46" in events
    assert re.search(r'<td class="field-created_at">\s*<p>2026-01-15 08:00:46</p>', page)


def test_beats_raw_tables_are_not_in_the_admin_but_schedules_are(admin_client: Client) -> None:
    index = admin_client.get(reverse("admin:index")).content.decode()

    for model in (ClockedSchedule, CrontabSchedule, IntervalSchedule, PeriodicTask, SolarSchedule):
        assert not admin.site.is_registered(model)
    assert "Periodic tasks" not in index and "Crontabs" not in index and "django_celery_beat" not in index
    assert reverse("admin:tasks_app_schedule_changelist") in index


def test_the_group_page_shows_its_name_help_text_literally(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main")

    html = admin_client.get(reverse("admin:tasks_app_workergroup_change", args=[group.pk])).content.decode()

    assert "&lt;tool&gt;-&lt;account&gt;; the Celery queue name." in html


def test_view_site_leads_to_the_api_docs(admin_client: Client) -> None:
    html = admin_client.get(reverse("admin:index")).content.decode()

    assert f'<a href="{reverse("swagger-ui")}">View site</a>' in html
    assert admin_client.get(reverse("swagger-ui")).status_code == 200


def test_duration_text() -> None:
    assert [duration_text(s) for s in (None, 0, 42, 185, 3725)] == ["-", "0 s", "42 s", "3 min 05 s",
                                                                      "1 h 02 min 05 s"]
