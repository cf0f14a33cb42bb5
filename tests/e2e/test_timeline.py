"""Agent-aware runs with real workers and the stand-ins speaking each CLI's stream (issue 16): the timeline while
the run is in flight (and over ?follow=1 from the stream process), the session, stalls and budgets."""

from __future__ import annotations

import json
import urllib.request

import pytest

from tasks_app.models import RunEvent, Task, TaskRun
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import SiteProcesses, WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake, wait_terminal

pytestmark = pytest.mark.e2e
FAST = {"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"}


def _kinds(task: Task) -> list[str]:
    return list(RunEvent.objects.filter(run__task=task).order_by("run__attempt", "seq").values_list("kind", flat=True))


def _collapsed(kinds: list[str]) -> list[str]:
    """The order of first appearances: message, tool_call, tool_result, usage, result."""
    seen: list[str] = []
    for kind in kinds:
        if kind not in seen:
            seen.append(kind)
    return seen


@pytest.mark.parametrize("tool", ["claude", "codex", "gemini"])
def test_each_tools_stream_becomes_a_live_timeline_with_a_session(workers: WorkerProcesses, tool: str) -> None:
    group_create(tool=tool, account="main")
    workers.start("control", concurrency=1, env=FAST)
    workers.start(f"{tool}-main", concurrency=1, env=FAST)
    prompt = fake("fix it", turns=3, turn_delay=0.6, write={"out/fix.txt": "fixed"}, answer="all fixed")
    # codex names no model of its own in its stream: the price table needs the task's (gemini reports its own).
    model = "gpt-5" if tool == "codex" else ""
    task, _ = task_create(spec=TaskSpec(tool=tool, prompt=prompt, model=model, output_files=["out/fix.txt"]),
                          source="api")

    # Seen while the task still runs: a tool call stored before the end.
    wait_until(lambda: "tool_call" in _kinds(task), timeout=60, message="a tool call in the timeline")
    assert Task.objects.get(pk=task.pk).status == "running"
    (done,) = wait_terminal(task.pk, timeout=90)

    assert done.status == "succeeded", workers.logs()
    kinds = _kinds(done)
    assert {"message", "tool_call", "tool_result", "usage", "result"} <= set(kinds), kinds
    assert kinds[-1] == "result" and kinds.index("tool_call") < kinds.index("tool_result")
    run = TaskRun.objects.get(task=done)
    assert run.session_id and run.input_tokens and run.turns and run.turns >= 3
    assert (run.cost_usd is not None) and run.cost_is_estimate == (tool != "claude")


def test_the_timeline_streams_over_sse_from_the_stream_process(workers: WorkerProcesses, site: SiteProcesses) -> None:
    group_create(tool="codex", account="main")
    user_create(username="viewer", tenant="default")
    key = token_create(username="viewer")[1]
    workers.start("control", concurrency=1, env=FAST)
    workers.start("codex-main", concurrency=1, env=FAST)
    stream = site.start("stream")
    task, _ = task_create(spec=TaskSpec(tool="codex", prompt=fake("go", turns=3, turn_delay=0.5)), source="api")
    wait_until(lambda: Task.objects.get(pk=task.pk).status == "running", timeout=60, message="the run to start")

    request = urllib.request.Request(f"{stream}/api/v1/tasks/{task.pk}/timeline/?follow=1",
                                     headers={"Authorization": f"Token {key}", "Accept": "text/event-stream"})
    events: list[tuple[str, str]] = []
    running_when_first_tool_call = None
    with urllib.request.urlopen(request, timeout=60) as response:
        kind, data = "", []
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and kind:
                events.append((kind, "\n".join(data)))
                if kind == "tool_call" and running_when_first_tool_call is None:
                    running_when_first_tool_call = Task.objects.get(pk=task.pk).status == "running"
                kind, data = "", []
                if events[-1][0] == "end":
                    break

    assert running_when_first_tool_call is True  # live, not after the fact
    assert events[0] == ("attempt", "1") and events[-1] == ("end", "succeeded")
    timeline = [(k, json.loads(d)) for k, d in events if k not in ("attempt", "end")]
    assert [k for k, _ in timeline][-1] == "result"
    assert all(payload["kind"] == k for k, payload in timeline)
    assert [payload["seq"] for _, payload in timeline] == list(range(len(timeline)))


def test_a_silent_cli_is_killed_as_stalled_and_retried_once(workers: WorkerProcesses) -> None:
    group_create(tool="gemini", account="main")
    workers.start("control", concurrency=1, env={**FAST, "SCHEDULER_RETRY_BASE_SECONDS": "0.2",
                                                 "SCHEDULER_RETRY_MAX_SECONDS": "0.4"})
    workers.start("gemini-main", concurrency=1, env={**FAST, "SCHEDULER_RETRY_BASE_SECONDS": "0.2",
                                                     "SCHEDULER_RETRY_MAX_SECONDS": "0.4"})
    task, _ = task_create(spec=TaskSpec(tool="gemini", prompt=fake("wait", scenario="hang"), idle_timeout_seconds=10,
                                        timeout_seconds=600, max_attempts=5), source="api")

    (done,) = wait_terminal(task.pk, timeout=120)

    assert done.status == "failed", workers.logs()
    runs = list(TaskRun.objects.filter(task=done).order_by("attempt").values_list("failure_kind", flat=True))
    assert runs == ["stalled", "stalled"]  # retried once, then given up; never the 600 s wall clock
    assert "no event and no output" in done.error_message or "idle" in done.error_message


def test_budgets_stop_codex_and_gemini_by_streamed_usage_and_claude_gets_the_flag(workers: WorkerProcesses) -> None:
    for tool in ("claude", "codex", "gemini"):
        group_create(tool=tool, account="main")
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main,codex-main,gemini-main", concurrency=3, env=FAST)
    heavy = fake("spend", turns=6, turn_tokens=[400_000, 40_000], turn_delay=0.2)
    codex, _ = task_create(spec=TaskSpec(tool="codex", prompt=heavy, model="gpt-5", max_cost_usd=0.5,
                                         max_attempts=3), source="api")
    gemini, _ = task_create(spec=TaskSpec(tool="gemini", prompt=heavy, max_turns=2, max_attempts=3), source="api")
    claude, _ = task_create(spec=TaskSpec(tool="claude", prompt=heavy, max_cost_usd=1.0, max_attempts=3),
                            source="api")

    done = {t.tool: t for t in wait_terminal(codex.pk, gemini.pk, claude.pk, timeout=120)}

    for tool in ("codex", "gemini", "claude"):
        run = TaskRun.objects.get(task=done[tool])  # one attempt each: never retried
        assert (done[tool].status, run.failure_kind) == ("failed", "budget_exceeded"), (tool, run.error_message)
    assert "--max-budget-usd" in TaskRun.objects.get(task=done["claude"]).command
    assert "max_turns" in TaskRun.objects.get(task=done["gemini"]).error_message
