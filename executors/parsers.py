"""The three CLIs' streaming JSON, read incrementally (executors/streams.py): claude `--output-format stream-json
--verbose`, codex `exec --json`, gemini `--output-format stream-json`. Shapes as in docs/cli-support.md.

Each parser keeps the run's state and emits `message`, `tool_call`, `tool_result`, `usage`, `rate_limit` and
`error` events as lines arrive; the runner adds the final `result` event. `outcome` classifies the ended run from
the stream's structured fields first (claude's `result` and `rate_limit_event`, codex's `turn.failed`, gemini's
`result.error`), then the exit code, then stderr text.
"""

from __future__ import annotations

from typing import Any

from executors.base import FailureKind, Parsed
from executors.classify import classify_message
from executors.prices import estimate_cost
from executors.streams import (
    FINAL_CHARS,
    MESSAGE_CHARS,
    StreamParser,
    failure,
    json_objects,
    short,
    sum_ints,
    tail_text,
)

# Keys of a tool's arguments that say what it works on, most telling first.
SUMMARY_KEYS = ("command", "file_path", "absolute_path", "notebook_path", "path", "dir_path", "pattern", "url",
                "query", "prompt", "description")


def summary(arguments: object) -> str:
    """What a tool call works on: a command or a path when it names one, else its arguments, short."""
    if isinstance(arguments, dict):
        for key in SUMMARY_KEYS:
            value = arguments.get(key)
            if isinstance(value, str | list) and value:
                return short(" ".join(map(str, value)) if isinstance(value, list) else value)
    return short(arguments) if arguments not in (None, {}, "") else ""


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _status(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class ClaudeStream(StreamParser):
    """claude -p --output-format stream-json --verbose: `system` (init, api_retry), `assistant` (one event per
    content block: text, tool_use; `message.usage` per API call), `user` (tool_result blocks),
    `rate_limit_event`, `result`. Turns: distinct assistant message ids while running, `num_turns` at the end.
    Cost: only in the `result` (`total_cost_usd`); while it runs claude enforces `--max-budget-usd` itself."""

    tool = "claude"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.result: dict[str, Any] | None = None
        # From a rejected rate_limit_event only: every run reports its window as "allowed" with a reset time
        # hours away, which says nothing about an API-key 429.
        self.reset_at: float | None = None
        self._message_id: str | None = None
        self._done = (0, 0)  # tokens of the finished API calls
        self._current = (0, 0)  # tokens of the current one, as its events report them

    @property
    def ended(self) -> bool:
        return self.result is not None

    def handle(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if isinstance(session := obj.get("session_id"), str) and session:
            self.session_id = session
        if kind == "assistant":
            self._assistant(obj.get("message"))
        elif kind == "user":
            self._user(obj.get("message"))
        elif kind == "system":
            if obj.get("subtype") == "init":
                self.stream_model = str(obj.get("model") or "")
            elif obj.get("subtype") == "api_retry":
                status = _status(obj.get("error_status"))
                self.error(f"API error{f' {status}' if status else ''} ({obj.get('error') or 'unknown'}), "
                           f"retry {obj.get('attempt')}/{obj.get('max_retries')}")
        elif kind == "rate_limit_event":
            self._rate_limit(obj.get("rate_limit_info"))
        elif kind == "result":
            self._result(obj)

    def _assistant(self, message: object) -> None:
        if not isinstance(message, dict) or message.get("model") == "<synthetic>":
            return  # claude's own stand-in for an API error: the result says it
        message_id = str(message.get("id") or "")
        if message_id != self._message_id or not message_id:
            self._done = (self._done[0] + self._current[0], self._done[1] + self._current[1])
            self._current = (0, 0)
            self._message_id = message_id
            self.turns = (self.turns or 0) + 1
        usage = message.get("usage")
        if isinstance(usage, dict):
            self._current = (
                sum_ints(usage, ("input_tokens", "cache_read_input_tokens", "cache_creation_input_tokens")) or 0,
                sum_ints(usage, ("output_tokens",)) or 0,
            )
        for block in message.get("content") or ():
            if not isinstance(block, dict):
                continue
            if block.get("type") == "text":
                self.message(str(block.get("text") or ""))
            elif block.get("type") == "tool_use":
                self.tool_call(str(block.get("name") or "tool"), str(block.get("id") or ""),
                               summary(block.get("input")))
        if self.result is None:
            self.input_tokens = self._done[0] + self._current[0]
            self.output_tokens = self._done[1] + self._current[1]
            self.usage()

    def _user(self, message: object) -> None:
        content = message.get("content") if isinstance(message, dict) else None
        for block in content if isinstance(content, list) else ():
            if isinstance(block, dict) and block.get("type") == "tool_result":
                output = block.get("content")
                if isinstance(output, list):
                    size = sum(len(str(part.get("text") or "")) for part in output if isinstance(part, dict))
                else:
                    size = len(str(output or ""))
                self.tool_result(str(block.get("tool_use_id") or ""), ok=not block.get("is_error"), size=size)

    def _rate_limit(self, info: object) -> None:
        if not isinstance(info, dict) or (resets := _number(info.get("resetsAt"))) is None:
            return
        if info.get("status") == "rejected":
            self.reset_at = resets
            self.rate_limit(f"{info.get('rateLimitType') or 'usage'} limit reached", resets)

    def _result(self, obj: dict[str, Any]) -> None:
        self.result = {k: obj[k] for k in ("subtype", "is_error", "api_error_status", "num_turns", "session_id",
                                           "permission_denials") if k in obj}
        self.final_text = str(obj.get("result") or "")[:FINAL_CHARS]
        usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
        self.input_tokens = sum_ints(usage, ("input_tokens", "cache_read_input_tokens",
                                             "cache_creation_input_tokens"))
        self.output_tokens = sum_ints(usage, ("output_tokens",))
        self.cost_usd, self.cost_is_estimate = _number(obj.get("total_cost_usd")), False
        if isinstance(obj.get("num_turns"), int):
            self.turns = obj["num_turns"]
        self.usage()
        if obj.get("is_error") or obj.get("subtype") != "success":
            message = self.final_text or "; ".join(map(str, obj.get("errors") or [])) or str(obj.get("subtype"))
            status = _status(obj.get("api_error_status"))
            if classify_message(message, status) != FailureKind.RATE_LIMITED:
                self.error(message)
            elif self.reset_at is None:  # a rejected rate_limit_event already said it, with its reset time
                self.failure_notice(message, status)

    def outcome(self, *, exit_code: int | None, stdout: bytes, stderr: bytes) -> Parsed:
        result = self.result
        if result is None:
            message = tail_text(stderr) or tail_text(stdout) or f"claude exited {exit_code} with no result"
            found = failure(message) if exit_code != 0 else failure(message, kind=FailureKind.EXIT_CODE)
            return self._with(found)
        parsed = self.parsed(details={k: result[k] for k in ("session_id", "num_turns", "subtype",
                                                             "permission_denials") if k in result})
        if result.get("subtype") == "error_max_budget_usd":
            spent = f"${self.cost_usd:.4f}" if self.cost_usd is not None else "its budget"
            parsed.failure_kind = FailureKind.BUDGET_EXCEEDED
            parsed.error_message = f"claude stopped at its --max-budget-usd after spending {spent}"
        # An API failure can arrive as subtype "success" with is_error true and exit 0: trust is_error.
        elif result.get("is_error") or result.get("subtype") != "success" or exit_code != 0:
            message = parsed.final_message or str(result.get("subtype") or f"claude exited {exit_code}")
            found = failure(message, _status(result.get("api_error_status")))
            if found.failure_kind == FailureKind.RATE_LIMITED and self.reset_at is not None:
                found.retry_after_seconds = max(0.0, self.reset_at - self.clock())
            parsed.failure_kind, parsed.error_message = found.failure_kind, found.error_message
            parsed.retry_after_seconds = found.retry_after_seconds
        return parsed

    def _with(self, found: Parsed) -> Parsed:
        parsed = self.parsed()
        parsed.failure_kind, parsed.error_message = found.failure_kind, found.error_message
        parsed.retry_after_seconds = found.retry_after_seconds
        return parsed


CODEX_TOOL_ITEMS = frozenset({"command_execution", "file_change", "mcp_tool_call", "web_search"})


class CodexStream(StreamParser):
    """codex exec --json: `thread.started` (the session: `thread_id`), `turn.started`, `item.started|updated|
    completed`, `turn.completed` (usage of the turn), `turn.failed` (terminal), `error` (also transient notices:
    "Reconnecting... 2/5"). Turns: `turn.completed` events (one per `codex exec`). Cost: estimated from tokens."""

    tool = "codex"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.saw_usage = False
        self.failed_message = ""
        self.last_error = ""
        self._sums = (0, 0)

    def handle(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        item = obj.get("item") if isinstance(obj.get("item"), dict) else {}
        if kind == "thread.started":
            self.session_id = str(obj.get("thread_id") or "")
        elif kind == "item.started" and item.get("type") in CODEX_TOOL_ITEMS:
            self._call(item)
        elif kind == "item.completed":
            self._completed(item)
        elif kind == "turn.completed":
            usage = obj.get("usage") if isinstance(obj.get("usage"), dict) else {}
            self.saw_usage = True
            self._sums = (self._sums[0] + (sum_ints(usage, ("input_tokens",)) or 0),
                          self._sums[1] + (sum_ints(usage, ("output_tokens",)) or 0))
            self.input_tokens, self.output_tokens = self._sums
            self.turns = (self.turns or 0) + 1
            self.estimate()
            self.usage()
        elif kind == "turn.failed":
            error = obj.get("error") if isinstance(obj.get("error"), dict) else {}
            self.failed_message = str(error.get("message") or "turn failed")
            self.failure_notice(self.failed_message)
        elif kind == "error":
            self.last_error = str(obj.get("message") or "")
            self.error(self.last_error)

    def _call(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "command_execution":
            tool, text = "command", str(item.get("command") or "")
        elif kind == "file_change":
            changes = [c for c in item.get("changes") or () if isinstance(c, dict)]
            tool, text = "file_change", ", ".join(f"{c.get('kind', 'update')} {c.get('path', '')}" for c in changes)
        elif kind == "mcp_tool_call":
            tool, text = f"{item.get('server', 'mcp')}/{item.get('tool', 'tool')}", summary(item.get("arguments"))
        else:
            tool, text = "web_search", str(item.get("query") or "")
        self.tool_call(tool, str(item.get("id") or ""), text)

    def _completed(self, item: dict[str, Any]) -> None:
        kind = item.get("type")
        if kind == "agent_message":
            text = str(item.get("text") or "")
            self.final_text = text[:FINAL_CHARS]
            self.message(text)
        elif kind == "error":
            self.error(str(item.get("message") or ""))  # a notice ("Model metadata … not found"), not a failure
        elif kind in CODEX_TOOL_ITEMS:
            call_id = str(item.get("id") or "")
            if call_id not in self._tool_names:  # file changes and searches may come only completed
                self._call(item)
            status = item.get("status")
            if kind == "command_execution":
                ok = status == "completed" and item.get("exit_code") in (0, None)
                size = len(str(item.get("aggregated_output") or ""))
            elif kind == "mcp_tool_call":
                ok, size = status == "completed" and not item.get("error"), len(short(item.get("result") or "", 10**6))
            else:
                ok, size = status in (None, "completed"), 0
            self.tool_result(call_id, ok=ok, size=size)

    def outcome(self, *, exit_code: int | None, stdout: bytes, stderr: bytes) -> Parsed:
        parsed = self.parsed()
        if not self.saw_usage:
            parsed.input_tokens = parsed.output_tokens = None
        if self.failed_message or exit_code != 0:
            message = self.failed_message or self.last_error or tail_text(stderr) or f"codex exited {exit_code}"
            found = failure(message)
            parsed.failure_kind, parsed.error_message = found.failure_kind, found.error_message
            parsed.retry_after_seconds = found.retry_after_seconds
        elif not self.saw_usage and not self.final_text:
            parsed.failure_kind, parsed.error_message = FailureKind.EXIT_CODE, "codex printed no result"
        return parsed


# Gemini exits with the HTTP status mod 256 on fatal API errors in JSON modes.
GEMINI_HTTP_EXITS = {(code % 256): code for code in (400, 401, 403, 429, 500, 502, 503, 504)}
# 130 (interrupted) is a plain failure: only the scheduler's own cancel makes a run canceled, never an exit code.
GEMINI_EXITS = {41: FailureKind.AUTH, **dict.fromkeys((42, 44, 52, 53, 54, 55, 130), FailureKind.EXIT_CODE)}


class GeminiStream(StreamParser):
    """gemini --output-format stream-json: `init` (session_id, model), `message` (user, then assistant text in
    `delta` chunks), `tool_use`, `tool_result`, `error` (severity warning|error), `result` (status, error,
    stats: tokens summed over `stats.models`). Assistant chunks are joined into one `message` event per stretch
    of text (or per tick of the runner's wait loop). Turns: model responses, inferred — each stretch of assistant
    text and tool calls after the prompt or after tool results counts one. Tokens and cost: only in `result`."""

    tool = "gemini"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.saw_init = False
        self.result: dict[str, Any] | None = None
        self._phase = "user"
        self._pending_text: list[str] = []
        self._pending_size = 0
        self._answer: list[str] = []  # assistant text since the last tool call: the response
        self._answer_size = 0
        self._before_tools = ""  # the text before the last tool call, when nothing came after it

    @property
    def ended(self) -> bool:
        return self.result is not None

    def handle(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "init":
            self.saw_init = True
            self.session_id = str(obj.get("session_id") or "")
            self.stream_model = str(obj.get("model") or "")
        elif kind == "message":
            if obj.get("role") == "assistant":
                self._model_turn()
                self._text(str(obj.get("content") or ""))
            return
        self.flush()
        if kind == "tool_use":
            self._model_turn()
            if self._answer:
                self._before_tools = "".join(self._answer)
            self._answer, self._answer_size = [], 0
            self.tool_call(str(obj.get("tool_name") or "tool"), str(obj.get("tool_id") or ""),
                           summary(obj.get("parameters")))
        elif kind == "tool_result":
            self._phase = "tool"
            error = obj.get("error") if isinstance(obj.get("error"), dict) else {}
            size = len(str(obj.get("output") or error.get("message") or ""))
            self.tool_result(str(obj.get("tool_id") or ""), ok=obj.get("status") == "success", size=size)
        elif kind == "error":
            message = str(obj.get("message") or "")
            if obj.get("severity") == "error":
                self.failure_notice(message)
            else:
                self.error(message)
        elif kind == "result":
            self._result(obj)

    def _model_turn(self) -> None:
        if self._phase != "model":
            self._phase = "model"
            self.turns = (self.turns or 0) + 1
            self.usage()

    def _text(self, text: str) -> None:
        if self._pending_size <= MESSAGE_CHARS:
            self._pending_text.append(text)
        self._pending_size += len(text)
        if self._answer_size < FINAL_CHARS:
            self._answer.append(text[: FINAL_CHARS - self._answer_size])
            self._answer_size += len(self._answer[-1])
        self.final_text = "".join(self._answer) or self._before_tools

    def flush(self) -> None:
        if self._pending_text:
            self.message("".join(self._pending_text))
            self._pending_text, self._pending_size = [], 0

    def finish(self) -> None:
        with self.lock:
            self.flush()

    def _result(self, obj: dict[str, Any]) -> None:
        self.result = obj
        stats = obj.get("stats") if isinstance(obj.get("stats"), dict) else {}
        self.input_tokens = sum_ints(stats, ("input_tokens",))
        self.output_tokens = sum_ints(stats, ("output_tokens",))
        models = stats.get("models") if isinstance(stats.get("models"), dict) else {}
        self.estimate()
        if models:
            self._estimate_per_model(models)
        self.usage()
        error = obj.get("error")
        if obj.get("status") == "error" and isinstance(error, dict):
            self.failure_notice(str(error.get("message") or error.get("type") or "gemini failed"))

    def _estimate_per_model(self, models: dict[str, Any]) -> None:
        """A run can use several models (routing, fallbacks): each is priced on its own when it can be."""
        costs = []
        for name, tokens in models.items():
            if not isinstance(tokens, dict):
                continue
            inp, out = sum_ints(tokens, ("input_tokens",)) or 0, sum_ints(tokens, ("output_tokens",)) or 0
            if inp == out == 0:
                costs.append(0.0)  # a model it only tried (routing, a failed call): free, priced or not
                continue
            cost = estimate_cost(name, inp, out, self.prices)
            costs.append(cost if cost is not None else estimate_cost(self.model, inp, out, self.prices))
        if costs and None not in costs:
            self.cost_usd, self.cost_is_estimate = sum(c for c in costs if c is not None), True

    def outcome(self, *, exit_code: int | None, stdout: bytes, stderr: bytes) -> Parsed:
        if not self.saw_init and self.result is None:
            return _gemini_document(stdout=stdout, stderr=stderr, exit_code=exit_code, parsed=self.parsed())
        parsed = self.parsed()
        result = self.result or {}
        if exit_code == 0 and result.get("status") == "success":
            return parsed
        error = result.get("error")
        if not error:  # a failure before the stream's own result (startup): the JSON error on stderr, if any
            err = next((o for o in reversed(json_objects(stderr.decode(errors="replace"))) if "error" in o), None)
            error = (err or {}).get("error")
        return _gemini_failure(parsed, error, exit_code=exit_code, stderr=stderr, has_result=bool(result))


def _gemini_failure(parsed: Parsed, error: object, *, exit_code: int | None, stderr: bytes,
                    has_result: bool) -> Parsed:
    message = ""
    status = None
    if isinstance(error, dict):
        message = str(error.get("message") or error.get("type") or "")
        code = error.get("code")
        # `code` is an HTTP status for API errors but gemini's own exit code (41, 42, …) for others.
        status = code if isinstance(code, int) and 100 <= code <= 599 else None
    elif isinstance(error, str):
        message = error
    if status is None and exit_code in GEMINI_HTTP_EXITS:
        status = GEMINI_HTTP_EXITS[exit_code]
    message = message or tail_text(stderr) or f"gemini exited {exit_code}"
    if exit_code == 0 and not has_result:
        kind = FailureKind.EXIT_CODE
        message = "gemini exited 0 with no result (killed, or printed nothing)"
    elif status == 400:
        # 400: only the text tells a bad key from a bad request
        kind = FailureKind.AUTH if classify_message(message) == FailureKind.AUTH else FailureKind.EXIT_CODE
    elif status is not None:
        kind = classify_message(message, status)
    else:
        kind = GEMINI_EXITS.get(exit_code or 0) or classify_message(message)
    found = failure(message, status, kind=kind)
    parsed.failure_kind, parsed.error_message = found.failure_kind, found.error_message
    parsed.retry_after_seconds = found.retry_after_seconds
    return parsed


def _gemini_document(*, stdout: bytes, stderr: bytes, exit_code: int | None, parsed: Parsed) -> Parsed:
    """`--output-format json` (one pretty document on stdout, or its error on stderr), and failures that print
    no stream at all."""
    out = next((o for o in reversed(json_objects(stdout.decode(errors="replace")))
                if "response" in o or "error" in o or "stats" in o), None)
    err = next((o for o in reversed(json_objects(stderr.decode(errors="replace"))) if "error" in o), None)
    if out is not None:
        parsed.final_message = str(out.get("response") or "")
        models = ((out.get("stats") or {}).get("models") or {}).values()
        # A run can use several models (routing, fallbacks): sum them all.
        tokens = [m.get("tokens") or {} for m in models if isinstance(m, dict)]
        if tokens:
            parsed.input_tokens = sum(int(t.get("prompt") or t.get("input") or 0) for t in tokens)
            parsed.output_tokens = sum(int(t.get("candidates") or 0) for t in tokens)
        if out.get("session_id"):
            parsed.session_id = str(out["session_id"])
            parsed.details["session_id"] = out["session_id"]
    elif err is not None and err.get("session_id"):
        parsed.session_id = str(err["session_id"])
    error = (out or {}).get("error") or (err or {}).get("error")
    if exit_code == 0 and not error and out is not None:
        return parsed
    return _gemini_failure(parsed, error, exit_code=exit_code, stderr=stderr, has_result=out is not None)
