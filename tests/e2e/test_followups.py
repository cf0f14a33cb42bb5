"""Follow-up turns with real workers, sandboxed stand-ins and their session stores (issue 17): the next turn resumes
the parent's session on the parent's account, from the same directory path, with the parent's work in place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks_app.models import TaskFile, TaskRun
from tasks_app.services.followups import task_follow_up
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses
from tests.e2e.test_pipeline import fake, wait_terminal

pytestmark = pytest.mark.e2e
FAST = {"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"}
STATE_DIR_VARIABLE = {"claude": "CLAUDE_CONFIG_DIR", "codex": "CODEX_HOME", "gemini": "GEMINI_CLI_HOME"}


def _starts(log: Path) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, log.read_text().splitlines()) if line["event"] == "start"]


@pytest.mark.parametrize("tool", ["claude", "codex", "gemini"])
def test_a_follow_up_resumes_the_session_on_the_parents_account_with_its_work(workers: WorkerProcesses,
                                                                              tmp_path: Path, tool: str) -> None:
    log = tmp_path / "fake.jsonl"
    for account in ("main", "spare"):  # two accounts: the follow-up must land on the parent's
        group_create(tool=tool, account=account, max_concurrent=2,
                     env={STATE_DIR_VARIABLE[tool]: str(tmp_path / f"state-{account}"), "FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1, env=FAST)
    workers.start(f"{tool}-main,{tool}-spare", concurrency=2, env=FAST)
    parent, _ = task_create(spec=TaskSpec(tool=tool, prompt=fake("write hello", write={"hello.py": "print(1)\n"}),
                                          output_files=["*.py"]), source="api")
    (parent,) = wait_terminal(parent.pk, timeout=90)
    assert parent.status == "succeeded", workers.logs()
    parent_run = TaskRun.objects.get(task=parent)

    child = task_follow_up(task_id=parent.pk, prompt=fake("now test it", write={"test_hello.py": "assert 1\n"}),
                           created_by="ann", source="api")
    (child,) = wait_terminal(child.pk, timeout=90)

    assert child.status == "succeeded", workers.logs()
    child_run = TaskRun.objects.get(task=child)
    first, second = _starts(log)
    assert second["resumed"] == parent_run.session_id == first["session_id"] and second["history"] == 1
    assert child_run.resumed_session_id == parent_run.session_id == child_run.session_id
    assert child_run.worker_group_id == parent_run.worker_group_id
    # Both turns saw the same directory path (claude and gemini find sessions by it), not a box's real path.
    assert first["cwd"] == second["cwd"] == f"/workspace/{parent.pk}"
    outputs = {f.path: f.read_bytes() for f in TaskFile.objects.filter(run=child_run, direction="output")}
    assert outputs == {"hello.py": b"print(1)\n", "test_hello.py": b"assert 1\n"}  # the parent's work was there
