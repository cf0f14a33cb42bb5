"""Task writes: create, cancel, retry, re-queue now (status moves go through `tasks_app.transitions`)."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import mimetypes
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.base import ContentFile
from django.db import IntegrityError, transaction
from django.utils import timezone

from tasks_app import validation
from tasks_app.models import TERMINAL_STATUSES, Repository, Task, TaskFile, TaskStatus, Tool, WorkerGroup
from tasks_app.services import chains
from tasks_app.services.enqueue import enqueue_dispatch
from tasks_app.transitions import TaskStateError, task_event_add, task_lock, task_transition

# Files that the CLIs read as their own configuration from the work dir: a job's inputs must not set hooks,
# MCP servers, env or keys for the CLI that runs with the account's credentials.
CLI_CONFIG_NAMES = frozenset({".claude", ".codex", ".gemini", ".mcp.json", "CLAUDE.local.md"})
# git's own directory in a checkout: hooks and config there run when the scheduler fetches and pushes with the
# repository's credentials, outside the sandbox. No task writes or collects anything under it.
GIT_DIR = ".git"


def _under_git_dir(path: str) -> bool:
    # Compared without case: on a case-insensitive file system (a developer's macOS box) .GIT is .git.
    return any(segment.lower() == GIT_DIR for segment in path.split("/"))


class IdempotencyConflict(Exception):
    """The idempotency key was used before with a different request body."""

    def __init__(self, key: str, task_id: Any) -> None:
        self.key, self.task_id = key, task_id
        super().__init__(
            f"idempotency_key {key!r} was already used for task {task_id} with a different request body"
        )


@dataclass(frozen=True)
class InputFile:
    path: str
    content: bytes


@dataclass
class TaskSpec:
    """What a producer asks for, validated by `task_spec_clean` before anything is written."""

    tool: str
    prompt: str
    model: str = ""
    input_files: list[InputFile] = field(default_factory=list)
    output_files: list[str] = field(default_factory=list)
    priority: int = 5
    scheduled_at: datetime | None = None
    max_attempts: int = 3
    timeout_seconds: int | None = None
    idempotency_key: str | None = None
    worker_group: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    # Agent-aware limits (issue 16): None means none (idle: SCHEDULER_IDLE_TIMEOUT).
    max_cost_usd: float | None = None
    max_turns: int | None = None
    idle_timeout_seconds: int | None = None
    # Chains (SPEC §8): ids of tasks that must all succeed first; their outputs arrive under `<id>/`.
    depends_on: list[str] = field(default_factory=list)
    # A run on a repository (SPEC §8): its name in the task's tenant, and a branch, tag or commit ("" its default_ref).
    repository: str | None = None
    ref: str = ""
    # A declared output that was not delivered fails the run (missing_output); False: the task succeeds, marked.
    require_outputs: bool = True

    def fingerprint(self) -> str:
        body = {
            "tool": self.tool,
            "prompt": self.prompt,
            "model": self.model,
            "input_files": [[f.path, hashlib.sha256(f.content).hexdigest()] for f in self.input_files],
            "output_files": self.output_files,
            "priority": self.priority,
            "scheduled_at": self.scheduled_at.isoformat() if self.scheduled_at else None,
            "max_attempts": self.max_attempts,
            "timeout_seconds": self.timeout_seconds,
            "worker_group": self.worker_group,
            "metadata": self.metadata,
            **{name: value for name, value in (("max_cost_usd", self.max_cost_usd), ("max_turns", self.max_turns),
                                               ("idle_timeout_seconds", self.idle_timeout_seconds))
               if value is not None},
            # Only when set: the fingerprints of tasks stored before chains existed stay what they were.
            **({"depends_on": sorted(self.depends_on)} if self.depends_on else {}),
            # Only when set: the fingerprints of tasks without a repository stay what they were.
            **({"repository": self.repository, "ref": self.ref} if self.repository is not None else {}),
            # Only when off: the fingerprints of tasks stored before the option existed stay what they were.
            **({"require_outputs": False} if self.require_outputs is False else {}),
        }
        return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def input_file_from_payload(item: object, *, index: int) -> InputFile:
    """`{"path", "content"}` (text) or `{"path", "content_base64"}`, as the API and intake send them."""
    field_name = f"input_files[{index}]"
    if not isinstance(item, dict):
        raise validation.fail(field_name, "must be an object with 'path' and 'content' or 'content_base64'")
    path = item.get("path")
    if ("content" in item) == ("content_base64" in item):
        raise validation.fail(field_name, "needs exactly one of 'content' or 'content_base64'")
    if "content" in item:
        if not isinstance(item["content"], str):
            raise validation.fail(f"{field_name}.content", "must be a string")
        content = item["content"].encode()
    else:
        raw = item["content_base64"]
        try:
            content = base64.b64decode(raw, validate=True) if isinstance(raw, str) else None
        except (binascii.Error, ValueError):
            content = None
        if content is None:
            raise validation.fail(f"{field_name}.content_base64", "must be valid base64")
    return InputFile(path=path, content=content)  # type: ignore[arg-type]


def task_spec_clean(spec: TaskSpec, *, tenant: str = "default") -> tuple[TaskSpec, WorkerGroup | None]:
    """Check every rule (the repository is looked up in `tenant`); return the normalised spec and the pinned group.
    Writes nothing."""
    errors: dict[str, list[str]] = {}

    def check(fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(messages)
            return None

    if spec.tool not in Tool.values:
        errors["tool"] = [f"{spec.tool!r} is not a known tool; choose one of {', '.join(Tool.values)}"]
    if not isinstance(spec.prompt, str) or not spec.prompt.strip():
        errors["prompt"] = ["must be a non-empty string"]
    elif len(spec.prompt) > settings.SCHEDULER_MAX_PROMPT_CHARS:
        errors["prompt"] = [f"must be at most {settings.SCHEDULER_MAX_PROMPT_CHARS} characters"]
    elif "\x00" in spec.prompt:
        errors["prompt"] = ["must not contain NUL bytes"]
    if not isinstance(spec.model, str) or len(spec.model) > 120 or not _plain_token(spec.model):
        errors["model"] = ["must be a model name of at most 120 characters without spaces, or empty"]
    if not isinstance(spec.priority, int) or isinstance(spec.priority, bool) or not 1 <= spec.priority <= 9:
        errors["priority"] = ["must be an integer from 1 to 9 (9 is most urgent)"]
    if not isinstance(spec.max_attempts, int) or isinstance(spec.max_attempts, bool) or not (
        1 <= spec.max_attempts <= 20
    ):
        errors["max_attempts"] = ["must be an integer from 1 to 20"]
    timeout = settings.SCHEDULER_DEFAULT_TIMEOUT if spec.timeout_seconds is None else spec.timeout_seconds
    if (
        not isinstance(timeout, int)
        or isinstance(timeout, bool)
        or not (1 <= timeout <= settings.SCHEDULER_MAX_TIMEOUT)
    ):
        errors["timeout_seconds"] = [f"must be an integer from 1 to {settings.SCHEDULER_MAX_TIMEOUT}"]
    scheduled_at = None
    if spec.scheduled_at is not None:
        scheduled_at = check(lambda: validation.utc_timestamp(spec.scheduled_at, field="scheduled_at"))
    if spec.idempotency_key is not None and (
        not isinstance(spec.idempotency_key, str) or not 1 <= len(spec.idempotency_key) <= 200
    ):
        errors["idempotency_key"] = ["must be a string of 1 to 200 characters"]
    check(lambda: validation.json_object(spec.metadata, field="metadata"))
    if not isinstance(spec.require_outputs, bool):
        errors["require_outputs"] = ["must be true or false"]
    if spec.max_cost_usd is not None and (
        not isinstance(spec.max_cost_usd, int | float) or isinstance(spec.max_cost_usd, bool)
        or not 0 < spec.max_cost_usd <= 100_000
    ):
        errors["max_cost_usd"] = ["must be a number of US dollars above 0 and at most 100000"]
    if spec.max_turns is not None and (
        not isinstance(spec.max_turns, int) or isinstance(spec.max_turns, bool) or not 1 <= spec.max_turns <= 10_000
    ):
        errors["max_turns"] = ["must be an integer from 1 to 10000"]
    if spec.idle_timeout_seconds is not None and (
        not isinstance(spec.idle_timeout_seconds, int) or isinstance(spec.idle_timeout_seconds, bool)
        or not 10 <= spec.idle_timeout_seconds <= settings.SCHEDULER_MAX_TIMEOUT
    ):
        errors["idle_timeout_seconds"] = [
            f"must be an integer from 10 to {settings.SCHEDULER_MAX_TIMEOUT} (seconds with no event and no output)"]

    outputs: list[str] = []
    if not isinstance(spec.output_files, list):
        errors["output_files"] = ["must be a list of relative paths or glob patterns"]
    else:
        for i, pattern in enumerate(spec.output_files):
            outputs.append(check(lambda p=pattern, i=i: validation.relative_path(
                p, field=f"output_files[{i}]", allow_glob=True)))
            if outputs[-1] is not None and _under_git_dir(outputs[-1]):
                errors.setdefault(f"output_files[{i}]", []).append(
                    f"{outputs[-1]!r} is under .git/: outputs are the work dir's files, never git's own")

    inputs: list[InputFile] = []
    total = 0
    seen: set[str] = set()
    for i, item in enumerate(spec.input_files):
        path = check(lambda item=item, i=i: validation.relative_path(item.path, field=f"input_files[{i}].path"))
        if path is None:
            continue
        if path.split("/")[0] in CLI_CONFIG_NAMES or path.rsplit("/", 1)[-1].startswith(".env"):
            errors.setdefault(f"input_files[{i}].path", []).append(
                f"{path!r} would configure the CLI itself (hooks, settings, keys); inputs may not be under "
                f"{', '.join(sorted(CLI_CONFIG_NAMES))} or be .env files"
            )
        if _under_git_dir(path):
            errors.setdefault(f"input_files[{i}].path", []).append(
                f"{path!r} would write under .git/ (git's hooks and config, which would run when the scheduler "
                "fetches or pushes); no input may have a .git segment")
        if path in seen:
            errors.setdefault(f"input_files[{i}].path", []).append(f"{path!r} is given twice")
        seen.add(path)
        size = len(item.content)
        total += size
        if size > settings.SCHEDULER_MAX_INPUT_BYTES:
            errors.setdefault(f"input_files[{i}].content", []).append(
                f"{path!r} is {size} bytes; the limit per input file is {settings.SCHEDULER_MAX_INPUT_BYTES}"
            )
        inputs.append(InputFile(path=path, content=item.content))
    if total > settings.SCHEDULER_MAX_TOTAL_BYTES:
        errors.setdefault("input_files", []).append(
            f"inputs total {total} bytes; the limit is {settings.SCHEDULER_MAX_TOTAL_BYTES}"
        )

    depends_on: list[str] = check(lambda: chains.depends_on_clean(spec.depends_on)) or []
    for i, item in enumerate(inputs):
        if item.path.split("/")[0] in depends_on:
            errors.setdefault(f"input_files[{i}].path", []).append(
                f"{item.path!r} is where the outputs of task {item.path.split('/')[0]} arrive; choose another path")

    group = None
    if spec.worker_group is not None:
        group = WorkerGroup.objects.filter(name=spec.worker_group).first()
        if group is None:
            errors["worker_group"] = [f"no worker group named {spec.worker_group!r}"]
        elif group.tool != spec.tool:
            errors["worker_group"] = [
                f"group {group.name!r} runs {group.tool}, not {spec.tool}; pin a group of the task's tool"
            ]
    errors.update(_repository_errors(spec, tenant=tenant))
    if errors:
        raise ValidationError(errors)
    cleaned = TaskSpec(
        tool=spec.tool,
        prompt=spec.prompt,
        model=spec.model,
        input_files=inputs,
        output_files=outputs,
        priority=spec.priority,
        scheduled_at=scheduled_at,
        max_attempts=spec.max_attempts,
        timeout_seconds=timeout,
        idempotency_key=spec.idempotency_key,
        worker_group=spec.worker_group,
        metadata=spec.metadata,
        max_cost_usd=float(spec.max_cost_usd) if spec.max_cost_usd is not None else None,
        max_turns=spec.max_turns,
        idle_timeout_seconds=spec.idle_timeout_seconds,
        depends_on=depends_on,
        repository=spec.repository,
        ref=spec.ref,
        require_outputs=spec.require_outputs,
    )
    return cleaned, group


def _plain_token(value: str) -> bool:
    return not value or (not any(c.isspace() for c in value) and not value.startswith("-"))


def _repository(*, tenant: str, name: str) -> Repository | None:
    try:
        validation.repository_name(name, field="repository")  # nothing PostgreSQL would refuse (NUL) reaches it
    except ValidationError:
        return None
    return Repository.objects.filter(tenant=tenant, name=name).first()


def _repository_errors(spec: TaskSpec, *, tenant: str) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if spec.repository is not None and (not isinstance(spec.repository, str)
                                        or _repository(tenant=tenant, name=spec.repository) is None):
        errors["repository"] = [f"no repository named {spec.repository!r} in tenant {tenant!r}"]
    if not isinstance(spec.ref, str):
        errors["ref"] = ["must be a string: a branch, tag or commit (empty: the repository's default_ref)"]
    elif spec.ref and spec.repository is None:
        errors["ref"] = ["names a commit of the task's repository: give repository as well, or no ref"]
    elif spec.ref:
        try:
            validation.git_ref(spec.ref, field="ref")
        except ValidationError as exc:
            errors.update(exc.message_dict)
    return errors


def task_create(
    *, spec: TaskSpec, tenant: str = "default", created_by: str = "", source: str, reason: str = "",
    schedule: Any = None, event_data: dict[str, Any] | None = None,
) -> tuple[Task, bool]:
    """Validate and create a queued task with its input files and first event (carrying ``event_data``).

    Returns ``(task, created)``; an idempotent repeat returns the existing task and ``False``.
    """
    spec, group = task_spec_clean(spec, tenant=tenant)
    fingerprint = spec.fingerprint()
    if spec.idempotency_key:
        _refuse_own_match(tenant, spec.idempotency_key, spec.depends_on)
        existing = _idempotent_match(tenant, spec.idempotency_key, fingerprint)
        if existing is not None:
            return existing, False
    if spec.depends_on:
        # Checked before any file is stored; again under the parents' locks in the transaction below.
        chains.parents_pending(parent_ids=spec.depends_on, tenant=tenant)
    # Large inputs go to storage before the transaction: no file I/O while holding the write lock.
    file_rows = [
        stored_file(task=None, run=None, direction=TaskFile.Direction.INPUT, path=f.path, data=f.content)
        for f in spec.input_files
    ]
    try:
        with transaction.atomic():
            pending = chains.parents_pending(parent_ids=spec.depends_on, tenant=tenant, lock=True) if (
                spec.depends_on) else 0
            repository = None
            if spec.repository is not None:
                repository = _repository(tenant=tenant, name=spec.repository)
                if repository is None:  # deleted since task_spec_clean looked
                    raise ValidationError({"repository": [f"no repository named {spec.repository!r} in tenant "
                                                          f"{tenant!r}"]})
            task = Task.objects.create(
                tenant=tenant,
                created_by=created_by,
                tool=spec.tool,
                model=spec.model,
                prompt=spec.prompt,
                output_files=spec.output_files,
                require_outputs=spec.require_outputs,
                priority=spec.priority,
                scheduled_at=spec.scheduled_at,
                worker_group=group,
                worker_group_pinned=group is not None,
                max_attempts=spec.max_attempts,
                timeout_seconds=spec.timeout_seconds,
                idle_timeout_seconds=spec.idle_timeout_seconds,
                max_cost_usd=spec.max_cost_usd,
                max_turns=spec.max_turns,
                idempotency_key=spec.idempotency_key,
                request_fingerprint=fingerprint,
                metadata=spec.metadata,
                schedule=schedule,
                dependencies_pending=pending,
                repository=repository,
                ref=spec.ref,
            )
            if spec.depends_on:
                task.depends_on.add(*spec.depends_on)
            for row in file_rows:
                row.task = task
            TaskFile.objects.bulk_create(file_rows)
            task_event_add(task=task, from_status="", to=TaskStatus.QUEUED, source=source, actor=created_by,
                           reason=reason or "created", data=event_data)
            if not pending:  # a dependent is dispatched when its last parent succeeds
                enqueue_dispatch(at=spec.scheduled_at)
    except ValidationError:
        # A parent failed between the first check and its lock: nothing is written, stored files included.
        for row in file_rows:
            if row.file:
                row.file.delete(save=False)
        raise
    except IntegrityError:
        # Two identical requests raced past the first lookup; the unique constraint let one win.
        if spec.idempotency_key:
            existing = _idempotent_match(tenant, spec.idempotency_key, fingerprint)
            if existing is not None:
                return existing, False
        raise
    return task, True


def _refuse_own_match(tenant: str, key: str, depends_on: list[str]) -> None:
    """A task cannot depend on itself. Ids are made by the server, so a new task can only name older tasks and no
    cycle can form; the one id a request can name that is "itself" is the task its own idempotency key already
    created. Said plainly here, rather than as the 409 its different body would get."""
    if not depends_on:
        return
    existing = Task.objects.filter(tenant=tenant, idempotency_key=key).values_list("pk", flat=True).first()
    if existing is not None and str(existing) in depends_on:
        raise validation.fail(f"depends_on[{depends_on.index(str(existing))}]",
                              f"task {existing} is this request's own task (idempotency_key {key!r}); a task "
                              "cannot depend on itself")


def _idempotent_match(tenant: str, key: str, fingerprint: str) -> Task | None:
    existing = Task.objects.filter(tenant=tenant, idempotency_key=key).first()
    if existing is None:
        return None
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyConflict(key, existing.pk)
    return existing


def stored_file(*, task: Task | None, run: Any, direction: str, path: str, data: bytes) -> TaskFile:
    """A TaskFile row: small files inline in the row, larger ones through Django's storage API."""
    row = TaskFile(
        task=task,
        run=run,
        direction=direction,
        path=path,
        size_bytes=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        content_type=mimetypes.guess_type(path)[0] or "application/octet-stream",
    )
    if len(data) <= settings.SCHEDULER_INLINE_FILE_BYTES:
        row.content = data
    else:
        row.file.save(path.replace("/", "__"), ContentFile(data), save=False)
    return row


def task_cancel(*, task_id: Any, source: str, actor: str = "", reason: str = "") -> Task:
    """Queued or leased: canceled at once. Running: a cancel request (its own fields and an event); the worker
    kills the CLI and `run_finish` ends the task canceled with this provenance."""
    with transaction.atomic():
        task = _locked(task_id)
        if task.status in TERMINAL_STATUSES:
            raise TaskStateError(f"task {task.pk} is already {task.status}; only unfinished tasks can be canceled")
        reason = reason or f"canceled by {actor or source}"
        if task.status == TaskStatus.RUNNING:
            if task.cancel_requested_at is None:
                task.cancel_requested_at = timezone.now()
                task.cancel_source, task.cancel_actor, task.cancel_reason = source, actor or "", reason
                task.save(update_fields=["cancel_requested_at", "cancel_source", "cancel_actor", "cancel_reason",
                                         "updated_at"])
                task_event_add(task=task, source=source, actor=actor, reason=f"cancel requested: {reason}",
                               data={"cancel_requested": True, "attempt": task.attempt})
            return task
        return task_transition(
            locked=task, to=TaskStatus.CANCELED, source=source, actor=actor, reason=reason,
            updates={"finished_at": timezone.now(), "lease_token": None, "lease_expires_at": None},
        )


def task_retry(*, task_id: Any, source: str, actor: str = "", reason: str = "") -> Task:
    """Re-queue a failed or canceled task with a fresh attempt budget. A dependent (chains) waits again for those of
    its parents that have not succeeded; it is refused while one of them is failed or canceled. Its own dependents,
    canceled with it, stay canceled: retry them too."""
    with transaction.atomic():
        chains.parents_lock(task_id=task_id)  # parents before the task: the chains' lock order
        task = _locked(task_id)
        if task.status not in (TaskStatus.FAILED, TaskStatus.CANCELED):
            raise TaskStateError(f"task {task.pk} is {task.status}; only failed or canceled tasks can be retried")
        pending = chains.retry_pending(task=task)
        task = task_transition(
            locked=task, to=TaskStatus.QUEUED, source=source, actor=actor,
            reason=reason or f"retried by {actor or source}",
            updates={
                "attempt_base": task.attempt,
                "next_attempt_at": None,
                "error_message": "",
                "finished_at": None,
                "cancel_requested_at": None,
                "cancel_source": "",
                "cancel_actor": "",
                "cancel_reason": "",
                "worker_group": task.worker_group if task.worker_group_pinned else None,
                "dependencies_pending": pending,
            },
        )
        if not pending:
            enqueue_dispatch()
    return task


def task_requeue_now(*, task_id: Any, source: str, actor: str = "", reason: str = "") -> Task:
    """A queued task waiting for its retry backoff (`next_attempt_at`) or its `scheduled_at`: due now, and a
    dispatch pass asked for after commit. Not a status change, so an event without one records who did it and
    which times were cleared. A task waiting on its chain's parents still waits for them."""
    with transaction.atomic():
        task = _locked(task_id)
        if task.status != TaskStatus.QUEUED:
            raise TaskStateError(f"task {task.pk} is {task.status}; only queued tasks can be re-queued now")
        cleared: dict[str, str] = {}
        if task.next_attempt_at is not None:
            cleared["next_attempt_at"] = task.next_attempt_at.isoformat()
            task.next_attempt_at = None
        if task.scheduled_at is not None and task.scheduled_at > timezone.now():
            cleared["scheduled_at"] = task.scheduled_at.isoformat()  # the old time stays in the event
            task.scheduled_at = None
        task.save(update_fields=["next_attempt_at", "scheduled_at", "updated_at"])
        task_event_add(task=task, source=source, actor=actor,
                       reason=f"re-queued now: {reason or f'by {actor or source}'}",
                       data={"requeue_now": True, "cleared": cleared})
        enqueue_dispatch()
    return task


def _locked(task_id: Any) -> Task:
    task = task_lock(task_id=task_id)
    if task is None:
        raise Task.DoesNotExist(f"no task {task_id}")
    return task
