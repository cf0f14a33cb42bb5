"""A local OpenAI-compatible endpoint for tests: real sockets on 127.0.0.1, canned answers queued by the test.

    with FakeOpenAI() as fake:
        settings.OPENAI_BASE_URL = fake.base_url        # http://127.0.0.1:<port>/v1
        fake.answer({"kind": "task", …})                # a chat completion whose message content is that JSON
        fake.answer_text("not json")                    # … whose content is this text
        fake.rate_limit(retry_after=0.3)                # HTTP 429 with Retry-After (seconds)
        fake.hang(seconds=10)                           # say nothing for that long (released early at stop)
        fake.reply(status=200, body=b"<html>", content_type="text/html")   # anything else
        …
        fake.requests                                   # what it received, oldest first

Only `POST /v1/chat/completions` is served. Each request takes the next queued reply; with none queued it answers
`FakeOpenAI(default_answer=…)` if given (for fuzzing), else 500 with an OpenAI-style error saying so, so a test that
forgot one fails loudly.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMPLETIONS_PATH = "/v1/chat/completions"
MAX_HANG_SECONDS = 60.0


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)
    hang_seconds: float = 0.0


@dataclass
class RecordedRequest:
    path: str
    headers: dict[str, str]
    body: Any  # the parsed JSON body (or the raw text when it is not JSON)
    received_at: float  # time.monotonic()


class FakeOpenAI:
    def __init__(self, *, default_answer: Any = None) -> None:
        self.default_answer = default_answer
        self.requests: list[RecordedRequest] = []
        self._replies: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self.base_url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    # --- queueing replies ------------------------------------------------------------------------------
    def reply(self, *, status: int = 200, body: bytes | str | dict[str, Any] = b"",
              content_type: str = "application/json", headers: dict[str, str] | None = None,
              hang_seconds: float = 0.0) -> None:
        if isinstance(body, dict):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        with self._lock:
            self._replies.append(Reply(status=status, body=body, content_type=content_type,
                                       headers=dict(headers or {}), hang_seconds=hang_seconds))

    def answer_text(self, content: str, *, finish_reason: str = "stop", refusal: str | None = None) -> None:
        """A chat completion whose single choice's message content is `content`."""
        self.reply(body=completion(content, finish_reason=finish_reason, refusal=refusal))

    def answer(self, data: Any) -> None:
        self.answer_text(json.dumps(data))

    def rate_limit(self, *, retry_after: float) -> None:
        self.reply(status=429, headers={"Retry-After": f"{retry_after:g}"}, body=error_body(
            "Rate limit reached for requests", "rate_limit_exceeded", "requests"))

    def hang(self, *, seconds: float) -> None:
        self.reply(hang_seconds=min(seconds, MAX_HANG_SECONDS))

    # --- lifecycle -------------------------------------------------------------------------------------
    def start(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes hanging handlers
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeOpenAI:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- used by the handler -------------------------------------------------------------------------------
    def _record_and_take(self, request: RecordedRequest) -> Reply:
        with self._lock:
            self.requests.append(request)
            if self._replies:
                return self._replies.popleft()
        if self.default_answer is not None:
            return Reply(body=json.dumps(completion(json.dumps(self.default_answer))).encode())
        return Reply(status=500, body=json.dumps(error_body(
            "fake OpenAI: no canned response queued for this request", "server_error", None)).encode())

    def _wait_hang(self, seconds: float) -> None:
        self._stopping.wait(seconds)


def completion(content: str, *, finish_reason: str = "stop", refusal: str | None = None,
               model: str = "fake-model") -> dict[str, Any]:
    return {
        "id": f"chatcmpl-fake-{time.monotonic_ns()}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": None if refusal else content, "refusal": refusal},
            "finish_reason": finish_reason,
            "logprobs": None,
        }],
        "usage": {"prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150},
    }


def error_body(message: str, code: str, param: str | None) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "param": param, "code": code}}


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like the real API; every reply carries Content-Length

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode(errors="replace")
            try:
                body: Any = json.loads(raw)
            except ValueError:
                body = raw
            if self.path != COMPLETIONS_PATH:
                self._send(Reply(status=404, body=json.dumps(error_body(
                    f"fake OpenAI serves only POST {COMPLETIONS_PATH}", "not_found", None)).encode()))
                return
            reply = fake._record_and_take(RecordedRequest(
                path=self.path, headers={k.lower(): v for k, v in self.headers.items()}, body=body,
                received_at=time.monotonic()))
            if reply.hang_seconds:
                fake._wait_hang(reply.hang_seconds)
                self.close_connection = True  # the client gave up long ago; say nothing
                return
            self._send(reply)

        def _send(self, reply: Reply) -> None:
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", reply.content_type)
                self.send_header("Content-Length", str(len(reply.body)))
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(reply.body)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:  # keep pytest output clean
            pass

    return Handler
