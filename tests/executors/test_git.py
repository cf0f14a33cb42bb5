"""A run on repo@ref: the checkout, the change as a patch, the push, the mirror, credentials, and a git that cannot
be turned against the worker (executors/git.py). Real git on real local repositories; nothing mocked."""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors.base import WorkspaceSpec
from executors.git import WorkspaceError, mirror_path, scratch_dir, workspace_change, workspace_prepare
from tests.fakes.githttp import GitHttpServer
from tests.gitrepos import BINARY, Origin, git, make_origin, tree_at, tree_of

TIMEOUT = 60.0
TOKEN = "ghp_private-token-7731"


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return make_origin(tmp_path / "remote")


def _spec(origin: Origin | str, tmp_path: Path, ref: str = "main", **fields: object) -> WorkspaceSpec:
    url = origin.url if isinstance(origin, Origin) else origin
    return WorkspaceSpec(url=url, ref=ref, mirror_root=tmp_path / "mirrors", **fields)  # type: ignore[arg-type]


def _work_dir(tmp_path: Path, name: str = "work") -> Path:
    work = tmp_path / "runs" / name
    work.mkdir(parents=True)
    return work


def _prepare(spec: WorkspaceSpec, tmp_path: Path, name: str = "work") -> tuple[Path, str]:
    work = _work_dir(tmp_path, name)
    return work, workspace_prepare(spec, work, timeout=TIMEOUT)


def _status(work: Path) -> str:
    return git("status", "--porcelain", "--untracked-files=all", cwd=work)


# -- the checkout ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("ref", "commit"), [
    ("main", "second"), ("feature", "feature"), ("v1", "tagged"), ("HEAD", "second"), ("refs/tags/v1", "tagged"),
    ("<full>", "first"), ("<abbreviated>", "first"),
])
def test_a_branch_tag_commit_or_abbreviated_commit_checks_out_exactly_that_tree(
    ref: str, commit: str, origin: Origin, tmp_path: Path
) -> None:
    ref = {"<full>": origin.commits["first"], "<abbreviated>": origin.commits["first"][:9]}.get(ref, ref)

    work, base_sha = _prepare(_spec(origin, tmp_path, ref), tmp_path)

    assert base_sha == origin.commits[commit]
    assert tree_of(work) == tree_at(origin, base_sha, tmp_path / "expected")
    assert git("rev-parse", "HEAD", cwd=work) == base_sha
    assert _status(work) == ""  # the CLI starts from a clean tree
    assert git("remote", cwd=work) == ""  # nothing to fetch from, nothing to push with
    assert not (work / ".git" / "hooks").exists()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["work"]  # git's scratch dir is gone


def test_the_checkout_borrows_the_mirrors_objects_without_copying_or_linking_them(origin: Origin,
                                                                                  tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)

    work, _ = _prepare(spec, tmp_path)

    alternates = (work / ".git" / "objects" / "info" / "alternates").read_text()
    assert alternates == f"{mirror_path(spec) / 'objects'}\n"
    def inodes(folder: Path) -> set[tuple[int, int]]:
        return {(p.stat().st_dev, p.stat().st_ino) for p in folder.rglob("*") if p.is_file() and not p.is_symlink()}

    assert inodes(mirror_path(spec) / "objects")
    assert not inodes(mirror_path(spec) / "objects") & inodes(work)  # no hardlink the CLI could write through
    assert not list((work / ".git" / "objects" / "pack").iterdir())  # and no copy
    assert git("log", "--format=%s", cwd=work).splitlines() == ["second", "first"]  # history through them


def test_an_unknown_ref_is_an_error_naming_it_and_leaves_the_work_dir_empty(origin: Origin, tmp_path: Path) -> None:
    work = _work_dir(tmp_path)

    with pytest.raises(WorkspaceError, match=r"ref 'no-such-branch' not found in .*origin\.git"):
        workspace_prepare(_spec(origin, tmp_path, "no-such-branch"), work, timeout=TIMEOUT)

    assert list(work.iterdir()) == []


@pytest.mark.parametrize("ref", ["--upload-pack=touch MARK", "main..feature", "main@{1}", "a b", "x:y", ""])
def test_a_ref_that_is_not_a_plain_name_never_reaches_git(ref: str, origin: Origin, tmp_path: Path) -> None:
    work = _work_dir(tmp_path)

    with pytest.raises(WorkspaceError, match="is not a valid branch, tag or commit name"):
        workspace_prepare(_spec(origin, tmp_path, ref), work, timeout=TIMEOUT)

    assert not (tmp_path / "mirrors").exists()
    assert list(work.iterdir()) == []


def test_a_work_dir_that_is_not_empty_is_refused(origin: Origin, tmp_path: Path) -> None:
    work = _work_dir(tmp_path)
    (work / "stray.txt").write_text("x")

    with pytest.raises(WorkspaceError, match="must be an existing empty directory"):
        workspace_prepare(_spec(origin, tmp_path), work, timeout=TIMEOUT)


# -- the change ------------------------------------------------------------------------------------------------


def _edit(work: Path) -> None:
    """What a CLI does: modify, add (a binary file, a file in a new dir), delete, a symlink (pointing outside),
    an ignored file and a mode change."""
    (work / "README.md").write_text("hello\nchanged world\nand more\n")
    (work / "new" / "deep").mkdir(parents=True)
    (work / "new" / "deep" / "blob.bin").write_bytes(BINARY[::-1])
    (work / "notes.txt").write_text("a\nb\n")
    (work / "src" / "app.py").unlink()
    (work / "escape").symlink_to("/etc/passwd")
    (work / "debug.log").write_text("ignored by .gitignore")
    (work / "data.bin").chmod(0o755)


def test_the_change_is_a_binary_patch_that_reproduces_the_tree_on_a_fresh_clone(origin: Origin,
                                                                              tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path)
    _edit(work)

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert change.base_sha == base_sha and change.error == ""
    # README (+2 -1), new/deep/blob.bin (binary), notes.txt (+2), src/app.py (-1), escape (+1), data.bin (mode)
    assert (change.files, change.insertions, change.deletions) == (6, 5, 2)
    assert b"GIT binary patch" in change.patch and b"new file mode 120000" in change.patch
    assert b"debug.log" not in change.patch
    assert b"root:" not in change.patch  # the symlink is recorded, never followed
    expected = tree_of(work, skip=(".git", "debug.log"))
    assert tree_at(origin, base_sha, tmp_path / "replay", patches=(change.patch,)) == expected
    assert os.access(tmp_path / "replay" / "data.bin", os.X_OK)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["work"]


def test_no_change_is_an_empty_patch(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path)
    (work / "build.log").write_text("ignored")

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert (change.patch, change.files, change.insertions, change.deletions, change.changed) == (b"", 0, 0, 0, False)
    assert change.base_sha == base_sha


def test_excluded_paths_and_nested_repositories_are_left_out(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path, exclude=("/parent-task-7/", "brief [draft].md", ""))
    work, base_sha = _prepare(spec, tmp_path)
    (work / "parent-task-7").mkdir()
    (work / "parent-task-7" / "out.txt").write_text("a parent's output")
    (work / "brief [draft].md").write_text("an input")
    (work / "vendor").mkdir()
    git("clone", "-q", origin.url, str(work / "vendor" / "lib"))  # a clone the CLI made
    (work / "empty-repo").mkdir()
    git("init", "-q", str(work / "empty-repo"))  # no commit: `git add` alone would fail on it
    (work / "kept.txt").write_text("kept\n")

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert change.files == 1
    assert b"kept.txt" in change.patch
    for left_out in (b"parent-task-7", b"brief [draft]", b"vendor", b"empty-repo"):
        assert left_out not in change.patch
    # The CLI's own git leaves them out too (.git/info/exclude).
    assert "parent-task-7" not in _status(work) and "draft" not in _status(work)


def test_a_cli_that_commits_resets_and_adds_hooks_changes_nothing_recorded_and_runs_no_hook(
    origin: Origin, tmp_path: Path
) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path)
    (work / "fix.txt").write_text("the fix\n")
    git("add", "-A", cwd=work)
    git("commit", "-q", "-m", "the CLI's own commit", cwd=work)
    git("update-ref", "refs/heads/fake", origin.commits["feature"], cwd=work)
    git("reset", "-q", "--soft", origin.commits["feature"], cwd=work)  # history rewritten under the change
    marker = tmp_path / "hook-ran"
    hook = _script(tmp_path / "hook.sh", f"touch {marker}")
    hooks = work / ".git" / "hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-checkout", "reference-transaction", "post-index-change", "pre-push"):
        (hooks / name).symlink_to(hook)
    with (work / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {hook}\n\thooksPath = {hooks}\n[diff]\n\texternal = {hook}\n"
                     f"[filter \"x\"]\n\tclean = {hook}\n")
    (work / ".gitattributes").write_text("* filter=x\n")

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert change.files == 2  # fix.txt and .gitattributes, against the mirror's base
    assert b"+the fix" in change.patch and b"feature.txt" not in change.patch
    assert not marker.exists()


def test_a_git_dir_replaced_by_a_symlink_elsewhere_is_not_read(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path)
    decoy = tmp_path / "decoy"
    git("clone", "-q", origin.url, str(decoy))
    marker = tmp_path / "hook-ran"
    with (decoy / ".git" / "config").open("a") as config:
        config.write(f"[core]\n\tfsmonitor = {_script(tmp_path / 'hook.sh', f'touch {marker}')}\n")
    shutil.rmtree(work / ".git")
    (work / ".git").symlink_to(decoy / ".git")
    (work / "fix.txt").write_text("fix\n")

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert change.files == 1 and b"fix.txt" in change.patch
    assert not marker.exists()
    assert not (decoy / ".git" / "index.lock").exists() and (decoy / ".git").is_dir()


def test_a_work_dir_replaced_by_a_symlink_is_refused(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path)
    secret = tmp_path / "elsewhere"
    secret.mkdir()
    (secret / "id_rsa").write_text("PRIVATE")
    work.rename(tmp_path / "runs" / "gone")
    work.symlink_to(secret)

    with pytest.raises(WorkspaceError, match="the work dir was replaced"):
        workspace_change(spec, work, base_sha, timeout=TIMEOUT)


def test_a_change_bigger_than_the_limit_is_refused_before_it_is_written(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path)
    (work / "huge.bin").write_bytes(os.urandom(200_000))

    with pytest.raises(WorkspaceError, match=r"the change adds 200000 bytes of content, more than the limit 100000"):
        workspace_change(spec, work, base_sha, timeout=TIMEOUT, max_patch_bytes=100_000)


# -- base patches (follow-ups) ---------------------------------------------------------------------------------


def test_base_patches_are_committed_and_the_next_change_is_the_whole_conversations(origin: Origin,
                                                                                   tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    work, base_sha = _prepare(spec, tmp_path, "parent")
    _edit(work)
    first_change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)
    first = first_change.patch
    parent_tree = tree_of(work, skip=(".git", "debug.log"))
    follow_up = _spec(origin, tmp_path, base_patches=(first,))

    work, follow_up_base = _prepare(follow_up, tmp_path, "follow-up")

    assert follow_up_base == base_sha  # the ref's commit; the patches are on top of it
    assert tree_of(work) == parent_tree
    assert _status(work) == ""
    assert git("log", "-1", "--format=%an <%ae>|%s", cwd=work) == (
        "CLI Scheduler <scheduler@localhost>|Base patch 1 of 1 (an earlier run's change)")
    assert git("rev-parse", "HEAD~1", cwd=work) == base_sha

    (work / "notes.txt").write_text("a\nb\nc\n")
    second = workspace_change(follow_up, work, follow_up_base, timeout=TIMEOUT)

    # Cumulative: the parent's change and this turn's, against the same base commit; applied alone on it, the
    # latest patch gives the state the conversation left.
    assert (second.files, second.insertions) == (first_change.files, first_change.insertions + 1)
    replay = tree_at(origin, base_sha, tmp_path / "replay", patches=(second.patch,))
    assert replay == tree_of(work, skip=(".git",))


def test_a_base_patch_that_does_not_apply_is_an_error(origin: Origin, tmp_path: Path) -> None:
    broken = b"diff --git a/nope.txt b/nope.txt\n--- a/nope.txt\n+++ b/nope.txt\n@@ -1 +1 @@\n-x\n+y\n"

    with pytest.raises(WorkspaceError, match=r"applying base patch 1 failed: .*nope\.txt"):
        _prepare(_spec(origin, tmp_path, base_patches=(broken,)), tmp_path)


# -- push ------------------------------------------------------------------------------------------------------


def test_the_change_is_pushed_to_its_branch_and_a_retry_force_updates_it(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path, push_branch="scheduler/task-42")
    work, base_sha = _prepare(spec, tmp_path, "attempt-1")
    (work / "fix.txt").write_text("first attempt\n")

    first = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert (first.pushed_branch, first.error) == ("scheduler/task-42", "")
    assert git("rev-parse", "refs/heads/scheduler/task-42", cwd=origin.bare) == first.pushed_sha
    assert git("rev-parse", f"{first.pushed_sha}^", cwd=origin.bare) == base_sha
    assert git("show", f"{first.pushed_sha}:fix.txt", cwd=origin.bare) == "first attempt"
    assert git("log", "-1", "--format=%an <%ae>", first.pushed_sha, cwd=origin.bare) == (
        "CLI Scheduler <scheduler@localhost>")

    work, base_sha = _prepare(spec, tmp_path, "attempt-2")
    (work / "fix.txt").write_text("second attempt\n")
    second = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert second.pushed_sha != first.pushed_sha  # not a fast-forward of the first: forced
    assert git("rev-parse", "refs/heads/scheduler/task-42", cwd=origin.bare) == second.pushed_sha


def test_no_change_pushes_nothing(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path, push_branch="scheduler/task-43")
    work, base_sha = _prepare(spec, tmp_path)

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert (change.pushed_branch, change.pushed_sha) == ("", "")
    assert git("branch", "--list", "scheduler/*", cwd=origin.bare) == ""


def test_a_refused_push_keeps_the_patch_and_says_why(origin: Origin, tmp_path: Path) -> None:
    git("config", "receive.denyNonFastForwards", "true", cwd=origin.bare)
    spec = _spec(origin, tmp_path, push_branch="feature")  # exists; our commit does not descend from it
    work, base_sha = _prepare(spec, tmp_path)
    (work / "fix.txt").write_text("fix\n")

    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert change.changed and b"fix.txt" in change.patch
    assert (change.pushed_branch, change.pushed_sha) == ("", "")
    assert change.error.startswith("pushing to feature failed: ")
    assert git("rev-parse", "refs/heads/feature", cwd=origin.bare) == origin.commits["feature"]


# -- the mirror ------------------------------------------------------------------------------------------------


def test_a_later_prepare_fetches_into_the_same_mirror_and_sees_new_commits(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    _prepare(spec, tmp_path, "one")
    mirror = mirror_path(spec)
    made = (mirror.stat().st_ino, (mirror / "objects").stat().st_ino)
    newer = origin.commit({"later.txt": b"later\n"})

    work, base_sha = _prepare(spec, tmp_path, "two")

    assert base_sha == newer
    assert (work / "later.txt").read_text() == "later\n"
    assert (mirror.stat().st_ino, (mirror / "objects").stat().st_ino) == made  # fetched, not cloned again
    assert sorted(p.name for p in (tmp_path / "mirrors").iterdir()) == [mirror.name, mirror.name[:-4] + ".lock"]


def test_a_full_commit_the_mirror_holds_needs_no_fetch(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path, origin.commits["feature"])
    _prepare(spec, tmp_path, "one")
    origin.bare.rename(tmp_path / "remote" / "gone.git")  # the host is unreachable now

    work, base_sha = _prepare(spec, tmp_path, "two")

    assert base_sha == origin.commits["feature"] and (work / "feature.txt").exists()
    with pytest.raises(WorkspaceError, match=r"fetching .*origin\.git failed"):
        _prepare(_spec(origin, tmp_path, "main"), tmp_path, "three")  # a branch always fetches


def test_two_prepares_of_one_repository_at_once_share_one_mirror(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(origin, tmp_path)
    works = [_work_dir(tmp_path, f"run-{n}") for n in range(2)]
    start = threading.Barrier(2, timeout=30)
    results: dict[int, str | BaseException] = {}

    def run(n: int) -> None:
        start.wait()
        try:
            results[n] = workspace_prepare(spec, works[n], timeout=TIMEOUT)
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=TIMEOUT)

    assert results == {0: origin.commits["second"], 1: origin.commits["second"]}
    assert tree_of(works[0]) == tree_of(works[1]) == tree_at(origin, origin.commits["second"], tmp_path / "x")
    assert [p.name for p in (tmp_path / "mirrors").iterdir() if p.is_dir()] == [mirror_path(spec).name]


def test_a_mirror_whose_first_fetch_failed_is_not_kept(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-repository.git")

    with pytest.raises(WorkspaceError, match=r"fetching .*no-such-repository\.git failed"):
        _prepare(_spec(missing, tmp_path), tmp_path)

    assert [p.name for p in (tmp_path / "mirrors").iterdir() if p.is_dir()] == []


# -- credentials over HTTPS (a private host) -------------------------------------------------------------------


@pytest.fixture
def private_host(tmp_path: Path, origin: Origin) -> Iterator[GitHttpServer]:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copytree(origin.bare, served / "private.git", symlinks=True)
    git("config", "http.receivepack", "true", cwd=served / "private.git")
    with GitHttpServer(served, token=TOKEN) as server:
        yield server


@pytest.fixture
def git_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every git command the module launches: a `git` first on PATH that logs its argv and environment names,
    then runs the real git."""
    log = tmp_path / "git-calls.jsonl"
    shim = tmp_path / "shim"
    shim.mkdir()
    real = shutil.which("git")
    _script(shim / "git", f"""#!/usr/bin/python3
import json, os, sys
with open({str(log)!r}, "a") as f:
    f.write(json.dumps({{"argv": sys.argv[1:], "env": sorted(os.environ)}}) + "\\n")
os.execv({real!r}, ["git", *sys.argv[1:]])
""", raw=True)
    monkeypatch.setenv("PATH", f"{shim}:{os.environ['PATH']}")
    monkeypatch.setenv("DATABASE_URL", "postgres://worker:db-secret-55@db/scheduler")
    return log


def _secret_forms() -> list[str]:
    return [TOKEN, base64.b64encode(f"x-access-token:{TOKEN}".encode()).decode()]


def test_a_private_repository_is_fetched_and_pushed_with_a_token_that_never_lands_anywhere(
    private_host: GitHttpServer, origin: Origin, git_calls: Path, tmp_path: Path
) -> None:
    spec = _spec(private_host.url("private.git"), tmp_path, credentials={"token": TOKEN}, push_branch="from-run")

    work, base_sha = _prepare(spec, tmp_path)
    (work / "fix.txt").write_text("fix\n")
    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert base_sha == origin.commits["second"]
    assert (change.error, change.pushed_branch) == ("", "from-run")
    assert git("rev-parse", "refs/heads/from-run", cwd=tmp_path / "served" / "private.git") == change.pushed_sha
    assert any(authorized for _, _, authorized in private_host.requests)
    calls = [json.loads(line) for line in git_calls.read_text().splitlines()]
    assert any("fetch" in c["argv"] for c in calls) and any("push" in c["argv"] for c in calls)
    for call in calls:
        argv = " ".join(call["argv"])
        assert not any(secret in argv for secret in _secret_forms())
        assert "DATABASE_URL" not in call["env"]  # git's environment is built from nothing
        if "fetch" in call["argv"] or "push" in call["argv"]:
            assert "GIT_CONFIG_COUNT" in call["env"]  # the header goes through git's environment
    stored = b"".join(p.read_bytes() for folder in (work, tmp_path / "mirrors") for p in folder.rglob("*")
                      if p.is_file() and not p.is_symlink())
    assert not any(secret.encode() in stored for secret in _secret_forms())
    assert "[http" not in (work / ".git" / "config").read_text()


def test_a_private_repository_without_the_token_fails_cleanly(private_host: GitHttpServer, tmp_path: Path) -> None:
    work = _work_dir(tmp_path)

    with pytest.raises(WorkspaceError, match=r"fetching http://127\.0\.0\.1:\d+/private\.git failed: ") as caught:
        workspace_prepare(_spec(private_host.url("private.git"), tmp_path), work, timeout=TIMEOUT)

    assert list(work.iterdir()) == []
    assert not any(authorized for _, _, authorized in private_host.requests)
    assert len(str(caught.value)) < 400


def test_a_wrong_token_is_never_repeated_in_the_error(private_host: GitHttpServer, tmp_path: Path) -> None:
    wrong = "ghp_wrong-token-4410"
    spec = _spec(private_host.url("private.git"), tmp_path, credentials={"token": wrong, "username": "bot"})

    with pytest.raises(WorkspaceError) as caught:
        _prepare(spec, tmp_path)

    assert wrong not in str(caught.value)
    assert base64.b64encode(f"bot:{wrong}".encode()).decode() not in str(caught.value)


def test_an_ssh_key_is_used_from_a_private_file_that_is_gone_afterwards(origin: Origin, tmp_path: Path,
                                                                        git_calls: Path) -> None:
    key = ("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA-not-a-real-key\n"
           "-----END OPENSSH PRIVATE KEY-----")
    spec = _spec("ssh://git@127.0.0.1:1/nobody.git", tmp_path, credentials={"ssh_key": key})
    work = _work_dir(tmp_path)

    with pytest.raises(WorkspaceError, match=r"fetching ssh://git@127\.0\.0\.1:1/nobody\.git failed") as caught:
        workspace_prepare(spec, work, timeout=TIMEOUT)

    assert "not-a-real-key" not in str(caught.value)
    assert not scratch_dir(work).exists()  # the key file went with it
    (fetch,) = [json.loads(line) for line in git_calls.read_text().splitlines() if '"fetch"' in line]
    assert "GIT_SSH_COMMAND" in fetch["env"] and "not-a-real-key" not in json.dumps(fetch["argv"])


# -- a git that cannot be turned against the worker ------------------------------------------------------------


def _script(path: Path, body: str, *, raw: bool = False) -> Path:
    path.write_text(body if raw else f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def test_the_workers_environment_and_global_config_have_no_effect(origin: Origin, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    marker = tmp_path / "ran"
    hook = _script(tmp_path / "evil.sh", f"touch {marker}")
    hooks = tmp_path / "evil-hooks"
    hooks.mkdir()
    for name in ("pre-commit", "post-checkout", "reference-transaction", "post-index-change", "pre-push",
                 "post-commit", "pre-auto-gc"):
        (hooks / name).symlink_to(hook)
    evil = tmp_path / "evil.gitconfig"
    evil.write_text(f"[core]\n\tfsmonitor = {hook}\n\thooksPath = {hooks}\n\tsshCommand = {hook}\n"
                    f"\taskPass = {hook}\n[protocol \"ext\"]\n\tallow = always\n[credential]\n\thelper = !{hook}\n"
                    f"[url \"ext::{hook} %S \"]\n\tinsteadOf = {origin.url}\n[gc]\n\tauto = 1\n")
    home = tmp_path / "evil-home"
    home.mkdir()
    shutil.copy(evil, home / ".gitconfig")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(evil))
    monkeypatch.setenv("GIT_CONFIG_SYSTEM", str(evil))
    monkeypatch.setenv("GIT_CONFIG_PARAMETERS", f"'core.fsmonitor'='{hook}'")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "core.hooksPath")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", str(hooks))
    monkeypatch.setenv("GIT_SSH_COMMAND", str(hook))
    monkeypatch.setenv("GIT_ASKPASS", str(hook))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere.git"))
    monkeypatch.setenv("GIT_EXEC_PATH", str(hooks))
    spec = _spec(origin, tmp_path, push_branch="pushed", base_patches=(
        b"diff --git a/extra.txt b/extra.txt\nnew file mode 100644\n--- /dev/null\n+++ b/extra.txt\n@@ -0,0 +1 @@\n"
        b"+extra\n",))

    work, base_sha = _prepare(spec, tmp_path)
    (work / "fix.txt").write_text("fix\n")
    change = workspace_change(spec, work, base_sha, timeout=TIMEOUT)

    assert base_sha == origin.commits["second"] and (work / "extra.txt").read_text() == "extra\n"
    assert change.files == 2 and change.pushed_branch == "pushed" and change.error == ""  # the base patch too
    assert not marker.exists()
    assert not (tmp_path / "elsewhere.git").exists()


@pytest.mark.parametrize("url", ["ext::sh -c touch% {marker}", "fd::17", "-uhack", "file::{marker}"])
def test_transports_that_run_commands_are_refused(url: str, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    work = _work_dir(tmp_path)

    with pytest.raises(WorkspaceError, match=r"not allowed|is not a repository URL"):
        workspace_prepare(_spec(url.format(marker=marker), tmp_path), work, timeout=TIMEOUT)

    assert not marker.exists()


def test_git_is_stopped_at_the_steps_deadline(private_host: GitHttpServer, tmp_path: Path) -> None:
    private_host.hold()  # the host stops answering
    work = _work_dir(tmp_path)

    with pytest.raises(WorkspaceError, match=r"fetching .* timed out \(the repository steps may take 1s\)"):
        workspace_prepare(_spec(private_host.url("private.git"), tmp_path, credentials={"token": TOKEN}), work,
                          timeout=1.0)

    assert private_host.waiting.is_set()
    assert list(work.iterdir()) == [] and not scratch_dir(work).exists()


def test_a_cancel_stops_git_at_once(private_host: GitHttpServer, tmp_path: Path) -> None:
    private_host.hold()
    cancel = threading.Event()
    watcher = threading.Thread(target=lambda: private_host.waiting.wait(30) and cancel.set())
    watcher.start()

    with pytest.raises(WorkspaceError, match="canceled"):
        workspace_prepare(_spec(private_host.url("private.git"), tmp_path, credentials={"token": TOKEN}),
                          _work_dir(tmp_path), timeout=TIMEOUT, cancel=cancel)

    watcher.join(timeout=5)
    assert cancel.is_set()
