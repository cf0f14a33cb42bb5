"""Chains (SPEC §8): `depends_on` at create, dispatch held until every parent succeeded, dependents canceled when a
parent fails or is canceled, parents' outputs as inputs. Real database; the concurrency cases on PostgreSQL."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from executors import ExecutionResult, OutputFile
from tasks_app.cli import run as schedulerctl
from tasks_app.models import Task, TaskEvent, TaskFile
from tasks_app.services.chains import MAX_PARENTS
from tasks_app.services.dispatch import candidates, dispatch_runnable
from tasks_app.services.runs import run_finish, run_start
from tasks_app.services.tasks import (
    IdempotencyConflict,
    InputFile,
    TaskSpec,
    task_cancel,
    task_create,
    task_retry,
)
from tasks_app.transitions import TaskStateError, task_transition
from tests.conftest import wait_until
from tests.factories import TaskFactory, WorkerGroupFactory
from tests.tasks_app.test_api import client_for

pytestmark = pytest.mark.django_db


def _create(prompt: str = "p", *, tenant: str = "default", **spec: Any) -> Task:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=prompt, **spec), tenant=tenant, source="api")
    return task


def _finish(task: Task, *, outputs: dict[str, bytes] | None = None, failure_kind: str = "") -> Task:
    """Lease (if not leased yet), start and finish one attempt of `task` through the real services."""
    dispatch_runnable()
    token = Task.objects.get(pk=task.pk).lease_token
    assert token is not None, f"task {task.pk} was not leased"
    ctx = run_start(task_id=task.pk, lease_token=token, worker="box:1")
    result = ExecutionResult(command=["claude"], exit_code=3 if failure_kind else 0, failure_kind=failure_kind,
                             error_message="boom" if failure_kind else "",
                             outputs=[OutputFile(path, data) for path, data in (outputs or {}).items()])
    run_finish(run_id=ctx.run_id, lease_token=token, result=result, worker="box:1")
    return Task.objects.get(pk=task.pk)


def _counts() -> tuple[int, int, int]:
    return Task.objects.count(), TaskEvent.objects.count(), TaskFile.objects.count()


def _refused(spec: TaskSpec, *, tenant: str = "default") -> dict[str, list[str]]:
    before = _counts()
    with pytest.raises(ValidationError) as caught:
        task_create(spec=spec, tenant=tenant, source="api")
    assert _counts() == before  # nothing written
    return caught.value.message_dict


# --- create ---------------------------------------------------------------------------------------------------
def test_create_counts_the_parents_not_yet_succeeded_and_records_them() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    done = _finish(_create("done"))
    waiting = _create("waiting")

    child = _create("child", depends_on=[str(done.pk), str(waiting.pk).upper()])

    assert done.status == "succeeded"
    assert child.dependencies_pending == 1
    assert set(child.depends_on.values_list("pk", flat=True)) == {done.pk, waiting.pk}
    assert list(waiting.dependents.values_list("pk", flat=True)) == [child.pk]


@pytest.mark.parametrize(
    ("depends_on", "field", "message"),
    [
        ("abc", "depends_on", "must be a list of task ids"),
        (["not-a-uuid"], "depends_on[0]", "'not-a-uuid' is not a task id (a UUID)"),
        ([42], "depends_on[0]", "42 is not a task id (a UUID)"),
        ([str(uuid.UUID(int=1))], "depends_on[0]", f"no task {uuid.UUID(int=1)}"),
        ([str(uuid.UUID(int=1))] * 2, "depends_on[1]", "is already listed at depends_on[0]"),
        ([str(uuid.uuid4()) for _ in range(MAX_PARENTS + 1)], "depends_on", f"at most {MAX_PARENTS} tasks"),
    ],
)
def test_bad_depends_on_is_refused_naming_the_item_and_the_rule(depends_on: Any, field: str, message: str) -> None:
    errors = _refused(TaskSpec(tool="claude", prompt="p", depends_on=depends_on))

    assert message in " ".join(errors[field])


def test_another_tenants_task_reads_exactly_like_an_unknown_id() -> None:
    theirs = _create("theirs", tenant="globex")
    unknown = uuid.uuid4()

    errors = _refused(TaskSpec(tool="claude", prompt="p", depends_on=[str(theirs.pk), str(unknown)]),
                      tenant="acme")

    assert errors == {"depends_on[0]": [f"no task {theirs.pk}"], "depends_on[1]": [f"no task {unknown}"]}


def test_a_parent_that_already_failed_or_was_canceled_is_refused() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    failed = _finish(_create("fails", max_attempts=1), failure_kind="exit_code")
    canceled = task_cancel(task_id=_create("canceled").pk, source="api")

    errors = _refused(TaskSpec(tool="claude", prompt="p", depends_on=[str(failed.pk), str(canceled.pk)],
                               input_files=[InputFile("notes.txt", b"x" * 5000)]))

    assert failed.status == "failed"
    assert errors == {"depends_on[0]": [f"task {failed.pk} already failed; this task could never run"],
                      "depends_on[1]": [f"task {canceled.pk} was canceled; this task could never run"]}


def test_an_input_in_a_parents_directory_is_refused() -> None:
    parent = _create("parent")

    errors = _refused(TaskSpec(tool="claude", prompt="p", depends_on=[str(parent.pk)],
                               input_files=[InputFile(f"{parent.pk}/out.txt", b"x")]))

    assert errors == {"input_files[0].path": [f"'{parent.pk}/out.txt' is where the outputs of task {parent.pk} "
                                              "arrive; choose another path"]}


def test_a_task_cannot_depend_on_the_task_its_own_idempotency_key_made() -> None:
    first = _create("first", idempotency_key="nightly")

    errors = _refused(TaskSpec(tool="claude", prompt="first", idempotency_key="nightly",
                               depends_on=[str(first.pk)]))

    assert errors == {"depends_on[0]": [f"task {first.pk} is this request's own task (idempotency_key 'nightly'); "
                                        "a task cannot depend on itself"]}


def test_depends_on_is_part_of_the_idempotency_fingerprint() -> None:
    one, two = _create("one"), _create("two")
    spec = TaskSpec(tool="claude", prompt="child", idempotency_key="k", depends_on=[str(one.pk), str(two.pk)])
    child, created = task_create(spec=spec, source="api")

    again, created_again = task_create(spec=TaskSpec(tool="claude", prompt="child", idempotency_key="k",
                                                     depends_on=[str(two.pk), str(one.pk)]), source="api")
    with pytest.raises(IdempotencyConflict):
        task_create(spec=TaskSpec(tool="claude", prompt="child", idempotency_key="k", depends_on=[str(one.pk)]),
                    source="api")

    assert (created, created_again, again.pk) == (True, False, child.pk)  # the order of the ids does not matter
    assert TaskSpec(tool="claude", prompt="p").fingerprint() == TaskSpec(tool="claude", prompt="p",
                                                                           depends_on=[]).fingerprint()


def test_parents_whose_outputs_are_already_over_the_total_limit_are_refused(settings) -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    settings.SCHEDULER_MAX_TOTAL_BYTES = 100
    big = _finish(_create("big"), outputs={"a.bin": b"x" * 60, "b.bin": b"y" * 50})

    errors = _refused(TaskSpec(tool="claude", prompt="p", depends_on=[str(big.pk)]))

    assert errors == {"depends_on": ["the outputs of its parents total 110 bytes; the limit is 100 "
                                     "(SCHEDULER_MAX_TOTAL_BYTES)"]}


# --- dispatch ---------------------------------------------------------------------------------------------------
def test_a_dependent_is_never_leased_while_a_parent_is_unfinished_then_is_once_it_succeeded(
        django_capture_on_commit_callbacks: Callable[..., Any]) -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    parent = _create("parent", priority=1)
    child = _create("child", priority=9, depends_on=[str(parent.pk)])

    for _ in range(3):  # free slots every pass; the most urgent task waits all the same
        dispatch_runnable()
        assert Task.objects.get(pk=child.pk).status == "queued"
    dispatch_runnable()
    ctx = run_start(task_id=parent.pk, lease_token=Task.objects.get(pk=parent.pk).lease_token, worker="w")
    for _ in range(2):
        assert dispatch_runnable() == []  # the parent is running: still waiting
    with django_capture_on_commit_callbacks() as callbacks:
        run_finish(run_id=ctx.run_id, lease_token=ctx.lease_token, worker="w",
                   result=ExecutionResult(command=["claude"], exit_code=0))

    assert Task.objects.get(pk=child.pk).dependencies_pending == 0
    assert len(callbacks) == 1  # a dispatch pass is asked for, after commit
    (lease,) = dispatch_runnable()
    assert lease.task_id == child.pk


def test_a_dependent_of_two_waits_for_both() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    first, second = _create("first"), _create("second")
    child = _create("child", depends_on=[str(first.pk), str(second.pk)])

    _finish(first)
    assert Task.objects.get(pk=child.pk).dependencies_pending == 1
    assert Task.objects.get(pk=child.pk).status == "queued"
    _finish(second)

    assert Task.objects.get(pk=child.pk).dependencies_pending == 0
    (lease,) = dispatch_runnable()
    assert lease.task_id == child.pk


def test_the_candidate_query_keeps_its_index_walk() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("EXPLAIN of PostgreSQL's plan")
    TaskFactory.create_batch(50)
    with CaptureQueriesContext(connection) as captured:
        candidates("claude", 5, timezone.now())
    (sql,) = [q["sql"] for q in captured.captured_queries if "dependencies_pending = 0" in q["sql"]]

    with connection.cursor() as cursor:
        # A table this small is cheaper to read whole: with sequential scans priced out, the plan shows whether
        # the partial index on status = 'queued' still serves the candidate walk.
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(f"EXPLAIN {sql}")
        plan = "\n".join(row[0] for row in cursor.fetchall())

    assert "Index Scan using task_dispatch_idx on tasks_app_task" in plan, plan
    assert "Seq Scan on tasks_app_task" not in plan and "Sort" not in plan, plan


# --- settle ---------------------------------------------------------------------------------------------------
def test_a_failing_parent_cancels_its_dependents_and_theirs_naming_the_reason() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    parent = _create("parent", max_attempts=1)
    other = _create("other")
    child = _create("child", depends_on=[str(parent.pk), str(other.pk)])
    grandchild = _create("grandchild", depends_on=[str(child.pk)])

    _finish(parent, failure_kind="exit_code")

    child.refresh_from_db()
    grandchild.refresh_from_db()
    assert (child.status, grandchild.status) == ("canceled", "canceled")
    assert child.finished_at is not None and Task.objects.get(pk=other.pk).status == "leased"
    event = TaskEvent.objects.filter(task=child).latest("id")
    assert (event.from_status, event.to_status, event.source, event.actor, event.reason, event.data) == (
        "queued", "canceled", "system", "chains", f"parent {parent.pk} failed", {"parent": str(parent.pk)})
    event = TaskEvent.objects.filter(task=grandchild).latest("id")
    assert (event.reason, event.data) == (f"parent {child.pk} was canceled", {"parent": str(child.pk)})


def test_a_canceled_parent_cancels_its_dependents() -> None:
    parent = _create("parent")
    child = _create("child", depends_on=[str(parent.pk)])
    grandchild = _create("grandchild", depends_on=[str(child.pk), str(parent.pk)])

    task_cancel(task_id=parent.pk, source="api", actor="alice")

    assert list(Task.objects.filter(pk__in=[child.pk, grandchild.pk]).values_list("status", flat=True)) == [
        "canceled", "canceled"]
    reasons = TaskEvent.objects.filter(task=grandchild, to_status="canceled").values_list("reason", flat=True)
    assert list(reasons) == [f"parent {parent.pk} was canceled"]  # canceled once, by whichever parent came first


def test_a_leased_or_running_dependent_is_canceled_or_asked_to_stop() -> None:
    group = WorkerGroupFactory(account="main")
    parent = TaskFactory(status="running")
    leased = TaskFactory(status="leased", worker_group=group, lease_token=uuid.uuid4())
    running = TaskFactory(status="running", worker_group=group, lease_token=uuid.uuid4())
    for task in (leased, running):
        task.depends_on.add(parent)

    task_transition(task_id=parent.pk, to="failed", source="worker")

    leased.refresh_from_db()
    running.refresh_from_db()
    assert (leased.status, leased.lease_token) == ("canceled", None)
    assert running.status == "running" and running.cancel_requested_at is not None
    assert (running.cancel_source, running.cancel_actor, running.cancel_reason) == (
        "system", "chains", f"parent {parent.pk} failed")


def test_a_dependent_whose_parents_outputs_grow_past_the_limit_is_canceled_before_it_runs(settings) -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    settings.SCHEDULER_MAX_TOTAL_BYTES = 100
    first, second = _create("first"), _create("second")
    child = _create("child", depends_on=[str(first.pk), str(second.pk)])
    _finish(first, outputs={"a.bin": b"x" * 60})

    _finish(second, outputs={"b.bin": b"y" * 60})

    child.refresh_from_db()
    assert child.status == "canceled" and child.attempt == 0
    assert TaskEvent.objects.filter(task=child).latest("id").reason == (
        "the outputs of its parents total 120 bytes; the limit is 100 (SCHEDULER_MAX_TOTAL_BYTES)")


def test_retrying_a_parent_does_not_revive_its_dependents_retrying_them_waits_again() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    parent = _create("parent", max_attempts=1)
    child = _create("child", depends_on=[str(parent.pk)])
    _finish(parent, failure_kind="exit_code")
    with pytest.raises(TaskStateError, match=f"depends on task {parent.pk}, which is failed"):
        task_retry(task_id=child.pk, source="api")

    task_retry(task_id=parent.pk, source="api")
    assert Task.objects.get(pk=child.pk).status == "canceled"
    child = task_retry(task_id=child.pk, source="api")

    assert (child.status, child.dependencies_pending) == ("queued", 1)
    _finish(parent)
    assert [lease.task_id for lease in dispatch_runnable()] == [child.pk]


# --- inputs ---------------------------------------------------------------------------------------------------
def test_a_dependent_starts_with_each_parents_outputs_under_its_id() -> None:
    WorkerGroupFactory(account="main", max_concurrent=5)
    first, second = _create("first"), _create("second")
    _finish(first, outputs={"report.md": b"# one"})
    _finish(second, outputs={"out/data.csv": b"a,b", "notes.txt": b"n"})
    child = _create("child", depends_on=[str(first.pk), str(second.pk)], input_files=[InputFile("own.txt", b"o")])
    dispatch_runnable()

    ctx = run_start(task_id=child.pk, lease_token=Task.objects.get(pk=child.pk).lease_token, worker="w")

    assert sorted(ctx.input_files) == sorted([
        ("own.txt", b"o"), (f"{first.pk}/report.md", b"# one"), (f"{second.pk}/notes.txt", b"n"),
        (f"{second.pk}/out/data.csv", b"a,b")])
    assert ctx.chained_dirs == tuple(sorted([str(first.pk), str(second.pk)]))


def test_a_task_without_parents_has_no_chained_inputs() -> None:
    WorkerGroupFactory(account="main")
    task = _create("alone", input_files=[InputFile("a.txt", b"a")])
    dispatch_runnable()

    ctx = run_start(task_id=task.pk, lease_token=Task.objects.get(pk=task.pk).lease_token, worker="w")

    assert (ctx.input_files, ctx.chained_dirs) == ([("a.txt", b"a")], ())


# --- API ------------------------------------------------------------------------------------------------------
def test_api_create_with_depends_on_and_the_detail_shows_the_chain() -> None:
    alice = client_for("alice", "acme")
    parent = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "parent"}, format="json").json()

    response = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "child", "depends_on": [parent["id"]]},
                          format="json")

    assert response.status_code == 201, response.json()
    child = response.json()
    assert (child["depends_on"], child["dependents"], child["waiting_on"]) == ([parent["id"]], [], [parent["id"]])
    shown = alice.get(f"/api/v1/tasks/{parent['id']}/").json()
    assert (shown["depends_on"], shown["dependents"], shown["waiting_on"]) == ([], [child["id"]], [])
    assert "depends_on" not in alice.get("/api/v1/tasks/").json()["results"][0]  # the list stays as it was


@pytest.mark.parametrize(
    ("depends_on", "errors"),
    [
        ("x", {"depends_on": ['Expected a list of items but got type "str".']}),
        ([1, "nope"], {"depends_on[0]": ["1 is not a task id (a UUID)"],
                       "depends_on[1]": ["'nope' is not a task id (a UUID)"]}),
    ],
)
def test_api_bad_depends_on_is_400_naming_the_item_and_writes_nothing(depends_on: Any, errors: dict) -> None:
    alice = client_for("alice", "acme")

    response = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "child", "depends_on": depends_on},
                          format="json")

    assert (response.status_code, response.json()) == (400, errors)
    assert _counts() == (0, 0, 0)


def test_api_another_tenants_task_is_no_task() -> None:
    theirs = _create("theirs", tenant="globex")
    alice = client_for("alice", "acme")

    response = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "child", "depends_on": [str(theirs.pk)]},
                          format="json")

    assert (response.status_code, response.json()) == (400, {"depends_on[0]": [f"no task {theirs.pk}"]})
    assert Task.objects.count() == 1


def test_the_admin_task_page_links_parents_and_dependents(admin_client) -> None:
    parent = _create("parent")
    child = _create("child", depends_on=[str(parent.pk)])

    page = admin_client.get(reverse("admin:tasks_app_task_change", args=[child.pk])).content.decode()
    parent_page = admin_client.get(reverse("admin:tasks_app_task_change", args=[parent.pk])).content.decode()

    link = f'<a href="{reverse("admin:tasks_app_task_change", args=[parent.pk])}">{str(parent.pk)[:8]}</a>'
    assert page.count(link) == 2  # depends on, waiting on
    assert f'<a href="{reverse("admin:tasks_app_task_change", args=[child.pk])}">' in parent_page


# --- schedulerctl ---------------------------------------------------------------------------------------------
def test_schedulerctl_enqueue_after_and_get_shows_the_chain(capsys) -> None:
    parent = _create("parent")

    assert schedulerctl(["enqueue", "claude", "child", "--after", str(parent.pk)[:8], "--json"]) == 0
    child_id = json.loads(capsys.readouterr().out)["id"]
    assert schedulerctl(["get", child_id]) == 0
    shown = capsys.readouterr().out
    assert schedulerctl(["get", str(parent.pk)]) == 0
    parent_shown = capsys.readouterr().out

    assert f"    depends on: {parent.pk}" in shown and f"    waiting on: {parent.pk}" in shown
    assert f"    dependents: {child_id}" in parent_shown


def test_schedulerctl_enqueue_after_an_unknown_task_exits_2_and_creates_nothing(capsys) -> None:
    code = schedulerctl(["enqueue", "claude", "child", "--after", str(uuid.UUID(int=7))])

    assert code == 2
    assert capsys.readouterr().err == f"schedulerctl: error: depends_on[0]: no task {uuid.UUID(int=7)}\n"
    assert _counts() == (0, 0, 0)


# --- concurrency (PostgreSQL: two connections, the interleaving forced by the locks themselves) ------------------
def _postgresql_only() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("two connections waiting on each other's row locks: PostgreSQL")


class _Backend(threading.Thread):
    """`work` on a connection of its own; `pid` is its backend's, to see it wait on a lock."""

    def __init__(self, work: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.work, self.result, self.error = work, None, None
        self.pid: int | None = None
        self.ready = threading.Event()

    def run(self) -> None:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid()")
                self.pid = cursor.fetchone()[0]
            self.ready.set()
            self.result = self.work()
        except BaseException as exc:  # handed to the test thread
            self.error = exc
        finally:
            self.ready.set()
            connection.close()

    def wait_blocked(self) -> None:
        assert self.ready.wait(10)

        def blocked() -> bool:
            with connection.cursor() as cursor:
                # Statistics are read once per transaction unless the snapshot is dropped: the test thread polls
                # from inside one.
                cursor.execute("SELECT pg_stat_clear_snapshot()")
                cursor.execute("SELECT wait_event_type FROM pg_stat_activity WHERE pid = %s", [self.pid])
                row = cursor.fetchone()
            return row is not None and row[0] == "Lock"

        wait_until(blocked, timeout=10, message="the other connection to wait on a row lock")

    def finish(self) -> Any:
        self.join(10)
        assert not self.is_alive(), "the other connection did not finish"
        if self.error is not None:
            raise self.error
        return self.result


def _create_child(parent: Task, **spec: Any) -> Callable[[], Task]:
    return lambda: task_create(spec=TaskSpec(tool="claude", prompt="child", depends_on=[str(parent.pk)], **spec),
                               source="api")[0]


@pytest.mark.django_db(transaction=True)
def test_a_parent_succeeding_while_its_dependent_is_created_holding_the_lock_first() -> None:
    _postgresql_only()
    parent = TaskFactory(status="running")
    creator = _Backend(_create_child(parent))

    with transaction.atomic():  # the parent succeeds and holds its lock; the create waits for it
        task_transition(task_id=parent.pk, to="succeeded", source="worker")
        creator.start()
        creator.wait_blocked()
    child = creator.finish()

    assert Task.objects.get(pk=child.pk).dependencies_pending == 0  # it saw the parent succeeded


@pytest.mark.django_db(transaction=True)
def test_a_parent_succeeding_while_its_dependent_is_created_the_create_holding_the_lock_first() -> None:
    _postgresql_only()
    parent = TaskFactory(status="running")
    creator = _Backend(_create_child(parent, idempotency_key="gate"))
    finisher = _Backend(lambda: task_transition(task_id=parent.pk, to="succeeded", source="worker"))

    with transaction.atomic():
        # A row holding the create's idempotency key, not committed: the create locks the parent, then waits on
        # the key's unique index, so the parent cannot finish before the create commits.
        TaskFactory(idempotency_key="gate")
        creator.start()
        creator.wait_blocked()
        finisher.start()
        finisher.wait_blocked()
        transaction.set_rollback(True)
    child = creator.finish()
    finisher.finish()

    child = Task.objects.get(pk=child.pk)
    assert (child.dependencies_pending, Task.objects.get(pk=parent.pk).status) == (0, "succeeded")
    assert list(Task.objects.filter(idempotency_key="gate").values_list("pk", flat=True)) == [child.pk]
    # The create committed first (pending 1), then the parent's success found it and released it.
    created = TaskEvent.objects.get(task=child, to_status="queued").created_at
    assert TaskEvent.objects.get(task=parent, to_status="succeeded").created_at > created
