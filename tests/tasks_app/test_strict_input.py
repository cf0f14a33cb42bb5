"""Issue 15, strict input: unknown fields and wrong JSON types are a 400 naming them, schedules repeat at most
every SCHEDULER_MIN_SCHEDULE_INTERVAL seconds, cron mistakes name their field, path segments fit a file system,
and a CLI-chosen file name cannot forge the Content-Disposition header. Every producer (API, intake,
schedulerctl, admin, services) gets the same rules."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from urllib.parse import unquote

import pytest
from django.core.exceptions import ValidationError
from django.test import Client
from django.urls import reverse
from django_celery_beat.models import PeriodicTask
from rest_framework.test import APIClient

from tasks_app.cli import run
from tasks_app.models import Schedule, Task, TaskEvent, TaskFile, TaskRun, WorkerGroup
from tasks_app.services.schedules import ScheduleSpec, schedule_create, schedule_update
from tasks_app.services.tasks import InputFile, TaskSpec, stored_file, task_create
from tests.factories import WorkerGroupFactory
from tests.tasks_app.test_api import client_for

pytestmark = pytest.mark.django_db

TASK = {"tool": "claude", "prompt": "hello"}
SCHEDULE = {"name": "nightly", "tool": "codex", "prompt": "summarise", "cron": "0 9 * * 1-5",
            "timezone": "Europe/Berlin"}


@pytest.fixture
def alice() -> APIClient:
    return client_for("alice", "acme")


@pytest.fixture
def staff() -> APIClient:
    return client_for("root", "ops", staff=True)


def _nothing_written() -> None:
    assert (Task.objects.count(), TaskEvent.objects.count(), TaskFile.objects.count()) == (0, 0, 0)
    assert Schedule.objects.count() == 0
    assert not PeriodicTask.objects.filter(task="workers.fire_schedule").exists()


# -- unknown fields ---------------------------------------------------------------------------------
def test_a_misspelt_task_field_is_400_naming_it_with_a_suggestion(alice: APIClient) -> None:
    response = alice.post("/api/v1/tasks/", {**TASK, "priorty": 9}, format="json")

    assert response.status_code == 400
    assert response.json() == {"priorty": ["is not a field of this request; did you mean 'priority'?"]}
    _nothing_written()


def test_unknown_fields_are_reported_together_with_the_other_errors(alice: APIClient) -> None:
    response = alice.post("/api/v1/tasks/", {**TASK, "priority": 10, "colour": "red", "tags": ["x"]}, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"priority", "colour", "tags"}
    assert response.json()["colour"] == ["is not a field of this request"]
    _nothing_written()


def test_an_unknown_field_of_an_input_file_is_400_naming_it(alice: APIClient) -> None:
    body = {**TASK, "input_files": [{"path": "a.txt", "content": "x"}, {"path": "b.txt", "contents": "y"}]}

    response = alice.post("/api/v1/tasks/", body, format="json")

    assert response.status_code == 400
    assert response.json() == {"input_files": {"1": {"contents": [
        "is not a field of this request; did you mean 'content'?"]}}}
    _nothing_written()


def test_an_unknown_schedule_field_is_400_on_create_and_on_patch(alice: APIClient) -> None:
    created = alice.post("/api/v1/schedules/", {**SCHEDULE, "overlap": "allow"}, format="json")
    assert created.status_code == 400
    assert created.json() == {"overlap": ["is not a field of this request; did you mean 'overlap_policy'?"]}
    _nothing_written()

    schedule_id = alice.post("/api/v1/schedules/", SCHEDULE, format="json").json()["id"]
    patched = alice.patch(f"/api/v1/schedules/{schedule_id}/", {"promt": "new"}, format="json")

    assert patched.status_code == 400 and "promt" in patched.json()
    assert Schedule.objects.get(pk=schedule_id).prompt == "summarise"


def test_worker_group_patch_refuses_unknown_and_read_only_fields_and_changes_nothing(staff: APIClient) -> None:
    WorkerGroupFactory(account="main", max_concurrent=2)

    misspelt = staff.patch("/api/v1/worker-groups/claude-main/", {"max_concurent": 5}, format="json")
    read_only = staff.patch("/api/v1/worker-groups/claude-main/", {"tool": "codex", "health": "ok"}, format="json")
    created = staff.post("/api/v1/worker-groups/", {"tool": "codex", "account": "x", "credential": {}},
                         format="json")

    assert misspelt.status_code == 400
    assert misspelt.json() == {"max_concurent": ["is not a field of this request; did you mean 'max_concurrent'?"]}
    assert read_only.status_code == 400
    assert read_only.json() == {"tool": ["is read-only here"], "health": ["is read-only here"]}
    assert created.status_code == 400 and "credential" in created.json()
    group = WorkerGroup.objects.get()
    assert (group.tool, group.max_concurrent) == ("claude", 2)


def test_intake_refuses_unknown_fields_before_asking_the_model(alice: APIClient) -> None:
    top = alice.post("/api/v1/intake/", {"text": "run the tests", "confrim": True}, format="json")
    nested = alice.post("/api/v1/intake/", {"proposal": {"kind": "none", "colour": "red"}}, format="json")

    assert top.status_code == 400 and top.json() == {"confrim": ["is not a field of this request; did you mean "
                                                                 "'confirm'?"]}
    assert nested.status_code == 400 and "colour" in nested.json()["proposal"]
    _nothing_written()


# -- wrong JSON types -------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "field", "message"),
    [
        ({"priority": "9"}, "priority", "must be an integer, not str"),
        ({"priority": True}, "priority", "must be an integer, not bool"),
        ({"priority": 5.5}, "priority", "must be a whole number"),
        ({"max_attempts": "3"}, "max_attempts", "must be an integer, not str"),
        ({"timeout_seconds": "600"}, "timeout_seconds", "must be an integer, not str"),
        ({"tool": ["claude"]}, "tool", "must be a string, not list"),
        ({"max_cost_usd": "2.5"}, "max_cost_usd", "must be a number, not str"),
        ({"max_turns": "20"}, "max_turns", "must be an integer, not str"),
        ({"idle_timeout_seconds": False}, "idle_timeout_seconds", "must be an integer, not bool"),
    ],
)
def test_strings_for_integers_and_other_wrong_types_are_400_on_tasks(alice: APIClient, change: dict, field: str,
                                                                     message: str) -> None:
    response = alice.post("/api/v1/tasks/", {**TASK, **change}, format="json")

    assert response.status_code == 400
    assert response.json() == {field: [message]}
    _nothing_written()


@pytest.mark.parametrize(
    ("change", "field"),
    [({"interval_seconds": "3600", "cron": ""}, "interval_seconds"), ({"priority": "5"}, "priority"),
     ({"enabled": "yes"}, "enabled"), ({"enabled": 1}, "enabled"), ({"max_attempts": "2"}, "max_attempts")],
)
def test_wrong_types_are_400_on_schedules(alice: APIClient, change: dict, field: str) -> None:
    response = alice.post("/api/v1/schedules/", {**SCHEDULE, **change}, format="json")

    assert response.status_code == 400 and list(response.json()) == [field], response.json()
    _nothing_written()


@pytest.mark.parametrize("change", [{"max_concurrent": "5"}, {"enabled": "false"}, {"allow_dangerous_flags": 0},
                                    {"daily_budget_usd": "5.00"}])
def test_wrong_types_are_400_on_worker_groups(staff: APIClient, change: dict) -> None:
    WorkerGroupFactory(account="main", max_concurrent=2)

    response = staff.patch("/api/v1/worker-groups/claude-main/", change, format="json")

    assert response.status_code == 400 and list(response.json()) == list(change)
    group = WorkerGroup.objects.get()
    assert (group.max_concurrent, group.enabled, group.allow_dangerous_flags, group.daily_budget_usd) == (
        2, True, False, None)


def test_wrong_types_are_400_on_intake(alice: APIClient) -> None:
    confirm = alice.post("/api/v1/intake/", {"text": "run the tests", "confirm": "true"}, format="json")
    priority = alice.post("/api/v1/intake/", {"proposal": {"kind": "none", "priority": "5"}}, format="json")

    assert confirm.status_code == 400 and confirm.json() == {"confirm": ["must be true or false, not str"]}
    assert priority.status_code == 400 and priority.json() == {"proposal": {"priority": ["must be an integer, "
                                                                                         "not str"]}}


def test_an_integral_json_number_is_still_an_integer(alice: APIClient) -> None:
    response = alice.post("/api/v1/tasks/", {**TASK, "priority": 7.0}, format="json")

    assert response.status_code == 201 and response.json()["priority"] == 7


def test_a_lone_surrogate_in_metadata_is_400_not_500(alice: APIClient) -> None:
    body = '{"tool": "claude", "prompt": "hello", "metadata": {"note": "\\ud800"}}'

    response = alice.post("/api/v1/tasks/", body, content_type="application/json")

    assert response.status_code == 400
    assert response.json() == {"metadata": ["must contain only valid Unicode text (no lone surrogates such as "
                                            "\\ud800)"]}
    _nothing_written()


# -- schedules: minimum interval and cron -----------------------------------------------------------
def test_an_interval_below_the_minimum_is_400_naming_the_setting(alice: APIClient) -> None:
    response = alice.post("/api/v1/schedules/", {**SCHEDULE, "cron": "", "interval_seconds": 1}, format="json")

    assert response.status_code == 400
    assert response.json() == {"interval_seconds": [
        "must be at least 60 seconds (SCHEDULER_MIN_SCHEDULE_INTERVAL); got 1"]}
    _nothing_written()
    ok = alice.post("/api/v1/schedules/", {**SCHEDULE, "cron": "", "interval_seconds": 60}, format="json")
    assert ok.status_code == 201, ok.json()


def test_patching_an_interval_below_the_minimum_is_refused_and_changes_nothing(alice: APIClient) -> None:
    schedule_id = alice.post("/api/v1/schedules/", SCHEDULE, format="json").json()["id"]

    response = alice.patch(f"/api/v1/schedules/{schedule_id}/", {"interval_seconds": 59}, format="json")

    assert response.status_code == 400 and list(response.json()) == ["interval_seconds"]
    schedule = Schedule.objects.get(pk=schedule_id)
    assert (schedule.cron, schedule.interval_seconds) == ("0 9 * * 1-5", None)


@pytest.mark.parametrize(
    ("cron", "gap"), [("* * * * *", 60), ("0,1 9 * * *", 60), ("*/5,7 * * * *", 120), ("0 0,23 * * *", 3600)],
)
def test_a_cron_firing_more_often_than_the_minimum_is_refused(settings, cron: str, gap: int) -> None:
    settings.SCHEDULER_MIN_SCHEDULE_INTERVAL = 300 if gap < 300 else 7200

    with pytest.raises(ValidationError) as excinfo:
        schedule_create(spec=ScheduleSpec(**{**SCHEDULE, "cron": cron}))

    assert excinfo.value.message_dict == {"cron": [
        f"{cron!r} fires {gap} seconds apart at its closest; the minimum is "
        f"{settings.SCHEDULER_MIN_SCHEDULE_INTERVAL} seconds (SCHEDULER_MIN_SCHEDULE_INTERVAL)"]}
    assert Schedule.objects.count() == 0


def test_a_cron_at_the_minimum_is_accepted(settings) -> None:
    settings.SCHEDULER_MIN_SCHEDULE_INTERVAL = 300

    schedule = schedule_create(spec=ScheduleSpec(**{**SCHEDULE, "cron": "*/5 * * * *"}))

    assert schedule.next_run_at is not None


def test_every_minute_is_fine_at_the_default_minimum() -> None:
    schedule = schedule_create(spec=ScheduleSpec(**{**SCHEDULE, "cron": "* * * * *"}))

    assert schedule.next_run_at is not None


def test_an_impossible_cron_is_400_saying_it_never_fires(alice: APIClient) -> None:
    response = alice.post("/api/v1/schedules/", {**SCHEDULE, "cron": "0 0 30 2 *"}, format="json")

    assert response.status_code == 400
    assert response.json() == {"cron": [
        "'0 0 30 2 *' never fires: no date matches its day of month and month (like 30 February)"]}
    _nothing_written()


@pytest.mark.parametrize(
    ("cron", "message"),
    [
        ("61 * * * *", "'61 * * * *': minute '61' is out of range; minute takes 0-59"),
        ("0 25 * * *", "'0 25 * * *': hour '25' is out of range; hour takes 0-23"),
        ("0 0 32 * *", "'0 0 32 * *': day of month '32' is out of range; day of month takes 1-31"),
        ("0 0 0 * *", "'0 0 0 * *': day of month '0' is out of range; day of month takes 1-31"),
        ("0 0 1 13 *", "'0 0 1 13 *': month '13' is out of range; month takes 1-12 or jan-dec"),
        ("0 0 * * 8", "'0 0 * * 8': day of week '8' is out of range; day of week takes 0-6 or sun-sat (7 is sunday)"),
        ("0 0 L * *", "'0 0 L * *': day of month 'L' is not valid; day of month takes 1-31"),
        ("*/0 * * * *", "'*/0 * * * *': minute '*/0' is not valid; minute takes 0-59"),
    ],
)
def test_a_cron_field_out_of_range_is_named_with_its_range(alice: APIClient, cron: str, message: str) -> None:
    response = alice.post("/api/v1/schedules/", {**SCHEDULE, "cron": cron}, format="json")

    assert response.status_code == 400
    assert response.json() == {"cron": [message]}
    _nothing_written()


def test_schedulerctl_refuses_every_second_and_creates_nothing(capsys) -> None:
    assert run(["schedules", "add", "x", "codex", "p", "--every", "1"]) == 2

    assert capsys.readouterr().err.strip() == (
        "schedulerctl: error: interval_seconds: must be at least 60 seconds (SCHEDULER_MIN_SCHEDULE_INTERVAL); got 1")
    _nothing_written()


def test_the_admin_refuses_every_second_on_the_interval_field(admin_client: Client) -> None:
    form = {"name": "poller", "tenant": "acme", "enabled": "on", "cron": "", "timezone": "UTC",
            "interval_seconds": "1", "run_at_0": "", "run_at_1": "", "tool": "codex", "model": "",
            "prompt": "poll", "output_files": "", "priority": "5", "max_attempts": "3", "timeout_seconds": "",
            "worker_group": "", "overlap_policy": "skip"}

    response = admin_client.post(reverse("admin:tasks_app_schedule_add"), form)

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"interval_seconds": [
        "must be at least 60 seconds (SCHEDULER_MIN_SCHEDULE_INTERVAL); got 1"]}
    _nothing_written()


def test_an_existing_too_frequent_schedule_cannot_be_updated_without_fixing_its_timing(settings) -> None:
    settings.SCHEDULER_MIN_SCHEDULE_INTERVAL = 1
    schedule = schedule_create(spec=ScheduleSpec(**{**SCHEDULE, "cron": "", "interval_seconds": 1}))
    settings.SCHEDULER_MIN_SCHEDULE_INTERVAL = 60

    with pytest.raises(ValidationError) as excinfo:
        schedule_update(schedule_id=schedule.pk, changes={"prompt": "new"})
    assert list(excinfo.value.message_dict) == ["interval_seconds"]
    updated = schedule_update(schedule_id=schedule.pk, changes={"prompt": "new", "interval_seconds": 600})
    assert (updated.prompt, updated.interval_seconds) == ("new", 600)


# -- path segments ----------------------------------------------------------------------------------
LONG_SEGMENT = "é" * 128  # 128 characters, 256 bytes of UTF-8


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"input_files": [{"path": f"in/{LONG_SEGMENT}.txt", "content": "x"}]}, "input_files[0].path"),
        ({"output_files": ["ok.txt", f"{'x' * 256}/report.md"]}, "output_files[1]"),
        ({"output_files": [f"out/{'a' * 252}*.md"]}, "output_files[0]"),
    ],
)
def test_a_path_segment_over_255_bytes_is_refused_at_create(alice: APIClient, change: dict, field: str) -> None:
    response = alice.post("/api/v1/tasks/", {**TASK, **change}, format="json")

    assert response.status_code == 400
    assert field in response.json()
    assert "longer than 255 bytes" in response.json()[field][0]
    _nothing_written()


def test_a_segment_of_exactly_255_bytes_is_fine_and_schedules_get_the_rule_too() -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", input_files=[InputFile("é" * 127 + "x", b"1")],
                                        output_files=["y" * 255]), source="api")
    assert task.output_files == ["y" * 255]

    with pytest.raises(ValidationError) as excinfo:
        schedule_create(spec=ScheduleSpec(**{**SCHEDULE, "output_files": ["z" * 256]}))
    assert list(excinfo.value.message_dict) == ["output_files[0]"]


# -- Content-Disposition ----------------------------------------------------------------------------
HOSTILE_NAME = 'report"; filename="evil.exe\r\nSet-Cookie: session=stolen; ünïcode.txt'


def _output(task_id: str, name: str) -> TaskFile:
    task = Task.objects.get(pk=task_id)
    run = TaskRun.objects.create(task=task, attempt=1, lease_token=task.pk, status="succeeded")
    item = stored_file(task=task, run=run, direction="output", path=f"out/{name}", data=b"payload")
    item.save()
    return item


def _filename(disposition: str) -> str:
    match = re.fullmatch(r"attachment; filename\*=(?i:utf-8)''([^\s;\"]+)", disposition)
    assert match is not None, disposition
    return unquote(match.group(1))


@pytest.mark.parametrize("inline_bytes", [256 * 1024, 1], ids=["inline", "storage"])
def test_a_hostile_output_file_name_cannot_forge_the_download_headers(alice: APIClient, settings, tmp_path,
                                                                      inline_bytes: int) -> None:
    settings.SCHEDULER_INLINE_FILE_BYTES, settings.MEDIA_ROOT = inline_bytes, tmp_path
    task_id = alice.post("/api/v1/tasks/", TASK, format="json").json()["id"]
    item = _output(task_id, HOSTILE_NAME)

    response = alice.get(f"/api/v1/tasks/{task_id}/files/{item.pk}/content/")

    assert response.status_code == 200
    disposition = response["Content-Disposition"]
    assert not {"\r", "\n", '"'} & set(disposition)
    assert _filename(disposition) == HOSTILE_NAME
    assert "Set-Cookie" not in response.headers and not response.cookies
    body = b"".join(response.streaming_content) if response.streaming else response.content
    assert body == b"payload"


def test_the_admin_download_escapes_a_hostile_name_too(admin_client: Client) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")
    item = _output(str(task.pk), HOSTILE_NAME)

    response = admin_client.get(reverse("admin:tasks_app_task_file_download", args=[task.pk, item.pk]))

    assert response.status_code == 200
    assert _filename(response["Content-Disposition"]) == HOSTILE_NAME


# -- timestamps -------------------------------------------------------------------------------------
ODD_OFFSET = "2030-01-01T09:00:00-20:48"  # valid ISO 8601 and for Python; PostgreSQL stops at ±15:59


def test_a_created_after_filter_is_read_in_utc_and_an_impossible_one_is_400(alice: APIClient) -> None:
    alice.post("/api/v1/tasks/", TASK, format="json")

    odd = alice.get(f"/api/v1/tasks/?created_after={ODD_OFFSET.replace('-20', '%2D20')}")
    before_year_one = alice.get("/api/v1/tasks/?created_before=0001-01-01T00:00:00%2B05:00")

    assert odd.status_code == 200 and odd.json()["results"] == []
    assert before_year_one.status_code == 400
    assert before_year_one.json() == {"created_before": ["is out of range once read in UTC"]}


def test_timestamps_with_any_offset_are_stored_in_utc_from_every_producer(capsys) -> None:
    expected = datetime(2030, 1, 2, 5, 48, tzinfo=UTC)

    assert run(["enqueue", "claude", "hello", "--at", ODD_OFFSET, "--json"]) == 0
    schedule = schedule_create(spec=ScheduleSpec(**{**SCHEDULE, "cron": "", "run_at": datetime.fromisoformat(
        ODD_OFFSET)}))

    assert Task.objects.get().scheduled_at == expected
    assert schedule.run_at == expected and schedule.next_run_at == expected


# -- JSON bodies only -------------------------------------------------------------------------------
def test_a_form_body_is_415_and_the_schema_forbids_unknown_fields(alice: APIClient) -> None:
    response = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "hello", "priority": "5"})  # multipart

    assert response.status_code == 415
    _nothing_written()
    schema = alice.get("/api/schema/?format=json").json()
    body = schema["paths"]["/api/v1/tasks/"]["post"]["requestBody"]["content"]
    assert list(body) == ["application/json"]
    assert schema["components"]["schemas"]["TaskCreateRequest"]["additionalProperties"] is False
    assert schema["components"]["schemas"]["InputFileRequest"]["additionalProperties"] is False
