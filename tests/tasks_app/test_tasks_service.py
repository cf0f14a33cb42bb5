from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest
from django.core.exceptions import ValidationError

from tasks_app.models import Task, TaskEvent, TaskFile, TaskStatus
from tasks_app.services.tasks import (
    IdempotencyConflict,
    InputFile,
    TaskSpec,
    input_file_from_payload,
    task_cancel,
    task_create,
    task_retry,
)
from tasks_app.transitions import ALLOWED_TRANSITIONS, InvalidTransition, TaskStateError, task_transition
from tests.factories import TaskFactory, WorkerGroupFactory

pytestmark = pytest.mark.django_db


def _nothing_written() -> None:
    assert Task.objects.count() == 0
    assert TaskEvent.objects.count() == 0
    assert TaskFile.objects.count() == 0


def test_create_writes_queued_task_inputs_and_first_event() -> None:
    spec = TaskSpec(tool="claude", prompt="summarise", input_files=[InputFile("docs/a.md", b"# A")],
                    output_files=["out/summary.md", "reports/*.md"], priority=7)

    task, created = task_create(spec=spec, tenant="acme", created_by="ann", source="cli")

    assert created is True
    assert (task.status, task.tenant, task.priority, task.attempt) == ("queued", "acme", 7, 0)
    assert task.output_files == ["out/summary.md", "reports/*.md"]
    (event,) = TaskEvent.objects.filter(task=task)
    assert (event.from_status, event.to_status, event.source, event.actor) == ("", "queued", "cli", "ann")
    (row,) = TaskFile.objects.filter(task=task)
    assert (row.direction, row.path, row.read_bytes(), row.size_bytes) == ("input", "docs/a.md", b"# A", 3)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"tool": "cursor"}, "tool"),
        ({"prompt": "   "}, "prompt"),
        ({"priority": 0}, "priority"),
        ({"priority": 10}, "priority"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"model": "--dangerously-skip-permissions"}, "model"),
        ({"output_files": ["../escape.txt"]}, "output_files[0]"),
        ({"output_files": ["/etc/passwd"]}, "output_files[0]"),
        ({"input_files": [InputFile("a\x00b", b"x")]}, "input_files[0].path"),
        ({"input_files": [InputFile("..\\x", b"x")]}, "input_files[0].path"),
        ({"input_files": [InputFile("in/*.txt", b"x")]}, "input_files[0].path"),
        ({"worker_group": "claude-nope"}, "worker_group"),
        ({"input_files": [InputFile(".claude/settings.json", b"{}")]}, "input_files[0].path"),
        ({"input_files": [InputFile("sub/.env", b"GEMINI_API_KEY=x")]}, "input_files[0].path"),
        ({"input_files": [InputFile(".gemini/settings.json", b"{}")]}, "input_files[0].path"),
        ({"scheduled_at": datetime(2026, 1, 1)}, "scheduled_at"),
    ],
)
def test_create_refuses_bad_input_naming_the_field_and_writes_nothing(change: dict, field: str) -> None:
    spec = TaskSpec(tool="claude", prompt="ok")
    for key, value in change.items():
        setattr(spec, key, value)

    with pytest.raises(ValidationError) as excinfo:
        task_create(spec=spec, source="api")

    assert field in excinfo.value.message_dict
    _nothing_written()


def test_create_refuses_group_of_another_tool() -> None:
    WorkerGroupFactory(tool="codex", account="main")

    with pytest.raises(ValidationError) as excinfo:
        task_create(spec=TaskSpec(tool="claude", prompt="x", worker_group="codex-main"), source="api")

    assert "runs codex, not claude" in excinfo.value.message_dict["worker_group"][0]
    _nothing_written()


def test_create_refuses_oversize_input(settings) -> None:
    settings.SCHEDULER_MAX_INPUT_BYTES = 10

    with pytest.raises(ValidationError) as excinfo:
        task_create(spec=TaskSpec(tool="claude", prompt="x", input_files=[InputFile("big.txt", b"x" * 11)]),
                    source="api")

    assert "limit per input file is 10" in excinfo.value.message_dict["input_files[0].content"][0]
    _nothing_written()


def test_large_input_goes_to_storage_and_reads_back(settings, tmp_path) -> None:
    settings.SCHEDULER_INLINE_FILE_BYTES = 4
    settings.MEDIA_ROOT = tmp_path

    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="x", input_files=[InputFile("d/big.bin", b"0123456789")]),
                          source="api")

    row = TaskFile.objects.get(task=task)
    assert row.content is None and row.file.name
    assert row.read_bytes() == b"0123456789"


def test_idempotent_repeat_returns_same_task_and_conflict_names_the_key() -> None:
    spec = TaskSpec(tool="claude", prompt="nightly", idempotency_key="k-1")
    first, created_first = task_create(spec=spec, source="api")
    again, created_again = task_create(spec=TaskSpec(tool="claude", prompt="nightly", idempotency_key="k-1"),
                                       source="api")

    assert (created_first, created_again, again.pk) == (True, False, first.pk)
    with pytest.raises(IdempotencyConflict, match="'k-1'"):
        task_create(spec=TaskSpec(tool="claude", prompt="different", idempotency_key="k-1"), source="api")
    assert Task.objects.count() == 1
    # Keys are per tenant.
    _, created_other_tenant = task_create(spec=spec, tenant="other", source="api")
    assert created_other_tenant is True


def test_input_payload_accepts_text_or_base64_and_refuses_bad_base64() -> None:
    assert input_file_from_payload({"path": "a.txt", "content": "hi"}, index=0) == InputFile("a.txt", b"hi")
    encoded = base64.b64encode(b"\x00\x01").decode()
    assert input_file_from_payload({"path": "b.bin", "content_base64": encoded}, index=1).content == b"\x00\x01"
    with pytest.raises(ValidationError) as excinfo:
        input_file_from_payload({"path": "c", "content_base64": "!!!"}, index=2)
    assert "input_files[2].content_base64" in excinfo.value.message_dict


@pytest.mark.parametrize(
    ("from_status", "to_status"),
    [(f, t) for f in ["queued", "leased", "running", "succeeded", "failed", "canceled"]
     for t in ["queued", "leased", "running", "succeeded", "failed", "canceled"]
     if t not in ALLOWED_TRANSITIONS[f]],
)
def test_invalid_transitions_are_refused_and_write_nothing(from_status: str, to_status: str) -> None:
    task = TaskFactory(status=from_status)

    with pytest.raises(InvalidTransition, match=f"cannot move a task from {from_status} to {to_status}"):
        task_transition(task_id=task.pk, to=to_status, source="system")

    task.refresh_from_db()
    assert task.status == from_status
    assert TaskEvent.objects.count() == 0


def test_transition_writes_event_and_updates_in_one_save() -> None:
    task = TaskFactory()

    task_transition(task_id=task.pk, to="leased", source="system", actor="dispatcher", reason="r",
                    data={"k": 1}, updates={"priority": 9})

    task.refresh_from_db()
    assert (task.status, task.priority) == ("leased", 9)
    event = TaskEvent.objects.get(task=task)
    assert (event.from_status, event.to_status, event.actor, event.data) == ("queued", "leased", "dispatcher", {"k": 1})


def test_cancel_queued_is_immediate_and_terminal_cancel_is_refused() -> None:
    task = TaskFactory()

    task_cancel(task_id=task.pk, source="cli", actor="bob")

    task.refresh_from_db()
    assert task.status == TaskStatus.CANCELED and task.finished_at is not None
    assert TaskEvent.objects.get(task=task).reason == "canceled by bob"
    with pytest.raises(TaskStateError, match="already canceled"):
        task_cancel(task_id=task.pk, source="cli")
    assert TaskEvent.objects.filter(task=task).count() == 1


def test_cancel_running_flags_it_for_the_worker_in_its_own_fields_and_an_event() -> None:
    task = TaskFactory(status="running", attempt=1, metadata={"team": "x"})

    task_cancel(task_id=task.pk, source="api", actor="ops")
    task_cancel(task_id=task.pk, source="cli", actor="late")  # a second request changes nothing

    task.refresh_from_db()
    assert task.status == "running" and task.cancel_requested_at is not None
    assert (task.cancel_source, task.cancel_actor, task.cancel_reason) == ("api", "ops", "canceled by ops")
    assert task.metadata == {"team": "x"}  # the client's field is not where provenance lives
    (event,) = TaskEvent.objects.filter(task=task)
    assert (event.from_status, event.to_status, event.source, event.actor, event.reason, event.data) == (
        "running", "running", "api", "ops", "cancel requested: canceled by ops",
        {"cancel_requested": True, "attempt": 1})


def test_retry_requeues_failed_with_fresh_budget_and_refuses_others() -> None:
    group = WorkerGroupFactory()
    task = TaskFactory(status="failed", attempt=3, max_attempts=3, worker_group=group, error_message="boom",
                       finished_at=datetime.now(UTC))

    task_retry(task_id=task.pk, source="cli", actor="ann")

    task.refresh_from_db()
    assert (task.status, task.attempts_left, task.error_message, task.worker_group) == ("queued", 3, "", None)
    running = TaskFactory(status="running")
    with pytest.raises(TaskStateError):
        task_retry(task_id=running.pk, source="cli")
