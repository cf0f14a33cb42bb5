from __future__ import annotations

import os
import tracemalloc
from pathlib import Path

from executors import ExecutionSpec
from executors.adapters import ADAPTERS
from executors.runner import execute

FAKE_CLAUDE = str(Path(__file__).resolve().parents[1] / "fakes" / "bin" / "claude")


def test_a_cli_printing_100_mb_keeps_memory_bounded(tmp_path: Path) -> None:
    spec = ExecutionSpec(
        tool="claude",
        argv=ADAPTERS["claude"].build(binary=FAKE_CLAUDE, model="", extra_args=[], allow_dangerous=False),
        stdin=b'flood\nFAKE: {"stdout_bytes": 100000000, "stderr_bytes": 20000000}',
        env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "LANG": "C.UTF-8"},
        work_dir=tmp_path / "work",
        stdout_limit=1024 * 1024,
        timeout_seconds=120,
    )
    tracemalloc.start()
    try:
        result = execute(spec)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result.succeeded, result.error_message
    assert result.stdout_truncated and result.stderr_truncated
    assert len(result.stdout) < 1024 * 1024 + 200 and len(result.stderr) < 1024 * 1024 + 200
    assert result.input_tokens is not None  # the JSON result at the end survived the truncation
    # 120 MB went through the pipes; Python allocations stayed a few buffers' worth.
    assert peak < 16 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"
