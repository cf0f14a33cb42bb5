"""A client's path: create through the HTTP API, a real worker runs it, poll until done, download the output."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.groups import group_create
from tests.conftest import WorkerProcesses

pytestmark = pytest.mark.e2e


def _call(url: str, key: str, body: dict | None = None) -> tuple[int, bytes, dict]:
    request = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                     method="POST" if body is not None else "GET",
                                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return response.status, response.read(), dict(response.headers)


def test_create_poll_and_download_through_the_api(workers: WorkerProcesses, live_server) -> None:
    group_create(tool="codex", account="main", credentials={"CODEX_API_KEY": "cx-e2e"})
    user_create(username="client", tenant="acme")
    key = token_create(username="client")[1]
    workers.start("control", concurrency=1)
    workers.start("codex-main", concurrency=1)
    report = "# Findings\n\nNothing alarming.\n"

    status, body, _ = _call(f"{live_server.url}/api/v1/tasks/", key, {
        "tool": "codex", "prompt": f'audit the repo\nFAKE: {json.dumps({"write": {"reports/audit.md": report}})}',
        "output_files": ["reports/*.md"], "input_files": [{"path": "src/app.py", "content": "print('hi')\n"}],
    })
    assert status == 201
    task_id = json.loads(body)["id"]
    deadline = time.monotonic() + 60
    while True:
        detail = json.loads(_call(f"{live_server.url}/api/v1/tasks/{task_id}/", key)[1])
        if detail["status"] in ("succeeded", "failed", "canceled") or time.monotonic() > deadline:
            break
        time.sleep(0.2)

    assert detail["status"] == "succeeded", (detail, workers.logs())
    assert detail["latest_run"]["exit_code"] == 0 and detail["latest_run"]["output_tokens"] > 0
    (output,) = [f for f in detail["files"] if f["direction"] == "output"]
    assert output["path"] == "reports/audit.md"
    status, content, headers = _call(f"{live_server.url}/api/v1/tasks/{task_id}/files/{output['id']}/content/", key)
    assert (status, content) == (200, report.encode())
    assert headers["Content-Disposition"] == 'attachment; filename="audit.md"'
