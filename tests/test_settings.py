"""Keys: a real deployment refuses to start without them; the embedded default makes them once, for everyone.
HTTPS: a real deployment is HTTPS-only by default and `check --deploy` is clean; the embedded default is plain HTTP."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

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


# --- HTTPS and security headers ------------------------------------------------------------------------------------
SECURITY = ("SECURE_SSL_REDIRECT", "SECURE_REDIRECT_EXEMPT", "SECURE_HSTS_SECONDS", "SECURE_HSTS_INCLUDE_SUBDOMAINS",
            "SECURE_HSTS_PRELOAD", "SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_PROXY_SSL_HEADER",
            "CSRF_TRUSTED_ORIGINS", "SECURE_CONTENT_TYPE_NOSNIFF", "X_FRAME_OPTIONS", "SECURE_REFERRER_POLICY")
PRINT_SECURITY = ("import django, json; django.setup(); from django.conf import settings; "
                  f"print(json.dumps({{name: getattr(settings, name) for name in {SECURITY!r}}}))")


def _production_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """DEBUG off, a database server and both keys: a real deployment (nothing here needs to connect)."""
    return _env(tmp_path, DATABASE_URL="postgres://postgres@127.0.0.1:5432/none", SECRET_KEY=secrets.token_urlsafe(50),
                SCHEDULER_ENCRYPTION_KEY=Fernet.generate_key().decode(), ALLOWED_HOSTS="scheduler.example.com",
                **extra)


def _security_settings(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", PRINT_SECURITY], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_production_defaults_to_https_only_and_the_load_balancer_probes_are_not_redirected(tmp_path: Path) -> None:
    values = _security_settings(_production_env(tmp_path))

    assert values == {
        "SECURE_SSL_REDIRECT": True, "SECURE_REDIRECT_EXEMPT": [r"^healthz$", r"^metrics$"],
        "SECURE_HSTS_SECONDS": 31536000, "SECURE_HSTS_INCLUDE_SUBDOMAINS": True, "SECURE_HSTS_PRELOAD": False,
        "SESSION_COOKIE_SECURE": True, "CSRF_COOKIE_SECURE": True,
        "SECURE_PROXY_SSL_HEADER": None,  # opt-in: trusting the header with no proxy in front lets anyone claim HTTPS
        "CSRF_TRUSTED_ORIGINS": [], "SECURE_CONTENT_TYPE_NOSNIFF": True, "X_FRAME_OPTIONS": "DENY",
        "SECURE_REFERRER_POLICY": "same-origin",
    }


def test_every_security_setting_comes_from_the_environment(tmp_path: Path) -> None:
    values = _security_settings(_production_env(
        tmp_path, SECURE_SSL_REDIRECT="false", SECURE_HSTS_SECONDS="600", SECURE_HSTS_INCLUDE_SUBDOMAINS="false",
        SECURE_HSTS_PRELOAD="true", SESSION_COOKIE_SECURE="false", CSRF_COOKIE_SECURE="false",
        SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto,https",
        CSRF_TRUSTED_ORIGINS="https://scheduler.example.com,https://ops.example.com",
        SECURE_CONTENT_TYPE_NOSNIFF="false", X_FRAME_OPTIONS="SAMEORIGIN", SECURE_REFERRER_POLICY="no-referrer"))

    assert values == {
        "SECURE_SSL_REDIRECT": False, "SECURE_REDIRECT_EXEMPT": [r"^healthz$", r"^metrics$"],
        "SECURE_HSTS_SECONDS": 600, "SECURE_HSTS_INCLUDE_SUBDOMAINS": False, "SECURE_HSTS_PRELOAD": True,
        "SESSION_COOKIE_SECURE": False, "CSRF_COOKIE_SECURE": False,
        "SECURE_PROXY_SSL_HEADER": ["HTTP_X_FORWARDED_PROTO", "https"],  # a header name as sent is accepted too
        "CSRF_TRUSTED_ORIGINS": ["https://scheduler.example.com", "https://ops.example.com"],
        "SECURE_CONTENT_TYPE_NOSNIFF": False, "X_FRAME_OPTIONS": "SAMEORIGIN", "SECURE_REFERRER_POLICY": "no-referrer",
    }


def test_the_embedded_default_and_debug_stay_on_plain_http(tmp_path: Path) -> None:
    embedded = _security_settings(_env(tmp_path / "embedded"))
    debug = _security_settings(_production_env(tmp_path / "debug", DEBUG="1"))

    for values in (embedded, debug):  # `make run` serves http://127.0.0.1:8000: no redirect, no HSTS pinned
        assert values["SECURE_SSL_REDIRECT"] is False and values["SECURE_HSTS_SECONDS"] == 0
        assert values["SESSION_COOKIE_SECURE"] is False and values["CSRF_COOKIE_SECURE"] is False
        assert values["SECURE_PROXY_SSL_HEADER"] is None


def test_a_proxy_ssl_header_without_its_value_is_refused_at_start(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-c", PRINT_SECURITY], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=_production_env(tmp_path, SECURE_PROXY_SSL_HEADER="HTTP_X_FORWARDED_PROTO"))

    assert done.returncode == 1 and done.stdout == ""
    assert "SECURE_PROXY_SSL_HEADER must be a header and the value that means HTTPS" in done.stderr


def test_check_deploy_is_clean_under_production_settings(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
                          env=_production_env(tmp_path), cwd=ROOT, capture_output=True, text=True, timeout=120)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "System check identified no issues (1 silenced)."
    assert done.stderr == ""


@pytest.mark.django_db
def test_with_https_redirect_on_only_the_probes_answer_over_plain_http(client, settings) -> None:
    settings.SECURE_SSL_REDIRECT = True  # production's default (the test session runs on plain HTTP)
    settings.SECURE_HSTS_SECONDS = 31536000

    admin = client.get("/admin/login/")
    health = client.get("/healthz")
    metrics = client.get("/metrics")  # from 127.0.0.1, no proxy: the allow-list admits it

    assert admin.status_code == 301 and admin["Location"] == "https://testserver/admin/login/"
    assert health.status_code in (200, 503) and health.json()["status"] in ("ok", "degraded", "error")
    assert metrics.status_code == 200
    assert "Strict-Transport-Security" not in health  # HSTS is only ever sent over HTTPS


@pytest.mark.django_db
def test_behind_a_tls_proxy_the_forwarded_scheme_is_trusted_only_when_configured(client, settings) -> None:
    settings.SECURE_SSL_REDIRECT = True
    settings.SECURE_HSTS_SECONDS = 31536000

    untrusted = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    trusted = client.get("/admin/login/", HTTP_X_FORWARDED_PROTO="https")

    assert untrusted.status_code == 301
    assert trusted.status_code == 200
    assert trusted["Strict-Transport-Security"].startswith("max-age=31536000")


@pytest.mark.parametrize("prices", ['{"gpt-5": 1.25}', '["gpt-5"]', '{"gpt-5": [1, "x"]}', "not json"])
def test_a_malformed_price_table_is_refused_at_start_in_one_line(tmp_path: Path, prices: str) -> None:
    done = subprocess.run([sys.executable, "-c", PRINT_KEY], env=_env(tmp_path, SCHEDULER_PRICES=prices), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)

    assert done.returncode != 0
    assert "SCHEDULER_PRICES" in done.stderr.strip().splitlines()[-1]
