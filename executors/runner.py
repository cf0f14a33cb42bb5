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
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import IO, Any, TypeVar

from executors.adapters import adapter_for
from executors.base import (
    CHANGES_PATCH,
    Control,
    EventKind,
    EventSink,
    ExecutionResult,
    ExecutionSpec,
    FailureKind,
    Heartbeat,
    LeaseClock,
    OutputFile,
    OutputSink,
    RunEvent,
    WorkspaceChange,
    WorkspaceSpec,
)
from executors.confinement import ConfinementError, collect_outputs, open_root, same_directory, write_input
from executors.git import WorkspaceError, mirror_objects, workspace_change, workspace_prepare
from executors.sandbox import WRAPPER_DEPTH, SandboxError, bwrap_argv
from executors.streams import MESSAGE_CHARS, SUMMARY_CHARS, LineSplitter, StreamParser

logger = logging.getLogger(__name__)

READ_CHUNK = 64 * 1024
_T = TypeVar("_T")


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


def _drain(stream: IO[bytes], buffer: BoundedBuffer, live: LiveOutput | None, name: str,
           on_chunk: Callable[[bytes], None]) -> None:
    with contextlib.suppress(ValueError, OSError):
        for chunk in iter(lambda: stream.read1(READ_CHUNK), b""):  # type: ignore[attr-defined]
            buffer.feed(chunk)
            if live is not None:
                live.feed(name, chunk)
            on_chunk(chunk)


def budget_crossed(spec: ExecutionSpec, parser: StreamParser) -> str:
    """Which of the task's limits the run's usage so far has passed, said with the value reached ("" none)."""
    if spec.max_turns is not None and parser.turns is not None and parser.turns > spec.max_turns:
        return f"{parser.turns} turns passed max_turns {spec.max_turns}"
    cost = parser.cost_usd
    if spec.max_cost_usd is not None and cost is not None and cost > spec.max_cost_usd:
        how = " (estimated from tokens)" if parser.cost_is_estimate else ""
        return f"cost ${cost:.4f}{how} passed max_cost_usd ${spec.max_cost_usd:.4f}"
    return ""


class _Watch:
    """What the drain threads see of a run, for the wait loop: the time of the last byte on stdout or stderr
    (the idle timeout), the stream fed line by line to the tool's parser, and its running totals against the
    task's limits. Crossing a limit writes to `wake`, so the wait loop stops the CLI at once, not at its next
    tick. The drain threads never wait on anything here but the parser's own short lock."""

    def __init__(self, spec: ExecutionSpec, parser: StreamParser) -> None:
        self.spec = spec
        self.parser = parser
        self.splitter = LineSplitter(objects_only=True)
        self.last_activity = time.monotonic()
        self.crossed = ""  # the limit passed and the value reached
        self.stop = False  # passed while the CLI still works: stop it
        self.parse_errors = 0
        self.wake, self._wake_write = os.pipe()
        os.set_blocking(self._wake_write, False)

    def touch(self, _: bytes = b"") -> None:
        self.last_activity = time.monotonic()

    def stdout(self, chunk: bytes) -> None:
        self.last_activity = time.monotonic()
        for line in self.splitter.feed(chunk):
            self._feed(line)
        self._check()

    def end(self) -> None:
        """After the drain threads are done: the last line without a newline, then the parser's own flush."""
        if (line := self.splitter.finish()) is not None:
            self._feed(line)
        self.parser.finish()
        self._check()

    def _feed(self, line: bytes) -> None:
        try:
            self.parser.feed_line(line)
        except Exception:  # a parser bug must not stop the drain: the pipe would fill and block the CLI
            self.parse_errors += 1
            if self.parse_errors == 1:
                logger.exception("the %s stream parser failed on a line; later failures are only counted",
                                 self.spec.tool)

    def _check(self) -> None:
        if not self.crossed and (crossed := budget_crossed(self.spec, self.parser)):
            self.crossed = crossed
            # Passed in the CLI's own final result: it is ending anyway, so no kill races its exit.
            if not self.parser.ended:
                self.stop = True
                with contextlib.suppress(OSError):
                    os.write(self._wake_write, b"!")

    def close(self) -> None:
        for fd in (self.wake, self._wake_write):
            with contextlib.suppress(OSError):
                os.close(fd)


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
            on_event: EventSink | None = None, lease: LeaseClock | None = None) -> ExecutionResult:
    """Run the CLI described by `spec`; never raises for anything the CLI or its files do.

    With `lease`, the CLI is killed before the lease ends unless it is renewed (the supervisor's deadline).
    `on_output` gets live output and `on_event` the run's events (`RunEvent`, in order, secrets scrubbed), in
    batches from the wait loop every `spec.heartbeat_interval`, in the caller's thread like the heartbeat; the
    last batch, once the run has ended, closes with one `result` event (ok, text, session_id, failure_kind,
    error), whatever ended the run.
    """
    adapter = adapter_for(spec.tool)
    parser = adapter.stream_parser(model=spec.model, prices=spec.prices, secrets=spec.secrets)
    result = _execute(spec, parser, heartbeat, on_output, on_event, lease)
    if on_event is not None:
        try:
            on_event([*parser.take_events(), _result_event(result, parser)])
        except Exception:  # the run is over and recorded below: a sink that fails now loses only its timeline
            logger.exception("the run's last events could not be delivered")
    return result


def _result_event(result: ExecutionResult, parser: StreamParser) -> RunEvent:
    return RunEvent(kind=EventKind.RESULT, at=time.time(), data={
        "ok": result.succeeded, "text": parser.clean(result.final_message, MESSAGE_CHARS),
        "session_id": parser.clean(result.session_id, SUMMARY_CHARS), "failure_kind": str(result.failure_kind),
        "error": parser.clean(result.error_message, MESSAGE_CHARS),
    })


def _execute(spec: ExecutionSpec, parser: StreamParser, heartbeat: Heartbeat | None, on_output: OutputSink | None,
             on_event: EventSink | None, lease: LeaseClock | None) -> ExecutionResult:
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
    workspace = _workspace(spec)
    base_sha = ""
    try:
        if workspace is not None:
            # Before any input is written: the checkout needs an empty dir, and inputs then land in the checkout.
            base_sha = _repository_step(spec, result, heartbeat, "prepare", lambda cancel: workspace_prepare(
                workspace, spec.work_dir, timeout=spec.git_timeout_seconds, cancel=cancel))
            if not base_sha:
                return result
        try:
            for relative, data in spec.input_files:
                if workspace is not None and ".git" in relative.lower().split("/"):
                    raise ConfinementError(f"{relative!r} is inside a .git directory")
                write_input(root_fd, relative, data)
        except (ConfinementError, OSError) as exc:
            result.failure_kind, result.error_message = FailureKind.INTERNAL, f"input refused: {_describe(exc)}"
            return result
        if not spec.sandbox.enabled:  # in the sandbox /tmp itself is private (and TMPDIR points there)
            shutil.rmtree(private_tmp, ignore_errors=True)  # left over by a killed worker
            private_tmp.mkdir(mode=0o700)
            spec = replace(spec, env={**spec.env, "TMPDIR": str(private_tmp)})
        started = _run_process(spec, parser, result, heartbeat, on_output, on_event, lease)
        if result.succeeded:
            _collect(spec, root_fd, result)
        if started and workspace is not None:
            _record_change(spec, workspace, root_fd, result, base_sha, heartbeat)
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


def _workspace(spec: ExecutionSpec) -> WorkspaceSpec | None:
    """The run's repository, its input files left out of the change (they are the task's, not the CLI's work)."""
    if spec.workspace is None:
        return None
    inputs = tuple(relative for relative, _ in spec.input_files if relative not in spec.workspace.exclude)
    return replace(spec.workspace, exclude=(*spec.workspace.exclude, *inputs))


def _record_change(spec: ExecutionSpec, workspace: WorkspaceSpec, root_fd: int, result: ExecutionResult,
                   base_sha: str, heartbeat: Heartbeat | None) -> None:
    """Whatever the outcome, what the CLI changed (a retry or an operator may want a failed run's work); only a
    successful run's change is an output (`changes.patch`) and is pushed."""
    if not same_directory(root_fd, spec.work_dir):
        # Never handed to git: it would follow the symlink and record whatever it points at.
        result.change = WorkspaceChange(base_sha=base_sha, error="the work dir was replaced during the run")
        return
    succeeded = result.succeeded
    if not succeeded:
        workspace = replace(workspace, push_branch="")
    failure, message = result.failure_kind, result.error_message
    # A cancel that comes now (or came during the run) does not stop the change being recorded: the CLI is gone,
    # and the step is bounded. Only a lost lease does: this worker's result will be dropped anyway.
    change = _repository_step(spec, result, heartbeat, "change", lambda cancel: workspace_change(
        workspace, spec.work_dir, base_sha, timeout=spec.git_timeout_seconds,
        max_patch_bytes=spec.max_total_output_bytes, cancel=cancel), stop_on=(Control.LEASE_LOST,))
    if change is None:
        result.change = WorkspaceChange(base_sha=base_sha, error=result.error_message)
        if not succeeded:  # the run's own failure stays the reason; the change's is in result.change
            result.failure_kind, result.error_message = failure, message
        return
    result.change = change
    if succeeded and change.patch:
        result.outputs = [o for o in result.outputs if o.path != CHANGES_PATCH]
        result.outputs.append(OutputFile(CHANGES_PATCH, change.patch))


def _repository_step(spec: ExecutionSpec, result: ExecutionResult, heartbeat: Heartbeat | None, name: str,
                     step: Callable[[threading.Event], _T],
                     stop_on: tuple[Control, ...] = (Control.CANCEL, Control.LEASE_LOST)) -> _T | None:
    """Run a repository step (git) in a thread while this thread keeps the heartbeat going, as the wait loop
    does for the CLI: a first clone of a big repository may outlast the lease, and a cancel must stop it. The
    step's time goes to `result.details`; a failure, a cancel or a lost lease sets the result's failure and
    returns None."""
    cancel = threading.Event()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = step(cancel)
        except WorkspaceError as exc:
            outcome["error"] = exc
        except Exception as exc:  # a bug here must not pass for the CLI's failure: reported as internal
            logger.exception("the repository step %s failed", name)
            outcome["bug"] = exc

    started = time.monotonic()
    thread = threading.Thread(target=target, name=f"repository-{name}", daemon=True)
    thread.start()
    stopped = ""
    try:
        while thread.is_alive():
            thread.join(spec.heartbeat_interval if heartbeat is not None else None)
            if thread.is_alive() and heartbeat is not None and not stopped:
                control = heartbeat()
                if control in stop_on:
                    stopped = control.value
                    cancel.set()
    except BaseException:
        cancel.set()  # git's process group is killed within a fraction of a second
        thread.join(timeout=30)
        raise
    result.details[f"repository_{name}_ms"] = int((time.monotonic() - started) * 1000)
    if stopped:
        result.failure_kind = STOP_KINDS[stopped]
        result.error_message = REPOSITORY_STOP_MESSAGES[stopped].format(step=name)
        return None
    if "value" in outcome:
        return outcome["value"]
    if "bug" in outcome:
        result.failure_kind, result.error_message = FailureKind.INTERNAL, f"repository step failed: {outcome['bug']}"
        return None
    result.failure_kind, result.error_message = FailureKind.REPOSITORY, str(outcome["error"])
    return None


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
    objects = str(mirror_objects(spec.workspace)) if spec.workspace is not None else ""
    return [*bwrap_argv(sandbox=spec.sandbox, binary=binary, work_dir=spec.work_dir, env=spec.env,
                        work_dir_inside=spec.work_dir_inside, shared_objects=objects), *spec.argv[1:]]


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
    spec: ExecutionSpec, parser: StreamParser, result: ExecutionResult, heartbeat: Heartbeat | None,
    on_output: OutputSink | None = None, on_event: EventSink | None = None, lease: LeaseClock | None = None,
) -> bool:
    """Run the CLI and record its outcome in `result`; False if it could not be started."""
    started = time.monotonic()
    setting = f"SCHEDULER_{spec.tool.upper()}_BIN"
    try:
        command = _command(spec)
        supervised = _Supervised(spec, command, _kill_budget(lease))
    except FileNotFoundError:
        result.failure_kind = FailureKind.CLI_MISSING
        result.error_message = f"{spec.argv[0]} not found: set {setting} or install {spec.tool}"
        return False
    except PermissionError:
        result.failure_kind = FailureKind.CLI_MISSING
        result.error_message = f"{spec.argv[0]} is not executable"
        return False
    except SandboxError as exc:
        result.failure_kind, result.error_message = FailureKind.SANDBOX, str(exc)
        return False
    proc = supervised.proc

    stdout, stderr = BoundedBuffer(spec.stdout_limit), BoundedBuffer(spec.stdout_limit)
    live = LiveOutput(spec.live_output_bytes, spec.secrets) if on_output and spec.live_output_bytes > 0 else None
    watch = _Watch(spec, parser)
    threads = [
        threading.Thread(target=_drain, args=(proc.stdout, stdout, live, "stdout", watch.stdout), daemon=True),
        threading.Thread(target=_drain, args=(proc.stderr, stderr, live, "stderr", watch.touch), daemon=True),
        threading.Thread(target=_feed_stdin, args=(proc.stdin, spec.stdin), daemon=True),
    ]
    for thread in threads:
        thread.start()

    tick = heartbeat
    if live is not None or on_event is not None:
        def tick() -> Control:  # on every tick of the wait loop: live output, then events, then the heartbeat
            if live is not None and on_output is not None and (chunks := live.drain()):
                on_output(chunks)
            if on_event is not None and (events := parser.take_events()):
                on_event(events)
            return heartbeat() if heartbeat is not None else Control.CONTINUE

    try:
        try:
            stopped = _wait(supervised, spec, started, tick, lease, watch)
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
        watch.end()
        _record(spec, parser, result, exit_code, stdout, stderr, started, stopped, watch)
    finally:
        watch.close()
    return True


def _wait(supervised: _Supervised, spec: ExecutionSpec, started: float, tick: Heartbeat | None,
          lease: LeaseClock | None, watch: _Watch) -> str:
    """Wait for the CLI; returns why it was stopped ("timeout", "stalled", "budget", "cancel", "lease_lost") or
    "" if it exited."""
    deadline = started + spec.timeout_seconds
    next_beat = started + spec.heartbeat_interval if tick is not None else float("inf")
    idle = spec.idle_timeout_seconds
    exited = _ExitWaiter(supervised.proc, wake=watch.wake)
    sent_until = lease.valid_until if lease is not None else 0.0
    stopped = ""
    try:
        while True:
            now = time.monotonic()
            idle_until = watch.last_activity + idle if idle > 0 else float("inf")
            wait_for = max(0.0, min(deadline, next_beat, idle_until) - now)
            if exited(min(wait_for, 1.0)):
                break
            now = time.monotonic()
            if watch.stop:
                stopped = "budget"
            elif now >= deadline:
                stopped = "timeout"
            elif idle > 0 and now - watch.last_activity >= idle:
                stopped = "stalled"
            elif tick is not None and now >= next_beat:
                next_beat = now + spec.heartbeat_interval
                control = tick()
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

    def __init__(self, proc: subprocess.Popen[bytes], *, wake: int | None = None) -> None:
        self.proc = proc
        self.wake = wake  # readable when the run must be looked at now (a budget crossed): returns False early
        try:
            self.pidfd: int | None = os.pidfd_open(proc.pid)
        except (AttributeError, OSError):
            self.pidfd = None

    def __call__(self, timeout: float) -> bool:
        if self.pidfd is not None:
            fds = [self.pidfd] if self.wake is None else [self.pidfd, self.wake]
            ready, _, _ = select.select(fds, [], [], timeout)
            if self.wake is not None and self.wake in ready and self.pidfd not in ready:
                with contextlib.suppress(OSError):
                    os.read(self.wake, 64)
                return False
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


STOP_MESSAGES = {
    "timeout": "timed out after {timeout:g}s; the CLI's process group was killed",
    "cancel": "canceled while running; the CLI's process group was killed",
    "lease_lost": "lease lost to another worker; this run was stopped",
    "stalled": "stalled: no output and no event for {idle:g}s (the idle timeout); the CLI's process group was killed",
}
REPOSITORY_STOP_MESSAGES = {
    "cancel": "canceled during the repository step ({step}); git was stopped",
    "lease_lost": "lease lost to another worker during the repository step ({step}); this run was stopped",
}
STOP_KINDS = {"timeout": FailureKind.TIMEOUT, "cancel": FailureKind.CANCELED, "lease_lost": FailureKind.WORKER_LOST,
              "stalled": FailureKind.STALLED}


def _record(spec: ExecutionSpec, parser: StreamParser, result: ExecutionResult, exit_code: int | None,
            stdout: BoundedBuffer, stderr: BoundedBuffer, started: float, stopped: str, watch: _Watch) -> None:
    result.latency_ms = int((time.monotonic() - started) * 1000)
    result.exit_code = exit_code
    raw_out, raw_err = stdout.value(), stderr.value()
    result.stdout, result.stdout_truncated = raw_out.decode(errors="replace"), stdout.truncated
    result.stderr, result.stderr_truncated = raw_err.decode(errors="replace"), stderr.truncated

    # From the parser's state, read as the stream went by: right however much of stdout the buffer kept.
    parsed = parser.outcome(exit_code=exit_code, stdout=raw_out, stderr=raw_err)
    result.final_message = parsed.final_message
    result.input_tokens, result.output_tokens, result.cost_usd = (
        parsed.input_tokens, parsed.output_tokens, parsed.cost_usd,
    )
    result.session_id, result.turns, result.cost_is_estimate = parsed.session_id, parsed.turns, parsed.cost_is_estimate
    result.details.update(parsed.details)  # after the repository step's timing
    notes = {"skipped_lines": watch.splitter.skipped, "dropped_events": parser.dropped_events,
             "parse_errors": watch.parse_errors}
    result.details.update({name: count for name, count in notes.items() if count})
    if stopped in STOP_KINDS:
        # A run the executor killed is never a success, whatever the exit code (gemini exits 0 on SIGTERM).
        result.failure_kind = STOP_KINDS[stopped]
        result.error_message = STOP_MESSAGES[stopped].format(timeout=spec.timeout_seconds,
                                                             idle=spec.idle_timeout_seconds)
        return
    crossed = watch.crossed or budget_crossed(spec, parser)
    if crossed:
        # Deterministic whoever won the race between the kill and the CLI's own exit: the usage passed a limit.
        how = "the CLI's process group was killed" if stopped == "budget" else "reported as the run ended"
        result.failure_kind, result.error_message = FailureKind.BUDGET_EXCEEDED, f"budget exceeded: {crossed}; {how}"
        return
    result.failure_kind, result.error_message = parsed.failure_kind, parsed.error_message
    result.retry_after_seconds = parsed.retry_after_seconds
    if parsed.failure_kind == FailureKind.BUDGET_EXCEEDED and spec.max_cost_usd is not None:
        cost = f"${parsed.cost_usd:.4f}" if parsed.cost_usd is not None else "its budget"
        result.error_message = (f"budget exceeded: cost {cost} reached max_cost_usd ${spec.max_cost_usd:.4f}; "
                                f"{spec.tool} stopped itself (--max-budget-usd)")
