"""Celery task events are on, so Flower shows our workers and tasks out of the box."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import ROOT, WorkerProcesses, wait_until
from tests.e2e.test_pipeline import wait_terminal

pytestmark = pytest.mark.e2e


def _get(url: str) -> object | None:
    errors = (urllib.error.URLError, ConnectionError, json.JSONDecodeError, TimeoutError)
    with contextlib.suppress(*errors), urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())
    return None


def test_flower_sees_workers_and_tasks(workers: WorkerProcesses, tmp_path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "workers", "flower", f"--port={port}", "--address=127.0.0.1"],
        cwd=ROOT, env={**workers.env(), "FLOWER_UNAUTHENTICATED_API": "true"},
        stdout=(tmp_path / "flower.out").open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        group_create(tool="claude", account="main")
        workers.start("control", concurrency=1, name="ctl")
        workers.start("claude-main", concurrency=1, name="claude-main-box")
        task, _ = task_create(spec=TaskSpec(tool="claude", prompt="seen by flower"), source="api")
        wait_terminal(task.pk)

        def seen() -> dict | None:
            tasks = _get(f"http://127.0.0.1:{port}/api/tasks")
            done = isinstance(tasks, dict) and any(
                t.get("name") == "workers.execute_run" and t.get("state") == "SUCCESS" for t in tasks.values())
            return tasks if done else None

        tasks = wait_until(seen, timeout=60, interval=0.5, message="flower to show the execute_run task")
        workers_seen = _get(f"http://127.0.0.1:{port}/api/workers?refresh=1") or {}
        assert any(name.startswith("claude-main-box@") for name in workers_seen), workers_seen
        assert any(str(task.pk) in json.dumps(t.get("args", "")) for t in tasks.values())
    finally:
        os.killpg(flower.pid, signal.SIGTERM)
        flower.wait(timeout=15)
