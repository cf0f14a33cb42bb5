"""Runs on a repository through the runner (issue 17): the checkout before the CLI, its change after it whatever the
outcome, `changes.patch`, the sandbox that shows one mirror's objects read-only, and `work_dir_inside`. The
stand-in CLIs and real git on local repositories; no Django, no database."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from executors import ADAPTERS, Control, ExecutionSpec
from executors.base import Sandbox, WorkspaceSpec
from executors.git import mirror_objects, mirror_path, scratch_dir, workspace_prepare
from executors.runner import execute
from executors.sandbox import SandboxError, bwrap_argv, bwrap_check
from tests.fakes.githttp import GitHttpServer
from tests.gitrepos import Origin, git, make_origin
from tests.procs import FAKES_BIN

needs_bwrap = pytest.mark.skipif(bool(bwrap_check()), reason="bubblewrap is installed by make test")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "off"]
TOKEN = "ghp_private-token-9120"
RESULT_LINE = '{"type":"result","subtype":"success","is_error":false,"result":"ok","session_id":"s1"}'


@pytest.fixture
def origin(tmp_path: Path) -> Origin:
    return make_origin(tmp_path / "remote")


def _spec(tmp_path: Path, directive: dict[str, Any] | None, *, workspace: WorkspaceSpec, mode: str = "off",
          argv: list[str] | None = None, **fields: Any) -> ExecutionSpec:
    (tmp_path / "shared").mkdir(exist_ok=True)
    if argv is None:
        argv = ADAPTERS["claude"].build(binary=str(FAKES_BIN / "claude"), model="", extra_args=[],
                                        allow_dangerous=False)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "FAKE_CLI_LOG": str(tmp_path / "shared" / "cli.log"), "ANTHROPIC_API_KEY": "sk-ant-test-1"}
    sandbox = Sandbox(mode=mode, ro_paths=(str(FAKES_BIN.parent),), rw_paths=(str(tmp_path / "shared"),))
    fields.setdefault("kill_grace_seconds", 1.0)
    return ExecutionSpec(tool="claude", argv=argv, stdin=f"job\nFAKE: {json.dumps(directive or {})}".encode(),
                         env=env, work_dir=tmp_path / "runs" / "task-1", sandbox=sandbox, workspace=workspace,
                         **fields)


def _workspace(origin: Origin | str, tmp_path: Path, **fields: Any) -> WorkspaceSpec:
    url = origin.url if isinstance(origin, Origin) else origin
    return WorkspaceSpec(url=url, ref=fields.pop("ref", "main"), mirror_root=tmp_path / "mirrors", **fields)


def _log(tmp_path: Path, event: str) -> list[dict[str, Any]]:
    log = tmp_path / "shared" / "cli.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [entry for entry in map(json.loads, lines) if entry["event"] == event]


def _shell_cli(script: str) -> list[str]:
    """A CLI that is a shell script ending with claude's success line: a CLI that uses git itself."""
    return ["sh", "-c", f"{script}\necho {shlex.quote(RESULT_LINE)}"]


# -- the run and its change ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
def test_a_run_on_a_repository_returns_its_change_as_changes_patch(mode: str, origin: Origin,
                                                                   tmp_path: Path) -> None:
    workspace = _workspace(origin, tmp_path)
    spec = _spec(tmp_path, {"write": {"fix.txt": "x"}}, workspace=workspace, mode=mode,
                 input_files=[("brief.md", b"the task's own input")], output_patterns=["fix.txt"])

    result = execute(spec)

    assert result.failure_kind == "", result.error_message
    assert result.change is not None
    assert (result.change.base_sha, result.change.files, result.change.error) == (origin.commits["second"], 1, "")
    assert b"+++ b/fix.txt" in result.change.patch and b"brief.md" not in result.change.patch
    assert {o.path: o.data for o in result.outputs} == {"fix.txt": b"x", "changes.patch": result.change.patch}
    assert {"repository_prepare_ms", "repository_change_ms"} <= set(result.details)
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == []  # work dir, TMPDIR, git scratch: gone
    (start,) = _log(tmp_path, "start")
    assert start["cwd"] == str(spec.work_dir)


@pytest.mark.parametrize("mode", MODES)
def test_the_cli_can_use_its_checkout_with_git(mode: str, origin: Origin, tmp_path: Path) -> None:
    script = """git status --porcelain --untracked-files=all > "$TMPDIR/status"
cp "$TMPDIR/status" status.txt
git log --format=%s > log.txt
echo made > made.txt
git add made.txt && git commit -q -m "the CLI's commit" > commit.txt 2>&1"""
    spec = _spec(tmp_path, None, workspace=_workspace(origin, tmp_path), mode=mode, argv=_shell_cli(script))

    result = execute(spec)

    assert result.failure_kind == "", (result.error_message, result.stderr)
    patch = result.change.patch.decode()
    assert _empty_file_added("status.txt") in patch  # clean at start: nothing changed, nothing untracked
    assert _empty_file_added("commit.txt") in patch  # its commit worked: an identity, no hook
    assert "+second\n+first\n" in patch
    assert "+++ b/made.txt\n@@ -0,0 +1 @@\n+made\n" in patch  # committed by the CLI, still its change


def _empty_file_added(name: str) -> str:
    return (f"diff --git a/{name} b/{name}\nnew file mode 100644\n"
            f"index {'0' * 40}..e69de29bb2d1d6434b8b29ae775ad8c2e48c5391\n")


def test_a_repository_that_cannot_be_prepared_fails_the_run_before_the_cli_starts(origin: Origin,
                                                                                   tmp_path: Path) -> None:
    result = execute(_spec(tmp_path, {"write": {"fix.txt": "x"}},
                           workspace=_workspace(origin, tmp_path, ref="no-such-branch")))

    assert result.failure_kind == "repository"
    assert result.error_message.startswith("ref 'no-such-branch' not found in ")
    assert result.change is None
    assert _log(tmp_path, "start") == []
    assert list((tmp_path / "runs").iterdir()) == []


@pytest.mark.parametrize("relative", [".git/hooks/post-checkout", "sub/.GIT/config", ".git"])
def test_an_input_file_inside_a_git_dir_is_refused(relative: str, origin: Origin, tmp_path: Path) -> None:
    result = execute(_spec(tmp_path, {}, workspace=_workspace(origin, tmp_path),
                           input_files=[(relative, b"#!/bin/sh\ntouch /tmp/pwned\n")]))

    assert result.failure_kind == "internal"
    assert result.error_message == f"input refused: {relative!r} is inside a .git directory"
    assert _log(tmp_path, "start") == []


def test_a_failed_run_still_records_its_change_but_it_is_no_output_and_is_not_pushed(origin: Origin,
                                                                                     tmp_path: Path) -> None:
    workspace = _workspace(origin, tmp_path, push_branch="scheduler/failed")
    spec = _spec(tmp_path, {"scenario": "exit", "symlink": {"made.lnk": "README.md"}}, workspace=workspace)

    result = execute(spec)

    assert result.failure_kind == "exit_code"
    assert result.change is not None and b"+++ b/made.lnk" in result.change.patch
    assert (result.change.pushed_branch, result.change.error) == ("", "")
    assert result.outputs == []
    assert git("branch", "--list", "scheduler/*", cwd=origin.bare) == ""


def test_a_timed_out_run_records_its_change(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"scenario": "hang", "symlink": {"made.lnk": "README.md"}},
                 workspace=_workspace(origin, tmp_path), timeout_seconds=1.0)

    result = execute(spec)

    assert result.failure_kind == "timeout"
    assert result.change is not None and result.change.files == 1


def test_a_canceled_run_records_its_change_all_the_same(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"scenario": "hang", "symlink": {"made.lnk": "README.md"}},
                 workspace=_workspace(origin, tmp_path), heartbeat_interval=0.05)

    # Canceled as soon as the CLI has started, and for ever after: the change step is not stopped by it.
    result = execute(spec, heartbeat=lambda: Control.CANCEL if _log(tmp_path, "start") else Control.CONTINUE)

    assert result.failure_kind == "canceled"
    assert result.change is not None and (result.change.files, result.change.error) == (1, "")


def test_a_successful_runs_change_is_pushed(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"write": {"fix.txt": "x"}},
                 workspace=_workspace(origin, tmp_path, push_branch="scheduler/task-1"))

    result = execute(spec)

    assert result.failure_kind == "" and result.change is not None
    assert result.change.pushed_branch == "scheduler/task-1"
    assert git("rev-parse", "refs/heads/scheduler/task-1", cwd=origin.bare) == result.change.pushed_sha


def test_a_change_that_cannot_be_recorded_fails_a_successful_run(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"write": {"big.txt": "y" * 5000}}, workspace=_workspace(origin, tmp_path),
                 max_total_output_bytes=1000)

    result = execute(spec)

    assert result.failure_kind == "repository"
    assert result.error_message == "the change adds 5000 bytes of content, more than the limit 1000"
    assert result.change is not None and result.change.error == result.error_message
    assert result.outputs == []


def test_a_work_dir_replaced_during_the_run_is_never_handed_to_git(origin: Origin, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("not yours")
    spec = _spec(tmp_path, {"swap_workdir": str(outside), "write": {"fix.txt": "x"}},
                 workspace=_workspace(origin, tmp_path))

    result = execute(spec)

    assert result.failure_kind == "sandbox"
    assert result.change is not None
    assert (result.change.patch, result.change.error) == (b"", "the work dir was replaced during the run")
    assert (outside / "secret.txt").read_text() == "not yours"


# -- the repository steps and the lease ------------------------------------------------------------------------


@pytest.fixture
def private_host(tmp_path: Path, origin: Origin) -> Iterator[GitHttpServer]:
    served = tmp_path / "served"
    served.mkdir()
    shutil.copytree(origin.bare, served / "private.git", symlinks=True)
    with GitHttpServer(served, token=TOKEN) as server:
        yield server


def test_a_cancel_during_the_checkout_stops_git_and_the_cli_never_starts(private_host: GitHttpServer,
                                                                         tmp_path: Path) -> None:
    private_host.hold()
    workspace = _workspace(private_host.url("private.git"), tmp_path, credentials={"token": TOKEN})
    spec = _spec(tmp_path, {}, workspace=workspace, heartbeat_interval=0.05)
    started = time.monotonic()

    result = execute(spec, heartbeat=lambda: Control.CANCEL if private_host.waiting.is_set() else Control.CONTINUE)

    assert result.failure_kind == "canceled"
    assert result.error_message == "canceled during the repository step (prepare); git was stopped"
    assert time.monotonic() - started < 10
    assert _log(tmp_path, "start") == []
    assert not scratch_dir(spec.work_dir).exists()


def test_the_heartbeat_goes_on_during_a_slow_checkout_and_it_is_not_the_clis_idle_time(
    private_host: GitHttpServer, tmp_path: Path
) -> None:
    private_host.hold()
    beats = 0

    def heartbeat() -> Control:
        nonlocal beats
        beats += 1
        if beats == 20:  # about 1 s of git, twice the CLI's idle timeout: then the host answers
            private_host.release()
        return Control.CONTINUE

    workspace = _workspace(private_host.url("private.git"), tmp_path, credentials={"token": TOKEN})
    spec = _spec(tmp_path, {"write": {"fix.txt": "x"}}, workspace=workspace, heartbeat_interval=0.05,
                 idle_timeout_seconds=0.5)

    result = execute(spec, heartbeat=heartbeat)

    assert result.failure_kind == "", result.error_message
    assert beats >= 20
    assert result.change is not None and result.change.files == 1


# -- the sandbox -----------------------------------------------------------------------------------------------


@needs_bwrap
@pytest.mark.parametrize("inside", ["/work/abc", "/tmp/conversations/abc"])
def test_work_dir_inside_is_where_the_cli_sees_its_checkout(inside: str, origin: Origin, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {"write": {"fix.txt": "x"}}, workspace=_workspace(origin, tmp_path), mode="bwrap",
                 work_dir_inside=inside)

    result = execute(spec)

    assert result.failure_kind == "", result.error_message
    (start,) = _log(tmp_path, "start")
    assert start["cwd"] == inside
    assert result.change is not None and b"fix.txt" in result.change.patch


def test_work_dir_inside_is_ignored_without_the_sandbox(origin: Origin, tmp_path: Path) -> None:
    spec = _spec(tmp_path, {}, workspace=_workspace(origin, tmp_path), work_dir_inside="/work/abc")

    result = execute(spec)

    assert result.failure_kind == "", result.error_message
    assert _log(tmp_path, "start")[0]["cwd"] == str(spec.work_dir)


@needs_bwrap
def test_the_sandbox_shows_this_mirrors_objects_read_only_and_nothing_else_of_the_mirrors(
    origin: Origin, tmp_path: Path
) -> None:
    other = make_origin(tmp_path / "other-remote", name="other")
    other_workspace = _workspace(other, tmp_path)
    (tmp_path / "elsewhere").mkdir()
    workspace_prepare(other_workspace, tmp_path / "elsewhere", timeout=60)  # another repository's mirror, here
    workspace = _workspace(origin, tmp_path, credentials={"token": TOKEN})
    objects = mirror_objects(workspace)
    probes = [str(tmp_path / "mirrors"), str(mirror_path(other_workspace)), str(mirror_path(workspace)),
              str(mirror_path(workspace) / "config"), str(objects / "info" / "alternates"), str(tmp_path)]
    script = f"""touch {objects}/planted 2> touch-error.txt
git cat-file -p HEAD > head.txt"""
    spec = _spec(tmp_path, {"hostile": "findings.json", "probe": probes}, workspace=workspace, mode="bwrap",
                 output_patterns=["findings.json"])

    result = execute(spec)

    assert result.failure_kind == "", result.error_message
    findings = json.loads(result.outputs[0].data)
    reached = findings["probes"]
    assert reached[str(tmp_path / "mirrors")] == [mirror_path(workspace).name]  # not the other repository's
    assert reached[str(mirror_path(other_workspace))] is None
    assert reached[str(mirror_path(workspace))] == ["objects"]  # no config, no refs, no lock
    assert reached[str(mirror_path(workspace) / "config")] is None
    assert sorted(reached[str(tmp_path)]) == ["mirrors", "runs", "shared"]  # no scratch, no remote, no other
    assert TOKEN not in json.dumps(findings)

    spec = _spec(tmp_path, None, workspace=workspace, mode="bwrap", argv=_shell_cli(script))
    result = execute(spec)

    assert result.failure_kind == "", (result.error_message, result.stderr)
    patch = result.change.patch.decode()
    assert "Read-only file system" in patch
    assert f"+tree {git('rev-parse', 'main^{tree}', cwd=origin.bare)}" in patch  # objects read through it
    assert not (objects / "planted").exists()


@needs_bwrap
def test_mirrors_inside_a_path_bound_into_the_sandbox_refuse_the_run(origin: Origin, tmp_path: Path) -> None:
    workspace = WorkspaceSpec(url=origin.url, ref="main", mirror_root=tmp_path / "shared" / "mirrors")
    spec = _spec(tmp_path, {"write": {"fix.txt": "x"}}, workspace=workspace, mode="bwrap")

    result = execute(spec)

    assert result.failure_kind == "sandbox"
    assert result.error_message == (f"the repository mirrors ({tmp_path / 'shared' / 'mirrors'}) must not be inside "
                                    f"a path bound into the sandbox ({tmp_path / 'shared'})")
    assert _log(tmp_path, "start") == []


@needs_bwrap
@pytest.mark.parametrize("inside", ["work/abc", "/usr/local/abc", "/proc/abc", "/work/../etc", "/", "/tmp/home"])
def test_a_work_dir_inside_that_is_not_a_plain_free_path_is_refused(inside: str, tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="cannot be the work dir inside the sandbox"):
        bwrap_argv(sandbox=Sandbox(mode="bwrap"), binary="/usr/bin/true", work_dir=tmp_path, env={},
                   work_dir_inside=inside)
