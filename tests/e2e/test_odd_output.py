"""Odd output never fails a run (issue 14): a real worker on the real broker, the stand-in printing NUL bytes,
invalid UTF-8, half a megabyte of noise and brackets nested far too deep, and an output file whose name is
not UTF-8. Before, each of these ended every attempt `worker_lost`."""

from __future__ import annotations

import base64

import pytest

from tasks_app.models import TaskFile, TaskRun
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses
from tests.e2e.test_pipeline import fake, wait_terminal

pytestmark = pytest.mark.e2e


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_odd_output_is_recorded_once_and_says_what_was_sanitised(workers: WorkerProcesses) -> None:
    group_create(tool="claude", account="main")
    workers.start("control", concurrency=1)
    workers.start("claude-main", concurrency=1)
    raw = b"\x00\xff\xfe\xc3\x28 \n" + b"[" * 50_000 + b"\n" + b"{\n" * 1000
    prompt = fake("odd", stdout_raw_b64=_b64(raw), stdout_bytes=512 * 1024, stderr_raw_b64=_b64(b"\x00 err \xff\n"),
                  answer="ok \u0000 \ud800 done", write={"fine.txt": "fine"},
                  write_raw_names={_b64(b"bad\xff.txt"): "x"})

    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=prompt, output_files=["*.txt"], max_attempts=3),
                          source="api")
    (task,) = wait_terminal(task.pk)

    assert task.status == "succeeded", workers.logs()
    (run,) = TaskRun.objects.filter(task=task)
    assert task.result["final_message"] == "ok \ufffd \ufffd done"
    assert [note.split(":")[0] for note in run.notes] == ["stdout", "stderr", "final_message"]
    assert "\x00" not in run.stdout and run.stdout_truncated is False
    assert list(TaskFile.objects.filter(task=task, direction="output").values_list("path", flat=True)) == ["fine.txt"]
    assert task.result["output_errors"] == ["output b'bad\\xff.txt' skipped: its name is not UTF-8"]
