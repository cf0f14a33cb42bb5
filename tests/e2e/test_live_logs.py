"""Live output while a job runs: stored as it comes, streamed over SSE and by `schedulerctl logs --follow`."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from tasks_app.models import Task, TaskLogChunk
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import ROOT, SiteProcesses, WorkerProcesses, wait_until
from tests.e2e.test_pipeline import fake

pytestmark = pytest.mark.e2e


def test_output_is_visible_while_running_over_sse_and_the_cli(workers: WorkerProcesses, site: SiteProcesses) -> None:
    group_create(tool="claude", account="main", credentials={"ANTHROPIC_API_KEY": "sk-live-secret-9"},
                 env={"FAKE_CLI_ECHO_ENV": "ANTHROPIC_API_KEY"})
    user_create(username="viewer", tenant="default")
    key = token_create(username="viewer")[1]
    workers.start("control", concurrency=1, env={"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"})
    workers.start("claude-main", concurrency=1, env={"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"})
    stream = site.start("stream")  # the Procfile's stream process serves ?follow=1
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("stream", stdout_bytes=500, sleep=4)),
                          source="api")

    # Seen while the task is still running: live, not after the fact.
    wait_until(lambda: TaskLogChunk.objects.filter(run__task=task, stream="stdout").exists(), timeout=30,
               message="live output to be stored")
    assert Task.objects.get(pk=task.pk).status == "running"
    follower = subprocess.Popen(
        [str(Path(sys.executable).parent / "schedulerctl"), "logs", str(task.pk), "--follow", "--raw"], cwd=ROOT,
        env=workers.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    request = urllib.request.Request(f"{stream}/api/v1/tasks/{task.pk}/logs/?follow=1",
                                     headers={"Authorization": f"Token {key}", "Accept": "text/event-stream"})
    events: list[tuple[str, str]] = []
    with urllib.request.urlopen(request, timeout=60) as response:
        assert response.headers["Content-Type"] == "text/event-stream"
        kind, data = "", []
        for raw in response:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
            elif line == "" and kind:
                events.append((kind, "\n".join(data)))
                kind, data = "", []
                if events[-1][0] == "end":
                    break
    out, err = follower.communicate(timeout=60)

    assert events[0] == ("attempt", "1") and events[-1] == ("end", "succeeded")
    streamed = "".join(d for k, d in events if k == "stdout")
    assert "[stdout filler]" in streamed and "debug: ANTHROPIC_API_KEY=[redacted]" in streamed
    assert "sk-live-secret-9" not in streamed + out + err
    assert follower.returncode == 0 and "[stdout filler]" in out and "--- task succeeded ---" in err
    snapshot = json.loads(urllib.request.urlopen(urllib.request.Request(
        f"{stream}/api/v1/tasks/{task.pk}/logs/", headers={"Authorization": f"Token {key}"}),
        timeout=30).read())
    assert snapshot["finished"] is True and '"type":"result"' in snapshot["stdout"].replace(" ", "")
