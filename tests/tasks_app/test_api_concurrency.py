"""20 identical requests at once, against a live server with a real database: exactly one task."""

from __future__ import annotations

import json
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from tasks_app.models import Task, TaskEvent
from tasks_app.services.accounts import token_create, user_create


@pytest.mark.django_db(transaction=True)
def test_twenty_concurrent_identical_requests_create_one_task(live_server) -> None:
    user_create(username="burst", tenant="acme")
    key = token_create(username="burst")[1]
    body = json.dumps({"tool": "claude", "prompt": "once only", "idempotency_key": "burst-1"}).encode()
    start = threading.Barrier(20)

    def post() -> tuple[int, str]:
        request = urllib.request.Request(f"{live_server.url}/api/v1/tasks/", data=body, method="POST",
                                         headers={"Authorization": f"Token {key}", "Content-Type": "application/json"})
        start.wait(timeout=30)
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())["id"]

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: post(), range(20)))

    codes = sorted(code for code, _ in results)
    assert codes == [200] * 19 + [201]
    assert len({task_id for _, task_id in results}) == 1
    assert Task.objects.count() == 1
    assert TaskEvent.objects.count() == 1
