"""Repositories (SPEC §8): create, change and delete them through the API, schedulerctl and the admin with the same
rules; tasks on a repository and ref; credentials never shown, audited by key name only, never logged; tenants
never see or use each other's."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.exceptions import ValidationError
from django.test import Client
from rest_framework.test import APIClient

from tasks_app import validation
from tasks_app.cli import run
from tasks_app.models import AuditEvent, Repository, Task, TaskEvent, TaskFile, TaskRun
from tasks_app.services.repositories import repository_create
from tasks_app.services.tasks import InputFile, TaskSpec, task_cancel, task_create
from tests.tasks_app.test_api import client_for

pytestmark = pytest.mark.django_db

TOKEN = "ghp_RepoSecretToken0123456789abcdef"
SSH_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\n"
           "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW\n"
           "QyNTUxOQAAACDeployKeySecretMaterial0123456789abcdefghijkl==\n"
           "-----END OPENSSH PRIVATE KEY-----\n")
KEY_MATERIAL = "DeployKeySecretMaterial0123456789"
URL = "https://github.com/acme/app.git"


@pytest.fixture
def alice() -> APIClient:
    return client_for("alice", "acme")


@pytest.fixture
def bob() -> APIClient:
    return client_for("bob", "globex")


@pytest.fixture
def staff() -> APIClient:
    """Staff without tasks_app.manage_credentials."""
    return client_for("root", "ops", staff=True)


@pytest.fixture
def operator() -> APIClient:
    return client_for("keyholder", "ops", staff=True, permissions=("manage_credentials",))


def _no_secret(text: str) -> None:
    assert TOKEN not in text and KEY_MATERIAL not in text


def _no_secret_in_audit() -> None:
    _no_secret(json.dumps(list(AuditEvent.objects.values()), default=str))


def _nothing_written() -> None:
    assert Repository.objects.count() == 0
    assert not AuditEvent.objects.filter(object_type="repository").exists()


def _create(client: APIClient, **body: Any) -> Any:
    return client.post("/api/v1/repositories/", {"name": "app", "url": URL, "tenant": "acme", **body}, format="json")


def _repo(name: str = "app", tenant: str = "acme", **kwargs: Any) -> Repository:
    return repository_create(tenant=tenant, name=name, url=kwargs.pop("url", URL), **kwargs)


# -- the rules (tasks_app/validation.py) ------------------------------------------------------------------------


@pytest.mark.parametrize("ref", ["main", "HEAD", "feature/x-1", "v1.2.3", "release/2026.12", "a" * 40,
                                 "0123abc", "users/ana/fix_#42"])
def test_a_valid_git_ref_passes(ref: str) -> None:
    assert validation.git_ref(ref, field="ref") == ref


@pytest.mark.parametrize(("ref", "rule"), [
    ("", "non-empty"),
    ("-main", "starts with '-'"),
    ("a..b", "'..'"),
    ("main@{1}", "'@{}'"),
    ("@", "'@{}'"),
    ("a b", "space"),
    ("a\tb", "space"),
    ("a\x00b", "control"),
    ("a\x7fb", "control"),
    ("main~1", "~ ^ :"),
    ("main^", "~ ^ :"),
    ("a:b", "~ ^ :"),
    ("a?", "~ ^ :"),
    ("a*", "~ ^ :"),
    ("a[0]", "~ ^ :"),
    ("a\\b", "~ ^ :"),
    ("topic.lock", ".lock"),
    ("a.lock/b", ".lock"),
    (".hidden", "starts with '.'"),
    ("a/.b", "starts with '.'"),
    ("a/", "end with '/'"),
    ("/a", "start or end with '/'"),
    ("a//b", "'//'"),
    ("a.", "end with '.'"),
    ("x" * 256, "at most 255"),
])
def test_an_invalid_git_ref_is_refused_naming_the_field_and_the_rule(ref: str, rule: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validation.git_ref(ref, field="default_ref")

    assert list(caught.value.message_dict) == ["default_ref"]
    assert rule in caught.value.message_dict["default_ref"][0]


@pytest.mark.parametrize("url", [
    "https://github.com/acme/app.git", "http://git.internal/app.git", "ssh://git@github.com/acme/app.git",
    "ssh://git@git.internal:2222/app.git", "git@github.com:acme/app.git", "git.internal:app.git",
    "ssh://[::1]/srv/app.git", "git://git.internal/app.git", "file:///srv/git/app.git", "/srv/git/app.git",
])
def test_a_supported_git_url_passes(url: str) -> None:
    assert validation.git_url(url) == url


# -- the API ---------------------------------------------------------------------------------------------------


def test_staff_create_list_change_and_delete_a_repository_and_each_change_is_audited(operator: APIClient) -> None:
    created = _create(operator, credentials={"token": TOKEN, "username": "x-access-token"}, default_ref="main",
                      push_prefix="scheduler/")

    assert created.status_code == 201, created.json()
    body = created.json()
    assert (body["name"], body["tenant"], body["url"], body["default_ref"], body["push_prefix"]) == (
        "app", "acme", URL, "main", "scheduler/")
    assert (body["has_credentials"], body["credential_names"], body["created_by"]) == (
        True, ["token", "username"], "keyholder")
    assert "credentials" not in body
    repository = Repository.objects.get()
    assert repository.credentials == {"token": TOKEN, "username": "x-access-token"}
    assert TOKEN not in repository.credentials_encrypted

    listed = operator.get("/api/v1/repositories/")
    detail = operator.get("/api/v1/repositories/app/?tenant=acme")
    changed = operator.patch("/api/v1/repositories/app/?tenant=acme", {"default_ref": "release/1.x"}, format="json")
    rotated = operator.patch("/api/v1/repositories/app/?tenant=acme", {"credentials": {"token": TOKEN + "-new"}},
                             format="json")
    cleared = operator.patch("/api/v1/repositories/app/?tenant=acme", {"credentials": {}}, format="json")

    assert [r["name"] for r in listed.json()] == ["app"] and detail.json()["url"] == URL
    assert (changed.status_code, changed.json()["default_ref"]) == (200, "release/1.x")
    assert rotated.json()["credential_names"] == ["token"]
    assert (cleared.json()["has_credentials"], cleared.json()["credential_names"]) == (False, [])
    for response in (created, listed, detail, changed, rotated, cleared):
        _no_secret(response.content.decode())
    assert operator.delete("/api/v1/repositories/app/?tenant=acme").status_code == 204
    assert not Repository.objects.exists()

    events = list(AuditEvent.objects.filter(object_type="repository").order_by("id")
                  .values_list("actor", "source", "action", "object_id", "changed"))
    assert events == [
        ("keyholder", "api", "create", "acme/app", ["credentials.token", "credentials.username", "default_ref", "name",
                                                    "push_prefix", "tenant", "url"]),
        ("keyholder", "api", "update", "acme/app", ["default_ref"]),
        ("keyholder", "api", "update", "acme/app", ["credentials.token", "credentials.username"]),
        ("keyholder", "api", "update", "acme/app", ["credentials.token"]),
        ("keyholder", "api", "delete", "acme/app", []),
    ]
    _no_secret_in_audit()


def test_an_ssh_key_is_stored_with_its_final_newline_and_shown_as_a_key_name(operator: APIClient) -> None:
    response = _create(operator, url="git@github.com:acme/app.git",
                       credentials={"ssh_key": SSH_KEY.rstrip("\n").replace("\n", "\r\n")})

    assert response.status_code == 201, response.json()
    assert response.json()["credential_names"] == ["ssh_key"]
    assert Repository.objects.get().credentials == {"ssh_key": SSH_KEY}
    _no_secret(response.content.decode())


@pytest.mark.parametrize(("url", "rule"), [
    ("ext::sh -c touch% /tmp/pwned", "spaces"),
    ("ext::ssh", "remote-helper form 'ext::'"),
    ("fd::17", "remote-helper form 'fd::'"),
    ("transport::https://github.com/x", "remote-helper"),
    ("-uhelp", "must not start with '-'"),
    ("--upload-pack=touch%20/tmp/x", "must not start with '-'"),
    ("https://user:hunter2@github.com/acme/app.git", "put the token"),
    ("https://ghp_abc@github.com/acme/app.git", "put the token"),
    ("ssh://git:hunter2@github.com/acme/app.git", "password"),
    ("git:hunter2@github.com:acme/app.git", "password"),
    ("ssh://-oProxyCommand=touch%20x/app", "host"),
    ("ssh://git@-oProxyCommand=x/app", "host"),
    ("https:///acme/app.git", "host"),
    ("https://github.com/acme app.git", "spaces"),
    ("https://github.com/acme/app.git\n", "control"),
    ("ftp://example.com/app.git", "scheme ftp://"),
    ("relative/app.git", "absolute local path"),
    ("file://app.git", "absolute path"),
    ("https://github.com/" + "a" * 1000, "1000 characters"),
])
def test_a_bad_url_is_400_naming_the_field_and_the_rule_and_writes_nothing(operator: APIClient, url: str,
                                                                           rule: str) -> None:
    response = _create(operator, url=url)

    assert response.status_code == 400
    assert list(response.json()) == ["url"], response.json()
    assert rule in response.json()["url"][0]
    _nothing_written()


@pytest.mark.parametrize(("body", "field", "rule"), [
    ({"name": "Bad Name"}, "name", "slug"),
    ({"name": "-app"}, "name", "slug"),
    ({"name": "a" * 101}, "name", "100"),
    ({"tenant": "acme corp"}, "tenant", "letters, digits"),
    ({"default_ref": "main..dev"}, "default_ref", "'..'"),
    ({"default_ref": "-b"}, "default_ref", "'-'"),
    ({"push_prefix": "-x/"}, "push_prefix", "not a valid branch name"),
    ({"push_prefix": "ai bot/"}, "push_prefix", "not a valid branch name"),
    ({"push_prefix": ".hidden/"}, "push_prefix", "not a valid branch name"),
    ({"push_prefix": "x" * 101}, "push_prefix", "100"),
    ({"credentials": {"password": "p"}}, "credentials", "unknown key 'password'"),
    ({"credentials": {"token": TOKEN, "ssh_key": SSH_KEY}}, "credentials", "cannot be combined"),
    ({"credentials": {"username": "ana"}}, "credentials", "goes with a token"),
    ({"credentials": {"token": "two words"}}, "credentials", "without spaces"),
    ({"credentials": {"token": TOKEN, "username": "a:b"}}, "credentials", "or :"),
    ({"credentials": {"ssh_key": "ssh-ed25519 AAAA… (a public key)"}}, "credentials", "private key block"),
    ({"credentials": {"token": ""}}, "credentials", "blank"),
    ({"credentials": {"token": 42}}, "credentials", "string"),
    ({"credentials": ["token"]}, "credentials", "dict"),
    ({"credentials": {"ssh_key": SSH_KEY}}, "credentials", "but the URL is https"),
    ({"url": "git@github.com:acme/app.git", "credentials": {"token": TOKEN}}, "credentials", "but the URL is ssh"),
    ({"url": "http://git.internal/app.git", "credentials": {"token": TOKEN}}, "url", "unencrypted"),
    ({"colour": "red"}, "colour", "not a field"),
])
def test_bad_repository_input_is_400_naming_the_field_and_writes_nothing(operator: APIClient, body: dict,
                                                                         field: str, rule: str) -> None:
    response = _create(operator, **body)

    assert response.status_code == 400
    assert field in response.json(), response.json()
    assert rule in json.dumps(response.json()[field]), response.json()
    _no_secret(response.content.decode())
    _nothing_written()


def test_every_bad_field_is_named_at_once(operator: APIClient) -> None:
    response = _create(operator, name="Bad Name", url="ext::x", default_ref="a..b")

    assert response.status_code == 400
    assert set(response.json()) == {"name", "url", "default_ref"}
    _nothing_written()


def test_a_duplicate_name_is_400_in_its_tenant_and_fine_in_another(staff: APIClient) -> None:
    assert _create(staff).status_code == 201
    duplicate = _create(staff, url="https://github.com/acme/other.git")
    elsewhere = _create(staff, tenant="globex")

    assert duplicate.status_code == 400
    assert duplicate.json() == {"name": ["a repository named 'app' already exists in tenant 'acme'"]}
    assert elsewhere.status_code == 201
    assert Repository.objects.get(tenant="acme").url == URL


def test_a_patch_may_not_rename_or_move_a_repository(operator: APIClient) -> None:
    _repo()

    response = operator.patch("/api/v1/repositories/app/?tenant=acme", {"name": "other", "tenant": "globex"},
                              format="json")

    assert response.status_code == 400
    assert response.json() == {"name": ["is read-only here"], "tenant": ["is read-only here"]}
    assert Repository.objects.get().name == "app"


def test_a_bad_change_is_400_and_changes_nothing(operator: APIClient) -> None:
    _repo(credentials={"token": TOKEN})

    for body, field in (({"url": "ext::x"}, "url"), ({"default_ref": "x y"}, "default_ref"),
                        ({"url": "git@github.com:acme/app.git"}, "credentials"),
                        ({"url": "http://github.com/acme/app.git"}, "url")):
        response = operator.patch("/api/v1/repositories/app/?tenant=acme", body, format="json")
        assert response.status_code == 400 and field in response.json(), response.json()

    repository = Repository.objects.get()
    assert (repository.url, repository.default_ref, repository.credentials) == (URL, "HEAD", {"token": TOKEN})
    assert not AuditEvent.objects.filter(object_type="repository", action="update").exists()


# -- tenants and permissions -----------------------------------------------------------------------------------


def test_tenants_see_and_use_only_their_own_repositories(alice: APIClient, bob: APIClient,
                                                         staff: APIClient) -> None:
    _repo("app", "acme")
    _repo("app", "globex", url="https://github.com/globex/app.git")
    _repo("secret-b", "globex", url="https://github.com/globex/secret.git")

    assert [(r["tenant"], r["name"]) for r in alice.get("/api/v1/repositories/").json()] == [("acme", "app")]
    assert alice.get("/api/v1/repositories/app/").json()["url"] == URL
    assert bob.get("/api/v1/repositories/app/").json()["url"] == "https://github.com/globex/app.git"
    assert alice.get("/api/v1/repositories/secret-b/").status_code == 404
    assert alice.get("/api/v1/repositories/app/?tenant=globex").status_code == 404
    assert alice.get("/api/v1/repositories/?tenant=globex").json() == []
    assert alice.get("/api/v1/repositories/?tenant=%00").status_code == 400
    # Staff see every tenant's, and name one other than their own to reach a repository by name.
    assert len(staff.get("/api/v1/repositories/").json()) == 3
    assert staff.get("/api/v1/repositories/?tenant=globex").json()[0]["tenant"] == "globex"
    assert staff.get("/api/v1/repositories/app/").status_code == 404  # staff's own tenant is "ops"
    assert staff.get("/api/v1/repositories/secret-b/?tenant=globex").status_code == 200

    used = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", "repository": "secret-b"}, format="json")
    assert used.status_code == 400
    assert used.json() == {"repository": ["no repository named 'secret-b' in tenant 'acme'"]}
    assert Task.objects.count() == 0


def test_only_staff_create_change_or_delete_repositories(alice: APIClient) -> None:
    _repo()

    assert _create(alice, name="mine").status_code == 403
    assert alice.patch("/api/v1/repositories/app/", {"default_ref": "dev"}, format="json").status_code == 403
    assert alice.delete("/api/v1/repositories/app/").status_code == 403
    assert list(Repository.objects.values_list("name", "default_ref")) == [("app", "HEAD")]
    assert AuditEvent.objects.filter(object_type="repository").count() == 1  # the set-up's create


def test_credentials_and_where_they_go_need_manage_credentials(staff: APIClient, operator: APIClient) -> None:
    refused = _create(staff, credentials={"token": TOKEN})
    assert refused.status_code == 403
    assert "tasks_app.manage_credentials" in refused.json()["detail"]
    _nothing_written()

    assert _create(staff).status_code == 201  # no credentials: any staff
    assert staff.patch("/api/v1/repositories/app/?tenant=acme", {"url": URL + "x"}, format="json").status_code == 200
    assert operator.patch("/api/v1/repositories/app/?tenant=acme", {"credentials": {"token": TOKEN}},
                          format="json").status_code == 200
    for body in ({"url": "https://attacker.example/app.git"}, {"push_prefix": "x/"}, {"credentials": {}}):
        response = staff.patch("/api/v1/repositories/app/?tenant=acme", body, format="json")
        assert response.status_code == 403, body
        assert "tasks_app.manage_credentials" in response.json()["detail"]
    same_url = staff.patch("/api/v1/repositories/app/?tenant=acme", {"url": URL + "x", "default_ref": "dev"},
                           format="json")
    assert same_url.status_code == 200  # unchanged url, and a ref: nothing about the secret
    repository = Repository.objects.get()
    assert (repository.url, repository.push_prefix, repository.default_ref) == (URL + "x", "", "dev")
    assert repository.credentials == {"token": TOKEN}


def test_a_repository_used_by_tasks_cannot_be_deleted_and_says_by_how_many(alice: APIClient,
                                                                          staff: APIClient) -> None:
    _repo()
    task_id = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", "repository": "app"},
                         format="json").json()["id"]

    first = staff.delete("/api/v1/repositories/app/?tenant=acme")
    task_cancel(task_id=task_id, source="api")
    second = staff.delete("/api/v1/repositories/app/?tenant=acme")

    assert (first.status_code, second.status_code) == (409, 409)
    assert "used by 1 task (1 unfinished)" in first.json()["detail"]
    assert "used by 1 task (0 unfinished)" in second.json()["detail"]
    assert Repository.objects.exists()
    assert not AuditEvent.objects.filter(object_type="repository", action="delete").exists()


# -- tasks on a repository -------------------------------------------------------------------------------------


def test_a_task_names_a_repository_and_ref_and_shows_them(alice: APIClient) -> None:
    _repo()

    created = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "fix it", "repository": "app",
                                            "ref": "v1.2", "idempotency_key": "k"}, format="json")
    plain = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "no repo"}, format="json")

    assert created.status_code == 201, created.json()
    assert (created.json()["repository"], created.json()["ref"]) == ("app", "v1.2")
    assert (plain.json()["repository"], plain.json()["ref"]) == (None, "")
    task = Task.objects.get(pk=created.json()["id"])
    assert (task.repository.name, task.ref) == ("app", "v1.2")
    listed = {t["id"]: (t["repository"], t["ref"]) for t in alice.get("/api/v1/tasks/").json()["results"]}
    assert listed[str(task.pk)] == ("app", "v1.2")
    # The repository and ref are part of the request an idempotency key stands for.
    again = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "fix it", "repository": "app",
                                          "ref": "v1.2", "idempotency_key": "k"}, format="json")
    other_ref = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "fix it", "repository": "app",
                                              "ref": "v1.3", "idempotency_key": "k"}, format="json")
    assert (again.status_code, again.json()["id"], other_ref.status_code) == (200, str(task.pk), 409)


def test_an_empty_ref_means_the_repositorys_default_at_run_time() -> None:
    _repo(default_ref="main")

    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", repository="app"), tenant="acme", source="api")

    assert (task.repository.default_ref, task.ref) == ("main", "")


@pytest.mark.parametrize(("body", "field", "rule"), [
    ({"ref": "main"}, "ref", "give repository as well"),
    ({"repository": "app", "ref": "main..dev"}, "ref", "'..'"),
    ({"repository": "app", "ref": "-x"}, "ref", "'-'"),
    ({"repository": "app", "ref": "a b"}, "ref", "space"),
    ({"repository": "nope"}, "repository", "no repository named 'nope' in tenant 'acme'"),
    ({"repository": "bad name\u0000"}, "repository", "Null characters"),
    ({"repository": ""}, "repository", "blank"),
    ({"repository": 7}, "repository", "must be a string"),
    ({"ref": 7, "repository": "app"}, "ref", "must be a string"),
])
def test_a_bad_repository_or_ref_on_a_task_is_400_and_writes_nothing(alice: APIClient, body: dict, field: str,
                                                                     rule: str) -> None:
    _repo()

    response = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", **body}, format="json")

    assert response.status_code == 400
    assert field in response.json() and rule in response.json()[field][0], response.json()
    assert (Task.objects.count(), TaskEvent.objects.count(), TaskFile.objects.count()) == (0, 0, 0)


@pytest.mark.parametrize("path", [".git/hooks/post-checkout", ".git", "sub/.git/config", ".GIT/config",
                                  "vendor/lib/.Git/hooks/pre-push"])
def test_no_input_may_write_under_git_dir_for_any_task(alice: APIClient, path: str) -> None:
    _repo()

    for extra in ({}, {"repository": "app"}):
        response = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", **extra,
                                                 "input_files": [{"path": path, "content": "#!/bin/sh\nid\n"}]},
                              format="json")
        assert response.status_code == 400
        assert "would write under .git/" in response.json()["input_files[0].path"][0]
    with pytest.raises(ValidationError, match=r"would write under \.git/"):
        task_create(spec=TaskSpec(tool="claude", prompt="p", input_files=[InputFile(path, b"x")]), source="cli")
    assert (Task.objects.count(), TaskFile.objects.count()) == (0, 0)


def test_outputs_under_git_dir_are_refused_and_look_alikes_are_not(alice: APIClient) -> None:
    refused = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p",
                                            "output_files": ["out.md", ".git/config", "a/.git/**"]}, format="json")
    assert refused.status_code == 400
    assert set(refused.json()) == {"output_files[1]", "output_files[2]"}
    assert "under .git/" in refused.json()["output_files[1]"][0]
    assert Task.objects.count() == 0

    allowed = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", "output_files": [".gitignore"],
                                            "input_files": [{"path": ".github/workflows/ci.yml", "content": "x"},
                                                            {"path": ".gitattributes", "content": "x"}]},
                         format="json")
    assert allowed.status_code == 201, allowed.json()


def test_runs_and_task_detail_show_what_a_run_on_a_repository_did(alice: APIClient) -> None:
    _repo()
    task_id = alice.post("/api/v1/tasks/", {"tool": "claude", "prompt": "p", "repository": "app"},
                         format="json").json()["id"]
    # Set-up only: a worker records these when the run finishes.
    TaskRun.objects.create(task_id=task_id, attempt=1, lease_token=task_id, status="succeeded", base_sha="a" * 40,
                           diff_stat={"files": 3, "insertions": 10, "deletions": 2},
                           pushed_branch=f"scheduler/{task_id}", pushed_sha="b" * 40, resumed_session_id="sess-1")
    TaskRun.objects.create(task_id=task_id, attempt=2, lease_token=task_id, status="running")

    runs = alice.get(f"/api/v1/tasks/{task_id}/runs/").json()
    latest = alice.get(f"/api/v1/tasks/{task_id}/").json()["latest_run"]

    assert [(r["attempt"], r["base_sha"], r["diff_stat"], r["pushed_branch"], r["pushed_sha"],
             r["resumed_session_id"]) for r in runs] == [
        (2, "", None, "", "", ""),
        (1, "a" * 40, {"files": 3, "insertions": 10, "deletions": 2}, f"scheduler/{task_id}", "b" * 40, "sess-1")]
    assert (latest["attempt"], latest["diff_stat"]) == (2, None)


# -- schedulerctl ----------------------------------------------------------------------------------------------


def test_repos_add_list_and_rm_read_the_secret_from_the_environment(monkeypatch, capsys) -> None:
    monkeypatch.setenv("APP_TOKEN", TOKEN)

    assert run(["repos", "add", "app", URL, "--ref", "main", "--push-prefix", "scheduler/", "--token-env",
                "APP_TOKEN", "--username", "x-access-token", "--tenant", "acme"]) == 0
    added = capsys.readouterr().out
    assert run(["repos", "list", "--tenant", "acme", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert run(["repos", "list", "--tenant", "globex", "--json"]) == 0
    other_tenant = json.loads(capsys.readouterr().out)

    assert "repository app (tenant acme)" in added and "credentials: token, username" in added
    assert [(r["name"], r["url"], r["default_ref"], r["push_prefix"], r["credential_names"]) for r in listed] == [
        ("app", URL, "main", "scheduler/", ["token", "username"])]
    assert other_tenant == []
    assert Repository.objects.get().credentials == {"token": TOKEN, "username": "x-access-token"}
    assert run(["repos", "rm", "app", "--tenant", "acme"]) == 0
    out = capsys.readouterr()
    _no_secret(added + json.dumps(listed) + out.out + out.err)
    assert list(AuditEvent.objects.filter(object_type="repository").order_by("id").values_list("source", "action")) == [
        ("cli", "create"), ("cli", "delete")]
    _no_secret_in_audit()


def test_repos_add_takes_an_ssh_key_from_a_file(tmp_path, capsys) -> None:
    key_file = tmp_path / "deploy_key"
    key_file.write_text(SSH_KEY)

    assert run(["repos", "add", "app", "git@github.com:acme/app.git", "--ssh-key-file", str(key_file),
                "--json"]) == 0

    assert json.loads(capsys.readouterr().out)["credential_names"] == ["ssh_key"]
    assert Repository.objects.get(tenant="default").credentials == {"ssh_key": SSH_KEY}


@pytest.mark.parametrize(("argv", "message"), [
    (["repos", "add", "app", "ext::sh"], "url (URL): the remote-helper form 'ext::'"),
    (["repos", "add", "app", URL, "--ref", "a..b"], "default_ref (--ref): "),
    (["repos", "add", "app", URL, "--push-prefix=-x"], "push_prefix (--push-prefix): "),
    (["repos", "add", "Bad Name", URL], "name (NAME): must be a slug"),
    (["repos", "add", "app", URL, "--token-env", "UNSET_VARIABLE_X"], "--token-env: UNSET_VARIABLE_X is not set"),
    (["repos", "add", "app", URL, "--token", TOKEN], "--token-env: the variable given is not set"),
    (["repos", "add", "app", URL, "--ssh-key-file", "/nonexistent/key"], "--ssh-key-file '/nonexistent/key': no such"),
    (["repos", "add", "app", URL, "--username", "ana"], "--username goes with --token-env"),
    (["repos", "add", "app", URL, "--token-env", "X", "--ssh-key-file", "k"], "not allowed with argument"),
    (["repos", "rm", "nope"], "no repository 'nope' in tenant 'default'"),
])
def test_bad_repos_input_exits_non_zero_with_one_line_naming_the_option(argv, message, capsys) -> None:
    code = run(argv)

    err = capsys.readouterr().err
    assert code == (1 if argv[1] == "rm" else 2)
    assert err.count("\n") == 1 and err.startswith("schedulerctl: error: ")
    assert message in err
    assert TOKEN not in err
    _nothing_written()


def test_repos_rm_of_a_repository_in_use_exits_1_naming_the_count(capsys) -> None:
    _repo(tenant="default")
    task_create(spec=TaskSpec(tool="claude", prompt="p", repository="app"), source="cli")

    assert run(["repos", "rm", "app"]) == 1

    assert "is used by 1 task (1 unfinished)" in capsys.readouterr().err
    assert Repository.objects.exists()


def test_enqueue_on_a_repository_and_get_shows_the_ref_and_each_runs_change(capsys) -> None:
    _repo(tenant="default", default_ref="main")

    assert run(["enqueue", "claude", "fix the bug", "--repo", "app", "--ref", "v1", "--json"]) == 0
    task_id = json.loads(capsys.readouterr().out)["id"]
    assert run(["enqueue", "claude", "again", "--repo", "app", "--json"]) == 0
    default_id = json.loads(capsys.readouterr().out)["id"]
    TaskRun.objects.create(task_id=task_id, attempt=1, lease_token=task_id, status="failed", base_sha="c" * 40,
                           diff_stat={"files": 0, "insertions": 0, "deletions": 0})
    TaskRun.objects.create(task_id=task_id, attempt=2, lease_token=task_id, status="succeeded", base_sha="c" * 40,
                           diff_stat={"files": 3, "insertions": 10, "deletions": 2}, pushed_branch="ai/x")

    assert run(["get", task_id]) == 0
    shown = capsys.readouterr().out
    assert run(["get", default_id]) == 0
    shown_default = capsys.readouterr().out
    assert run(["get", task_id, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)

    assert "repository: app@v1" in shown
    assert "3 files, +10 -2" in shown and "no change" in shown and "ai/x" in shown and "c" * 12 in shown
    assert "repository: app@main (its default)" in shown_default
    assert (data["repository"], data["ref"], data["runs"][0]["pushed_branch"]) == ("app", "v1", "ai/x")


@pytest.mark.parametrize(("argv", "message"), [
    (["enqueue", "claude", "p", "--ref", "main"], "ref (--ref): names a commit of the task's repository"),
    (["enqueue", "claude", "p", "--repo", "nope"], "repository (--repo): no repository named 'nope'"),
    (["enqueue", "claude", "p", "--repo", "app", "--ref", "x~1"], "ref (--ref): "),
])
def test_bad_enqueue_repo_input_exits_2_naming_the_option(argv, message, capsys) -> None:
    _repo(tenant="default")

    assert run(argv) == 2

    assert message in capsys.readouterr().err
    assert Task.objects.count() == 0


# -- the admin -------------------------------------------------------------------------------------------------


def _admin_form(**overrides: Any) -> dict[str, Any]:
    data = {"tenant": "acme", "name": "app", "url": URL, "default_ref": "HEAD", "push_prefix": "", "token": "",
            "username": "", "ssh_key": ""}
    data.update(overrides)
    return data


def test_admin_creates_a_repository_through_the_service_and_never_shows_the_token(admin_client: Client) -> None:
    response = admin_client.post("/admin/tasks_app/repository/add/",
                                 _admin_form(token=TOKEN, username="x-access-token", push_prefix="scheduler/"))

    assert response.status_code == 302, response.context["adminform"].form.errors
    repository = Repository.objects.get()
    assert (repository.tenant, repository.push_prefix, repository.created_by) == ("acme", "scheduler/", "admin")
    assert repository.credentials == {"token": TOKEN, "username": "x-access-token"}
    change_page = admin_client.get(f"/admin/tasks_app/repository/{repository.pk}/change/").content.decode()
    listing = admin_client.get("/admin/tasks_app/repository/").content.decode()
    assert "<code>token</code>" in change_page and 'name="token"' in change_page and 'name="ssh_key"' in change_page
    assert "scheduler/" in listing and URL in listing
    _no_secret(change_page + listing)
    event = AuditEvent.objects.get(object_type="repository")
    assert (event.actor, event.source, event.action) == ("admin", "admin", "create")
    assert "credentials.token" in event.changed
    _no_secret_in_audit()


def test_admin_changes_replace_or_clear_the_credentials_through_the_service(admin_client: Client) -> None:
    repository = _repo(url="git@github.com:acme/app.git", credentials={"ssh_key": SSH_KEY})
    url = f"/admin/tasks_app/repository/{repository.pk}/change/"

    kept = admin_client.post(url, _admin_form(url="git@github.com:acme/app.git", default_ref="main"))
    assert kept.status_code == 302, kept.context["adminform"].form.errors
    repository.refresh_from_db()
    assert (repository.default_ref, repository.credentials) == ("main", {"ssh_key": SSH_KEY})

    refused = admin_client.post(url, _admin_form(url="git@github.com:acme/app.git", default_ref="main",
                                                 ssh_key="not a key " + TOKEN))
    assert refused.status_code == 200
    assert "private key block" in str(refused.context["adminform"].form.errors["ssh_key"])
    _no_secret(refused.content.decode())

    cleared = admin_client.post(url, _admin_form(url="git@github.com:acme/app.git", default_ref="main",
                                                 clear_credentials="on"))
    assert cleared.status_code == 302
    repository.refresh_from_db()
    assert repository.credentials == {}
    assert list(AuditEvent.objects.filter(object_type="repository", action="update").order_by("id")
                .values_list("changed", flat=True)) == [["default_ref"], ["credentials.ssh_key"]]


def test_admin_form_shows_a_bad_url_as_a_field_error_and_writes_nothing(admin_client: Client) -> None:
    response = admin_client.post("/admin/tasks_app/repository/add/", _admin_form(url="ext::sh"))

    assert response.status_code == 200
    assert "remote-helper" in str(response.context["adminform"].form.errors["url"])
    _nothing_written()


def test_admin_hides_the_secret_boxes_without_manage_credentials_and_locks_where_they_go() -> None:
    repository = _repo(credentials={"token": TOKEN})
    user = get_user_model().objects.create_user(username="viewer", password="pw", is_staff=True)
    for codename in ("view_repository", "change_repository"):
        user.user_permissions.add(Permission.objects.get(codename=codename))
    browser = Client()
    browser.force_login(user)
    url = f"/admin/tasks_app/repository/{repository.pk}/change/"

    page = browser.get(url).content.decode()
    response = browser.post(url, _admin_form(url="https://attacker.example/app.git", default_ref="dev",
                                             token="stolen-token-123"))

    assert 'name="token"' not in page and 'name="ssh_key"' not in page
    assert "needs the permission tasks_app.manage_credentials" in page
    assert response.status_code == 302, response.context["adminform"].form.errors
    repository.refresh_from_db()
    assert (repository.url, repository.default_ref, repository.credentials) == (URL, "dev", {"token": TOKEN})
    _no_secret(page)


def test_admin_delete_goes_through_the_service_and_is_audited(admin_client: Client) -> None:
    repository = _repo()

    response = admin_client.post(f"/admin/tasks_app/repository/{repository.pk}/delete/", {"post": "yes"})

    assert response.status_code == 302
    assert not Repository.objects.exists()
    assert AuditEvent.objects.filter(object_type="repository", action="delete", source="admin").exists()


def test_the_task_admin_shows_the_repository_ref_and_each_runs_change(admin_client: Client) -> None:
    _repo(tenant="default")
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="p", repository="app", ref="v9"), source="api")
    run_row = TaskRun.objects.create(task=task, attempt=1, lease_token=task.pk, status="succeeded",
                                     base_sha="d" * 40, diff_stat={"files": 1, "insertions": 4, "deletions": 0},
                                     pushed_branch="scheduler/x")

    task_page = admin_client.get(f"/admin/tasks_app/task/{task.pk}/change/").content.decode()
    run_page = admin_client.get(f"/admin/tasks_app/taskrun/{run_row.pk}/change/").content.decode()

    for page in (task_page, run_page):
        assert "d" * 40 in page and "1 file, +4 -0" in page and "scheduler/x" in page
    assert "v9" in task_page and ">app<" in task_page


# -- never logged ----------------------------------------------------------------------------------------------


def test_credentials_never_reach_the_logs(operator: APIClient, monkeypatch, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("APP_TOKEN", TOKEN)

    assert _create(operator, credentials={"token": TOKEN}).status_code == 201
    assert operator.patch("/api/v1/repositories/app/?tenant=acme",
                          {"credentials": {"token": TOKEN + "2"}}, format="json").status_code == 200
    assert _create(operator, name="bad", credentials={"token": TOKEN + " x"}).status_code == 400
    assert run(["repos", "add", "cli-app", URL, "--token-env", "APP_TOKEN", "--tenant", "acme"]) == 0

    assert "repository acme/app created" in caplog.text and "repository acme/cli-app created" in caplog.text
    _no_secret(caplog.text)
