"""Per-CLI adapters: build argv for the CLI's headless JSON mode and read its result.

The prompt always goes on stdin (never argv): it can never be parsed as a flag, stays out of
/proc/*/cmdline, and is not limited by ARG_MAX. Flags verified against the versions in docs/cli-support.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from executors.base import ConfigurationError, FailureKind, Parsed
from executors.classify import classify_message, retry_after_from_text

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

    def build(self, *, binary: str, model: str, extra_args: Iterable[object], allow_dangerous: bool) -> list[str]:
        extras = self.check_extra_args(extra_args, allow_dangerous=allow_dangerous)
        overridden = {name for name, _ in extras} | {r for name, _ in extras for r in self.rules[name].replaces}
        argv = [binary, *self.base_argv]
        for name, value in [*(f for f in self.default_flags(model) if f[0] not in overridden), *extras]:
            argv.extend([name] if value is None else [name, value])
        return [*argv, *self.tail_argv()]

    def parse(self, *, stdout: bytes, stderr: bytes, exit_code: int | None) -> Parsed:
        raise NotImplementedError


PRETTY_TRIES = 8  # a pretty-printed document after noise: tried from this many of the last lines opening one
_OBJECT_LINE = re.compile(r"^\{", re.MULTILINE)


def json_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object in `text`: the whole text, one per line (JSONL, after noise lines too), or a pretty
    document after noise. Linear in the length whatever the output holds (megabytes of noise, a `{` on every
    line, brackets nested a million deep): each line is parsed on its own, and only the last few lines that
    open a multi-line document are tried against the rest of the text."""
    text = text.strip()
    if not text:
        return []
    whole = _loads(text)
    if whole is not None:
        return [whole] if isinstance(whole, dict) else []
    found = [value for line in map(str.rstrip, text.splitlines()) if line.startswith("{") and line.endswith("}")
             if isinstance(value := _loads(line), dict)]
    if found:
        return found
    decoder = json.JSONDecoder()
    index = 0
    for start in [match.start() for match in _OBJECT_LINE.finditer(text)][-PRETTY_TRIES:]:
        if start < index:
            continue
        try:
            value, index = decoder.raw_decode(text, start)
        except (ValueError, RecursionError):
            continue
        if isinstance(value, dict):
            found.append(value)
    return found


def _loads(text: str) -> Any:
    """The JSON value of `text`, or None when it is not JSON (or nests deeper than the interpreter allows)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def _tail_text(data: bytes, limit: int = 500) -> str:
    text = data.decode(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[-limit:]


def _failure(message: str, status: int | None = None, *, kind: FailureKind | None = None) -> Parsed:
    kind = kind or classify_message(message, status)
    return Parsed(
        failure_kind=kind,
        error_message=message[:2000],
        retry_after_seconds=retry_after_from_text(message) if kind == FailureKind.RATE_LIMITED else None,
    )


class ClaudeAdapter(Adapter):
    tool = "claude"
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
            ("--output-format", "json"),
            ("--permission-mode", "acceptEdits"),
            # Only the account's own settings: a job's files must not bring hooks or env via .claude/.
            ("--setting-sources", "user"),
        ]
        return [*flags, ("--model", model)] if model else flags

    def parse(self, *, stdout: bytes, stderr: bytes, exit_code: int | None) -> Parsed:
        objects = json_objects(stdout.decode(errors="replace"))
        result = next((o for o in reversed(objects) if o.get("type") == "result"), None)
        reset_at = next(
            (o.get("rate_limit_info", {}).get("resetsAt") for o in objects if o.get("type") == "rate_limit_event"),
            None,
        )
        if result is None:
            message = _tail_text(stderr) or _tail_text(stdout) or f"claude exited {exit_code} with no result"
            return _failure(message) if exit_code != 0 else _failure(message, kind=FailureKind.EXIT_CODE)
        usage = result.get("usage") or {}
        parsed = Parsed(
            final_message=str(result.get("result") or ""),
            input_tokens=_sum_ints(usage, ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")),
            output_tokens=_sum_ints(usage, ("output_tokens",)),
            cost_usd=result.get("total_cost_usd"),
            details={k: result[k] for k in ("session_id", "num_turns", "subtype", "permission_denials") if k in result},
        )
        # An API failure can arrive as subtype "success" with is_error true and exit 0: trust is_error.
        if result.get("is_error") or result.get("subtype") != "success" or exit_code != 0:
            status = result.get("api_error_status")
            message = parsed.final_message or str(result.get("subtype") or f"claude exited {exit_code}")
            failure = _failure(message, status if isinstance(status, int) else None)
            if failure.failure_kind == FailureKind.RATE_LIMITED and isinstance(reset_at, int | float):
                failure.retry_after_seconds = max(0.0, reset_at - datetime.now(UTC).timestamp())
            parsed.failure_kind, parsed.error_message = failure.failure_kind, failure.error_message
            parsed.retry_after_seconds = failure.retry_after_seconds
        return parsed


class CodexAdapter(Adapter):
    tool = "codex"
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

    def parse(self, *, stdout: bytes, stderr: bytes, exit_code: int | None) -> Parsed:
        events = json_objects(stdout.decode(errors="replace"))
        parsed = Parsed()
        final = ""
        input_tokens = output_tokens = 0
        saw_usage = False
        failed_message = ""
        last_error = ""
        for event in events:
            kind = event.get("type")
            if kind == "item.completed" and (event.get("item") or {}).get("type") == "agent_message":
                final = str(event["item"].get("text") or "")
            elif kind == "turn.completed":
                usage = event.get("usage") or {}
                saw_usage = True
                input_tokens += _sum_ints(usage, ("input_tokens",)) or 0
                output_tokens += _sum_ints(usage, ("output_tokens",)) or 0
            elif kind == "turn.failed":
                failed_message = str((event.get("error") or {}).get("message") or "turn failed")
            elif kind == "error":
                last_error = str(event.get("message") or "")
        parsed.final_message = final
        if saw_usage:
            parsed.input_tokens, parsed.output_tokens = input_tokens, output_tokens
        if failed_message or exit_code != 0:
            message = failed_message or last_error or _tail_text(stderr) or f"codex exited {exit_code}"
            failure = _failure(message)
            parsed.failure_kind, parsed.error_message = failure.failure_kind, failure.error_message
            parsed.retry_after_seconds = failure.retry_after_seconds
        elif not saw_usage and not final:
            parsed.failure_kind, parsed.error_message = FailureKind.EXIT_CODE, "codex printed no result"
        return parsed


# Gemini exits with the HTTP status mod 256 on fatal API errors in JSON modes.
_GEMINI_HTTP_EXITS = {(code % 256): code for code in (400, 401, 403, 429, 500, 502, 503, 504)}
# 130 (interrupted) is a plain failure: only the scheduler's own cancel makes a run canceled, never an exit code.
_GEMINI_EXITS = {41: FailureKind.AUTH, **dict.fromkeys((42, 44, 52, 53, 54, 55, 130), FailureKind.EXIT_CODE)}


class GeminiAdapter(Adapter):
    tool = "gemini"
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
            ("--output-format", "json"), ("--approval-mode", "auto_edit"), ("--skip-trust", None),
        ]
        return [*flags, ("--model", model)] if model else flags

    def parse(self, *, stdout: bytes, stderr: bytes, exit_code: int | None) -> Parsed:
        out = next((o for o in reversed(json_objects(stdout.decode(errors="replace")))
                    if "response" in o or "error" in o or "stats" in o), None)
        err = next((o for o in reversed(json_objects(stderr.decode(errors="replace"))) if "error" in o), None)
        parsed = Parsed()
        if out is not None:
            parsed.final_message = str(out.get("response") or "")
            models = ((out.get("stats") or {}).get("models") or {}).values()
            # A run can use several models (routing, fallbacks): sum them all.
            tokens = [m.get("tokens") or {} for m in models if isinstance(m, dict)]
            if tokens:
                parsed.input_tokens = sum(int(t.get("prompt") or t.get("input") or 0) for t in tokens)
                parsed.output_tokens = sum(int(t.get("candidates") or 0) for t in tokens)
            if out.get("session_id"):
                parsed.details["session_id"] = out["session_id"]
        error = (out or {}).get("error") or (err or {}).get("error")
        if exit_code == 0 and not error and out is not None:
            return parsed
        message = ""
        status = None
        if isinstance(error, dict):
            message = str(error.get("message") or error.get("type") or "")
            code = error.get("code")
            # `code` is an HTTP status for API errors but gemini's own exit code (41, 42, …) for others.
            status = code if isinstance(code, int) and 100 <= code <= 599 else None
        elif isinstance(error, str):
            message = error
        if status is None and exit_code in _GEMINI_HTTP_EXITS:
            status = _GEMINI_HTTP_EXITS[exit_code]
        message = message or _tail_text(stderr) or f"gemini exited {exit_code}"
        if exit_code == 0 and out is None:
            kind = FailureKind.EXIT_CODE
            message = "gemini exited 0 with no result (killed, or printed nothing)"
        elif status == 400:
            # 400: only the text tells a bad key from a bad request
            kind = FailureKind.AUTH if classify_message(message) == FailureKind.AUTH else FailureKind.EXIT_CODE
        elif status is not None:
            kind = classify_message(message, status)
        else:
            kind = _GEMINI_EXITS.get(exit_code or 0) or classify_message(message)
        failure = _failure(message, status, kind=kind)
        parsed.failure_kind, parsed.error_message = failure.failure_kind, failure.error_message
        parsed.retry_after_seconds = failure.retry_after_seconds
        return parsed


def _sum_ints(mapping: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    values = [mapping[k] for k in keys if isinstance(mapping.get(k), int)]
    return sum(values) if values else None


ADAPTERS: dict[str, Adapter] = {a.tool: a for a in (ClaudeAdapter(), CodexAdapter(), GeminiAdapter())}


def adapter_for(tool: str) -> Adapter:
    try:
        return ADAPTERS[tool]
    except KeyError:
        raise ConfigurationError(f"no executor for tool {tool!r}") from None
