from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.contrib.messages import get_messages
from django.test import Client
from django.urls import reverse

from executors import ExecutionResult, OutputFile
from tasks_app.models import ConcurrencyLimit, Task, TaskEvent, TaskFile, TaskRun, WorkerGroup
from tasks_app.services.dispatch import dispatch_runnable
from tasks_app.services.runs import run_finish, run_start
from tasks_app.services.tasks import InputFile, TaskSpec, task_create
from tests.factories import TaskFactory, WorkerGroupFactory

pytestmark = pytest.mark.django_db

SECRET = "sk-ant-very-secret-value-4242"
MODELS = ["workergroup", "task", "taskrun", "taskfile", "taskevent", "concurrencylimit"]


def _finished_task() -> tuple[Task, WorkerGroup]:
    """A task that ran once through the services: an input file, a run with output, four events."""
    group = WorkerGroupFactory(account="main", max_concurrent=2)
    group.credentials = {"ANTHROPIC_API_KEY": SECRET}
    group.save()
    task, _ = task_create(
        spec=TaskSpec(tool="claude", prompt="summarise <b>this</b>",
                      input_files=[InputFile("in/a.txt", b"A")], output_files=["out.txt"]),
        source="api",
    )
    (lease,) = dispatch_runnable()
    ctx = run_start(task_id=task.pk, lease_token=lease.lease_token, worker="box:1")
    result = ExecutionResult(command=["claude", "-p"], exit_code=0, stdout='{"result": "<script>x</script>"}',
                             stderr="warn: slow\nline two", final_message="ok", latency_ms=5,
                             outputs=[OutputFile("out.txt", b"hello output")])
    run_finish(run_id=ctx.run_id, lease_token=lease.lease_token, result=result, worker="box:1")
    task.refresh_from_db()
    return task, group


def _action(client: Client, action: str, ids: list[Any]) -> Any:
    return client.post(reverse("admin:tasks_app_task_changelist"),
                       {"action": action, "_selected_action": [str(i) for i in ids]}, follow=True)


def _message_levels(response: Any) -> list[tuple[str, str]]:
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def _group_form(**overrides: Any) -> dict[str, Any]:
    data = {"tool": "claude", "account": "team-a", "max_concurrent": "2", "enabled": "on", "env": "{}",
            "extra_args": "[]", "credentials_set": ""}
    data.update(overrides)
    return {k: v for k, v in data.items() if v is not None}


def test_admin_system_checks_pass() -> None:
    assert admin.site.check(None) == []


@pytest.mark.parametrize("model", MODELS)
def test_every_changelist_renders(admin_client: Client, model: str) -> None:
    _finished_task()
    ConcurrencyLimit.objects.create(scope="tool:claude", max_concurrent=3)

    response = admin_client.get(reverse(f"admin:tasks_app_{model}_changelist"))

    assert response.status_code == 200


def test_every_change_page_renders(admin_client: Client) -> None:
    task, group = _finished_task()
    limit = ConcurrencyLimit.objects.create(scope="tool:claude", max_concurrent=3)
    objects = {"workergroup": group, "concurrencylimit": limit, "task": task, "taskrun": task.runs.get(),
               "taskfile": task.files.first(), "taskevent": task.events.first()}

    for model, obj in objects.items():
        response = admin_client.get(reverse(f"admin:tasks_app_{model}_change", args=[obj.pk]))
        assert response.status_code == 200, model


def test_changelist_filters_and_search_render(admin_client: Client) -> None:
    task, _ = _finished_task()
    url = reverse("admin:tasks_app_task_changelist")

    for query in ({"status__exact": "succeeded"}, {"tool__exact": "claude"}, {"tenant": "default"},
                  {"failure_kind": "rate_limited"}, {"q": str(task.pk)[:8]}, {"q": "summarise"}):
        response = admin_client.get(url, query)
        assert response.status_code == 200, query
    assert str(task.pk)[:8] in admin_client.get(url, {"q": str(task.pk)}).content.decode()
    assert str(task.pk)[:8] not in admin_client.get(url, {"failure_kind": "timeout"}).content.decode()


def test_task_change_page_shows_runs_files_and_events_escaped(admin_client: Client) -> None:
    task, _ = _finished_task()

    html = admin_client.get(reverse("admin:tasks_app_task_change", args=[task.pk])).content.decode()

    assert "&lt;script&gt;x&lt;/script&gt;" in html and "<script>x</script>" not in html
    assert "<pre" in html and "warn: slow\nline two" in html
    assert "summarise &lt;b&gt;this&lt;/b&gt;" in html
    for item in task.files.all():
        assert reverse("admin:tasks_app_task_file_download", args=[task.pk, item.pk]) in html
    # Status is read-only: no input named status and no save button.
    assert 'name="status"' not in html and 'name="_save"' not in html


def test_task_change_page_lists_runs_newest_first_and_events_oldest_first(admin_client: Client) -> None:
    task = TaskFactory(status="failed", attempt=2)
    for attempt in (1, 2):
        TaskRun.objects.create(task=task, attempt=attempt, lease_token=uuid.uuid4(), status="failed")
    for from_status, to_status in (("", "queued"), ("queued", "leased"), ("leased", "running")):
        TaskEvent.objects.create(task=task, from_status=from_status, to_status=to_status, source="system")

    response = admin_client.get(reverse("admin:tasks_app_task_change", args=[task.pk]))

    inlines = {f.formset.model: [form.instance for form in f.formset.forms]
               for f in response.context["inline_admin_formsets"]}
    assert [run.attempt for run in inlines[TaskRun]] == [2, 1]
    assert [event.to_status for event in inlines[TaskEvent]] == ["queued", "leased", "running"]


def test_task_change_page_refuses_a_post(admin_client: Client) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")

    url = reverse("admin:tasks_app_task_change", args=[task.pk])

    response = admin_client.post(url, {"status": "succeeded"})

    assert response.status_code == 403
    task.refresh_from_db()
    assert task.status == "queued" and task.events.count() == 1


def test_cancel_action_cancels_a_queued_task_through_the_service(admin_client: Client) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")

    response = _action(admin_client, "cancel_tasks", [task.pk])

    task.refresh_from_db()
    assert task.status == "canceled" and task.finished_at is not None
    event = task.events.order_by("created_at", "id").last()
    assert (event.from_status, event.to_status, event.source, event.actor) == (
        "queued", "canceled", "admin", "admin")
    assert _message_levels(response) == [("success", f"Canceled: {str(task.pk)[:8]}")]


def test_cancel_action_on_a_terminal_task_warns_and_changes_nothing(admin_client: Client) -> None:
    task = TaskFactory(status="succeeded")

    response = _action(admin_client, "cancel_tasks", [task.pk])

    assert response.status_code == 200
    task.refresh_from_db()
    assert task.status == "succeeded"
    assert TaskEvent.objects.filter(task=task).count() == 0
    ((level, message),) = _message_levels(response)
    assert level == "warning" and "already succeeded" in message


def test_cancel_action_reports_each_task(admin_client: Client) -> None:
    queued, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")
    done = TaskFactory(status="failed")

    response = _action(admin_client, "cancel_tasks", [queued.pk, done.pk])

    levels = sorted(level for level, _ in _message_levels(response))
    assert levels == ["success", "warning"]
    queued.refresh_from_db()
    done.refresh_from_db()
    assert (queued.status, done.status) == ("canceled", "failed")


def test_retry_action_requeues_a_failed_task(admin_client: Client) -> None:
    task = TaskFactory(status="failed", attempt=3, max_attempts=3, error_message="boom")

    response = _action(admin_client, "retry_tasks", [task.pk])

    task.refresh_from_db()
    assert (task.status, task.attempt_base, task.error_message, task.attempts_left) == ("queued", 3, "", 3)
    event = TaskEvent.objects.get(task=task)
    assert (event.from_status, event.to_status, event.source, event.actor) == (
        "failed", "queued", "admin", "admin")
    assert _message_levels(response) == [("success", f"Re-queued: {str(task.pk)[:8]}")]


def test_retry_action_on_a_queued_task_warns_and_changes_nothing(admin_client: Client) -> None:
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p"), source="api")

    response = _action(admin_client, "retry_tasks", [task.pk])

    task.refresh_from_db()
    assert task.status == "queued" and task.events.count() == 1
    assert [level for level, _ in _message_levels(response)] == ["warning"]


def test_group_create_through_the_admin_stores_credentials_encrypted_and_never_shows_them(
        admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:tasks_app_workergroup_add"),
        _group_form(credentials_set=f"ANTHROPIC_API_KEY={SECRET}\n\nANTHROPIC_AUTH_TOKEN = t0ken-value-77\n",
                    env='{"CLAUDE_CONFIG_DIR": "/srv/claude/team-a"}', extra_args='["--max-turns=5"]'),
    )

    assert response.status_code == 302
    group = WorkerGroup.objects.get()
    assert (group.name, group.max_concurrent, group.env, group.extra_args) == (
        "claude-team-a", 2, {"CLAUDE_CONFIG_DIR": "/srv/claude/team-a"}, ["--max-turns=5"])
    assert group.credentials == {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_AUTH_TOKEN": "t0ken-value-77"}
    assert SECRET not in group.credentials_encrypted
    pages = [
        reverse("admin:tasks_app_workergroup_changelist"),
        reverse("admin:tasks_app_workergroup_change", args=[group.pk]),
        reverse("admin:tasks_app_workergroup_history", args=[group.pk]),
        reverse("admin:index"),
    ]
    for url in pages:
        html = admin_client.get(url).content.decode()
        assert SECRET not in html and "t0ken-value-77" not in html, url
    change_html = admin_client.get(pages[1]).content.decode()
    assert "<code>ANTHROPIC_API_KEY</code> = ••••••" in change_html
    assert "ANTHROPIC_API_KEY, ANTHROPIC_AUTH_TOKEN" in admin_client.get(pages[0]).content.decode()


def test_group_form_with_bad_extra_args_shows_a_field_error_and_writes_nothing(admin_client: Client) -> None:
    response = admin_client.post(
        reverse("admin:tasks_app_workergroup_add"),
        _group_form(extra_args='["--bogus"]', credentials_set=f"ANTHROPIC_API_KEY={SECRET}"),
    )

    assert response.status_code == 200
    errors = response.context["adminform"].form.errors
    assert list(errors) == ["extra_args"] and "'--bogus' is not allowed for claude" in errors["extra_args"][0]
    assert SECRET not in response.content.decode()
    assert WorkerGroup.objects.count() == 0


def test_group_form_rejects_a_credential_line_without_echoing_it(admin_client: Client) -> None:
    url = reverse("admin:tasks_app_workergroup_add")

    response = admin_client.post(url, _group_form(credentials_set=SECRET))

    assert response.status_code == 200
    assert response.context["adminform"].form.errors == {"credentials_set": ["line 1 is not KEY=VALUE"]}
    assert SECRET not in response.content.decode()
    assert WorkerGroup.objects.count() == 0


def test_group_form_maps_service_errors_on_duplicates_and_bad_accounts(admin_client: Client) -> None:
    WorkerGroupFactory(account="team-a")
    url = reverse("admin:tasks_app_workergroup_add")

    duplicate = admin_client.post(url, _group_form())
    uppercase = admin_client.post(url, _group_form(account="Team-B"))

    assert duplicate.status_code == uppercase.status_code == 200
    assert list(duplicate.context["adminform"].form.errors) == ["account"]
    assert list(uppercase.context["adminform"].form.errors) == ["account"]
    assert WorkerGroup.objects.count() == 1


def test_group_change_sets_and_removes_credential_keys_through_the_service(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main", max_concurrent=1)
    group.credentials = {"ANTHROPIC_API_KEY": SECRET, "ANTHROPIC_AUTH_TOKEN": "old-value"}
    group.save()
    url = reverse("admin:tasks_app_workergroup_change", args=[group.pk])

    response = admin_client.post(url, {"max_concurrent": "4", "enabled": "on", "env": "{}",
                                       "extra_args": "[]", "credentials_set": "CLAUDE_CODE_OAUTH_TOKEN=new-value",
                                       "credentials_unset": ["ANTHROPIC_AUTH_TOKEN"]})

    assert response.status_code == 302
    group.refresh_from_db()
    assert group.credentials == {"ANTHROPIC_API_KEY": SECRET, "CLAUDE_CODE_OAUTH_TOKEN": "new-value"}
    assert (group.max_concurrent, group.enabled) == (4, True)
    html = admin_client.get(url).content.decode()
    assert SECRET not in html and "new-value" not in html
    assert 'value="CLAUDE_CODE_OAUTH_TOKEN"' in html and 'value="ANTHROPIC_AUTH_TOKEN"' not in html


def test_group_change_with_a_reserved_env_name_shows_a_field_error(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main", env={"A": "1"})
    url = reverse("admin:tasks_app_workergroup_change", args=[group.pk])

    response = admin_client.post(url, {"max_concurrent": "1", "enabled": "on", "env": '{"PATH": "/x"}',
                                       "extra_args": "[]"})

    assert response.status_code == 200
    assert list(response.context["adminform"].form.errors) == ["env"]
    group.refresh_from_db()
    assert group.env == {"A": "1"}


def test_pause_and_resume_actions_go_through_the_service(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main", enabled=True)
    url = reverse("admin:tasks_app_workergroup_changelist")

    paused = admin_client.post(url, {"action": "pause_groups", "_selected_action": [group.pk]}, follow=True)
    group.refresh_from_db()
    assert group.enabled is False
    assert _message_levels(paused) == [("success", "Paused: claude-main")]

    admin_client.post(url, {"action": "resume_groups", "_selected_action": [group.pk]})
    group.refresh_from_db()
    assert group.enabled is True


def test_group_changelist_counts_running_and_queued(admin_client: Client) -> None:
    group = WorkerGroupFactory(account="main")
    TaskFactory(worker_group=group, status="running")
    TaskFactory(worker_group=group, status="leased")
    TaskFactory(worker_group=group, status="queued")

    response = admin_client.get(reverse("admin:tasks_app_workergroup_changelist"))

    (row,) = response.context["cl"].result_list
    assert (row.running, row.queued) == (2, 1)


def test_file_download_returns_the_bytes_as_an_attachment(admin_client: Client) -> None:
    task, _ = _finished_task()
    output = TaskFile.objects.get(task=task, direction="output")

    response = admin_client.get(reverse("admin:tasks_app_task_file_download", args=[task.pk, output.pk]))

    assert response.status_code == 200
    assert response.content == b"hello output"
    assert response["Content-Disposition"] == 'attachment; filename="out.txt"'
    assert response["Content-Type"].startswith("text/plain")


def test_file_download_of_another_tasks_file_is_404(admin_client: Client) -> None:
    task, _ = _finished_task()
    other, _ = task_create(spec=TaskSpec(tool="claude", prompt="other"), source="api")
    item = TaskFile.objects.filter(task=task).first()

    response = admin_client.get(reverse("admin:tasks_app_task_file_download", args=[other.pk, item.pk]))

    assert response.status_code == 404


def test_non_staff_users_are_sent_to_the_login_page(client: Client) -> None:
    task, _ = _finished_task()
    item = TaskFile.objects.filter(task=task).first()
    user = get_user_model().objects.create_user("bob", password="pw-123456789", is_staff=False)
    client.force_login(user)

    for url in (reverse("admin:tasks_app_task_changelist"),
                reverse("admin:tasks_app_workergroup_changelist"),
                reverse("admin:tasks_app_task_file_download", args=[task.pk, item.pk])):
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith(reverse("admin:login")), url


def test_audit_trail_admins_offer_no_add_change_or_delete(admin_client: Client) -> None:
    task, _ = _finished_task()
    run = TaskRun.objects.get(task=task)
    event = TaskEvent.objects.filter(task=task).first()

    assert admin_client.get(reverse("admin:tasks_app_taskrun_add")).status_code == 403
    assert admin_client.get(reverse("admin:tasks_app_taskevent_add")).status_code == 403
    assert admin_client.get(reverse("admin:tasks_app_taskrun_delete", args=[run.pk])).status_code == 403
    assert admin_client.post(reverse("admin:tasks_app_taskevent_change", args=[event.pk]),
                             {"reason": "edited"}).status_code == 403
    event.refresh_from_db()
    assert event.reason != "edited"


def test_concurrency_limit_scope_is_validated(admin_client: Client) -> None:
    url = reverse("admin:tasks_app_concurrencylimit_add")

    bad = admin_client.post(url, {"scope": "tool:cursor", "max_concurrent": "2"})
    good = admin_client.post(url, {"scope": "model:opus", "max_concurrent": "2"})

    assert bad.status_code == 200 and list(bad.context["adminform"].form.errors) == ["scope"]
    assert good.status_code == 302
    assert list(ConcurrencyLimit.objects.values_list("scope", "max_concurrent")) == [("model:opus", 2)]


def test_cancel_action_on_a_running_task_flags_it_for_the_worker(admin_client: Client) -> None:
    task = TaskFactory(status="running", attempt=1)

    response = _action(admin_client, "cancel_tasks", [task.pk])

    task.refresh_from_db()
    assert task.status == "running" and task.cancel_requested_at is not None
    assert (task.cancel_source, task.cancel_actor, task.cancel_reason) == ("admin", "admin", "canceled by admin")
    assert [level for level, _ in _message_levels(response)] == ["info"]
