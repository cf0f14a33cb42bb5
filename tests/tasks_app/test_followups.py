"""Follow-up turns and resumed sessions (issue 17): the domain side, through the services, API and CLI."""

from __future__ import annotations

import json

import pytest
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from executors import ExecutionResult, FailureKind, OutputFile
from executors.base import WorkspaceChange
from tasks_app.cli import run as schedulerctl
from tasks_app.models import Repository, Task, TaskEvent, TaskFile, TaskRun
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.followups import task_follow_up
from tasks_app.services.runs import run_finish, run_start
from tasks_app.services.tasks import InputFile, TaskSpec, task_create
from tasks_app.transitions import TaskStateError
from tests.factories import WorkerGroupFactory
from workers.spec import execution_spec

pytestmark = pytest.mark.django_db


def _run_once(task: Task, result: ExecutionResult):
    """Lease the task, start its attempt and finish it with `result`; returns the RunContext."""
    leases = [lease for lease in dispatch_runnable() if lease.task_id == task.pk]
    assert leases, "the task was not leased"
    ctx = run_start(task_id=task.pk, lease_token=leases[0].lease_token, worker="box:1")
    assert ctx is not None
    run_finish(run_id=ctx.run_id, lease_token=leases[0].lease_token, result=result, worker="box:1")
    return ctx


def _finished(session: str = "sess-1", **spec) -> Task:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="write hello", **spec), source="api")
    _run_once(task, ExecutionResult(command=["claude"], exit_code=0, final_message="wrote it", session_id=session,
                                    outputs=[OutputFile("hello.py", b"print('hi')\n")]))
    task.refresh_from_db()
    assert task.status == "succeeded"
    return task


@pytest.fixture()
def groups():
    return WorkerGroupFactory(account="main", live=True), WorkerGroupFactory(account="other", live=True)


def test_a_follow_up_resumes_the_parents_session_on_its_account_from_the_state_it_left(groups) -> None:
    parent = _finished(input_files=[InputFile("notes.txt", b"n")], output_files=["*.py"])
    group = TaskRun.objects.get(task=parent).worker_group

    child = task_follow_up(task_id=parent.pk, prompt="now add a test", created_by="ann", source="api")

    assert (child.parent_id, child.resume_session_id, child.tool) == (parent.pk, "sess-1", "claude")
    assert (child.worker_group_id, child.worker_group_pinned) == (group.pk, True)
    inputs = {f.path: f.read_bytes() for f in child.files.filter(direction="input")}
    assert inputs == {"notes.txt": b"n", "hello.py": b"print('hi')\n"}
    ctx = _lease_and_start(child)
    assert (ctx.prompt, ctx.resume_session, ctx.group_name) == ("now add a test", "sess-1", group.name)
    assert ctx.conversation_id == str(parent.pk)
    spec = execution_spec(ctx)
    assert spec.argv[-2:] == ["--resume", "sess-1"]
    assert spec.work_dir_inside == f"/workspace/{parent.pk}"
    assert TaskRun.objects.get(task=child).resumed_session_id == "sess-1"


def _lease_and_start(task: Task):
    leases = [lease for lease in dispatch_runnable() if lease.task_id == task.pk]
    assert leases
    ctx = run_start(task_id=task.pk, lease_token=leases[0].lease_token, worker="box:1")
    assert ctx is not None
    return ctx


def test_nothing_to_resume_is_a_conflict_that_creates_nothing(groups) -> None:
    queued, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")
    with pytest.raises(TaskStateError, match="queued; follow up once it has finished"):
        task_follow_up(task_id=queued.pk, prompt="more", source="api")
    sessionless = _finished(session="")
    with pytest.raises(TaskStateError, match="recorded no CLI session"):
        task_follow_up(task_id=sessionless.pk, prompt="more", source="api")
    assert Task.objects.filter(parent__isnull=False).count() == 0


def test_follow_up_through_the_api_and_the_conversation_view(groups) -> None:
    user = get_user_model().objects.create_user("ann", is_staff=True)
    client = APIClient()
    client.force_authenticate(user)
    parent = _finished()

    response = client.post(f"/api/v1/tasks/{parent.pk}/follow-up/", {"prompt": "and a test"}, format="json")

    assert response.status_code == 201, response.content
    child = response.json()
    assert child["parent"] == str(parent.pk) and child["resume_session_id"] == "sess-1"
    detail = client.get(f"/api/v1/tasks/{parent.pk}/").json()
    assert detail["follow_ups"] == [child["id"]] and detail["parent"] is None
    turns = client.get(f"/api/v1/tasks/{child['id']}/").json()["conversation"]
    assert [(t["id"], t["prompt"], t["final_message"]) for t in turns] == [
        (str(parent.pk), "write hello", "wrote it"), (child["id"], "and a test", "")]
    # Bad input and conflicts are 4xx naming what is wrong, and create nothing.
    assert client.post(f"/api/v1/tasks/{parent.pk}/follow-up/", {"prompt": 3}, format="json").status_code == 400
    assert client.post(f"/api/v1/tasks/{parent.pk}/follow-up/", {"prompt": "x", "tool": "codex"},
                       format="json").status_code == 400
    queued = client.post(f"/api/v1/tasks/{child['id']}/follow-up/", {"prompt": "x"}, format="json")
    assert queued.status_code == 409 and "follow up once it has finished" in queued.json()["detail"]
    assert Task.objects.count() == 2


def test_follow_up_of_another_tenants_task_is_not_found(groups) -> None:
    parent = _finished()
    user = get_user_model().objects.create_user("bob")
    from tasks_app.models import Membership

    Membership.objects.create(user=user, tenant="other-team")
    client = APIClient()
    client.force_authenticate(user)
    assert client.post(f"/api/v1/tasks/{parent.pk}/follow-up/", {"prompt": "x"}, format="json").status_code == 404


def test_schedulerctl_follow_up_and_get_show_the_conversation(groups, capsys) -> None:
    parent = _finished()
    assert schedulerctl(["follow-up", str(parent.pk), "next step", "--json"]) == 0
    child = json.loads(capsys.readouterr().out)
    assert schedulerctl(["get", child["id"]]) == 0
    out = capsys.readouterr().out
    assert "conversation" in out and "write hello" in out and "next step" in out and "(this)" in out
    assert schedulerctl(["follow-up", child["id"], "again"]) == 1
    assert "follow up once it has finished" in capsys.readouterr().err


def test_a_run_cut_off_by_a_usage_limit_after_doing_work_resumes_its_session_on_its_account(groups) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="big job", max_attempts=3), source="api")
    limited = ExecutionResult(command=["claude"], exit_code=1, failure_kind=FailureKind.RATE_LIMITED,
                              error_message="You've hit your session limit", retry_after_seconds=0.0,
                              session_id="sess-9", turns=4)
    first = _run_once(task, limited)

    task.refresh_from_db()
    assert task.status == "queued" and task.resume_session_id == "sess-9"
    assert task.worker_group.name == first.group_name and task.worker_group_pinned
    event = TaskEvent.objects.filter(task=task, to_status="queued").last()
    assert event.data["resume_session"] == "sess-9" and "resuming session sess-9" in event.reason


def test_a_usage_limit_before_any_work_moves_on_without_resuming(groups) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="job"), source="api")
    _run_once(task, ExecutionResult(command=["claude"], exit_code=1, failure_kind=FailureKind.RATE_LIMITED,
                                    error_message="limit", session_id="sess-0", turns=1))
    task.refresh_from_db()
    assert task.resume_session_id == "" and not task.worker_group_pinned and task.worker_group is None


def test_the_resumed_attempt_on_a_repository_starts_from_the_cut_off_runs_commit_and_patch(groups, settings) -> None:
    repository = Repository.objects.create(name="api", url="/srv/git/api.git", default_ref="main",
                                           push_prefix="sched/")
    repository.credentials = {"token": "tok-secret"}
    repository.save()
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="fix it"), source="api")
    Task.objects.filter(pk=task.pk).update(repository=repository)
    partial = WorkspaceChange(base_sha="a" * 40, patch=b"diff --git a/x b/x\n", files=1, insertions=1)
    first = _run_once(task, ExecutionResult(command=["claude"], exit_code=1, failure_kind=FailureKind.RATE_LIMITED,
                                            error_message="limit", session_id="sess-r", turns=1, change=partial))
    assert (first.ref, first.base_patches, first.push_branch) == ("main", (), f"sched/{task.pk}")
    run = TaskRun.objects.get(task=task)
    assert (run.base_sha, run.diff_stat) == ("a" * 40, {"files": 1, "insertions": 1, "deletions": 0})
    assert TaskFile.objects.get(run=run, path="changes.patch").read_bytes() == partial.patch

    Task.objects.filter(pk=task.pk).update(next_attempt_at=None)
    from tasks_app.models import WorkerGroup

    WorkerGroup.objects.update(rate_limited_until=None)
    second = _lease_and_start(task)

    assert (second.ref, second.base_patches, second.resume_session) == ("a" * 40, (partial.patch,), "sess-r")
    assert second.prompt == settings.SCHEDULER_RESUME_PROMPT
    assert second.repository_credentials == {"token": "tok-secret"} and "tok-secret" not in repr(second)
    spec = execution_spec(second)
    assert spec.workspace is not None and spec.workspace.base_patches == (partial.patch,)
    assert "tok-secret" in spec.secrets and spec.workspace.push_branch == f"sched/{task.pk}"


def test_the_admin_task_page_shows_the_conversation(groups, admin_client) -> None:
    from django.urls import reverse

    parent = _finished()
    child = task_follow_up(task_id=parent.pk, prompt="<b>second</b> turn", source="api")

    page = admin_client.get(reverse("admin:tasks_app_task_change", args=[child.pk])).content.decode()
    parent_page = admin_client.get(reverse("admin:tasks_app_task_change", args=[parent.pk])).content.decode()

    assert "Conversation" in page and "write hello" in page and "this task" in page
    assert "&lt;b&gt;second&lt;/b&gt; turn" in page and "<b>second</b>" not in page  # prompts are escaped
    assert str(child.pk) in parent_page and "sess-1" in page


def test_a_follow_ups_retry_after_a_provider_error_starts_again_from_the_parents_state(groups, settings) -> None:
    repository = Repository.objects.create(name="api", url="/srv/git/api.git", default_ref="main")
    parent, _ = task_create(spec=TaskSpec(tool="claude", prompt="fix it"), source="api")
    Task.objects.filter(pk=parent.pk).update(repository=repository)
    parent_change = WorkspaceChange(base_sha="b" * 40, patch=b"diff --git a/fix b/fix\n", files=1, insertions=1)
    _run_once(parent, ExecutionResult(command=["claude"], exit_code=0, session_id="sess-p", change=parent_change,
                                      outputs=[OutputFile("changes.patch", parent_change.patch)]))
    child = task_follow_up(task_id=parent.pk, prompt="and a test", source="api")
    first = _run_once(child, ExecutionResult(command=["claude"], exit_code=1, failure_kind=FailureKind.PROVIDER_ERROR,
                                             error_message="500", session_id="sess-p"))
    assert (first.ref, first.base_patches, first.prompt) == ("b" * 40, (parent_change.patch,), "and a test")
    Task.objects.filter(pk=child.pk).update(next_attempt_at=None)

    second = _lease_and_start(child)

    assert (second.ref, second.base_patches, second.prompt) == ("b" * 40, (parent_change.patch,), "and a test")
    assert second.resume_session == "sess-p"
