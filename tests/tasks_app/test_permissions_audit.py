"""Who may change what (issue 15): the manage_credentials permission, the env allow-list, minting tokens, users
without a tenant; and the audit of every configuration change (SPEC §8 AuditEvent)."""

from __future__ import annotations

import json
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from rest_framework.test import APIClient

from executors import ConfigurationError
from tasks_app.cli import run
from tasks_app.models import ApiToken, AuditEvent, WorkerGroup
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.groups import group_create
from tasks_app.services.runs import RunContext
from tests.factories import WorkerGroupFactory
from tests.tasks_app.test_api import client_for
from workers.spec import child_env

pytestmark = pytest.mark.django_db
SECRET = "sk-ant-audit-Qx81"


def _staff_user(username: str, *codenames: str, superuser: bool = False) -> object:
    user = get_user_model().objects.create_user(username=username, password="pw-" + username, is_staff=True,
                                                is_superuser=superuser)
    for codename in codenames:
        user.user_permissions.add(Permission.objects.get(codename=codename))
    return user


def _browser(user: object) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _no_secret_in_audit() -> None:
    assert SECRET not in json.dumps(list(AuditEvent.objects.values()), default=str)


# --- the permission to change what reaches the CLI with the key ------------------------------------------------


@pytest.mark.parametrize("body", [
    {"env": {"ANTHROPIC_BASE_URL": "https://attacker.example"}},
    {"credentials": {"ANTHROPIC_API_KEY": "sk-new"}},
    {"extra_args": ["--max-turns=3"]},
    {"allow_dangerous_flags": True},
])
def test_staff_without_manage_credentials_cannot_change_what_reaches_the_cli(body: dict) -> None:
    group = group_create(tool="claude", account="main", credentials={"ANTHROPIC_API_KEY": SECRET})
    staff = client_for("curious", "ops", staff=True)

    response = staff.patch(f"/api/v1/worker-groups/{group.name}/", body, format="json")

    assert response.status_code == 403
    assert "tasks_app.manage_credentials" in response.json()["detail"]
    group.refresh_from_db()
    assert (group.env, group.credentials, group.extra_args, group.allow_dangerous_flags) == (
        {}, {"ANTHROPIC_API_KEY": SECRET}, [], False)
    assert not AuditEvent.objects.filter(action="update").exists()
    # Settings that do not reach the CLI stay open to staff.
    assert staff.patch(f"/api/v1/worker-groups/{group.name}/", {"max_concurrent": 4},
                       format="json").status_code == 200


def test_with_the_permission_a_base_url_change_is_allowed_and_audited() -> None:
    group_create(tool="claude", account="main", credentials={"ANTHROPIC_API_KEY": SECRET})
    keyholder = client_for("keyholder", "ops", staff=True, permissions=("manage_credentials",))

    response = keyholder.patch("/api/v1/worker-groups/claude-main/",
                               {"env": {"ANTHROPIC_BASE_URL": "https://gateway.internal"},
                                "credentials": {"ANTHROPIC_API_KEY": SECRET + "-rotated"}}, format="json")

    assert response.status_code == 200, response.json()
    event = AuditEvent.objects.get(action="update")
    assert (event.actor, event.source, event.object_type, event.object_id) == (
        "keyholder", "api", "worker_group", "claude-main")
    assert event.changed == ["credentials.ANTHROPIC_API_KEY", "env"]
    _no_secret_in_audit()


def test_the_admin_shows_credentials_read_only_without_the_permission() -> None:
    group = group_create(tool="claude", account="main", env={"CLAUDE_CONFIG_DIR": "/srv/a"})
    staff = _staff_user("viewer", "view_workergroup", "change_workergroup")
    browser = _browser(staff)
    url = f"/admin/tasks_app/workergroup/{group.pk}/change/"

    page = browser.get(url).content.decode()
    assert 'name="credentials_set"' not in page and "needs the permission tasks_app.manage_credentials" in page
    response = browser.post(url, {"max_concurrent": "3", "enabled": "on",
                                  "env": '{"NODE_OPTIONS": "--require /tmp/x.js"}', "extra_args": "[]",
                                  "credentials_set": "ANTHROPIC_API_KEY=stolen"})
    assert response.status_code == 302, response.context["adminform"].form.errors

    group.refresh_from_db()
    assert (group.max_concurrent, group.env, group.credentials) == (3, {"CLAUDE_CONFIG_DIR": "/srv/a"}, {})
    assert AuditEvent.objects.get(action="update").changed == ["max_concurrent"]

    admin = _browser(_staff_user("root", superuser=True))
    assert 'name="credentials_set"' in admin.get(url).content.decode()


# --- the env allow-list ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("field", "mapping", "message"), [
    ("env", {"NODE_OPTIONS": "--require /tmp/steal.js"}, "NODE_OPTIONS is refused"),
    ("env", {"LD_PRELOAD": "/tmp/x.so"}, "LD_PRELOAD is refused"),
    ("env", {"PYTHONPATH": "/tmp"}, "PYTHONPATH is refused"),
    ("env", {"BASH_ENV": "/tmp/rc"}, "BASH_ENV is refused"),
    ("credentials", {"LD_AUDIT": "/tmp/x.so"}, "LD_AUDIT is refused"),
    ("env", {"OPENAI_BASE_URL": "https://x"}, "OPENAI_BASE_URL is not a variable claude is known to read"),
])
def test_loader_and_foreign_variables_are_refused_even_for_a_superuser(field: str, mapping: dict,
                                                                       message: str) -> None:
    root = client_for("root", "ops", staff=True)
    get_user_model().objects.filter(username="root").update(is_superuser=True)

    response = root.post("/api/v1/worker-groups/", {"tool": "claude", "account": "x", field: mapping},
                         format="json")

    assert response.status_code == 400
    assert message in response.json()[field][0]
    assert not WorkerGroup.objects.exists()


def test_each_tool_takes_its_own_settings_and_a_site_can_add_names(settings) -> None:
    group_create(tool="codex", account="a", env={"CODEX_HOME": "/srv/codex", "OPENAI_BASE_URL": "https://gw",
                                                 "HTTPS_PROXY": "http://proxy:3128", "LC_ALL": "C.UTF-8"})
    group_create(tool="gemini", account="a", credentials={"GEMINI_API_KEY": "g"}, env={"GEMINI_CLI_HOME": "/g"})
    settings.SCHEDULER_ENV_ALLOW = ["COMPANY_*"]
    group_create(tool="claude", account="a", env={"COMPANY_TEAM": "infra"})
    settings.SCHEDULER_ENV_ALLOW = ["COMPANY_*", "NODE_OPTIONS"]
    with pytest.raises(Exception, match="NODE_OPTIONS is refused"):  # a site cannot allow a refused one
        group_create(tool="claude", account="b", env={"NODE_OPTIONS": "--inspect"})


def test_a_refused_variable_stored_before_the_rule_fails_the_run_not_the_key() -> None:
    ctx = RunContext(task_id=uuid.uuid4(), run_id=1, attempt=1, lease_token=uuid.uuid4(), tool="claude", model="",
                     prompt="p", group_name="claude-old", group_env={"NODE_OPTIONS": "--require /tmp/x.js"},
                     credentials={"ANTHROPIC_API_KEY": SECRET}, extra_args=[], allow_dangerous_flags=False,
                     input_files=[], output_patterns=[], timeout_seconds=60)

    with pytest.raises(ConfigurationError, match="NODE_OPTIONS is refused") as caught:
        child_env(ctx)
    assert SECRET not in str(caught.value)


# --- tokens ---------------------------------------------------------------------------------------------------


def test_staff_cannot_mint_a_token_for_a_superuser_or_for_more_rights_than_they_have() -> None:
    minter = _staff_user("minter", "add_apitoken", "view_apitoken")
    root = _staff_user("root", superuser=True)
    keyholder = _staff_user("keyholder", "manage_credentials")
    plain = user_create(username="plain", tenant="acme")
    browser = _browser(minter)

    for target, message in ((root, "only a superuser can create a token for a superuser"),
                            (keyholder, "has rights you do not have (tasks_app.manage_credentials)")):
        page = browser.post("/admin/tasks_app/apitoken/add/", {"user": target.pk, "name": "x"}).content.decode()
        assert message in page
    assert ApiToken.objects.count() == 0
    response = browser.post("/admin/tasks_app/apitoken/add/", {"user": plain.pk, "name": "ci"}, follow=True)
    assert "New API key for plain" in response.content.decode()
    assert ApiToken.objects.get().user == plain
    event = AuditEvent.objects.get(object_type="api_token")
    assert (event.actor, event.source, event.action) == ("minter", "admin", "create")


# --- tenants --------------------------------------------------------------------------------------------------


def test_a_user_without_a_tenant_gets_403_not_the_default_tenants_tasks() -> None:
    user = get_user_model().objects.create_user(username="orphan")
    _, key = token_create(username="orphan")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {key}")

    listing = client.get("/api/v1/tasks/")
    created = client.post("/api/v1/tasks/", {"tool": "claude", "prompt": "hi"}, format="json")

    assert listing.status_code == created.status_code == 403
    assert "belongs to no tenant" in listing.json()["detail"]
    assert user.is_active


# --- the audit trail ------------------------------------------------------------------------------------------


def test_every_configuration_change_is_audited_with_who_and_where(capsys) -> None:
    assert run(["groups", "add", "claude", "team-a", "--credential", f"ANTHROPIC_API_KEY={SECRET}"]) == 0
    assert run(["groups", "pause", "claude-team-a"]) == 0
    assert run(["users", "add", "alice", "--tenant", "acme"]) == 0
    assert run(["tokens", "create", "--user", "alice", "--json"]) == 0
    token_id = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["id"]
    assert run(["tokens", "revoke", str(token_id)]) == 0
    staff = client_for("ops", "ops", staff=True)
    created = staff.post("/api/v1/schedules/", {"name": "nightly", "tool": "claude", "prompt": "p",
                                                "cron": "0 3 * * *"}, format="json")
    assert created.status_code == 201, created.json()
    schedule = created.json()["id"]
    assert staff.patch(f"/api/v1/schedules/{schedule}/", {"prompt": "q"}, format="json").status_code == 200
    assert staff.delete(f"/api/v1/schedules/{schedule}/").status_code == 204

    rows = list(AuditEvent.objects.order_by("id").values_list("source", "action", "object_type", "changed"))
    by_kind = {(source, action, kind): changed for source, action, kind, changed in rows}
    assert "credentials.ANTHROPIC_API_KEY" in by_kind[("cli", "create", "worker_group")]
    assert by_kind[("cli", "pause", "worker_group")] == ["enabled"]
    assert by_kind[("api", "update", "schedule")] == ["prompt"]
    assert ("api", "delete", "schedule") in by_kind
    assert ("cli", "revoke", "api_token") in by_kind
    cli_actor = AuditEvent.objects.filter(source="cli").values_list("actor", flat=True).first()
    assert "@" in cli_actor
    assert AuditEvent.objects.get(source="api", action="create").actor == "ops"
    _no_secret_in_audit()


def test_admin_changes_to_users_are_audited() -> None:
    root = _staff_user("root", superuser=True)
    target = get_user_model().objects.create_user(username="bob", password="pw")
    browser = _browser(root)

    page = browser.get(f"/admin/auth/user/{target.pk}/change/")
    assert page.status_code == 200
    form = page.context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "password"}
    data.update({"username": "bob", "is_staff": "on", "date_joined_0": "2026-01-01", "date_joined_1": "00:00:00",
                 "groups": [], "user_permissions": []})
    response = browser.post(f"/admin/auth/user/{target.pk}/change/", data)

    assert response.status_code == 302, response.content.decode()[:3000]
    event = AuditEvent.objects.get(object_type="user", action="update")
    assert (event.actor, event.source, event.object_id) == ("root", "admin", "bob")
    assert event.changed and all("password" not in name.lower() for name in event.changed)


def test_the_audit_api_is_staff_only_and_filters() -> None:
    group_create(tool="claude", account="a")
    WorkerGroupFactory(account="b")  # not through a service: not audited
    staff, alice = client_for("ops", "ops", staff=True), client_for("alice", "acme")

    assert alice.get("/api/v1/audit/").status_code == 403
    body = staff.get("/api/v1/audit/?object_type=worker_group").json()
    assert [(e["action"], e["object_id"]) for e in body["results"]] == [("create", "claude-a")]
    assert set(body["results"][0]) == {"id", "actor", "source", "action", "object_type", "object_id", "changed",
                                       "created_at"}
