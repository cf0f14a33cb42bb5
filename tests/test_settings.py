"""Keys: a real deployment refuses to start without them; the embedded default makes them once, for everyone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRINT_KEY = "import django; django.setup(); from django.conf import settings; print(settings.SECRET_KEY)"


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("SECRET_KEY", "SCHEDULER_ENCRYPTION_KEY", "DATABASE_URL", "DEBUG")}
    return {**env, "DJANGO_SETTINGS_MODULE": "scheduler_site.settings", "SCHEDULER_VAR_DIR": str(tmp_path), **extra}


def test_with_debug_off_a_real_database_needs_both_keys_and_says_so_in_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/none")

    refused = subprocess.run([sys.executable, "-c", PRINT_KEY], env=env, capture_output=True, text=True, timeout=60)
    one_missing = subprocess.run([sys.executable, "-c", PRINT_KEY], env={**env, "SECRET_KEY": "k" * 50},
                                 capture_output=True, text=True, timeout=60)
    debug = subprocess.run([sys.executable, "-c", PRINT_KEY], env={**env, "DEBUG": "1"}, capture_output=True,
                           text=True, timeout=60)

    assert refused.returncode == 1 and refused.stdout == ""
    assert refused.stderr.splitlines() == [refused.stderr.strip()]  # one line, no traceback
    assert refused.stderr.startswith("error: set SECRET_KEY and SCHEDULER_ENCRYPTION_KEY in the environment")
    assert one_missing.returncode == 1 and one_missing.stderr.startswith("error: set SCHEDULER_ENCRYPTION_KEY ")
    assert debug.returncode == 0 and debug.stdout.strip(), debug.stderr


def test_the_embedded_default_makes_its_key_once_and_every_process_started_at_once_reads_it(tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", PRINT_KEY], env=_env(tmp_path), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    keys = [proc.communicate(timeout=120)[0].strip() for proc in procs]

    assert [proc.returncode for proc in procs] == [0] * 8
    assert len(set(keys)) == 1 and len(keys[0]) >= 50
    assert (tmp_path / "secret_key").read_text().strip() == keys[0]
    assert sorted(p.name for p in tmp_path.iterdir() if "secret_key" in p.name) == ["secret_key"]  # no drafts left
    assert (tmp_path / "secret_key").stat().st_mode & 0o777 == 0o600
