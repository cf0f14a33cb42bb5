"""Run one CLI: fresh work dir, clean env, the sandbox, bounded capture; a supervisor owns its lifetime."""

from __future__ import annotations

import codecs
import collections
import contextlib
import logging
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import IO

from executors.adapters import Adapter, adapter_for
from executors.base import Control, ExecutionResult, ExecutionSpec, FailureKind, Heartbeat, LeaseClock, OutputSink
from executors.confinement import ConfinementError, collect_outputs, open_root, same_directory, write_input
from executors.sandbox import WRAPPER_DEPTH, SandboxError, bwrap_argv

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024


class BoundedBuffer:
    """Keeps the first and last `limit/2` bytes of a stream: memory stays bounded whatever the CLI prints,
    and both the start (errors at startup) and the end (the JSON result) survive."""

    def __init__(self, limit: int) -> None:
        self.head_limit = limit // 2
        self.tail_limit = limit - self.head_limit
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_size = 0
        self.total = 0

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_limit - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if not chunk:
            return
        self.tail.append(chunk)
        self.tail_size += len(chunk)
        while self.tail and self.tail_size - len(self.tail[0]) >= self.tail_limit:
            self.tail_size -= len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > len(self.head) + self.tail_size or self.tail_size > self.tail_limit

    def value(self) -> bytes:
        tail = b"".join(self.tail)[-self.tail_limit:] if self.tail_limit else b""
        if self.truncated:
            skipped = self.total - len(self.head) - len(tail)
            return bytes(self.head) + f"\n[... {skipped} bytes truncated ...]\n".encode() + tail
        return bytes(self.head) + tail


class LiveOutput:
    """Output on its way to live viewers: at most `limit` bytes per run in all, decoded incrementally (a UTF-8
    character split between reads stays whole) and scrubbed of secrets, holding back a short tail so a secret
    split across two flushes is still caught."""

    def __init__(self, limit: int, secrets: tuple[str, ...]) -> None:
        self.limit = limit
        self.accepted = 0
        self.secrets = tuple(s for s in secrets if s)
        self.hold = max((len(s.encode()) for s in self.secrets), default=1) - 1
        self.pending: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")(errors="replace") for name in self.pending}
        self.lock = threading.Lock()

    def feed(self, stream: str, chunk: bytes) -> None:
        with self.lock:
            room = self.limit - self.accepted
            if room <= 0:
                return
            piece = chunk[:room]
            self.accepted += len(piece)
            self.pending[stream] += piece

    def drain(self, *, final: bool = False) -> list[tuple[str, str]]:
        out = []
        with self.lock:
            for stream, data in self.pending.items():
                # Scrub the whole pending buffer *before* cutting: a complete secret is gone wherever the cut
                # falls, and a secret's beginning at the end stays in the held-back tail (hold = len - 1).
                for secret in self.secrets:
                    data[:] = data.replace(secret.encode(), b"[redacted]")
                keep = 0 if final else min(self.hold, len(data))
                ready = bytes(data[: len(data) - keep])
                del data[: len(data) - keep]
                text = self.decoders[stream].decode(ready, final=final)
                if text:
                    out.append((stream, text))
        return out


def _drain(stream: IO[bytes], buffer: BoundedBuffer, live: LiveOutput | None = None, name: str = "") -> None:
    with contextlib.suppress(ValueError, OSError):
        for chunk in iter(lambda: stream.read1(READ_CHUNK), b""):  # type: ignore[attr-defined]
            buffer.feed(chunk)
            if live is not None:
                live.feed(name, chunk)


def _feed_stdin(stream: IO[bytes], data: bytes) -> None:
    # A CLI that exits without reading its prompt closes the pipe; that is its business, not an error here.
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.write(data)
    with contextlib.suppress(BrokenPipeError, OSError):
        stream.close()


TRUNCATION_MARK = re.compile(r"\n\[\.\.\. \d+ bytes truncated \.\.\.\]\n")
MIN_FRAGMENT = 4


def scrub(text: str, secrets: tuple[str, ...]) -> str:
    """Replace each secret with [redacted], including the halves of one cut by head + tail truncation."""
    for secret in secrets:
        if not secret or len(secret) < MIN_FRAGMENT:
            continue
        text = text.replace(secret, "[redacted]")
        for mark in reversed(list(TRUNCATION_MARK.finditer(text))):
            head, tail = text[: mark.start()], text[mark.end():]
            for size in range(len(secret) - 1, MIN_FRAGMENT - 1, -1):
                if head.endswith(secret[:size]):
                    head = head[:-size] + "[redacted]"
                    break
            for size in range(len(secret) - 1, MIN_FRAGMENT - 1, -1):
                if tail.startswith(secret[-size:]):
                    tail = "[redacted]" + tail[size:]
                    break
            text = head + mark.group(0) + tail
    return text


def execute(spec: ExecutionSpec, *, heartbeat: Heartbeat | None = None, on_output: OutputSink | None = None,
            lease: LeaseClock | None = None) -> ExecutionResult:
    """Run the CLI described by `spec`; never raises for anything the CLI or its files do.

    With `lease`, the CLI is killed before the lease ends unless it is renewed (the supervisor's deadline).
    """
    adapter = adapter_for(spec.tool)
    result = ExecutionResult(command=list(spec.argv))
    try:
        spec.work_dir.mkdir(parents=True, exist_ok=False, mode=0o700)
        # Every later look at the work dir goes through this descriptor: a CLI that swaps the directory for a
        # symlink cannot make us write inputs to, or collect outputs from, anywhere else.
        root_fd = open_root(spec.work_dir)
    except OSError as exc:
        result.failure_kind, result.error_message = FailureKind.INTERNAL, f"cannot create work dir: {exc.strerror}"
        return result
    # A private TMPDIR beside the work dir (outside the job's own files), removed with it: CLIs write prompts
    # and error dumps to temp files (gemini's /tmp/gemini-client-error-*.json holds the prompt). In the sandbox
    # /tmp itself is private.
    private_tmp = private_tmp_dir(spec.work_dir)
    try:
        try:
            for relative, data in spec.input_files:
                write_input(root_fd, relative, data)
        except (ConfinementError, OSError) as exc:
            result.failure_kind, result.error_message = FailureKind.INTERNAL, f"input refused: {_describe(exc)}"
            return result
        if not spec.sandbox.enabled:  # in the sandbox /tmp itself is private (and TMPDIR points there)
            shutil.rmtree(private_tmp, ignore_errors=True)  # left over by a killed worker
            private_tmp.mkdir(mode=0o700)
            spec = replace(spec, env={**spec.env, "TMPDIR": str(private_tmp)})
        _run_process(spec, adapter, result, heartbeat, on_output, lease)
        if result.succeeded:
            _collect(spec, root_fd, result)
    except OSError as exc:
        result.failure_kind, result.error_message = FailureKind.INTERNAL, f"work dir error: {_describe(exc)}"
    finally:
        os.close(root_fd)
        if os.path.islink(spec.work_dir):
            os.unlink(spec.work_dir)  # what the CLI left in place of its work dir; never followed
        if not spec.keep_work_dir:
            shutil.rmtree(spec.work_dir, ignore_errors=True)
        shutil.rmtree(private_tmp, ignore_errors=True)
        _scrub_result(result, spec.secrets)
    return result


def _collect(spec: ExecutionSpec, root_fd: int, result: ExecutionResult) -> None:
    if not same_directory(root_fd, spec.work_dir):
        result.failure_kind = FailureKind.SANDBOX
        result.error_message = "the work dir was replaced during the run; no outputs were collected"
        return
    result.outputs, result.output_errors = collect_outputs(
        root_fd, spec.output_patterns, max_bytes=spec.max_output_bytes, max_total_bytes=spec.max_total_output_bytes,
    )


def private_tmp_dir(work_dir: Path) -> Path:
    return work_dir.with_name(work_dir.name + ".tmp")


def _describe(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {Path(exc.filename).name if exc.filename else ''}".rstrip(": ")
    return str(exc)


def _scrub_result(result: ExecutionResult, secrets: tuple[str, ...]) -> None:
    result.stdout = scrub(result.stdout, secrets)
    result.stderr = scrub(result.stderr, secrets)
    result.error_message = scrub(result.error_message, secrets)
    result.final_message = scrub(result.final_message, secrets)


SUPERVISOR = str(Path(__file__).with_name("supervisor.py"))
LEASE_SAFETY_SECONDS = 1.0  # kill this long before the lease ends at the latest (scheduling and reaping slack)


def _kill_budget(lease: LeaseClock | None) -> float:
    """Seconds from now until the supervisor must kill the CLI: before the lease can expire (0: no deadline)."""
    if lease is None:
        return 0.0
    margin = min(LEASE_SAFETY_SECONDS, lease.seconds / 5)
    return max(0.001, lease.valid_until - margin - time.monotonic())


def _command(spec: ExecutionSpec) -> list[str]:
    """What the supervisor starts: the CLI itself, or bwrap around it. Raises FileNotFoundError, PermissionError
    (the CLI) or SandboxError."""
    binary = shutil.which(spec.argv[0], path=spec.env.get("PATH"))
    if binary is None:
        raise PermissionError if os.path.exists(spec.argv[0]) else FileNotFoundError
    binary = os.path.abspath(binary)
    if not spec.sandbox.enabled:
        return [binary, *spec.argv[1:]]
    return [*bwrap_argv(sandbox=spec.sandbox, binary=binary, work_dir=spec.work_dir, env=spec.env), *spec.argv[1:]]


class _Supervised:
    """The supervisor process (executors/supervisor.py) and its two pipes: deadlines and stops go down
    `control`, the CLI's outcome comes back on `report`."""

    def __init__(self, spec: ExecutionSpec, command: list[str], budget: float) -> None:
        control_read, self.control = os.pipe()
        self.report, report_write = os.pipe()
        depth = WRAPPER_DEPTH if spec.sandbox.enabled else 0
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", SUPERVISOR, str(control_read), str(report_write), f"{budget:.3f}",
                 f"{spec.kill_grace_seconds:g}", str(depth), "--", *command],
                cwd=spec.work_dir, env=spec.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.PIPE, pass_fds=(control_read, report_write),
                # Its own session: a signal to the worker's process group (SIGSTOP, SIGTERM) never reaches it.
                start_new_session=True,
            )
        except BaseException:
            for fd in (self.control, self.report):
                os.close(fd)
            raise
        finally:
            os.close(control_read)
            os.close(report_write)

    def send(self, line: str) -> None:
        with contextlib.suppress(OSError):  # the supervisor is gone already: its report says why
            os.write(self.control, line.encode() + b"\n")

    def stop(self, grace: float) -> None:
        """Ask for the kill and wait for it: SIGTERM to every process of the run, SIGKILL after `grace`."""
        self.send(f"stop {grace:g}")
        try:
            self.proc.wait(timeout=grace + 10)
        except subprocess.TimeoutExpired:
            # A supervisor that does not answer: kill it; bwrap's --die-with-parent takes the sandbox with it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)

    def close(self) -> tuple[int | None, str]:
        """End of file on `control` kills whatever is left at once; returns (exit code of the CLI, stop reason
        reported by the supervisor: "deadline" or "")."""
        with contextlib.suppress(OSError):
            os.close(self.control)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=15)
        with os.fdopen(self.report, "rb") as report:
            words = report.read(200).decode(errors="replace").split()
        reason = ""
        if words[:1] == ["deadline"]:
            reason, words = "deadline", words[1:]
        if len(words) == 2 and words[0] in ("exit", "signal") and words[1].isdigit():
            code = int(words[1])
            return (code if words[0] == "exit" else -code), reason
        if len(words) == 2 and words[0] == "spawn":
            raise OSError(int(words[1]), os.strerror(int(words[1])))
        return self.proc.returncode, reason


def _run_process(
    spec: ExecutionSpec, adapter: Adapter, result: ExecutionResult, heartbeat: Heartbeat | None,
    on_output: OutputSink | None = None, lease: LeaseClock | None = None,
) -> None:
    started = time.monotonic()
    setting = f"SCHEDULER_{spec.tool.upper()}_BIN"
    try:
        command = _command(spec)
        supervised = _Supervised(spec, command, _kill_budget(lease))
    except FileNotFoundError:
        result.failure_kind = FailureKind.CLI_MISSING
        result.error_message = f"{spec.argv[0]} not found: set {setting} or install {spec.tool}"
        return
    except PermissionError:
        result.failure_kind = FailureKind.CLI_MISSING
        result.error_message = f"{spec.argv[0]} is not executable"
        return
    except SandboxError as exc:
        result.failure_kind, result.error_message = FailureKind.SANDBOX, str(exc)
        return
    proc = supervised.proc

    stdout, stderr = BoundedBuffer(spec.stdout_limit), BoundedBuffer(spec.stdout_limit)
    live = LiveOutput(spec.live_output_bytes, spec.secrets) if on_output and spec.live_output_bytes > 0 else None
    threads = [
        threading.Thread(target=_drain, args=(proc.stdout, stdout, live, "stdout"), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, stderr, live, "stderr"), daemon=True),
        threading.Thread(target=_feed_stdin, args=(proc.stdin, spec.stdin), daemon=True),
    ]
    for thread in threads:
        thread.start()

    beat = heartbeat
    if live is not None and on_output is not None:
        def beat() -> Control:  # flush live output on every tick of the wait loop, then ask the heartbeat
            chunks = live.drain()
            if chunks:
                on_output(chunks)
            return heartbeat() if heartbeat is not None else Control.CONTINUE

    try:
        stopped = _wait(supervised, spec, started, beat, lease)
    finally:
        # However the wait ended (even by an exception from the heartbeat), nothing the CLI started survives.
        if proc.poll() is None:
            supervised.stop(spec.kill_grace_seconds)
        exit_code, reason = supervised.close()
        for thread in threads:
            thread.join(timeout=5)
    if reason == "deadline" and not stopped:
        stopped = "lease_lost"  # this worker stopped renewing (it was paused): the supervisor killed the run
    if live is not None and on_output is not None and (chunks := live.drain(final=True)):
        on_output(chunks)
    _record(spec, adapter, result, exit_code, stdout, stderr, started, stopped)


def _wait(supervised: _Supervised, spec: ExecutionSpec, started: float, heartbeat: Heartbeat | None,
          lease: LeaseClock | None) -> str:
    """Wait for the CLI; returns why it was stopped ("timeout", "cancel", "lease_lost") or "" if it exited."""
    deadline = started + spec.timeout_seconds
    next_beat = started + spec.heartbeat_interval if heartbeat is not None else float("inf")
    exited = _ExitWaiter(supervised.proc)
    sent_until = lease.valid_until if lease is not None else 0.0
    stopped = ""
    try:
        while True:
            now = time.monotonic()
            wait_for = max(0.0, min(deadline, next_beat) - now)
            if exited(min(wait_for, 1.0)):
                break
            now = time.monotonic()
            if now >= deadline:
                stopped = "timeout"
            elif heartbeat is not None and now >= next_beat:
                next_beat = now + spec.heartbeat_interval
                control = heartbeat()
                if control is not Control.CONTINUE:
                    stopped = control.value
                elif lease is not None and lease.valid_until != sent_until:
                    sent_until = lease.valid_until
                    supervised.send(f"extend {_kill_budget(lease):.3f}")
            if stopped:
                supervised.stop(spec.kill_grace_seconds)
                break
    finally:
        exited.close()
    return stopped


class _ExitWaiter:
    """A wait that returns the moment the CLI exits. Popen.wait(timeout) polls with growing sleeps (up to
    50 ms of lag per job); a pidfd (Linux 5.3+) lets select() wake exactly on exit."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def __call__(self, timeout: float) -> bool:
        if self.pidfd is not None:
            ready, _, _ = select.select([self.pidfd], [], [], timeout)
            if not ready:
                return False
        try:
            self.proc.wait(timeout=0 if self.pidfd is not None else timeout)
        except subprocess.TimeoutExpired:
            return False
        return True

    def close(self) -> None:
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _record(spec: ExecutionSpec, adapter: Adapter, result: ExecutionResult, exit_code: int | None,
            stdout: BoundedBuffer, stderr: BoundedBuffer, started: float, stopped: str) -> None:
    result.latency_ms = int((time.monotonic() - started) * 1000)
    result.exit_code = exit_code
    raw_out, raw_err = stdout.value(), stderr.value()
    result.stdout, result.stdout_truncated = raw_out.decode(errors="replace"), stdout.truncated
    result.stderr, result.stderr_truncated = raw_err.decode(errors="replace"), stderr.truncated

    parsed = adapter.parse(stdout=raw_out, stderr=raw_err, exit_code=exit_code)
    result.final_message = parsed.final_message
    result.input_tokens, result.output_tokens, result.cost_usd = (
        parsed.input_tokens, parsed.output_tokens, parsed.cost_usd,
    )
    result.details = parsed.details
    if stopped:
        # A run the executor killed is never a success, whatever the exit code (gemini exits 0 on SIGTERM).
        result.failure_kind = {"timeout": FailureKind.TIMEOUT, "cancel": FailureKind.CANCELED,
                               "lease_lost": FailureKind.WORKER_LOST}[stopped]
        result.error_message = {
            "timeout": f"timed out after {spec.timeout_seconds:g}s; the CLI's process group was killed",
            "cancel": "canceled while running; the CLI's process group was killed",
            "lease_lost": "lease lost to another worker; this run was stopped",
        }[stopped]
        return
    result.failure_kind, result.error_message = parsed.failure_kind, parsed.error_message
    result.retry_after_seconds = parsed.retry_after_seconds
