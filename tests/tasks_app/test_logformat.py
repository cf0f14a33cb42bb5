from __future__ import annotations

import json
import logging

import pytest

from tasks_app.logformat import JsonFormatter, log_context


def _record(message: str) -> logging.LogRecord:
    return logging.LogRecord("workers.tasks", logging.INFO, __file__, 1, message, (), None)


def test_json_lines_carry_the_job_context_and_drop_it_afterwards() -> None:
    formatter = JsonFormatter()
    with log_context(task_id="t-1", run_id=7, group="claude-main", attempt=2):
        inside = json.loads(formatter.format(_record("attempt 2 started")))
    outside = json.loads(formatter.format(_record("idle")))

    assert (inside["msg"], inside["task_id"], inside["run_id"], inside["group"], inside["attempt"]) == (
        "attempt 2 started", "t-1", "7", "claude-main", "2")
    assert inside["level"] == "INFO" and inside["logger"] == "workers.tasks"
    assert "task_id" not in outside


@pytest.mark.django_db
def test_requests_get_an_id_echoed_back(client) -> None:
    generated = client.get("/healthz")["X-Request-ID"]
    assert len(generated) == 32
    assert client.get("/healthz", HTTP_X_REQUEST_ID="abc-123")["X-Request-ID"] == "abc-123"
    assert client.get("/healthz", HTTP_X_REQUEST_ID="bad id\n")["X-Request-ID"] != "bad id\n"
