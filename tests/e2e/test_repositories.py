"""Runs on repositories with real workers and sandboxed stand-ins (issue 17): the CLI works in a checkout of exactly
repo@ref, its change comes back as a patch that applies (and as a pushed branch), follow-ups and resumed attempts
start from the change before them, and two runs on one box share the mirror but not a checkout."""

from __future__ import annotations

import base64
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from executors.base import WorkspaceSpec
from executors.git import mirror_path
from tasks_app.models import Repository, Task, TaskFile, TaskRun
from tasks_app.services.followups import task_follow_up
from tasks_app.services.groups import group_create
from tasks_app.services.tasks import TaskSpec, task_create
from tests.conftest import WorkerProcesses
from tests.e2e.test_pipeline import fake, wait_terminal
from tests.fakes.githttp import GitHttpServer

pytestmark = pytest.mark.e2e
FAST = {"SCHEDULER_CANCEL_POLL_SECONDS": "0.2"}
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def git(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> str:
    result = subprocess.run(["git", *args], cwd=cwd, input=stdin, capture_output=True, timeout=60, check=True,
                            env={"PATH": os.environ["PATH"], "HOME": "/nonexistent", **GIT_ENV})
    return result.stdout.decode().strip()


def make_origin(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A bare repository with history: v1, then v2 on main, and a feature branch. Returns it and the shas."""
    src = tmp_path / "src"
    git("init", "-q", "-b", "main", str(src))
    (src / "README.md").write_text("v1\n")
    (src / "app.py").write_text("print('app')\n")
    git("add", "-A", cwd=src)
    git("commit", "-qm", "v1", cwd=src)
    shas = {"v1": git("rev-parse", "HEAD", cwd=src)}
    git("checkout", "-qb", "feature", cwd=src)
    (src / "README.md").write_text("feature\n")
    git("commit", "-qam", "feature", cwd=src)
    shas["feature"] = git("rev-parse", "HEAD", cwd=src)
    git("checkout", "-q", "main", cwd=src)
    (src / "README.md").write_text("v2\n")
    git("commit", "-qam", "v2", cwd=src)
    shas["main"] = git("rev-parse", "HEAD", cwd=src)
    origin = tmp_path / "origin.git"
    git("clone", "-q", "--bare", str(src), str(origin))
    return origin, shas


def outputs(task: Task) -> dict[str, bytes]:
    run = TaskRun.objects.filter(task=task).order_by("-attempt").first()
    return {f.path: f.read_bytes() for f in TaskFile.objects.filter(run=run, direction="output")}


def applies_on(origin: Path, base_sha: str, patch: bytes, tmp_path: Path, name: str) -> Path:
    """A fresh clone of `origin` at `base_sha` with `patch` applied (git apply must accept it)."""
    checkout = tmp_path / name
    git("clone", "-q", str(origin), str(checkout))
    git("checkout", "-q", "--detach", base_sha, cwd=checkout)
    git("apply", "--binary", "--index", "-", cwd=checkout, stdin=patch)
    return checkout


def _starts(log: Path) -> list[dict[str, Any]]:
    return [line for line in map(json.loads, log.read_text().splitlines()) if line["event"] == "start"]


@pytest.fixture
def claude_on_repo(workers: WorkerProcesses, tmp_path: Path):
    origin, shas = make_origin(tmp_path)
    repository = Repository.objects.create(name="app", url=str(origin), default_ref="main", push_prefix="sched/")
    log = tmp_path / "fake.jsonl"
    group_create(tool="claude", account="main", max_concurrent=2,
                 env={"CLAUDE_CONFIG_DIR": str(tmp_path / "claude-state"), "FAKE_CLI_LOG": str(log)})
    env = {**FAST, "SCHEDULER_RATE_LIMIT_MIN_COOLDOWN_SECONDS": "1", "SCHEDULER_RETRY_BASE_SECONDS": "0.2",
           "SCHEDULER_RETRY_MAX_SECONDS": "0.5"}
    workers.start("control", concurrency=1, env=env)
    workers.start("claude-main", concurrency=2, env=env)
    return origin, shas, repository, log


def test_the_cli_sees_exactly_repo_at_ref_and_its_change_comes_back_as_a_patch_and_a_branch(
        claude_on_repo, workers: WorkerProcesses, tmp_path: Path) -> None:
    origin, shas, _, _ = claude_on_repo
    on_feature, _ = task_create(spec=TaskSpec(
        tool="claude", prompt=fake("fix it", write={"fix.txt": "fixed\n", "docs/new.md": "# new\n"}),
        output_files=["README.md"], repository="app", ref="feature"), source="api")
    on_sha, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("look"), output_files=["README.md"],
                                          repository="app", ref=shas["v1"][:10]), source="api")

    feature_task, sha_task = wait_terminal(on_feature.pk, on_sha.pk, timeout=120)

    assert feature_task.status == sha_task.status == "succeeded", workers.logs()
    feature_run, sha_run = (TaskRun.objects.get(task=t) for t in (feature_task, sha_task))
    assert (feature_run.base_sha, sha_run.base_sha) == (shas["feature"], shas["v1"])
    assert outputs(sha_task)["README.md"] == b"v1\n" and "changes.patch" not in outputs(sha_task)
    assert sha_run.diff_stat == {"files": 0, "insertions": 0, "deletions": 0} and not sha_run.pushed_branch
    files = outputs(feature_task)
    assert files["README.md"] == b"feature\n"
    assert feature_run.diff_stat == {"files": 2, "insertions": 2, "deletions": 0}
    checkout = applies_on(origin, feature_run.base_sha, files["changes.patch"], tmp_path, "replay")
    assert (checkout / "fix.txt").read_text() == "fixed\n" and (checkout / "docs/new.md").read_text() == "# new\n"
    # Pushed to <push_prefix><task id> on the origin: the same tree as the patch gives.
    assert feature_run.pushed_branch == f"sched/{feature_task.pk}"
    assert git("rev-parse", f"refs/heads/sched/{feature_task.pk}", cwd=origin) == feature_run.pushed_sha
    assert git("show", f"{feature_run.pushed_sha}:fix.txt", cwd=origin) == "fixed"
    assert git("rev-parse", f"{feature_run.pushed_sha}^", cwd=origin) == shas["feature"]


def test_two_runs_on_one_box_share_the_mirror_not_the_checkout(claude_on_repo, workers: WorkerProcesses) -> None:
    mirrors = Path(settings.VAR_DIR) / "mirrors"
    before = set(os.listdir(mirrors)) if mirrors.exists() else set()
    first, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("a", sleep=1.5, write={"a.txt": "a\n"}),
                                         repository="app"), source="api")
    second, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("b", sleep=1.5, write={"b.txt": "b\n"}),
                                          repository="app"), source="api")

    done = wait_terminal(first.pk, second.pk, timeout=120)

    assert [t.status for t in done] == ["succeeded", "succeeded"], workers.logs()
    runs = [TaskRun.objects.get(task=t) for t in done]
    assert runs[0].started_at < runs[1].finished_at and runs[1].started_at < runs[0].finished_at  # at once
    patches = [outputs(t)["changes.patch"].decode() for t in done]
    assert "a.txt" in patches[0] and "b.txt" not in patches[0]
    assert "b.txt" in patches[1] and "a.txt" not in patches[1]
    assert len({name for name in os.listdir(mirrors) if not name.endswith(".lock")} - before) == 1


def test_a_follow_up_on_a_repository_starts_from_the_parents_change(claude_on_repo, workers: WorkerProcesses,
                                                                   tmp_path: Path) -> None:
    origin, shas, _, log = claude_on_repo
    parent, _ = task_create(spec=TaskSpec(tool="claude", prompt=fake("fix", write={"fix.txt": "fixed\n"}),
                                          repository="app", output_files=["fix.txt"]), source="api")
    (parent,) = wait_terminal(parent.pk, timeout=120)
    assert parent.status == "succeeded", workers.logs()
    # The branch moves on meanwhile: the follow-up still builds on the parent's commit.
    src = tmp_path / "src"
    (src / "late.txt").write_text("late\n")
    git("add", "-A", cwd=src)
    git("commit", "-qm", "late", cwd=src)
    git("push", "-q", str(origin), "main", cwd=src)

    child = task_follow_up(task_id=parent.pk, prompt=fake("add a test", write={"test_fix.txt": "ok\n"}),
                           source="api")
    (child,) = wait_terminal(child.pk, timeout=120)

    assert child.status == "succeeded", workers.logs()
    child_run, parent_run = TaskRun.objects.get(task=child), TaskRun.objects.get(task=parent)
    assert child_run.base_sha == parent_run.base_sha == shas["main"]
    files = outputs(child)
    assert files["fix.txt"] == b"fixed\n"  # the parent's change was in its checkout
    checkout = applies_on(origin, child_run.base_sha, files["changes.patch"], tmp_path, "replay")
    assert (checkout / "fix.txt").exists() and (checkout / "test_fix.txt").exists()  # the whole conversation's
    assert not (checkout / "late.txt").exists()
    assert _starts(log)[-1]["resumed"] == parent_run.session_id


def test_a_run_cut_off_by_a_usage_limit_resumes_its_session_with_its_work_kept(claude_on_repo,
                                                                              workers: WorkerProcesses,
                                                                              tmp_path: Path) -> None:
    origin, _, _, log = claude_on_repo
    prompt = fake("long job", scenario="rate_limit", reset_in=1, once_key=f"limit-{tmp_path}",
                  write_early={"part1.txt": "half done\n"})
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt=prompt, repository="app", max_attempts=3),
                          source="api")

    (task,) = wait_terminal(task.pk, timeout=120)

    assert task.status == "succeeded", workers.logs()
    first, second = TaskRun.objects.filter(task=task).order_by("attempt")
    assert first.failure_kind == "rate_limited" and first.session_id
    assert second.resumed_session_id == first.session_id == second.session_id  # the run says it resumed
    starts = _starts(log)
    assert starts[-1]["resumed"] == first.session_id and starts[-1]["history"] == 1
    assert second.worker_group_id == first.worker_group_id and second.base_sha == first.base_sha
    checkout = applies_on(origin, second.base_sha, outputs(task)["changes.patch"], tmp_path, "replay")
    assert (checkout / "part1.txt").read_text() == "half done\n"  # the work before the limit was kept


TOKEN = "ghp-private-token-4242"


def test_a_private_repository_is_fetched_with_its_token_which_the_cli_never_sees(
        workers: WorkerProcesses, tmp_path: Path) -> None:
    origin, shas = make_origin(tmp_path)
    git("config", "http.receivepack", "true", cwd=origin)
    log = tmp_path / "fake.jsonl"
    group_create(tool="claude", account="main", env={"FAKE_CLI_LOG": str(log)})
    workers.start("control", concurrency=1, env=FAST)
    workers.start("claude-main", concurrency=1, env=FAST)
    with GitHttpServer(tmp_path, token=TOKEN) as host:
        # Straight to the table: the services refuse a token over plain http, and this loopback host has no TLS.
        repository = Repository.objects.create(name="private", url=host.url("origin.git"), push_prefix="sched/")
        repository.credentials = {"token": TOKEN}
        repository.save()
        mirrors = Path(settings.VAR_DIR) / "mirrors"
        mirror = mirror_path(WorkspaceSpec(url=repository.url, ref="HEAD", mirror_root=mirrors))
        probes = [str(mirrors), str(mirror), str(mirror / "config")]
        task, _ = task_create(spec=TaskSpec(
            tool="claude", prompt=fake("snoop", hostile="findings.json", probe=probes, dump_env="env.json",
                                       write={"fix.txt": "fixed\n"}),
            repository="private", output_files=["findings.json", "env.json"]), source="api")

        (task,) = wait_terminal(task.pk, timeout=120)

    assert task.status == "succeeded", workers.logs()
    run = TaskRun.objects.get(task=task)
    assert run.base_sha == shas["main"] and run.pushed_branch == f"sched/{task.pk}"
    assert git("rev-parse", f"refs/heads/sched/{task.pk}", cwd=origin) == run.pushed_sha
    assert any(authorized for _, _, authorized in host.requests)  # the fetch and the push used the token
    files = outputs(task)
    findings = json.loads(files["findings.json"])
    assert findings["listed"] and "fixed" not in json.dumps(findings["probes"])  # it looked around
    secret_forms = [TOKEN, base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()]
    recorded = {
        "what the CLI could read": files["findings.json"].decode(),
        "the CLI's environment": files["env.json"].decode(),
        "the patch": files["changes.patch"].decode(),
        "the run's argv": json.dumps(run.command),
        "the run's output": run.stdout + run.stderr + run.error_message,
        "the task's result": json.dumps(task.result),
        "the worker logs": workers.logs(tail=None),
        "the stand-in's log": log.read_text(),
    }
    for where, text in recorded.items():
        assert not any(secret in text for secret in secret_forms), where
    # Of the box's mirrors only this repository's objects are in the sandbox (read-only): not its config, not others.
    assert findings["probes"][str(mirrors)] == [mirror.name] and findings["probes"][str(mirror)] == ["objects"]
    assert findings["probes"][str(mirror / "config")] is None
