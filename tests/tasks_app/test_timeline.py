"""Issue 16, the domain side: storing a run's timeline (RunEvent) and its running usage, the timeline API and its
live feed in the stream hub, sessions, per-task limits (stall, budget) and their retry policy. (The executors'
side — parsing each CLI's stream, killing on idle or budget — is tested in tests/executors; the whole path with
real workers in tests/e2e.)"""

from __future__ import annotations

import json
import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from executors import EventKind, ExecutionResult, RunEvent
from tasks_app.cli import run as ctl
from tasks_app.logstream import follow
from tasks_app.models import RunEvent as RunEventRow
from tasks_app.models import Task, TaskEvent, TaskRun, TaskStatus
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.runs import run_events_append, run_finish, run_logs_prune, run_start
from tasks_app.services.tasks import TaskSpec, task_create
from tasks_app.streams import _poll, _View
from tasks_app.transitions import task_transition
from tests.factories import TaskFactory, WorkerGroupFactory
from tests.tasks_app.test_api import client_for
from workers.spec import execution_spec

pytestmark = pytest.mark.django_db


def _event(kind: EventKind, **data: object) -> RunEvent:
    return RunEvent(kind=kind, data=data, at=time.time())


def _started(**spec_kwargs: object) -> tuple[Task, object]:
    WorkerGroupFactory(account="main", max_concurrent=5)
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", **spec_kwargs), source="api", tenant="acme")
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    return task, ctx


def _running_run(tenant: str = "acme") -> tuple[Task, TaskRun]:
    task = TaskFactory(status=TaskStatus.RUNNING, tenant=tenant)
    return task, TaskRun.objects.create(task=task, attempt=1, lease_token=uuid.uuid4())


# --- storing the timeline ---------------------------------------------------------------------------------------


def test_events_are_stored_in_order_and_the_running_usage_lands_on_the_run() -> None:
    _, run = _running_run()
    after = run_events_append(run_id=run.pk, first_seq=0, events=[
        _event(EventKind.MESSAGE, text="Reading the repo"),
        _event(EventKind.TOOL_CALL, tool="Read", summary="src/app.py", id="t1"),
        _event(EventKind.TOOL_RESULT, tool="Read", id="t1", ok=True, size=812),
        _event(EventKind.USAGE, input_tokens=1200, output_tokens=80, cost_usd=0.0123, turns=1, estimate=False),
    ])
    after = run_events_append(run_id=run.pk, first_seq=after, events=[
        _event(EventKind.USAGE, input_tokens=2400, output_tokens=300, cost_usd=0.031, turns=2, estimate=True),
    ])

    assert after == 5
    assert list(RunEventRow.objects.filter(run=run).values_list("seq", "kind")) == [
        (0, "message"), (1, "tool_call"), (2, "tool_result"), (3, "usage"), (4, "usage")]
    run.refresh_from_db()
    assert (run.input_tokens, run.output_tokens, run.turns, float(run.cost_usd), run.cost_is_estimate) == (
        2400, 300, 2, 0.031, True)


def test_storage_is_bounded_per_run_but_the_end_is_always_kept(settings) -> None:
    settings.SCHEDULER_RUN_EVENTS_MAX = 3
    _, run = _running_run()
    chatter = [_event(EventKind.MESSAGE, text=f"step {i}") for i in range(10)]

    after = run_events_append(run_id=run.pk, first_seq=0, events=chatter)
    after = run_events_append(run_id=run.pk, first_seq=after, events=[
        _event(EventKind.MESSAGE, text="more"), _event(EventKind.RATE_LIMIT, message="limit", resets_at=None),
        _event(EventKind.RESULT, ok=True, text="done", session_id="s-1")])

    assert list(RunEventRow.objects.filter(run=run).values_list("kind", flat=True)) == [
        "message", "message", "message", "rate_limit", "result"]
    assert after == 5


def test_odd_bytes_in_event_data_are_stored_not_fatal() -> None:
    _, run = _running_run()
    run_events_append(run_id=run.pk, first_seq=0, events=[_event(EventKind.MESSAGE, text="nul \x00 and \ud800")])
    assert "\x00" not in RunEventRow.objects.get(run=run).data["text"]


def test_timeline_events_are_pruned_with_the_live_logs(settings) -> None:
    settings.SCHEDULER_LIVE_LOG_RETENTION_HOURS = 1
    _, old = _running_run()
    _, fresh = _running_run()
    for run in (old, fresh):
        run_events_append(run_id=run.pk, first_seq=0, events=[_event(EventKind.MESSAGE, text="x")])
    TaskRun.objects.filter(pk=old.pk).update(finished_at=timezone.now() - timedelta(hours=2))
    TaskRun.objects.filter(pk=fresh.pk).update(finished_at=timezone.now())

    run_logs_prune()

    assert list(RunEventRow.objects.values_list("run_id", flat=True)) == [fresh.pk]


# --- the API and the live feed ----------------------------------------------------------------------------------


def test_timeline_api_lists_the_latest_attempts_events_for_its_tenant_only() -> None:
    task, run = _running_run()
    run_events_append(run_id=run.pk, first_seq=0, events=[
        _event(EventKind.TOOL_CALL, tool="Bash", summary="pytest -q", id="1"),
        _event(EventKind.USAGE, input_tokens=10, output_tokens=2, cost_usd=0.5, turns=1, estimate=False)])
    alice, bob = client_for("alice", "acme"), client_for("bob", "globex")

    body = alice.get(f"/api/v1/tasks/{task.pk}/timeline/").json()
    later = alice.get(f"/api/v1/tasks/{task.pk}/timeline/?after=1").json()

    assert [(e["seq"], e["kind"], e["data"].get("tool")) for e in body["events"]] == [
        (0, "tool_call", "Bash"), (1, "usage", None)]
    assert (body["attempt"], body["finished"], body["cost_usd"], body["next_after"]) == (1, False, 0.5, 2)
    assert [e["seq"] for e in later["events"]] == [1]
    assert bob.get(f"/api/v1/tasks/{task.pk}/timeline/").status_code == 404
    assert alice.get(f"/api/v1/tasks/{task.pk}/timeline/?follow=1").status_code in (307, 421)  # not on WSGI


def test_the_hub_serves_timeline_followers_beside_log_followers_in_one_poll(django_assert_max_num_queries) -> None:
    task, run = _running_run()
    run_events_append(run_id=run.pk, first_seq=0, events=[
        _event(EventKind.MESSAGE, text="hi"), _event(EventKind.TOOL_CALL, tool="Edit", summary="a.py", id="1")])
    views = [_View(follower=object(), task_id=task.pk, run_id=None, after=0, feed="timeline"),  # type: ignore
             _View(follower=object(), task_id=task.pk, run_id=None, after=0)]  # type: ignore[arg-type]

    with django_assert_max_num_queries(3):  # state, chunks, events: whatever the number of followers
        updates, _ = _poll(views, batch=100)

    (_, timeline), (_, logs) = updates
    assert [e.kind for e in timeline.events] == ["attempt", "message", "tool_call"]
    assert json.loads(timeline.events[2].data) | {"at": None} == {
        "seq": 1, "kind": "tool_call", "at": None, "data": {"tool": "Edit", "summary": "a.py", "id": "1"}}
    assert [e.kind for e in logs.events] == ["attempt"]

    task_transition(task_id=task.pk, to=TaskStatus.SUCCEEDED, source="worker", actor="t")
    view = _View(follower=object(), task_id=task.pk, run_id=run.pk, after=2, feed="timeline")  # type: ignore
    [(_, update)], _ = _poll([view], batch=100)
    assert ([e.kind for e in update.events], update.finished) == (["end"], True)


def test_in_process_follow_reads_the_timeline_to_the_end() -> None:
    task, run = _running_run()
    run_events_append(run_id=run.pk, first_seq=0, events=[_event(EventKind.RESULT, ok=True, text="ok")])
    task_transition(task_id=task.pk, to=TaskStatus.SUCCEEDED, source="worker", actor="t")

    events = list(follow(task.pk, feed="timeline", poll_seconds=0.01, max_seconds=5))

    assert [e.kind for e in events] == ["attempt", "result", "end"]


# --- sessions, limits and their retry policy ------------------------------------------------------------------


def test_the_session_turns_and_estimate_are_recorded_with_the_result() -> None:
    task, ctx = _started()
    run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, worker="w", result=ExecutionResult(
        command=[], exit_code=0, final_message="ok", input_tokens=5, output_tokens=1, cost_usd=0.002,
        session_id="thread-0199", turns=3, cost_is_estimate=True))

    run = TaskRun.objects.get(pk=ctx.run_id)
    assert (run.session_id, run.turns, run.cost_is_estimate) == ("thread-0199", 3, True)
    task.refresh_from_db()
    assert task.result["session_id"] == "thread-0199" and task.result["cost_is_estimate"] is True


def test_limits_reach_the_executor_and_the_idle_timeout_defaults_to_the_setting(settings) -> None:
    settings.SCHEDULER_IDLE_TIMEOUT = 321
    settings.SCHEDULER_PRICES = {"gpt-5": [1.25, 10]}
    _, ctx = _started(max_cost_usd=0.5, max_turns=7)
    spec = execution_spec(ctx)
    assert (spec.max_cost_usd, spec.max_turns, spec.idle_timeout_seconds) == (0.5, 7, 321.0)
    assert spec.prices == {"gpt-5": (1.25, 10.0)}


def test_a_stall_is_retried_once_and_a_second_stall_fails() -> None:
    task, ctx = _started(idle_timeout_seconds=60, max_attempts=5)
    run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, worker="w",
               result=ExecutionResult(command=[], failure_kind="stalled", error_message="silent for 60s"))
    task.refresh_from_db()
    assert task.status == "queued"

    Task.objects.filter(pk=task.pk).update(next_attempt_at=None)
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="w")
    run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, worker="w",
               result=ExecutionResult(command=[], failure_kind="stalled", error_message="silent again"))

    task.refresh_from_db()
    assert task.status == "failed"
    assert "stalled twice" in TaskEvent.objects.filter(task=task).last().reason


def test_a_crossed_budget_is_never_retried() -> None:
    task, ctx = _started(max_cost_usd=1.0, max_attempts=5)
    run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, worker="w", result=ExecutionResult(
        command=[], failure_kind="budget_exceeded", error_message="spent $1.02 of max_cost_usd $1.00"))

    task.refresh_from_db()
    assert (task.status, task.error_message) == ("failed", "spent $1.02 of max_cost_usd $1.00")
    assert TaskRun.objects.get(pk=ctx.run_id).failure_kind == "budget_exceeded"


@pytest.mark.parametrize(("body", "field"), [
    ({"max_cost_usd": 0}, "max_cost_usd"), ({"max_cost_usd": -1}, "max_cost_usd"),
    ({"max_turns": 0}, "max_turns"), ({"idle_timeout_seconds": 1}, "idle_timeout_seconds"),
])
def test_bad_limits_are_a_400_naming_the_field(body: dict, field: str) -> None:
    response = client_for("alice").post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", **body}, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not Task.objects.exists()


def test_limits_through_the_api_and_schedulerctl(capsys) -> None:
    created = client_for("alice").post("/api/v1/tasks/", {
        "tool": "codex", "prompt": "p", "max_cost_usd": 2.5, "max_turns": 12, "idle_timeout_seconds": 600},
        format="json")
    assert created.status_code == 201, created.json()
    assert (created.json()["max_cost_usd"], created.json()["max_turns"], created.json()["idle_timeout_seconds"]) == (
        2.5, 12, 600)

    assert ctl(["enqueue", "gemini", "p", "--max-cost", "0.75", "--max-turns", "4", "--idle-timeout", "120",
                "--json"]) == 0
    task = Task.objects.get(tool="gemini")
    assert (float(task.max_cost_usd), task.max_turns, task.idle_timeout_seconds) == (0.75, 4, 120)
    assert json.loads(capsys.readouterr().out)["max_cost_usd"] == 0.75


def test_schedulerctl_follows_a_readable_timeline(capsys) -> None:
    task, run = _running_run(tenant="default")
    run_events_append(run_id=run.pk, first_seq=0, events=[
        _event(EventKind.MESSAGE, text="Looking at the failing test\nmore"),
        _event(EventKind.TOOL_CALL, tool="Bash", summary="pytest -q tests/test_app.py", id="1"),
        _event(EventKind.TOOL_RESULT, tool="Bash", id="1", ok=False, size=2048),
        _event(EventKind.USAGE, input_tokens=1500, output_tokens=220, cost_usd=0.0421, turns=2, estimate=True),
        _event(EventKind.RATE_LIMIT, message="usage limit", resets_at=1_800_000_000),
        _event(EventKind.RESULT, ok=True, text="Fixed the test")])
    task_transition(task_id=task.pk, to=TaskStatus.SUCCEEDED, source="worker", actor="t")

    assert ctl(["logs", str(task.pk), "--follow"]) == 0

    out = capsys.readouterr()
    lines = [line.split("  ", 1)[1].strip() for line in out.out.splitlines()]
    assert lines == [
        "message      Looking at the failing test",
        "tool_call    Bash  pytest -q tests/test_app.py",
        "tool_result  Bash error (2048 bytes)",
        "usage        turn 2  in 1500 / out 220 tokens  $0.0421 (estimate)",
        "rate_limit   usage limit (resets 2027-01-15 08:00 UTC)",
        "result       ok  Fixed the test",
    ]
    assert "--- attempt 1 ---" in out.err and "--- task succeeded ---" in out.err


def test_the_admin_task_page_has_a_live_timeline(admin_client) -> None:
    task, run = _running_run()
    run_events_append(run_id=run.pk, first_seq=0, events=[
        _event(EventKind.TOOL_CALL, tool="Write", summary="<script>alert(1)</script>.py", id="1")])

    page = admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()
    body = admin_client.get(f"/admin/tasks_app/task/{task.pk}/live-timeline/?after=0").json()

    assert 'id="timeline"' in page and f"/api/v1/tasks/{task.pk}/timeline/?follow=1" in page
    assert "<script>alert(1)</script>" not in page  # event text is only ever set with textContent
    assert (body["attempt"], body["terminal"]) == (1, False)
    assert [(e["seq"], e["kind"], e["data"]["summary"]) for e in body["events"]] == [
        (0, "tool_call", "<script>alert(1)</script>.py")]
    assert admin_client.get(f"/admin/tasks_app/task/{task.pk}/live-timeline/?after=1").json()["events"] == []
