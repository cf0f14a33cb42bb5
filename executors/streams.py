"""Reading a CLI's streaming JSON as it arrives: lines cut incrementally, each fed to the tool's parser, which
keeps the run's state (session, final text, tokens, cost, turns, failure) and emits normalised `RunEvent`s.

Memory stays bounded whatever the CLI prints: a line is held only up to `LINE_CAP` (a longer one is skipped and
counted, never buffered whole), event data is short (texts cut to a few hundred characters, after secrets are
scrubbed from the whole text, so a cut never leaves half a secret), and at most `MAX_PENDING_EVENTS` wait for the
runner's wait loop. The per-tool parsers are in executors/parsers.py.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from executors.base import EventKind, FailureKind, Parsed, Prices, RunEvent
from executors.classify import classify_message, retry_after_from_text
from executors.prices import estimate_cost

LINE_CAP = 1024 * 1024  # a longer line is skipped (counted in `skipped_lines`), never held whole
MESSAGE_CHARS = 1000  # assistant text in a `message` or `result` event
SUMMARY_CHARS = 200  # a tool call's argument summary, an error message
FINAL_CHARS = 1024 * 1024  # the final message kept in the result
MAX_PENDING_EVENTS = 10_000  # events waiting for the wait loop; beyond, new ones are dropped and counted, but for
#                             rate limits and the latest running totals
MIN_SECRET = 4  # shorter "secrets" are not scrubbed (they would redact ordinary words), as in runner.scrub
REDACTED = "[redacted]"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


_OBJECT_LINE_START = re.compile(rb"^[ \t\r]*\{[^\n]*", re.MULTILINE)


class LineSplitter:
    """Cuts a byte stream into lines as chunks arrive. Linear in the input; holds at most `cap` bytes of an
    unfinished line. A line longer than `cap` is dropped whole (from the moment it passes the cap to its end)
    and counted in `skipped`. With `objects_only`, only lines that open a JSON object are yielded: the lines
    inside a chunk are then found by one regular-expression scan, so megabytes of noise cost almost nothing."""

    def __init__(self, cap: int = LINE_CAP, *, objects_only: bool = False) -> None:
        self.cap = cap
        self.objects_only = objects_only
        self.partial = bytearray()
        self.skipping = False
        self.skipped = 0

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        first = chunk.find(b"\n")
        if first < 0:
            self._hold(chunk, 0)
            return
        # The line the previous chunks left unfinished ends here.
        if self.skipping:
            self.skipping = False
        elif len(self.partial) + first > self.cap:
            self.skipped += 1
        else:
            self.partial += chunk[:first]
            if self._wanted(self.partial):
                yield bytes(self.partial)
        self.partial.clear()
        last = chunk.rfind(b"\n")
        if self.objects_only:
            for match in _OBJECT_LINE_START.finditer(chunk, first + 1, last):
                if match.end() - match.start() <= self.cap:
                    yield match.group()
                else:
                    self.skipped += 1
        else:
            start = first + 1
            while start <= last:
                end = chunk.find(b"\n", start)
                if end - start <= self.cap:
                    yield chunk[start:end]
                else:
                    self.skipped += 1
                start = end + 1
        self._hold(chunk, last + 1)

    def _hold(self, chunk: bytes, start: int) -> None:
        """Keep the unfinished end of `chunk` (from `start`) for the next one, up to the cap."""
        rest = len(chunk) - start
        if not rest or self.skipping:
            return
        if len(self.partial) + rest > self.cap:
            self.partial.clear()
            self.skipping = True
            self.skipped += 1
        else:
            self.partial += chunk[start:] if start else chunk

    def _wanted(self, line: bytes | bytearray) -> bool:
        return not self.objects_only or line.lstrip(b" \t\r").startswith(b"{")

    def finish(self) -> bytes | None:
        """The last line when the stream ended without a newline."""
        line = bytes(self.partial) if self.partial and not self.skipping and self._wanted(self.partial) else None
        self.partial.clear()
        return line


# -- JSON in whole documents (the fallbacks and the one-object formats) ------------------------------------

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
    whole = loads(text)
    if whole is not None:
        return [whole] if isinstance(whole, dict) else []
    found = [value for line in map(str.rstrip, text.splitlines()) if line.startswith("{") and line.endswith("}")
             if isinstance(value := loads(line), dict)]
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


def loads(text: str) -> Any:
    """The JSON value of `text`, or None when it is not JSON (or nests deeper than the interpreter allows)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return None


def tail_text(data: bytes, limit: int = 500) -> str:
    text = data.decode(errors="replace").strip()
    lines = [line for line in text.splitlines() if line.strip()]
    return (lines[-1] if lines else "")[-limit:]


def sum_ints(mapping: dict[str, Any], keys: tuple[str, ...]) -> int | None:
    values = [mapping[k] for k in keys if isinstance(mapping.get(k), int)]
    return sum(values) if values else None


def failure(message: str, status: int | None = None, *, kind: FailureKind | None = None) -> Parsed:
    kind = kind or classify_message(message, status)
    return Parsed(
        failure_kind=kind,
        error_message=message[:2000],
        retry_after_seconds=retry_after_from_text(message) if kind == FailureKind.RATE_LIMITED else None,
    )


def short(value: object, limit: int = SUMMARY_CHARS) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"


# -- the parser state every tool shares -------------------------------------------------------------------


class StreamParser:
    """One run's streaming output, line by line. `feed_line` is called from the runner's drain thread,
    `take_events` from its wait loop: both under the parser's lock. Subclasses implement `handle` (one JSON
    object) and `outcome` (the run's result once it has ended)."""

    tool = ""

    def __init__(self, *, model: str = "", prices: Prices | None = None, secrets: tuple[str, ...] = (),
                 clock: Callable[[], float] = time.time, max_pending: int = MAX_PENDING_EVENTS) -> None:
        self.model = model  # the model asked for; else the one the stream names (`stream_model`)
        self.stream_model = ""
        self.prices = prices or {}
        self.secrets = tuple(s for s in secrets if s and len(s) >= MIN_SECRET)
        self.clock = clock
        self.max_pending = max_pending
        self.lock = threading.Lock()
        self.pending: list[RunEvent] = []
        self._late_usage: RunEvent | None = None
        self.dropped_events = 0
        self.session_id = ""
        self.final_text = ""
        self.input_tokens: int | None = None
        self.output_tokens: int | None = None
        self.cost_usd: float | None = None
        self.cost_is_estimate = False
        self.turns: int | None = None
        self.objects = 0  # JSON objects read
        self._last_usage: tuple[object, ...] | None = None
        self._tool_names: dict[str, str] = {}

    # -- input
    def feed_line(self, line: bytes) -> None:
        line = line.strip()
        if not line.startswith(b"{"):
            return  # noise: a stack trace, a warning, a progress line
        value = loads(line.decode(errors="replace"))
        if isinstance(value, dict):
            with self.lock:
                self.objects += 1
                self.handle(value)

    def feed_text(self, data: bytes) -> None:
        """A whole captured stdout at once (`Adapter.parse`): the same path, line by line."""
        splitter = LineSplitter(objects_only=True)
        for line in splitter.feed(data):
            self.feed_line(line)
        if (last := splitter.finish()) is not None:
            self.feed_line(last)

    def handle(self, obj: dict[str, Any]) -> None:
        raise NotImplementedError

    @property
    def ended(self) -> bool:
        """The stream's own final result has been read (claude, gemini; codex has none)."""
        return False

    def finish(self) -> None:
        """The stream has ended: flush what a parser holds back (gemini's coalesced text)."""

    def outcome(self, *, exit_code: int | None, stdout: bytes, stderr: bytes) -> Parsed:
        raise NotImplementedError

    # -- output
    def take_events(self) -> list[RunEvent]:
        with self.lock:
            self.flush()
            events, self.pending = self.pending, []
            if self._late_usage is not None:  # the latest totals always get through, after what came before
                events.append(self._late_usage)
                self._late_usage = None
        return events

    def flush(self) -> None:
        """Called under the lock before pending events are handed over."""

    def emit(self, kind: EventKind, data: dict[str, object]) -> None:
        full = len(self.pending) >= self.max_pending
        if full and kind not in (EventKind.RATE_LIMIT, EventKind.RESULT, EventKind.USAGE):
            self.dropped_events += 1
            return
        data = {key: self.scrub(value) if isinstance(value, str) else value for key, value in data.items()}
        event = RunEvent(kind=kind, data=data, at=self.clock())
        if full and kind is EventKind.USAGE:  # running totals: only the latest matters
            self.dropped_events += self._late_usage is not None
            self._late_usage = event
        else:
            self.pending.append(event)

    def scrub(self, text: str) -> str:
        """`text` without secrets, NUL bytes or lone surrogates: event data goes to JSON columns and sockets."""
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return _UNSTORABLE.sub("\ufffd", text)

    def clean(self, text: str, limit: int) -> str:
        """`text` without secrets, then cut to `limit` characters (scrubbed first: a cut never leaves half a
        secret behind)."""
        text = self.scrub(text)
        return text if len(text) <= limit else text[: limit - 1] + "…"

    def message(self, text: str) -> None:
        if text.strip():
            self.emit(EventKind.MESSAGE, {"text": self.clean(text, MESSAGE_CHARS)})

    def tool_call(self, tool: str, call_id: str, summary: str) -> None:
        if call_id:
            if len(self._tool_names) >= 1000:  # calls that never got a result: forget the oldest
                self._tool_names.pop(next(iter(self._tool_names)))
            self._tool_names[call_id] = tool
        self.emit(EventKind.TOOL_CALL, {"tool": self.clean(tool, 100), "summary": self.clean(summary,
                                        SUMMARY_CHARS), "id": call_id})

    def tool_result(self, call_id: str, *, ok: bool, size: int, tool: str = "") -> None:
        tool = self._tool_names.pop(call_id, "") or tool
        self.emit(EventKind.TOOL_RESULT, {"tool": self.clean(tool, 100), "id": call_id, "ok": ok, "size": size})

    def error(self, message: str) -> None:
        self.emit(EventKind.ERROR, {"message": self.clean(message, SUMMARY_CHARS * 5)})

    def rate_limit(self, message: str, resets_at: float | None) -> None:
        self.emit(EventKind.RATE_LIMIT, {"message": self.clean(message, SUMMARY_CHARS * 5),
                                         "resets_at": resets_at})

    def failure_notice(self, message: str, status: int | None = None) -> None:
        """A failure the stream reports: a `rate_limit` event when it is one (with the reset time the text
        names), else an `error` event."""
        if classify_message(message, status) == FailureKind.RATE_LIMITED:
            seconds = retry_after_from_text(message)
            self.rate_limit(message, None if seconds is None else round(self.clock() + seconds, 3))
        else:
            self.error(message)

    def estimate(self) -> None:
        """Cost from tokens and prices, for CLIs that report tokens but no cost."""
        if self.input_tokens is None and self.output_tokens is None:
            return
        cost = estimate_cost(self.model or self.stream_model, self.input_tokens or 0, self.output_tokens or 0,
                             self.prices)
        if cost is not None:
            self.cost_usd, self.cost_is_estimate = cost, True

    def usage(self) -> None:
        """A `usage` event with the running totals, when they changed."""
        totals = (self.input_tokens, self.output_tokens, self.cost_usd, self.turns, self.cost_is_estimate)
        if totals == self._last_usage:
            return
        self._last_usage = totals
        self.emit(EventKind.USAGE, {"input_tokens": self.input_tokens, "output_tokens": self.output_tokens,
                                    "cost_usd": self.cost_usd, "turns": self.turns,
                                    "estimate": self.cost_is_estimate})

    def parsed(self, **fields: Any) -> Parsed:
        """A Parsed with the stream's state filled in."""
        return Parsed(final_message=self.final_text, input_tokens=self.input_tokens,
                      output_tokens=self.output_tokens, cost_usd=self.cost_usd, session_id=self.session_id,
                      turns=self.turns, cost_is_estimate=self.cost_is_estimate, **fields)
