from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse
from django.utils import timezone
from django_celery_beat.models import PeriodicTask

from tasks_app.models import Schedule, ScheduleFiring, Task
from tasks_app.services.schedules import ScheduleSpec, schedule_create, schedule_fire
from tasks_app.timing import next_cron
from tests.factories import WorkerGroupFactory

pytestmark = pytest.mark.django_db

BERLIN = ZoneInfo("Europe/Berlin")


def _schedules() -> tuple[Schedule, Schedule, Schedule]:
    """A cron, an interval and a one-off schedule, created through the service."""
    cron = schedule_create(spec=ScheduleSpec(name="weekday report", tool="claude", prompt="summarise <b>it</b>",
                                             cron="0 9 * * 1-5", timezone="Europe/Berlin"), tenant="acme")
    every = schedule_create(spec=ScheduleSpec(name="poller", tool="codex", prompt="poll", interval_seconds=300))
    once = schedule_create(spec=ScheduleSpec(name="one-off", tool="gemini", prompt="once",
                                             run_at=timezone.now() + timedelta(days=2), timezone="Asia/Shanghai"))
    return cron, every, once


def _form(**overrides: Any) -> dict[str, Any]:
    data = {"name": "nightly", "tenant": "acme", "enabled": "on", "cron": "0 9 * * 1-5",
            "timezone": "Europe/Berlin", "interval_seconds": "", "run_at_0": "", "run_at_1": "", "tool": "claude",
            "model": "", "prompt": "summarise the day", "output_files": "summary.md\nreports/*.txt",
            "priority": "5", "max_attempts": "3", "timeout_seconds": "", "worker_group": "",
            "overlap_policy": "skip"}
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def _change_form(schedule: Schedule, **overrides: Any) -> dict[str, Any]:
    run_at = schedule.run_at.astimezone(ZoneInfo(schedule.timezone)) if schedule.run_at else None
    data = _form(
        name=schedule.name, tenant=None, enabled="on" if schedule.enabled else None, cron=schedule.cron,
        timezone=schedule.timezone, interval_seconds=str(schedule.interval_seconds or ""),
        run_at_0=f"{run_at:%Y-%m-%d}" if run_at else "", run_at_1=f"{run_at:%H:%M:%S}" if run_at else "",
        tool=schedule.tool, prompt=schedule.prompt, output_files="\n".join(schedule.output_files),
        timeout_seconds=str(schedule.timeout_seconds or ""),
    )
    data.update(overrides)
    return {key: value for key, value in data.items() if value is not None}


def _action(client: Client, action: str, schedules: list[Schedule]) -> Any:
    return client.post(reverse("admin:tasks_app_schedule_changelist"),
                       {"action": action, "_selected_action": [str(s.pk) for s in schedules]}, follow=True)


def _messages(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def _errors(response: Any) -> dict[str, list[str]]:
    return response.context["adminform"].form.errors


def test_changelist_shows_each_timing_and_next_run_in_zone_and_utc(admin_client: Client) -> None:
    cron, _every, once = _schedules()
    schedule_fire(schedule_id=cron.pk, source="trigger", actor="ann")
    cron.refresh_from_db()

    response = admin_client.get(reverse("admin:tasks_app_schedule_changelist"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "cron 0 9 * * 1-5 (Europe/Berlin)" in html
    assert "every 300 s" in html
    assert f"once at {once.run_at.astimezone(ZoneInfo('Asia/Shanghai')):%Y-%m-%d %H:%M:%S} Asia/Shanghai" in html
    assert f"{cron.next_run_at.astimezone(BERLIN):%Y-%m-%d %H:%M:%S} Europe/Berlin" in html
    assert f"{cron.next_run_at.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC" in html
    spawned = {row.name: row.spawned for row in response.context["cl"].result_list}
    assert spawned == {"weekday report": 1, "poller": 0, "one-off": 0}


def test_changelist_filters_and_search_render(admin_client: Client) -> None:
    _schedules()
    url = reverse("admin:tasks_app_schedule_changelist")

    for query in ({"enabled__exact": "1"}, {"tool__exact": "codex"}, {"tenant": "acme"},
                  {"overlap_policy__exact": "skip"}, {"q": "poll"}, {"q": "weekday"}):
        response = admin_client.get(url, query)
        assert response.status_code == 200, query
    names = [row.name for row in admin_client.get(url, {"tool__exact": "codex"}).context["cl"].result_list]
    assert names == ["poller"]
    names = [row.name for row in admin_client.get(url, {"q": "summarise"}).context["cl"].result_list]
    assert names == ["weekday report"]


def test_change_pages_render_with_firings_and_spawned_tasks(admin_client: Client) -> None:
    schedules = _schedules()
    firing = schedule_fire(schedule_id=schedules[0].pk, source="trigger", actor="ann")

    for schedule in schedules:
        response = admin_client.get(reverse("admin:tasks_app_schedule_change", args=[schedule.pk]))
        assert response.status_code == 200, schedule.name

    html = admin_client.get(reverse("admin:tasks_app_schedule_change", args=[schedules[0].pk])).content.decode()
    assert reverse("admin:tasks_app_task_change", args=[firing.task_id]) in html
    assert "fired by trigger" in html
    assert "summarise &lt;b&gt;it&lt;/b&gt;" in html and "summarise <b>it</b>" not in html
    assert f"{reverse('admin:tasks_app_task_changelist')}?schedule__id__exact={schedules[0].pk}" in html
    # A one-off's time is edited as wall-clock time in its own zone.
    once = schedules[2]
    form = admin_client.get(reverse("admin:tasks_app_schedule_change", args=[once.pk])).context["adminform"].form
    wall_clock = once.run_at.astimezone(ZoneInfo("Asia/Shanghai"))
    assert f'value="{wall_clock:%H:%M:%S}"' in str(form["run_at"])


def test_adding_a_schedule_through_the_admin_creates_it_through_the_service(admin_client: Client) -> None:
    before = timezone.now()

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form())

    assert response.status_code == 302
    schedule = Schedule.objects.get()
    assert (schedule.name, schedule.tenant, schedule.created_by, schedule.cron, schedule.timezone) == (
        "nightly", "acme", "admin", "0 9 * * 1-5", "Europe/Berlin")
    assert schedule.output_files == ["summary.md", "reports/*.txt"]
    assert schedule.periodic_task_id is not None
    entry = PeriodicTask.objects.get(pk=schedule.periodic_task_id)
    assert (entry.task, entry.enabled, entry.crontab.hour, str(entry.crontab.timezone)) == (
        "workers.fire_schedule", True, "9", "Europe/Berlin")
    assert schedule.next_run_at is not None
    assert schedule.next_run_at == next_cron("0 9 * * 1-5", "Europe/Berlin", before)


def test_a_one_off_time_is_read_in_the_schedules_timezone(admin_client: Client) -> None:
    day = (timezone.now() + timedelta(days=3)).astimezone(BERLIN).date()

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form(
        cron="", run_at_0=f"{day:%Y-%m-%d}", run_at_1="09:30:00"))

    assert response.status_code == 302
    schedule = Schedule.objects.get()
    expected = datetime(day.year, day.month, day.day, 9, 30, tzinfo=BERLIN)
    assert schedule.run_at == expected and schedule.next_run_at == expected
    assert PeriodicTask.objects.get(pk=schedule.periodic_task_id).one_off is True


def test_a_pinned_worker_group_is_chosen_from_existing_groups(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main")

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form(worker_group=str(group.pk)))

    assert response.status_code == 302
    assert Schedule.objects.get().worker_group == group


def test_a_bad_cron_rerenders_the_form_with_the_error_on_cron_and_writes_nothing(admin_client: Client) -> None:
    entries = PeriodicTask.objects.count()

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form(cron="61 * * * *"))

    assert response.status_code == 200
    errors = _errors(response)
    assert errors == {"cron": ["'61 * * * *': minute '61' is out of range; minute takes 0-59"]}
    assert (Schedule.objects.count(), PeriodicTask.objects.count()) == (0, entries)


def test_a_past_run_at_rerenders_the_form_with_the_error_on_run_at_and_writes_nothing(
        admin_client: Client) -> None:
    entries = PeriodicTask.objects.count()

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form(
        cron="", run_at_0="2020-01-01", run_at_1="09:00:00"))

    assert response.status_code == 200
    errors = _errors(response)
    assert list(errors) == ["run_at"] and "in the past" in errors["run_at"][0]
    assert (Schedule.objects.count(), PeriodicTask.objects.count()) == (0, entries)


@pytest.mark.parametrize(
    ("overrides", "field", "fragment"),
    [
        ({"timezone": "Mars/Olympus"}, "timezone", "not a known IANA timezone"),
        ({"output_files": "ok.md\n../escape.md"}, "output_files", "line 2: '../escape.md' must not contain"),
        ({"interval_seconds": "600"}, "__all__", "give exactly one of"),
        ({"prompt": "   "}, "prompt", ""),
    ],
)
def test_service_errors_land_on_their_fields_and_write_nothing(admin_client: Client, overrides: dict[str, str],
                                                               field: str, fragment: str) -> None:
    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form(**overrides))

    assert response.status_code == 200
    errors = _errors(response)
    assert list(errors) == [field] and fragment in errors[field][0]
    assert Schedule.objects.count() == 0


def test_a_worker_group_of_another_tool_is_refused_on_its_field(admin_client: Client) -> None:
    group = WorkerGroupFactory(tool="codex", account="main")

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form(worker_group=str(group.pk)))

    assert response.status_code == 200
    assert list(_errors(response)) == ["worker_group"]
    assert Schedule.objects.count() == 0


def test_a_duplicate_name_in_the_tenant_is_refused_on_the_name_field(admin_client: Client) -> None:
    admin_client.post(reverse("admin:tasks_app_schedule_add"), _form())

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), _form())

    assert response.status_code == 200
    assert list(_errors(response)) == ["name"]
    assert Schedule.objects.count() == 1


def test_changing_the_prompt_keeps_the_timing_and_next_run(admin_client: Client) -> None:
    cron, _, _ = _schedules()
    url = reverse("admin:tasks_app_schedule_change", args=[cron.pk])

    response = admin_client.post(url, _change_form(cron, prompt="a new prompt", output_files="out.md"))

    assert response.status_code == 302
    changed = Schedule.objects.get(pk=cron.pk)
    assert (changed.prompt, changed.output_files, changed.cron, changed.tenant) == (
        "a new prompt", ["out.md"], "0 9 * * 1-5", "acme")
    assert changed.next_run_at == cron.next_run_at


def test_changing_cron_to_an_interval_moves_the_beat_entry(admin_client: Client) -> None:
    cron, _, _ = _schedules()
    url = reverse("admin:tasks_app_schedule_change", args=[cron.pk])

    response = admin_client.post(url, _change_form(cron, cron="", interval_seconds="600"))

    assert response.status_code == 302
    cron.refresh_from_db()
    entry = PeriodicTask.objects.get(pk=cron.periodic_task_id)
    assert (cron.cron, cron.interval_seconds, entry.crontab, entry.interval.every) == ("", 600, None, 600)


def test_an_interval_added_next_to_a_cron_is_refused_not_silently_replacing_it(admin_client: Client) -> None:
    cron, _, _ = _schedules()
    url = reverse("admin:tasks_app_schedule_change", args=[cron.pk])

    response = admin_client.post(url, _change_form(cron, interval_seconds="600"))

    assert response.status_code == 200
    assert list(_errors(response)) == ["__all__"]
    cron.refresh_from_db()
    assert (cron.cron, cron.interval_seconds) == ("0 9 * * 1-5", None)


def test_a_bad_cron_on_change_shows_the_error_and_changes_nothing(admin_client: Client) -> None:
    cron, _, _ = _schedules()
    url = reverse("admin:tasks_app_schedule_change", args=[cron.pk])

    response = admin_client.post(url, _change_form(cron, cron="0 25 * * *", prompt="changed"))

    assert response.status_code == 200
    assert list(_errors(response)) == ["cron"]
    cron.refresh_from_db()
    assert (cron.cron, cron.prompt) == ("0 9 * * 1-5", "summarise <b>it</b>")


def test_pause_and_resume_actions_go_through_the_service(admin_client: Client) -> None:
    cron, every, _ = _schedules()

    paused = _action(admin_client, "pause_schedules", [cron, every])

    assert sorted(Schedule.objects.filter(enabled=False).values_list("name", flat=True)) == ["poller",
                                                                                          "weekday report"]
    assert not PeriodicTask.objects.get(pk=cron.periodic_task_id).enabled
    ((level, message),) = _messages(paused)
    assert level == "success" and message.startswith("Paused: ")

    resumed = _action(admin_client, "resume_schedules", [cron])

    cron.refresh_from_db()
    assert cron.enabled is True and cron.next_run_at > timezone.now()
    assert PeriodicTask.objects.get(pk=cron.periodic_task_id).enabled
    assert _messages(resumed) == [("success", "Resumed: weekday report")]


def test_trigger_action_creates_one_task_and_a_trigger_firing(admin_client: Client) -> None:
    cron, _, _ = _schedules()

    response = _action(admin_client, "trigger_schedules", [cron])

    task = Task.objects.get()
    assert (task.schedule_id, task.prompt, task.tenant) == (cron.pk, "summarise <b>it</b>", "acme")
    firing = ScheduleFiring.objects.get()
    assert (firing.schedule_id, firing.source, firing.outcome, firing.task_id) == (
        cron.pk, "trigger", "created", task.pk)
    assert task.events.get().actor == "admin"
    assert _messages(response) == [("success", f"Triggered: weekday report (task {str(task.pk)[:8]})")]


def test_deleting_a_schedule_removes_its_beat_entry_and_keeps_its_tasks(admin_client: Client) -> None:
    cron, _, _ = _schedules()
    firing = schedule_fire(schedule_id=cron.pk, source="trigger", actor="ann")

    response = admin_client.post(reverse("admin:tasks_app_schedule_delete", args=[cron.pk]), {"post": "yes"})

    assert response.status_code == 302
    assert not Schedule.objects.filter(pk=cron.pk).exists()
    assert not PeriodicTask.objects.filter(pk=cron.periodic_task_id).exists()
    task = Task.objects.get(pk=firing.task_id)
    assert task.schedule_id is None


def test_bulk_delete_goes_through_the_service(admin_client: Client) -> None:
    schedules = _schedules()
    entries = [schedule.periodic_task_id for schedule in schedules]

    response = admin_client.post(reverse("admin:tasks_app_schedule_changelist"), {
        "action": "delete_selected", "_selected_action": [str(s.pk) for s in schedules], "post": "yes"})

    assert response.status_code == 302
    assert (Schedule.objects.count(), PeriodicTask.objects.filter(pk__in=entries).count()) == (0, 0)


def test_firings_are_read_only_and_tasks_filter_by_schedule(admin_client: Client) -> None:
    cron, every, _ = _schedules()
    firing = schedule_fire(schedule_id=cron.pk, source="trigger", actor="ann")
    schedule_fire(schedule_id=every.pk, source="trigger", actor="ann")

    assert admin_client.get(reverse("admin:tasks_app_schedulefiring_changelist")).status_code == 200
    assert admin_client.get(reverse("admin:tasks_app_schedulefiring_change", args=[firing.pk])).status_code == 200
    assert admin_client.get(reverse("admin:tasks_app_schedulefiring_add")).status_code == 403
    assert admin_client.get(reverse("admin:tasks_app_schedulefiring_delete", args=[firing.pk])).status_code == 403
    tasks = admin_client.get(reverse("admin:tasks_app_task_changelist"), {"schedule__id__exact": cron.pk})
    assert [task.pk for task in tasks.context["cl"].result_list] == [firing.task_id]
