"""Natural-language intake against a local fake OpenAI endpoint: the real `openai` client, real sockets."""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from django.utils import timezone

from tasks_app.cli import run
from tasks_app.models import Schedule, Task, TaskEvent
from tasks_app.services.intake import PROPOSAL_SCHEMA
from tests.factories import WorkerGroupFactory
from tests.fakes.fake_openai import FakeOpenAI
from tests.tasks_app.test_api import client_for

pytestmark = pytest.mark.django_db
SHANGHAI = ZoneInfo("Asia/Shanghai")
URL = "/api/v1/intake/"
SCHEDULE_SENTENCE = "every weekday at 5pm Shanghai time, have codex summarise new issues in the docs folder"


@pytest.fixture
def fake_openai(settings: Any) -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        settings.OPENAI_API_KEY = "sk-test-intake"
        settings.OPENAI_BASE_URL = fake.base_url
        settings.SCHEDULER_INTAKE_MODEL = "gpt-test"
        settings.SCHEDULER_INTAKE_TIMEOUT_SECONDS = 5.0
        settings.SCHEDULER_INTAKE_MAX_RETRIES = 2
        yield fake


def tomorrow_9am_shanghai() -> datetime:
    return (timezone.now().astimezone(SHANGHAI) + timedelta(days=1)).replace(hour=9, minute=0, second=0,
                                                                             microsecond=0)


def task_answer(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "task", "reason": "a one-off run of claude tomorrow morning", "name": "fix-flaky-tests",
        "tool": "claude", "model": "", "output_files": ["report.md"], "priority": 5,
        "prompt": "Background: the test suite is flaky.\nGoal: find why.\nSteps: run it 5 times.\n"
                  "Acceptance criteria: report.md names the flaky tests.",
        "run_at": tomorrow_9am_shanghai().isoformat(), "cron": None, "timezone": None, "interval_seconds": None,
        "keywords": ["tests", "flaky"], "worker_group": None, **changes,
    }


def schedule_answer(**changes: Any) -> dict[str, Any]:
    return {
        "kind": "schedule", "reason": "every weekday at 17:00 in Shanghai", "name": "docs-issue-summary",
        "tool": "codex", "model": "", "output_files": ["summary.md"], "priority": 5,
        "prompt": "Background: issues about docs/ arrive daily.\nGoal: summarise the new ones.\n"
                  "Steps: list issues since yesterday 17:00.\nAcceptance criteria: summary.md lists each one.",
        "run_at": None, "cron": "0 17 * * 1-5", "timezone": "Asia/Shanghai", "interval_seconds": None,
        "keywords": ["docs", "issues"], "worker_group": None, **changes,
    }


def none_answer() -> dict[str, Any]:
    return {"kind": "none", "reason": "a greeting: there is no job to run", "name": "", "tool": None, "model": "",
            "prompt": "", "output_files": [], "priority": 5, "run_at": None, "cron": None, "timezone": None,
            "interval_seconds": None, "keywords": [], "worker_group": None}


def nothing_written() -> tuple[int, int, int]:
    return Task.objects.count(), Schedule.objects.count(), TaskEvent.objects.count()


def test_a_one_off_request_is_proposed_with_the_time_resolved_and_nothing_is_created(fake_openai) -> None:
    client = client_for("sam", "acme")
    answer = task_answer()
    fake_openai.answer(answer)

    response = client.post(URL, {"text": "tomorrow at 9am run claude to find the flaky tests",
                                 "timezone": "Asia/Shanghai"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json() == {"proposal": {**answer, "cron": "", "timezone": ""}, "created": False, "task": None,
                               "schedule": None}
    assert nothing_written() == (0, 0, 0)
    [request] = fake_openai.requests
    body = request.body
    assert request.headers["authorization"] == "Bearer sk-test-intake"
    assert body["model"] == "gpt-test"
    assert body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "job_proposal", "strict": True, "schema": PROPOSAL_SCHEMA}}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert body["messages"][1]["content"] == "tomorrow at 9am run claude to find the flaky tests"
    system = body["messages"][0]["content"]
    stated = re.search(r"The current local time is (\S+) \((\w+)\) in the user's timezone Asia/Shanghai\.", system)
    assert stated is not None, system
    stated_now = datetime.fromisoformat(stated.group(1))
    assert stated_now.utcoffset() == timedelta(hours=8)
    assert abs((timezone.now() - stated_now).total_seconds()) < 60
    assert stated.group(2) == f"{stated_now:%A}"


def test_confirm_creates_the_task_with_source_intake_and_the_audit_in_its_first_event(fake_openai) -> None:
    client = client_for("sam", "acme")
    answer = task_answer()
    fake_openai.answer(answer)

    response = client.post(URL, {"text": "tomorrow at 9am run claude to find the flaky tests",
                                 "timezone": "Asia/Shanghai", "confirm": True}, format="json")

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["created"], body["schedule"]) == (True, None)
    task = Task.objects.get(pk=body["task"]["id"])
    assert (task.tenant, task.created_by, task.tool, task.output_files, task.priority) == (
        "acme", "sam", "claude", ["report.md"], 5)
    assert task.scheduled_at == tomorrow_9am_shanghai()
    assert task.prompt == answer["prompt"]
    assert task.metadata == {"intake": {"name": "fix-flaky-tests", "keywords": ["tests", "flaky"]}}
    [event] = task.events.all()
    assert (event.source, event.from_status, event.to_status, event.actor) == ("intake", "", "queued", "sam")
    assert event.data["proposal"] == {**answer, "cron": "", "timezone": ""}
    assert event.data["text"] == "tomorrow at 9am run claude to find the flaky tests"
    assert event.data["timezone"] == "Asia/Shanghai"
    assert event.data["intake_model"] == "gpt-test"
    raw = json.loads(event.data["raw_response"])
    assert raw["object"] == "chat.completion"
    assert json.loads(raw["choices"][0]["message"]["content"]) == answer


def test_a_proposal_sent_back_is_created_without_asking_the_model_again(fake_openai) -> None:
    client = client_for("sam", "acme")
    proposal = {**task_answer(), "cron": "", "timezone": ""}

    response = client.post(URL, {"proposal": proposal, "confirm": True, "timezone": "Asia/Shanghai"}, format="json")

    assert response.status_code == 201, response.json()
    task = Task.objects.get(pk=response.json()["task"]["id"])
    assert task.scheduled_at == tomorrow_9am_shanghai()
    assert fake_openai.requests == []
    event = task.events.get()
    assert (event.source, event.data["raw_response"], event.data["proposal"]["run_at"]) == (
        "intake", None, tomorrow_9am_shanghai().isoformat())


def test_a_weekday_schedule_in_shanghai_time_is_proposed_then_created(fake_openai) -> None:
    client = client_for("sam", "acme")
    answer = schedule_answer()
    fake_openai.answer(answer)
    fake_openai.answer(answer)

    proposed = client.post(URL, {"text": SCHEDULE_SENTENCE, "timezone": "Europe/Berlin"}, format="json")
    confirmed = client.post(URL, {"text": SCHEDULE_SENTENCE, "timezone": "Europe/Berlin", "confirm": True},
                            format="json")

    assert proposed.status_code == 200, proposed.json()
    assert proposed.json()["proposal"] == answer
    assert confirmed.status_code == 201, confirmed.json()
    created = confirmed.json()["schedule"]
    assert (created["cron"], created["timezone"], created["tool"], created["name"]) == (
        "0 17 * * 1-5", "Asia/Shanghai", "codex", "docs-issue-summary")
    assert created["next_run_at_local"].endswith("T17:00:00+08:00")
    schedule = Schedule.objects.get()
    assert (schedule.tenant, schedule.created_by, schedule.output_files) == ("acme", "sam", ["summary.md"])
    assert schedule.intake["proposal"] == answer
    assert schedule.intake["text"] == SCHEDULE_SENTENCE
    assert json.loads(json.loads(schedule.intake["raw_response"])["choices"][0]["message"]["content"]) == answer
    assert Task.objects.count() == 0


def test_a_greeting_proposes_nothing_and_confirming_it_creates_nothing(fake_openai) -> None:
    client = client_for("sam", "acme")
    fake_openai.answer(none_answer())

    response = client.post(URL, {"text": "hello there!", "confirm": True}, format="json")

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["proposal"]["kind"], body["proposal"]["reason"]) == ("none", "a greeting: there is no job to run")
    assert (body["created"], body["task"], body["schedule"]) == (False, None, None)
    assert nothing_written() == (0, 0, 0)


@pytest.mark.parametrize(
    ("queue", "message"),
    [
        (lambda fake: fake.answer_text("Sure! I will schedule that for you."),
         "the model's answer is not JSON (Expecting value: line 1 column 1 (char 0)): 'Sure! I will schedule"),
        (lambda fake: fake.answer({"kind": "task", "tool": "claude"}),
         "the model's answer lacks reason, name, model, prompt, output_files, priority, run_at, cron, timezone, "
         "interval_seconds, keywords, worker_group"),
        (lambda fake: fake.answer(task_answer(priority="high")),
         "the model's answer has priority 'high'; expected an integer"),
        (lambda fake: fake.answer(task_answer(run_at="tomorrow at nine")),
         "the model's answer has run_at 'tomorrow at nine'; expected an ISO 8601 time"),
        (lambda fake: fake.answer(["task"]), "the model's answer is not a JSON object but list"),
        (lambda fake: fake.reply(body="<html>Bad gateway</html>", content_type="text/html"),
         "the intake endpoint's answer is not a chat completion: '<html>Bad gateway</html>'"),
        (lambda fake: fake.answer_text('{"kind": "ta', finish_reason="length"),
         "the model's answer was cut off (finish_reason 'length')"),
    ],
)
def test_a_malformed_answer_is_a_502_naming_the_problem_and_creates_nothing(fake_openai, queue, message) -> None:
    client = client_for("sam", "acme")
    queue(fake_openai)

    response = client.post(URL, {"text": "run claude on the tests", "confirm": True}, format="json")

    assert response.status_code == 502
    assert response.json()["detail"].startswith(message)
    assert nothing_written() == (0, 0, 0)
    assert len(fake_openai.requests) == 1


def test_a_429_is_retried_after_retry_after_and_the_proposal_returned(fake_openai) -> None:
    client = client_for("sam", "acme")
    fake_openai.rate_limit(retry_after=0.5)
    fake_openai.answer(task_answer())

    response = client.post(URL, {"text": "tomorrow at 9am run claude to find the flaky tests",
                                 "timezone": "Asia/Shanghai"}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["proposal"]["kind"] == "task"
    first, second = fake_openai.requests
    assert second.received_at - first.received_at >= 0.45
    assert first.body == second.body


def test_429s_beyond_max_retries_are_a_502(fake_openai, settings) -> None:
    settings.SCHEDULER_INTAKE_MAX_RETRIES = 1
    client = client_for("sam", "acme")
    fake_openai.rate_limit(retry_after=0.1)
    fake_openai.rate_limit(retry_after=0.1)

    response = client.post(URL, {"text": "run claude on the tests", "confirm": True}, format="json")

    assert response.status_code == 502
    assert response.json() == {"detail": "the intake endpoint is rate limiting (HTTP 429) after 1 retries; "
                                         "try again later"}
    assert len(fake_openai.requests) == 2
    assert nothing_written() == (0, 0, 0)


@pytest.mark.parametrize(
    ("answer", "field", "message"),
    [
        (task_answer(output_files=["../../etc/passwd"]), "output_files[0]",
         "'../../etc/passwd' must not contain '..' segments"),
        (task_answer(output_files=["/etc/passwd"]), "output_files[0]",
         "'/etc/passwd' must be relative to the job's work dir, not absolute"),
        (task_answer(priority=15), "priority", "must be an integer from 1 to 9 (9 is most urgent)"),
        (task_answer(model="--dangerously-skip-permissions"), "model",
         "must be a model name of at most 120 characters without spaces, or empty"),
        (task_answer(tool="cursor"), "tool", "'cursor' is not a known tool; choose one of claude, codex, gemini"),
        (task_answer(worker_group="claude-main", tool="codex"), "worker_group",
         "group 'claude-main' runs claude, not codex; pin a group of the task's tool"),
        (task_answer(cron="0 9 * * *"), "timing",
         "a task runs once, now or at run_at; a repeating job is kind 'schedule'"),
        (schedule_answer(cron="every weekday"), "cron",
         "'every weekday' is not a 5-field cron expression (minute hour day month weekday)"),
        (schedule_answer(timezone="Shanghai"), "timezone",
         "'Shanghai' is not a known IANA timezone (e.g. Europe/Berlin, UTC)"),
        (schedule_answer(output_files=["../out.md"]), "output_files[0]", "'../out.md' must not contain '..' segments"),
    ],
)
def test_a_proposal_breaking_a_rule_is_refused_with_400_naming_the_field(fake_openai, answer, field,
                                                                          message) -> None:
    WorkerGroupFactory(account="main")
    client = client_for("sam", "acme")
    fake_openai.answer(answer)

    response = client.post(URL, {"text": "do it", "confirm": True}, format="json")

    assert response.status_code == 400, response.json()
    assert response.json()[field] == [message]
    assert nothing_written() == (0, 0, 0)


def test_a_proposal_sent_back_breaking_a_rule_is_refused_too(fake_openai) -> None:
    client = client_for("sam", "acme")
    proposal = {**task_answer(output_files=["../../etc/passwd"]), "cron": "", "timezone": ""}

    response = client.post(URL, {"proposal": proposal, "confirm": True}, format="json")

    assert response.status_code == 400
    assert response.json() == {"output_files[0]": ["'../../etc/passwd' must not contain '..' segments"]}
    assert nothing_written() == (0, 0, 0)


def test_without_a_key_intake_is_503_and_the_endpoint_is_not_called(fake_openai, settings) -> None:
    settings.OPENAI_API_KEY = ""
    client = client_for("sam", "acme")

    response = client.post(URL, {"text": "run claude on the tests", "confirm": True}, format="json")

    assert response.status_code == 503
    assert response.json() == {"detail": "intake is not configured: set OPENAI_API_KEY"}
    assert fake_openai.requests == []
    assert nothing_written() == (0, 0, 0)


def test_an_endpoint_hanging_past_the_timeout_is_a_502(fake_openai, settings) -> None:
    settings.SCHEDULER_INTAKE_TIMEOUT_SECONDS = 0.5
    settings.SCHEDULER_INTAKE_MAX_RETRIES = 0
    client = client_for("sam", "acme")
    fake_openai.hang(seconds=10)
    started = time.monotonic()

    response = client.post(URL, {"text": "run claude on the tests", "confirm": True}, format="json")

    assert time.monotonic() - started < 5
    assert response.status_code == 502
    assert response.json() == {"detail": "the intake endpoint did not answer within 0.5 s (attempts: 1)"}
    assert nothing_written() == (0, 0, 0)


def test_bad_text_or_timezone_is_400_before_the_model_is_asked(fake_openai) -> None:
    client = client_for("sam", "acme")

    empty = client.post(URL, {"text": "  "}, format="json")
    zone = client.post(URL, {"text": "run claude", "timezone": "Mars/Olympus"}, format="json")

    assert (empty.status_code, zone.status_code) == (400, 400)
    assert empty.json() == {"text": ["must say what to run (or send back a proposal to confirm)"]}
    assert zone.json() == {"timezone": ["'Mars/Olympus' is not a known IANA timezone (e.g. Europe/Berlin, UTC)"]}
    assert fake_openai.requests == []


# --- schedulerctl ask ----------------------------------------------------------------------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_ask_yes_json_creates_the_schedule(fake_openai, capsys) -> None:
    fake_openai.answer(schedule_answer())

    code = run(["ask", SCHEDULE_SENTENCE, "--timezone", "Asia/Shanghai", "--yes", "--json", "--tenant", "acme"])

    out = capsys.readouterr().out
    assert code == 0
    data = json.loads(out)
    assert (data["created"], data["task"], data["proposal"]["kind"]) == (True, None, "schedule")
    schedule = Schedule.objects.get(pk=data["schedule"]["id"])
    assert (schedule.cron, schedule.timezone, schedule.tenant) == ("0 17 * * 1-5", "Asia/Shanghai", "acme")
    assert schedule.intake["proposal"] == schedule_answer()


def test_ask_yes_json_creates_a_task(fake_openai, capsys) -> None:
    fake_openai.answer(task_answer())

    code = run(["ask", "tomorrow at 9am run claude to find the flaky tests", "--timezone", "Asia/Shanghai",
                "--yes", "--json"])

    data = json.loads(capsys.readouterr().out)
    assert code == 0
    task = Task.objects.get(pk=data["task"]["id"])
    assert (task.scheduled_at, task.events.get().source) == (tomorrow_9am_shanghai(), "intake")


def test_ask_without_yes_on_a_non_terminal_stdin_only_shows_the_proposal(fake_openai, capsys, monkeypatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    fake_openai.answer(schedule_answer())

    code = run(["ask", SCHEDULE_SENTENCE])

    captured = capsys.readouterr()
    assert code == 0
    assert "0 17 * * 1-5" in captured.out and "docs-issue-summary" in captured.out and "proposal" in captured.out
    assert captured.err == "not created: stdin is not a terminal; run again with --yes to create it\n"
    assert nothing_written() == (0, 0, 0)


@pytest.mark.parametrize(("reply", "created"), [("y\n", 1), ("\n", 0), ("no\n", 0)])
def test_ask_on_a_terminal_creates_only_on_yes(fake_openai, capsys, monkeypatch, reply, created) -> None:
    monkeypatch.setattr("sys.stdin", _Terminal(reply))
    fake_openai.answer(task_answer())

    code = run(["ask", "tomorrow at 9am run claude to find the flaky tests", "--timezone", "Asia/Shanghai"])

    captured = capsys.readouterr()
    assert code == 0
    assert captured.err == "Create this task? [y/N] "
    assert Task.objects.count() == created
    assert ("created task" in captured.out) is bool(created)


def test_ask_without_a_key_exits_1_with_one_line(settings, capsys) -> None:
    settings.OPENAI_API_KEY = ""

    code = run(["ask", "run claude on the tests", "--yes"])

    assert code == 1
    assert capsys.readouterr().err == "schedulerctl: error: intake is not configured: set OPENAI_API_KEY\n"
    assert nothing_written() == (0, 0, 0)


def test_ask_a_greeting_says_why_nothing_runs(fake_openai, capsys) -> None:
    fake_openai.answer(none_answer())

    code = run(["ask", "hello!", "--yes"])

    assert code == 0
    assert capsys.readouterr().out.endswith("nothing to run: a greeting: there is no job to run\n")
    assert nothing_written() == (0, 0, 0)
