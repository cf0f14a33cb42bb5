"""The stand-in CLI (tests/fakes/bin/claude) as the issue-9 parts steer and watch it.

* `tagged_prompt`: a prompt whose `FAKE: {json}` line steers the stand-in and carries a tag, so a line of the
  stand-in's own log (`FAKE_CLI_LOG`, JSONL, `"t": time.time()` at start and at end) names its job.
* `FakeLog`: reads that log incrementally (start/end time per tag).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


def tagged_prompt(tag: str, **directive: object) -> str:
    return f"bench job {tag}\nFAKE: {json.dumps({'tag': tag, **directive})}"


@dataclass
class FakeLog:
    """The stand-in's JSONL log, read from where the last read stopped (lines are single O_APPEND writes)."""

    path: Path
    offset: int = 0
    pending: bytes = b""

    def __post_init__(self) -> None:
        self.starts: dict[str, float] = {}
        self.ends: dict[str, float] = {}
        self.start_pids: dict[str, int] = {}

    def refresh(self) -> None:
        try:
            with self.path.open("rb") as handle:
                handle.seek(self.offset)
                data = handle.read()
        except FileNotFoundError:
            return
        self.offset += len(data)
        lines = (self.pending + data).split(b"\n")
        self.pending = lines.pop()  # an unfinished line (none in practice) waits for the next read
        for raw in lines:
            if not raw.strip():
                continue
            line = json.loads(raw)
            tag = line.get("tag")
            if tag is None:
                continue
            if line["event"] == "start":
                self.starts[tag] = line["t"]
                self.start_pids[tag] = line["pid"]
            elif line["event"] == "end":
                self.ends[tag] = line["t"]

    def started(self, tags: list[str]) -> bool:
        self.refresh()
        return all(tag in self.starts for tag in tags)

    def ended(self, tags: list[str]) -> bool:
        self.refresh()
        return all(tag in self.ends for tag in tags)
