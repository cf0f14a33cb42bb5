"""Nothing of a run outlives it, and the sandbox holds: the runner, its supervisor and bubblewrap, with the
stand-in CLIs (no Django, no database)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

from executors import ADAPTERS, Control, ExecutionSpec
from executors.base import LeaseClock, Sandbox
from executors.runner import execute
from executors.sandbox import bwrap_check
from tests.procs import FAKES_BIN, cli_processes, processes_with_env

SECRET = "sk-ant-own-account-5f1"
needs_bwrap = pytest.mark.skipif(bool(bwrap_check()), reason="bubblewrap is installed by make test")
MODES = [pytest.param("bwrap", marks=needs_bwrap), "off"]


def _spec(tmp_path: Path, directive: dict[str, Any], *, mode: str = "bwrap", **fields: Any) -> ExecutionSpec:
    argv = ADAPTERS["claude"].build(binary=str(FAKES_BIN / "claude"), model="", extra_args=[], allow_dangerous=False)
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path / "home"), "LANG": "C.UTF-8",
           "FAKE_CLI_LOG": str(tmp_path / "shared" / "cli.log"), "ANTHROPIC_API_KEY": SECRET}
    sandbox = Sandbox(mode=mode, ro_paths=(str(FAKES_BIN.parent),), rw_paths=(str(tmp_path / "shared"),))
    (tmp_path / "shared").mkdir(exist_ok=True)
    fields.setdefault("kill_grace_seconds", 1.0)
    return ExecutionSpec(tool="claude", argv=argv, stdin=f"job\nFAKE: {json.dumps(directive)}".encode(), env=env,
                         work_dir=tmp_path / "work", sandbox=sandbox, secrets=(SECRET,), **fields)


def _events(tmp_path: Path, name: str) -> list[dict[str, Any]]:
    log = tmp_path / "shared" / "cli.log"
    lines = log.read_text().splitlines() if log.exists() else []
    return [entry for entry in map(json.loads, lines) if entry["event"] == name]


def _nothing_left(tmp_path: Path) -> bool:
    return not processes_with_env("FAKE_CLI_LOG", str(tmp_path / "shared" / "cli.log"))


@pytest.mark.parametrize("mode", MODES)
def test_a_detached_descendant_dies_with_a_run_that_exits(tmp_path: Path, mode: str) -> None:
    result = execute(_spec(tmp_path, {"detach": True, "answer": "fine"}, mode=mode))

    assert (result.failure_kind, result.final_message) == ("", "fine"), result.stderr
    assert _events(tmp_path, "detached")  # it did leave one behind
    assert _nothing_left(tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_timeout_kills_a_detached_descendant(tmp_path: Path, mode: str) -> None:
    started = time.monotonic()

    result = execute(_spec(tmp_path, {"detach": True, "scenario": "hang"}, mode=mode, timeout_seconds=1.5))

    assert result.failure_kind == "timeout"
    assert _events(tmp_path, "detached")
    assert _nothing_left(tmp_path)
    assert time.monotonic() - started < 1.5 + 1.0 + 5  # timeout + grace + slack: the SIGTERM-proof one too


@pytest.mark.parametrize("mode", MODES)
def test_cancel_kills_a_detached_descendant(tmp_path: Path, mode: str) -> None:
    def heartbeat() -> Control:
        return Control.CANCEL if _events(tmp_path, "detached") else Control.CONTINUE

    result = execute(_spec(tmp_path, {"detach": True, "scenario": "hang"}, mode=mode, heartbeat_interval=0.1),
                     heartbeat=heartbeat)

    assert result.failure_kind == "canceled"
    assert _nothing_left(tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_a_lease_that_is_not_renewed_kills_the_cli_before_it_ends(tmp_path: Path, mode: str) -> None:
    lease = LeaseClock(2.0, renewed_at=time.monotonic())

    result = execute(_spec(tmp_path, {"detach": True, "sleep": 30}, mode=mode), lease=lease)

    assert result.failure_kind == "worker_lost"
    assert time.monotonic() < lease.valid_until  # dead before the lease could be taken by anyone else
    assert result.exit_code == -9
    assert _nothing_left(tmp_path)


@pytest.mark.parametrize("mode", MODES)
def test_a_renewed_lease_keeps_the_cli_running(tmp_path: Path, mode: str) -> None:
    lease = LeaseClock(1.5, renewed_at=time.monotonic())

    def heartbeat() -> Control:
        lease.renewed(at=time.monotonic())
        return Control.CONTINUE

    result = execute(_spec(tmp_path, {"sleep": 3, "answer": "made it"}, mode=mode, heartbeat_interval=0.2),
                     heartbeat=heartbeat, lease=lease)

    assert (result.failure_kind, result.final_message) == ("", "made it"), result.stderr


@needs_bwrap
def test_the_sandbox_shows_the_cli_its_own_files_and_processes_only(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORKER_ONLY_SECRET", "worker-env-secret-93")
    (tmp_path / "beside-the-work-dir.txt").write_text("sibling-secret-47")
    state = tmp_path / "state"
    spec = _spec(tmp_path, {"hostile": "findings.json", "probe": [str(tmp_path), str(Path.home())]},
                 input_files=[("in/brief.txt", b"own-input-11")], output_patterns=["findings.json"])
    spec = ExecutionSpec(**{**spec.__dict__, "env": {**spec.env, "CLAUDE_CONFIG_DIR": str(state)},
                            "sandbox": Sandbox(**{**spec.sandbox.__dict__, "state_dirs": (str(state),)})})
    state.mkdir()
    (state / "session.json").write_text("own-state-29")

    result = execute(spec)

    assert result.failure_kind == "", result.stderr
    findings = json.loads(result.outputs[0].data)
    everything = json.dumps(findings)
    # Not vacuous: it read its own environment, its own input and its own state dir.
    assert SECRET in everything and "own-input-11" in everything and "own-state-29" in everything
    assert "worker-env-secret-93" not in everything and "sibling-secret-47" not in everything
    assert len(findings["environ"]) <= 3  # its own PID namespace: bwrap's init, itself, nothing of the box
    assert findings["probes"][str(Path.home())] is None
    assert findings["probes"][str(tmp_path)] == ["shared", "state", "work"]  # only what is bound, no sibling
    (start,) = _events(tmp_path, "start")
    assert start["cwd"] == str(tmp_path / "work")


def test_a_work_dir_replaced_by_a_symlink_fails_the_run_and_nothing_is_read_through_it(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "out.txt").write_text("not yours")

    result = execute(_spec(tmp_path, {"swap_workdir": str(outside), "write": {"out.txt": "mine"}}, mode="off",
                           output_patterns=["out.txt"]))

    assert result.failure_kind == "sandbox"
    assert result.error_message == "the work dir was replaced during the run; no outputs were collected"
    assert result.outputs == []
    assert not (tmp_path / "work").exists() and (outside / "out.txt").read_text() == "not yours"


@needs_bwrap
def test_a_cli_missing_inside_the_sandbox_setup_is_a_sandbox_failure(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no bwrap on the worker's PATH

    result = execute(_spec(tmp_path, {}))

    assert result.failure_kind == "sandbox"
    assert "SCHEDULER_SANDBOX=off" in result.error_message
    assert not cli_processes(tmp_path / "shared" / "cli.log")
