"""A server-sent events parser that follows the WHATWG algorithm ("interpret an event stream") step by step, the way
a browser's EventSource reads the bytes: lines end at CRLF, a bare CR or LF; a blank line dispatches the event."""

from __future__ import annotations

import codecs
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

_LINE = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class Event:
    type: str
    data: str
    last_event_id: str


@dataclass
class SseParser:
    """Feed it bytes as they arrive (`feed`), take the events it dispatched; comments are counted apart."""

    _buffer: str = ""
    _decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    _type: str = ""
    _data: str = ""
    _last_event_id: str = ""
    comments: int = 0
    retry_ms: int | None = None
    _started: bool = False

    def feed(self, raw: bytes) -> list[Event]:
        text = self._decoder.decode(raw)
        if not self._started and text:
            text = text.removeprefix("\ufeff")
            self._started = True
        self._buffer += text
        events: list[Event] = []
        while True:
            match = _LINE.search(self._buffer)
            # A CR at the very end may be the first half of a CRLF: wait for the next byte.
            if match is None or (match.group() == "\r" and match.end() == len(self._buffer)):
                return events
            line, self._buffer = self._buffer[:match.start()], self._buffer[match.end():]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            if self._data == "":
                self._type = ""
                return None
            data = self._data.removesuffix("\n")
            event = Event(type=self._type or "message", data=data, last_event_id=self._last_event_id)
            self._type, self._data = "", ""
            return event
        if line.startswith(":"):
            self.comments += 1
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data += value + "\n"
        elif name == "id" and "\0" not in value:
            self._last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


def parse(chunks: Iterable[bytes]) -> Iterator[Event]:
    parser = SseParser()
    for chunk in chunks:
        yield from parser.feed(chunk)


class SseClient:
    """One follow stream over a plain socket, read as it arrives: every read is bounded by `timeout`."""

    def __init__(self, url: str, *, headers: dict[str, str], timeout: float = 30.0) -> None:
        import http.client
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.connection.request("GET", f"{parts.path}?{parts.query}", headers=headers)
        self.response = self.connection.getresponse()
        self.status = self.response.status
        self.parser = SseParser()
        self.events: list[Event] = []

    def body(self) -> bytes:
        return self.response.read()

    def read_until(self, done: Callable[[SseClient], bool], *, timeout: float) -> list[Event]:
        """Read until `done(self)`; fail after `timeout` seconds (or if the server closes first)."""
        import time

        deadline = time.monotonic() + timeout
        while not done(self):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout}s; events so far: {self.events}")
            raw = self.response.read1(65536)
            if not raw:
                raise AssertionError(f"the server closed the stream; events so far: {self.events}")
            self.events.extend(self.parser.feed(raw))
        return self.events

    def close(self) -> None:
        self.response.close()
        self.connection.close()
