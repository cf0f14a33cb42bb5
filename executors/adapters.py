"""Per-CLI adapters: build argv for the CLI's headless streaming JSON mode and read its events and result
(executors/parsers.py).

The prompt always goes on stdin (never argv): it can never be parsed as a flag, stays out of
/proc/*/cmdline, and is not limited by ARG_MAX. Flags verified against the versions in docs/cli-support.md.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from executors.base import ConfigurationError, Parsed, Prices
from executors.parsers import ClaudeStream, CodexStream, GeminiStream
from executors.streams import StreamParser, json_objects

__all__ = ["ADAPTERS", "Adapter", "FlagRule", "adapter_for", "json_objects"]

# What the CLIs report as a session (claude and gemini a UUID, codex a UUID or thread name): a resume passes it
# back as an argument, so it must never look like a flag.
SESSION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")
ANY = object()  # any value
FLAG = object()  # a boolean flag, no value


def _int(value: str) -> bool:
    return value.isdigit()


def _number(value: str) -> bool:
    return re.fullmatch(r"\d+(\.\d+)?", value) is not None


def _token(value: str) -> bool:
    return re.fullmatch(r"[A-Za-z0-9._:/@-]{1,200}", value) is not None


@dataclass(frozen=True)
class FlagRule:
    values: Any  # FLAG, ANY, a set of choices, or a predicate
    dangerous_values: frozenset[str] = frozenset()
    dangerous: bool = False  # the flag itself is dangerous
    replaces: tuple[str, ...] = ()  # default flags this one stands in for (the CLI refuses both together)


class Adapter:
    tool: str = ""
    base_argv: tuple[str, ...] = ()
    rules: dict[str, FlagRule] = {}
    child_env: dict[str, str] = {}

    def default_flags(self, model: str) -> list[tuple[str, str | None]]:
        raise NotImplementedError

    def tail_argv(self) -> list[str]:
        return []

    # -- extra args --------------------------------------------------------------------------------
    def check_extra_args(self, args: Iterable[object], *, allow_dangerous: bool) -> list[tuple[str, str | None]]:
        """Validate admin-set extra args: `--flag` or `--flag=value` tokens from this tool's allow-list."""
        parsed: list[tuple[str, str | None]] = []
        for arg in args:
            if not isinstance(arg, str) or not arg.startswith("--"):
                raise ConfigurationError(f"extra arg {arg!r} must be a '--flag' or '--flag=value' string")
            name, sep, value = arg.partition("=")
            rule = self.rules.get(name)
            if rule is None:
                allowed = ", ".join(sorted(self.rules))
                raise ConfigurationError(f"extra arg {name!r} is not allowed for {self.tool}; allowed: {allowed}")
            if rule.values is FLAG:
                if sep:
                    raise ConfigurationError(f"extra arg {name!r} takes no value")
                parsed_value = None
            else:
                if not sep:
                    raise ConfigurationError(f"extra arg {name!r} needs a value, written {name}=VALUE")
                ok = (
                    rule.values is ANY
                    or (isinstance(rule.values, set | frozenset) and value in rule.values)
                    or (callable(rule.values) and rule.values(value))
                )
                if not ok:
                    raise ConfigurationError(f"extra arg {arg!r} has a value that is not allowed")
                parsed_value = value
            if (rule.dangerous or value in rule.dangerous_values) and not allow_dangerous:
                raise ConfigurationError(
                    f"extra arg {arg!r} is dangerous: it needs the group's allow_dangerous_flags and "
                    "SCHEDULER_ALLOW_DANGEROUS_FLAGS=true"
                )
            parsed.append((name, parsed_value))
        return parsed

    def build(self, *, binary: str, model: str, extra_args: Iterable[object], allow_dangerous: bool,
              max_cost_usd: float | None = None, resume_session: str = "") -> list[str]:
        """The CLI's headless command line. `max_cost_usd` (the task's budget) is passed to a CLI that can
        enforce one itself (claude's --max-budget-usd); the runner watches every CLI's usage either way.
        `resume_session` continues that session of the CLI (a follow-up, or a retry after a usage limit)."""
        extras = self.check_extra_args(extra_args, allow_dangerous=allow_dangerous)
        overridden = {name for name, _ in extras} | {r for name, _ in extras for r in self.rules[name].replaces}
        argv = [binary, *self.base_argv]
        for name, value in [*(f for f in self.default_flags(model) if f[0] not in overridden), *extras]:
            argv.extend([name] if value is None else [name, value])
        argv = self.with_budget(argv, max_cost_usd)
        if resume_session:
            if not SESSION_ID.fullmatch(resume_session):
                raise ConfigurationError(f"session id {resume_session[:80]!r} cannot be resumed: not a session id")
            argv = self.with_resume(argv, resume_session)
        return [*argv, *self.tail_argv()]

    def with_budget(self, argv: list[str], max_cost_usd: float | None) -> list[str]:
        return argv

    def with_resume(self, argv: list[str], session: str) -> list[str]:
        return [*argv, "--resume", session]  # claude's and gemini's -r/--resume <id>

    parser_class: type[StreamParser] = StreamParser

    def stream_parser(self, *, model: str = "", prices: Prices | None = None, secrets: tuple[str, ...] = (),
                      clock: Callable[[], float] = time.time) -> StreamParser:
        """A parser for one run's stdout, fed line by line as it arrives (executors/parsers.py)."""
        return self.parser_class(model=model, prices=prices, secrets=secrets, clock=clock)

    def parse(self, *, stdout: bytes, stderr: bytes, exit_code: int | None) -> Parsed:
        """The result of a run from its whole captured output: the same parser, fed all at once."""
        parser = self.stream_parser()
        parser.feed_text(stdout)
        parser.finish()
        return parser.outcome(exit_code=exit_code, stdout=stdout, stderr=stderr)


class ClaudeAdapter(Adapter):
    tool = "claude"
    parser_class = ClaudeStream
    base_argv = ("-p",)
    rules = {
        "--max-turns": FlagRule(_int),
        "--max-budget-usd": FlagRule(_number),
        "--allowedTools": FlagRule(ANY),
        "--disallowedTools": FlagRule(ANY),
        "--append-system-prompt": FlagRule(ANY),
        "--fallback-model": FlagRule(_token),
        "--permission-mode": FlagRule(
            {"default", "acceptEdits", "plan", "dontAsk", "auto", "bypassPermissions"},
            dangerous_values=frozenset({"bypassPermissions"}),
        ),
        "--dangerously-skip-permissions": FlagRule(FLAG, dangerous=True),
        "--allow-dangerously-skip-permissions": FlagRule(FLAG, dangerous=True),
    }
    # Nothing the worker has leaks in (the env is built from scratch); these keep a headless run quiet.
    child_env = {"DISABLE_AUTOUPDATER": "1", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "NO_COLOR": "1"}

    def default_flags(self, model: str) -> list[tuple[str, str | None]]:
        flags: list[tuple[str, str | None]] = [
            # JSONL events as they happen; stream-json needs --verbose in -p mode (else exit 1).
            ("--output-format", "stream-json"), ("--verbose", None),
            ("--permission-mode", "acceptEdits"),
            # Only the account's own settings: a job's files must not bring hooks or env via .claude/.
            ("--setting-sources", "user"),
        ]
        return [*flags, ("--model", model)] if model else flags

    def with_budget(self, argv: list[str], max_cost_usd: float | None) -> list[str]:
        """claude stops itself at --max-budget-usd (a result with subtype error_max_budget_usd); an admin's own
        --max-budget-usd extra arg stays when it is lower."""
        if max_cost_usd is None:
            return argv
        if "--max-budget-usd" in argv:
            index = argv.index("--max-budget-usd")
            if float(argv[index + 1]) <= max_cost_usd:
                return argv
            argv = argv[:index] + argv[index + 2:]
        return [*argv, "--max-budget-usd", _decimal(max_cost_usd)]


def _decimal(value: float) -> str:
    """A plain decimal (never 1e-05): what --max-budget-usd and our own `_number` rule accept."""
    return f"{max(value, 0.000001):.6f}".rstrip("0").rstrip(".")


class CodexAdapter(Adapter):
    tool = "codex"
    parser_class = CodexStream
    base_argv = ("exec",)
    _safe_config_keys = frozenset({"model_reasoning_effort", "model_reasoning_summary", "model_verbosity",
                                   "openai_base_url", "model_provider"})
    rules = {
        "--sandbox": FlagRule(
            {"read-only", "workspace-write", "danger-full-access"},
            dangerous_values=frozenset({"danger-full-access"}),
        ),
        "--config": FlagRule(lambda v: v.partition("=")[0] in CodexAdapter._safe_config_keys and "=" in v),
        "--ephemeral": FlagRule(FLAG),
        "--dangerously-bypass-approvals-and-sandbox": FlagRule(FLAG, dangerous=True),
        "--yolo": FlagRule(FLAG, dangerous=True),
    }
    child_env = {"NO_COLOR": "1"}

    def default_flags(self, model: str) -> list[tuple[str, str | None]]:
        flags: list[tuple[str, str | None]] = [
            ("--json", None), ("--skip-git-repo-check", None), ("--color", "never"),
            ("--sandbox", "workspace-write"),
        ]
        return [*flags, ("--model", model)] if model else flags

    def tail_argv(self) -> list[str]:
        return ["-"]  # the prompt is read from stdin, which is closed after it

    def with_resume(self, argv: list[str], session: str) -> list[str]:
        # `codex exec [OPTIONS] resume [SESSION_ID] [PROMPT]`: exec's options (--json, --sandbox, --color) go
        # before `resume`, which itself refuses --sandbox and --color (0.169.0).
        return [*argv, "resume", session]

class GeminiAdapter(Adapter):
    tool = "gemini"
    parser_class = GeminiStream
    rules = {
        "--approval-mode": FlagRule(
            {"default", "auto_edit", "plan", "yolo"}, dangerous_values=frozenset({"yolo"})
        ),
        "--sandbox": FlagRule(FLAG),
        # gemini refuses --yolo together with --approval-mode: it stands in for our default one.
        "--yolo": FlagRule(FLAG, dangerous=True, replaces=("--approval-mode",)),
    }
    # No relaunching parent that ignores SIGTERM; trust the job's fresh work dir.
    child_env = {"GEMINI_CLI_NO_RELAUNCH": "1", "NO_COLOR": "1"}

    def default_flags(self, model: str) -> list[tuple[str, str | None]]:
        flags: list[tuple[str, str | None]] = [
            ("--output-format", "stream-json"), ("--approval-mode", "auto_edit"), ("--skip-trust", None),
        ]
        return [*flags, ("--model", model)] if model else flags

ADAPTERS: dict[str, Adapter] = {a.tool: a for a in (ClaudeAdapter(), CodexAdapter(), GeminiAdapter())}


def adapter_for(tool: str) -> Adapter:
    try:
        return ADAPTERS[tool]
    except KeyError:
        raise ConfigurationError(f"no executor for tool {tool!r}") from None
