"""Plain data passed into and out of the executors. No ORM here: executors run with no DB connection held."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum, StrEnum
from pathlib import Path
from typing import Literal


class FailureKind(StrEnum):
    """Why an attempt failed. The one list: the domain's model choices and retry policy reuse it."""

    RATE_LIMITED = "rate_limited"
    PROVIDER_ERROR = "provider_error"
    TIMEOUT = "timeout"
    EXIT_CODE = "exit_code"
    AUTH = "auth"
    CLI_MISSING = "cli_missing"
    WORKER_LOST = "worker_lost"
    CANCELED = "canceled"
    INTERNAL = "internal"
    SANDBOX = "sandbox"  # the sandbox could not start, or the run broke out of its work dir
    UNREACHABLE = "unreachable"  # the CLI could not reach its API (DNS, refused, proxy, TLS)
    STALLED = "stalled"  # no event and no output for the task's idle timeout: killed
    BUDGET_EXCEEDED = "budget_exceeded"  # the task's max_cost_usd or max_turns was crossed: killed, never retried
    MISSING_OUTPUT = "missing_output"  # a declared output was not produced and the task requires its outputs
    REPOSITORY = "repository"  # the repository could not be fetched, the ref resolved, or the change recorded

    @property
    def label(self) -> str:
        return "CLI missing" if self is FailureKind.CLI_MISSING else self.value.replace("_", " ")


# Failures worth another attempt: the account or the box was the problem, not the job.
RETRYABLE_FAILURES = frozenset({FailureKind.RATE_LIMITED, FailureKind.PROVIDER_ERROR, FailureKind.WORKER_LOST})
# The account's problem, not the task's: the task moves to another account without being charged an attempt,
# and an account that keeps failing so is quarantined.
ACCOUNT_FAILURES = frozenset({FailureKind.AUTH, FailureKind.CLI_MISSING, FailureKind.UNREACHABLE})

Outcome = FailureKind | Literal[""]  # "" means success


class Control(Enum):
    """What the heartbeat tells a running execution."""

    CONTINUE = "continue"
    CANCEL = "cancel"  # an operator canceled the task
    LEASE_LOST = "lease_lost"  # another worker owns the task now (we were too slow or paused)


Heartbeat = Callable[[], Control]
OutputSink = Callable[[list[tuple[str, str]]], None]  # [(stream, text)], called from the executor's wait loop


class EventKind(StrEnum):
    """The normalised timeline of a run (SPEC §8 RunEvent), whatever the CLI's own stream looks like."""

    MESSAGE = "message"  # assistant text: {"text"}
    TOOL_CALL = "tool_call"  # {"tool", "summary" (a file path, a command; short), "id"}
    TOOL_RESULT = "tool_result"  # {"tool", "id", "ok", "size"}
    USAGE = "usage"  # running totals: {"input_tokens", "output_tokens", "cost_usd", "turns", "estimate"}
    RATE_LIMIT = "rate_limit"  # {"message", "resets_at" (epoch seconds) or None}
    ERROR = "error"  # {"message"}
    RESULT = "result"  # {"ok", "text", "session_id", "failure_kind", "error"}: the runner's last event of every run


@dataclass(frozen=True)
class RunEvent:
    kind: EventKind
    data: dict[str, object]  # small and JSON-able: summaries, never whole payloads
    at: float  # time.time() when it was read


EventSink = Callable[[list[RunEvent]], None]  # called from the executor's wait loop, like the heartbeat
# Model name -> (USD per million input tokens, USD per million output tokens): the estimate for CLIs that report
# tokens but no cost.
Prices = dict[str, tuple[float, float]]


@dataclass(frozen=True)
class Sandbox:
    """How a run is contained (executors.sandbox). Mode "off" runs the CLI unsandboxed: an explicit opt-out."""

    mode: str = "off"  # "bwrap" or "off"
    ro_paths: tuple[str, ...] = ()  # SCHEDULER_SANDBOX_RO_PATHS: extra paths the CLI may read
    rw_paths: tuple[str, ...] = ()  # SCHEDULER_SANDBOX_RW_PATHS: extra paths the CLI may write
    state_dirs: tuple[str, ...] = ()  # the group's state dirs (CLAUDE_CONFIG_DIR, CODEX_HOME, …): read-write

    @property
    def enabled(self) -> bool:
        return self.mode == "bwrap"


# The output file of a run on a repository: the change its checkout holds, as a binary patch against its base
# commit. A follow-up (or the retry of a run cut off by a usage limit) starts from it.
CHANGES_PATCH = "changes.patch"


@dataclass(frozen=True)
class WorkspaceSpec:
    """A run on a repository (executors/git.py): the CLI's work dir is a checkout of `ref` from the box's mirror of
    `url`. Fetch and push happen outside the sandbox with `credentials`; the CLI never sees them."""

    url: str
    ref: str  # branch, tag, full or abbreviated commit; "HEAD": the remote's default branch
    mirror_root: Path  # where this box keeps its bare mirrors (one per URL)
    credentials: dict[str, str] = field(default_factory=dict, repr=False)  # {"token"} or {"ssh_key"}
    base_patches: tuple[bytes, ...] = ()  # applied and committed on top of `ref` before the run (follow-ups)
    exclude: tuple[str, ...] = ()  # work-dir paths never part of the change (e.g. parents' outputs)
    push_branch: str = ""  # push the change to this branch of `url` when set


@dataclass(frozen=True)
class WorkspaceChange:
    """What a run on a repository changed against `base_sha`: the binary patch and its stat, and where it was
    pushed (if it was)."""

    base_sha: str
    patch: bytes = b""
    files: int = 0
    insertions: int = 0
    deletions: int = 0
    pushed_branch: str = ""
    pushed_sha: str = ""
    error: str = ""  # why the change could not be recorded or pushed ("" when it was)

    @property
    def changed(self) -> bool:
        return bool(self.patch)


class LeaseClock:
    """Until when this run's lease holds, on this box's monotonic clock.

    A renewal that starts at `t` makes the database set the expiry to *its* now plus the lease length, and its
    now is later than `t`: so `t + seconds` is never later than the real expiry, whatever the clocks of this box
    and the database say. The runner's supervisor kills the CLI before this moment (docs/reliability.md).
    """

    def __init__(self, seconds: float, *, renewed_at: float) -> None:
        self.seconds = seconds
        self.valid_until = renewed_at + seconds

    def renewed(self, *, at: float) -> None:
        self.valid_until = max(self.valid_until, at + self.seconds)


class ConfigurationError(Exception):
    """The group's settings cannot produce a safe command (e.g. a dangerous flag that is not allowed)."""


@dataclass(frozen=True)
class ExecutionSpec:
    tool: str
    argv: list[str]
    stdin: bytes
    env: dict[str, str]
    work_dir: Path
    input_files: list[tuple[str, bytes]] = field(default_factory=list)
    output_patterns: list[str] = field(default_factory=list)
    timeout_seconds: float = 3600.0
    kill_grace_seconds: float = 10.0
    stdout_limit: int = 1024 * 1024
    max_output_bytes: int = 10 * 1024 * 1024
    max_total_output_bytes: int = 50 * 1024 * 1024
    keep_work_dir: bool = False
    heartbeat_interval: float = 5.0
    secrets: tuple[str, ...] = ()  # values scrubbed from anything recorded (stdout, stderr, messages)
    live_output_bytes: int = 0  # how much output may be streamed live through `on_output` (0: none)
    sandbox: Sandbox = field(default_factory=Sandbox)
    model: str = ""  # the model asked for ("" the CLI's default): prices the estimate
    idle_timeout_seconds: float = 0.0  # no event and no output for this long: killed as stalled (0: never)
    max_cost_usd: float | None = None  # crossing it (streamed usage) kills the run as budget_exceeded
    max_turns: int | None = None
    prices: Prices = field(default_factory=dict)
    workspace: WorkspaceSpec | None = None  # a run on a repository: the work dir is its checkout
    # Bounds each of the repository steps (checkout before the run, change and push after it), apart from the
    # CLI's own timeout: git's time is never the CLI's time, nor its idle time.
    git_timeout_seconds: float = 300.0
    # Where the CLI sees its work dir inside the sandbox ("" the same path): one path per conversation, so a
    # follow-up resumes a session its CLI filed under the same project directory (claude, gemini).
    work_dir_inside: str = ""


@dataclass(frozen=True)
class OutputFile:
    path: str
    data: bytes


@dataclass
class Parsed:
    """What an adapter reads from the CLI's machine-readable output."""

    failure_kind: Outcome = ""
    error_message: str = ""
    final_message: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    retry_after_seconds: float | None = None
    details: dict[str, object] = field(default_factory=dict)
    session_id: str = ""
    turns: int | None = None
    cost_is_estimate: bool = False


@dataclass
class ExecutionResult:
    command: list[str]
    exit_code: int | None = None
    stdout: str = ""
    stdout_truncated: bool = False
    stderr: str = ""
    stderr_truncated: bool = False
    failure_kind: Outcome = ""
    error_message: str = ""
    final_message: str = ""
    input_tokens: int | None = None
    output_tokens: int | None = None
    cost_usd: float | None = None
    retry_after_seconds: float | None = None
    latency_ms: int | None = None
    outputs: list[OutputFile] = field(default_factory=list)
    output_errors: list[str] = field(default_factory=list)
    details: dict[str, object] = field(default_factory=dict)
    session_id: str = ""  # claude's session, codex's thread, gemini's session: what a follow-up resumes
    turns: int | None = None
    cost_is_estimate: bool = False  # cost_usd computed from tokens and `prices`, not reported by the CLI
    change: WorkspaceChange | None = None  # a run on a repository: what it changed

    @property
    def succeeded(self) -> bool:
        return not self.failure_kind
