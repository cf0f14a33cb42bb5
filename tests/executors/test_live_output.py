from __future__ import annotations

import os
from pathlib import Path

from executors import ExecutionSpec
from executors.adapters import ADAPTERS
from executors.runner import LiveOutput, execute

FAKE_CLAUDE = str(Path(__file__).resolve().parents[1] / "fakes" / "bin" / "claude")


def test_live_output_is_bounded_in_total() -> None:
    live = LiveOutput(10, ())
    live.feed("stdout", b"0123456")
    live.feed("stderr", b"abcdef")

    assert live.drain(final=True) == [("stdout", "0123456"), ("stderr", "abc")]
    live.feed("stdout", b"more")
    assert live.drain(final=True) == []


def test_a_secret_split_across_two_flushes_is_still_scrubbed() -> None:
    live = LiveOutput(1000, ("sk-live-SECRET",))
    live.feed("stdout", b"key=sk-live-SE")
    first = live.drain()
    live.feed("stdout", b"CRET done\n")
    second = live.drain(final=True)

    text = "".join(t for _, t in first + second)
    assert text == "key=[redacted] done\n"


def test_a_complete_secret_is_scrubbed_wherever_the_flush_cuts() -> None:
    secret = "sk-live-secret-9"
    for prefix in range(0, 40):
        live = LiveOutput(1000, (secret,))
        live.feed("stderr", ("x" * prefix + f"KEY={secret}\n").encode())
        chunks = live.drain() + live.drain(final=True)
        text = "".join(t for _, t in chunks)
        assert text == "x" * prefix + "KEY=[redacted]\n", prefix


def test_a_utf8_character_split_between_reads_stays_whole() -> None:
    live = LiveOutput(1000, ())
    data = "héllo ✓\n".encode()
    live.feed("stdout", data[:2])  # ends inside "é"
    first = live.drain()
    live.feed("stdout", data[2:])
    second = live.drain(final=True)

    assert "".join(t for _, t in first + second) == "héllo ✓\n"


def test_execute_streams_output_while_the_cli_runs(tmp_path: Path) -> None:
    received: list[tuple[str, str]] = []
    spec = ExecutionSpec(
        tool="claude",
        argv=ADAPTERS["claude"].build(binary=FAKE_CLAUDE, model="", extra_args=[], allow_dangerous=False),
        stdin=b'stream\nFAKE: {"stdout_bytes": 300, "stderr_bytes": 40, "sleep": 0.6}',
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"},
        work_dir=tmp_path / "work", heartbeat_interval=0.1, live_output_bytes=100_000,
    )

    result = execute(spec, on_output=received.extend)

    assert result.succeeded
    stdout = "".join(t for s, t in received if s == "stdout")
    assert stdout.startswith("[stdout filler]") and '"type":"result"' in stdout.replace(" ", "")
    assert "".join(t for s, t in received if s == "stderr").startswith("[stderr filler]")


def test_a_secret_cut_by_head_and_tail_truncation_is_scrubbed_on_both_sides() -> None:
    from executors.runner import BoundedBuffer, scrub

    secret = "sk-ant-0123456789abcdef"
    buffer = BoundedBuffer(40)
    buffer.feed(b"x" * 10 + secret.encode() + b"y" * 200 + secret.encode() + b"z" * 5)
    text = buffer.value().decode()
    assert secret not in text and secret[:6] in text  # the cut really split both copies

    scrubbed = scrub(text, (secret,))

    assert "sk-ant" not in scrubbed and "cdef" not in scrubbed
    assert scrubbed.startswith("x" * 10 + "[redacted]") and scrubbed.endswith("[redacted]" + "z" * 5)
