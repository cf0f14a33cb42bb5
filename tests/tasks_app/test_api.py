"""The HTTP API with the real database: auth, tenants, every endpoint, idempotency, validation."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from django.contrib.auth.models import Permission
from django.test import override_settings
from rest_framework.test import APIClient

from tasks_app.models import ApiToken, Task, TaskEvent, TaskFile, TaskRun, WorkerGroup
from tasks_app.services.accounts import token_create, token_revoke, user_create
from tasks_app.services.tasks import TaskSpec, stored_file, task_create
from tests.factories import WorkerGroupFactory

pytestmark = pytest.mark.django_db


def client_for(username: str, tenant: str = "acme", *, staff: bool = False, bearer: bool = False,
               permissions: tuple[str, ...] = ()) -> APIClient:
    user = user_create(username=username, tenant=tenant, staff=staff)
    for codename in permissions:
        user.user_permissions.add(Permission.objects.get(codename=codename, content_type__app_label="tasks_app"))
    _, key = token_create(username=username)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{'Bearer' if bearer else 'Token'} {key}")
    return client


@pytest.fixture
def alice() -> APIClient:
    return client_for("alice", "acme")


@pytest.fixture
def bob() -> APIClient:
    return client_for("bob", "globex")


@pytest.fixture
def staff() -> APIClient:
    return client_for("root", "ops", staff=True)


@pytest.fixture
def operator() -> APIClient:
    """Staff with the permission to change what reaches a CLI with its key (credentials, env, flags)."""
    return client_for("keyholder", "ops", staff=True, permissions=("manage_credentials",))


def _create(client: APIClient, **body: Any) -> Any:
    return client.post("/api/v1/tasks/", {"tool": "claude", "prompt": "hello", **body}, format="json")


def _nothing_written() -> None:
    assert (Task.objects.count(), TaskEvent.objects.count(), TaskFile.objects.count()) == (0, 0, 0)


# -- auth -------------------------------------------------------------------------------------------
def test_anonymous_bad_and_revoked_tokens_get_401() -> None:
    anonymous = APIClient()
    assert anonymous.get("/api/v1/tasks/").status_code == 401
    assert anonymous.get("/api/v1/tasks/")["WWW-Authenticate"].startswith("Token")
    bad = APIClient()
    bad.credentials(HTTP_AUTHORIZATION="Token cs_not-a-real-key")
    assert bad.get("/api/v1/tasks/").status_code == 401
    user_create(username="carol", tenant="acme")
    token, key = token_create(username="carol")
    token_revoke(token_id=token.pk)
    revoked = APIClient()
    revoked.credentials(HTTP_AUTHORIZATION=f"Token {key}")
    assert revoked.get("/api/v1/tasks/").status_code == 401


def test_bearer_works_and_only_the_key_hash_is_stored() -> None:
    client = client_for("dan", bearer=True)
    assert client.get("/api/v1/tasks/").status_code == 200
    token = ApiToken.objects.get(user__username="dan")
    key = client._credentials["HTTP_AUTHORIZATION"].split()[1]
    assert token.key_hash == hashlib.sha256(key.encode()).hexdigest() and key not in token.prefix + token.key_hash
    assert token.last_used_at is not None


def test_healthz_needs_no_auth_and_shows_no_secrets() -> None:
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert (body["database"], body["broker"]) == ("ok", "ok")  # and no group, worker or host names (test_workers)
    assert set(body["components"]) == {"database", "broker", "beat", "workers"}


# -- create -----------------------------------------------------------------------------------------
def test_create_with_text_and_base64_inputs_returns_201_with_detail(alice: APIClient) -> None:
    WorkerGroupFactory(account="main")
    response = _create(alice, model="sonnet", priority=8, output_files=["out/*.md"], worker_group="claude-main",
                       input_files=[{"path": "a.txt", "content": "hi"},
                                    {"path": "b/c.bin", "content_base64": base64.b64encode(b"\x00\xff").decode()}],
                       metadata={"ticket": "OPS-1"}, timeout_seconds=600, max_attempts=2)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["status"], body["tenant"], body["created_by"], body["priority"]) == ("queued", "acme", "alice", 8)
    assert (body["worker_group"], body["metadata"], body["latest_run"]) == ("claude-main", {"ticket": "OPS-1"}, None)
    assert sorted(f["path"] for f in body["files"]) == ["a.txt", "b/c.bin"]
    assert TaskFile.objects.get(path="b/c.bin").read_bytes() == b"\x00\xff"
    assert TaskEvent.objects.get(task_id=body["id"]).source == "api"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tool": "cursor"}, "tool"),
        ({"priority": 10}, "priority"),
        ({"priority": "high"}, "priority"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 42}, "prompt"),
        ({"output_files": ["../x"]}, "output_files[0]"),
        ({"output_files": "out.txt"}, "output_files"),
        ({"input_files": [{"path": "/etc/passwd", "content": "x"}]}, "input_files[0].path"),
        ({"input_files": [{"path": "a", "content_base64": "%%%"}]}, "input_files[0].content_base64"),
        ({"input_files": [{"path": "a"}]}, "input_files[0]"),
        ({"worker_group": "claude-nope"}, "worker_group"),
        ({"scheduled_at": "next tuesday"}, "scheduled_at"),
        ({"metadata": [1, 2]}, "metadata"),
        ({"metadata": {"k": "nul\u0000byte"}}, "metadata"),
        ({"metadata": {"big": "x" * 70_000}}, "metadata"),
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"max_attempts": True}, "max_attempts"),
    ],
)
def test_bad_input_is_400_naming_the_field_and_writes_nothing(alice: APIClient, body: dict, field: str) -> None:
    response = _create(alice, **body)

    assert response.status_code == 400
    assert field in response.json(), response.json()
    _nothing_written()


def test_group_of_another_tool_and_oversize_files_are_refused(alice: APIClient, settings) -> None:
    WorkerGroupFactory(tool="codex", account="main")
    assert "runs codex, not claude" in _create(alice, worker_group="codex-main").json()["worker_group"][0]
    settings.SCHEDULER_MAX_INPUT_BYTES = 4
    response = _create(alice, input_files=[{"path": "big.txt", "content": "12345"}])
    assert response.status_code == 400 and "input_files[0].content" in response.json()
    settings.SCHEDULER_MAX_PROMPT_CHARS = 10
    assert "prompt" in _create(alice, prompt="x" * 11).json()
    _nothing_written()


def test_a_body_that_is_not_an_object_is_400(alice: APIClient) -> None:
    assert alice.post("/api/v1/tasks/", [1, 2], format="json").status_code == 400
    assert alice.post("/api/v1/tasks/", "{not json", content_type="application/json").status_code == 400
    _nothing_written()


def test_idempotency_same_body_200_different_body_409_naming_the_key(alice: APIClient, bob: APIClient) -> None:
    first = _create(alice, idempotency_key="nightly-1")
    again = _create(alice, idempotency_key="nightly-1")
    conflict = _create(alice, idempotency_key="nightly-1", prompt="something else")
    other_tenant = _create(bob, idempotency_key="nightly-1")

    codes = (first.status_code, again.status_code, conflict.status_code, other_tenant.status_code)
    assert codes == (201, 200, 409, 201)
    assert again.json()["id"] == first.json()["id"]
    assert "'nightly-1'" in conflict.json()["idempotency_key"][0]
    assert Task.objects.filter(tenant="acme").count() == 1


# -- read, tenants ----------------------------------------------------------------------------------
def test_tenants_see_only_their_own_tasks_and_others_are_404(alice: APIClient, bob: APIClient,
                                                              staff: APIClient) -> None:
    mine = _create(alice).json()["id"]
    theirs = _create(bob).json()["id"]

    assert [t["id"] for t in alice.get("/api/v1/tasks/").json()["results"]] == [mine]
    for path in ("", "runs/", "events/", "files/"):
        assert alice.get(f"/api/v1/tasks/{theirs}/{path}").status_code == 404
    assert alice.post(f"/api/v1/tasks/{theirs}/cancel/").status_code == 404
    assert alice.post(f"/api/v1/tasks/{theirs}/retry/").status_code == 404
    assert Task.objects.get(pk=theirs).status == "queued"
    assert {t["id"] for t in staff.get("/api/v1/tasks/").json()["results"]} == {mine, theirs}


def test_list_filters_search_ordering_and_cursor_pagination(alice: APIClient) -> None:
    for i in range(5):
        _create(alice, prompt=f"job {i} {'urgent' if i % 2 else 'routine'}", priority=i + 1,
                tool="codex" if i == 4 else "claude")

    def ids(query: str) -> list[str]:
        return [t["prompt"] for t in alice.get(f"/api/v1/tasks/?{query}").json()["results"]]

    assert ids("tool=codex") == ["job 4 routine"]
    assert ids("search=urgent") == ["job 3 urgent", "job 1 urgent"]
    assert ids("priority=3") == ["job 2 routine"]
    assert ids("ordering=priority")[0] == "job 0 routine"
    assert ids("status=running") == []
    page = alice.get("/api/v1/tasks/?page_size=2").json()
    second = alice.get(page["next"]).json()
    assert len(page["results"]) == len(second["results"]) == 2
    assert not {t["id"] for t in page["results"]} & {t["id"] for t in second["results"]}
    assert alice.get("/api/v1/tasks/?status=bogus").status_code == 400
    assert alice.get("/api/v1/tasks/?priority=99999999999999999999").status_code == 400
    assert alice.get("/api/v1/tasks/?created_after=yesterday").status_code == 400


def test_detail_runs_events_files_and_content(alice: APIClient) -> None:
    task_id = _create(alice, input_files=[{"path": "in/notes.md", "content": "# notes"}]).json()["id"]
    task = Task.objects.get(pk=task_id)
    run = TaskRun.objects.create(task=task, attempt=1, lease_token=task.pk, exit_code=0, stdout="{}",
                                 status="succeeded")
    out = stored_file(task=task, run=run, direction="output", path="report/summary.txt", data=b"all good")
    out.save()

    detail = alice.get(f"/api/v1/tasks/{task_id}/").json()
    assert detail["latest_run"]["attempt"] == 1 and detail["latest_run"]["exit_code"] == 0
    assert [r["attempt"] for r in alice.get(f"/api/v1/tasks/{task_id}/runs/").json()] == [1]
    assert [e["to_status"] for e in alice.get(f"/api/v1/tasks/{task_id}/events/").json()] == ["queued"]
    files = alice.get(f"/api/v1/tasks/{task_id}/files/").json()
    assert [(f["direction"], f["path"], f["attempt"]) for f in files] == [
        ("input", "in/notes.md", None), ("output", "report/summary.txt", 1)]
    content = alice.get(f"/api/v1/tasks/{task_id}/files/{out.pk}/content/")
    assert (content.status_code, content.content) == (200, b"all good")
    assert content["Content-Type"] == "text/plain"
    assert content["Content-Disposition"] == 'attachment; filename="summary.txt"'
    assert alice.get(f"/api/v1/tasks/{task_id}/files/999999/content/").status_code == 404
    assert alice.get("/api/v1/tasks/00000000-0000-0000-0000-000000000000/").status_code == 404


def test_large_file_content_streams_from_storage(alice: APIClient, settings, tmp_path) -> None:
    settings.SCHEDULER_INLINE_FILE_BYTES, settings.MEDIA_ROOT = 4, tmp_path
    task_id = _create(alice, input_files=[{"path": "data.json", "content": '{"k": "value"}'}]).json()["id"]
    item = TaskFile.objects.get(task_id=task_id)

    response = alice.get(f"/api/v1/tasks/{task_id}/files/{item.pk}/content/")

    assert b"".join(response.streaming_content) == b'{"k": "value"}'
    assert response["Content-Type"] == "application/json"
    assert 'filename="data.json"' in response["Content-Disposition"]


# -- cancel, retry ----------------------------------------------------------------------------------
def test_cancel_queued_then_409_retry_then_409(alice: APIClient) -> None:
    task_id = _create(alice).json()["id"]

    canceled = alice.post(f"/api/v1/tasks/{task_id}/cancel/")
    assert (canceled.status_code, canceled.json()["status"]) == (200, "canceled")
    assert alice.post(f"/api/v1/tasks/{task_id}/cancel/").status_code == 409
    retried = alice.post(f"/api/v1/tasks/{task_id}/retry/")
    assert (retried.status_code, retried.json()["status"]) == (200, "queued")
    assert alice.post(f"/api/v1/tasks/{task_id}/retry/").status_code == 409
    events = TaskEvent.objects.filter(task_id=task_id).order_by("created_at", "id")
    assert [(e.to_status, e.source, e.actor) for e in events][1:] == [("canceled", "api", "alice"),
                                                                     ("queued", "api", "alice")]


def test_cancel_running_is_202_and_flags_the_worker(alice: APIClient) -> None:
    task_id = _create(alice).json()["id"]
    Task.objects.filter(pk=task_id).update(status="running")  # set-up only: a worker would have done this

    response = alice.post(f"/api/v1/tasks/{task_id}/cancel/")

    assert response.status_code == 202 and response.json()["status"] == "running"
    assert Task.objects.get(pk=task_id).cancel_requested_at is not None


# -- worker groups ----------------------------------------------------------------------------------
def test_worker_groups_are_staff_only(alice: APIClient) -> None:
    assert alice.get("/api/v1/worker-groups/").status_code == 403
    assert alice.post("/api/v1/worker-groups/", {"tool": "claude", "account": "x"}, format="json").status_code == 403
    assert WorkerGroup.objects.count() == 0


def test_staff_manage_groups_and_credentials_are_write_only(operator: APIClient) -> None:
    staff = operator
    created = staff.post("/api/v1/worker-groups/", {
        "tool": "claude", "account": "team-a", "max_concurrent": 3,
        "credentials": {"ANTHROPIC_API_KEY": "sk-api-secret-1"}, "env": {"CLAUDE_CONFIG_DIR": "/srv/a"},
    }, format="json")
    assert created.status_code == 201, created.json()
    assert created.json()["credential_names"] == ["ANTHROPIC_API_KEY"]
    assert "sk-api-secret-1" not in created.content.decode()

    patched = staff.patch("/api/v1/worker-groups/claude-team-a/", {"max_concurrent": 5, "credentials": {
        "ANTHROPIC_API_KEY": "sk-api-secret-2"}}, format="json")
    paused = staff.post("/api/v1/worker-groups/claude-team-a/pause/")
    listed = staff.get("/api/v1/worker-groups/")

    assert (patched.status_code, patched.json()["max_concurrent"]) == (200, 5)
    assert paused.json()["enabled"] is False
    assert "sk-api-secret" not in patched.content.decode() + listed.content.decode()
    group = WorkerGroup.objects.get(name="claude-team-a")
    assert group.credentials == {"ANTHROPIC_API_KEY": "sk-api-secret-2"} and group.enabled is False
    assert staff.post("/api/v1/worker-groups/claude-team-a/resume/").json()["enabled"] is True


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tool": "claude", "account": "Bad Name"}, "account"),
        ({"tool": "vim", "account": "x"}, "tool"),
        ({"tool": "claude", "account": "x", "max_concurrent": 0}, "max_concurrent"),
        ({"tool": "claude", "account": "x", "extra_args": ["--dangerously-skip-permissions"]}, "extra_args"),
        ({"tool": "claude", "account": "x", "env": {"DATABASE_URL": "x"}}, "env"),
        ({"tool": "claude", "account": "x", "credentials": {"BAD NAME": "x"}}, "credentials"),
    ],
)
def test_bad_group_input_is_400_and_writes_nothing(operator: APIClient, body: dict, field: str) -> None:
    response = operator.post("/api/v1/worker-groups/", body, format="json")

    assert response.status_code == 400 and field in response.json(), response.json()
    assert WorkerGroup.objects.count() == 0


def test_duplicate_group_is_400(staff: APIClient) -> None:
    assert staff.post("/api/v1/worker-groups/", {"tool": "codex", "account": "main"}, format="json").status_code == 201
    response = staff.post("/api/v1/worker-groups/", {"tool": "codex", "account": "main"}, format="json")
    assert response.status_code == 400 and "already exists" in response.json()["account"][0]


# -- schema, switches, throttling -------------------------------------------------------------------
def test_openapi_schema_and_swagger_ui_are_served_without_a_cdn(alice: APIClient) -> None:
    schema = alice.get("/api/schema/?format=json").json()
    for path in ("/api/v1/tasks/", "/api/v1/tasks/{id}/cancel/", "/api/v1/tasks/{id}/files/{file_id}/content/",
                 "/api/v1/worker-groups/{name}/"):
        assert path in schema["paths"]
    docs = alice.get("/api/docs/")
    assert docs.status_code == 200
    html = docs.content.decode()
    assert "swagger-ui" in html and "cdn." not in html and "unpkg" not in html


def test_throttling_per_token(settings) -> None:
    settings.SCHEDULER_API_THROTTLE_RATE = "3/min"
    from django.core.cache import cache

    cache.clear()
    client = client_for("eve")
    codes = [client.get("/api/v1/tasks/").status_code for _ in range(4)]
    other = client_for("frank")
    assert codes == [200, 200, 200, 429]
    assert other.get("/api/v1/tasks/").status_code == 200  # a different token has its own budget


def test_api_can_be_switched_off() -> None:
    import importlib

    from django.urls import clear_url_caches

    import scheduler_site.urls

    with override_settings(SCHEDULER_API_ENABLED=False):
        clear_url_caches()
        importlib.reload(scheduler_site.urls)
        assert client_for("gina").get("/api/v1/tasks/").status_code == 404
    clear_url_caches()
    importlib.reload(scheduler_site.urls)


def test_service_and_api_share_validation() -> None:
    """The same rule, the same words: a TaskSpec refused by the service is refused by the API identically."""
    from django.core.exceptions import ValidationError

    with pytest.raises(ValidationError) as excinfo:
        task_create(spec=TaskSpec(tool="claude", prompt="x", output_files=["../up"]), source="cli")
    api = _create(client_for("hank"), output_files=["../up"]).json()
    assert api["output_files[0]"] == excinfo.value.message_dict["output_files[0]"]
