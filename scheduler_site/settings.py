"""Settings, all from the environment (SPEC §7). The zero-config default is the embedded stack:
SQLite and a file-system Celery transport under ``var/``, good for one box and for trying it out.
``DATABASE_URL=postgres://…`` and ``CELERY_BROKER_URL=redis://…`` switch to production with no code change.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sys
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env") if (BASE_DIR / ".env").exists() else None

VAR_DIR = Path(env.str("SCHEDULER_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)


def _local_secret(name: str) -> str:
    """A random secret kept under var/ so the embedded default needs no setup and survives restarts.

    Created once, atomically: written whole to a private file, then linked into place, which fails if another
    process got there first. Every process started at once reads the same value, never a half-written one."""
    path = VAR_DIR / name
    if not path.exists():
        draft = VAR_DIR / f".{name}.{os.getpid()}"
        fd = os.open(draft, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_urlsafe(50))
        try:
            with contextlib.suppress(FileExistsError):  # another process created it first: all use that one
                os.link(draft, path)
        finally:
            draft.unlink()
    return path.read_text().strip()


DEBUG = env.bool("DEBUG", default=False)
# The embedded default (SQLite under var/) makes its own keys. Anything else with DEBUG off is a
# real deployment: its keys must be given, the same to every process, or stored credentials cannot be read.
EMBEDDED = env.str("DATABASE_URL", default="sqlite:").startswith("sqlite:")
_missing_keys = [name for name in ("SECRET_KEY", "SCHEDULER_ENCRYPTION_KEY") if not env.str(name, default="")]
if _missing_keys and not DEBUG and not EMBEDDED:
    sys.exit(f"error: set {' and '.join(_missing_keys)} in the environment (DEBUG is off and DATABASE_URL names a "
             "database server), the same for every process, e.g. python -c 'import secrets; "
             "print(secrets.token_urlsafe(50))'")
SECRET_KEY = env.str("SECRET_KEY", default="") or _local_secret("secret_key")
ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["localhost", "127.0.0.1", "[::1]"])

# --- HTTPS and security headers -------------------------------------------------------------------
# A real deployment (DEBUG off, a database server) is HTTPS-only unless told otherwise. The embedded default
# serves http://127.0.0.1 (`make run`): redirecting it, or pinning HSTS on localhost, would lock the user out.
PRODUCTION = not DEBUG and not EMBEDDED
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", default=PRODUCTION)
# Load balancer probes and scrapers speak plain HTTP to the app port. A redirect cannot protect /metrics' bearer
# token anyway: the scraper has sent it before any redirect comes back (README: /metrics behind a proxy).
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^metrics$"]
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", default=31536000 if PRODUCTION else 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", default=PRODUCTION)
# Preloading commits the whole registrable domain, in browsers' builds, for months: the domain owner's call.
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", default=False)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", default=PRODUCTION)
CSRF_COOKIE_SECURE = env.bool("CSRF_COOKIE_SECURE", default=PRODUCTION)
# Opt-in: with no proxy in front that overwrites this header, any client could send it and claim HTTPS.
# "HTTP_X_FORWARDED_PROTO,https" (or "X-Forwarded-Proto,https", the header as sent).
_proxy_ssl_header = env.list("SECURE_PROXY_SSL_HEADER", default=[])
if _proxy_ssl_header and (len(_proxy_ssl_header) != 2 or not all(_proxy_ssl_header)):
    sys.exit("error: SECURE_PROXY_SSL_HEADER must be a header and the value that means HTTPS, e.g. "
             "HTTP_X_FORWARDED_PROTO,https")
SECURE_PROXY_SSL_HEADER: tuple[str, str] | None = None
if _proxy_ssl_header:
    _header = _proxy_ssl_header[0].upper().replace("-", "_")
    SECURE_PROXY_SSL_HEADER = (_header if _header.startswith("HTTP_") else f"HTTP_{_header}", _proxy_ssl_header[1])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", default=[])
SECURE_CONTENT_TYPE_NOSNIFF = env.bool("SECURE_CONTENT_TYPE_NOSNIFF", default=True)
X_FRAME_OPTIONS = env.str("X_FRAME_OPTIONS", default="DENY")
SECURE_REFERRER_POLICY = env.str("SECURE_REFERRER_POLICY", default="same-origin")
SILENCED_SYSTEM_CHECKS = [
    "security.W021",  # SECURE_HSTS_PRELOAD off by default, on purpose (above); SECURE_HSTS_PRELOAD=true opts in
]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_celery_beat",
    "tasks_app",
]

MIDDLEWARE = [
    "tasks_app.logformat.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "tasks_app.audit.AuditMiddleware",  # configuration changes record their user and source (api / admin)
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "scheduler_site.urls"
WSGI_APPLICATION = "scheduler_site.wsgi.application"
ASGI_APPLICATION = "scheduler_site.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------------
DATABASES = {"default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, beat, control, workers) write one file: WAL lets readers run beside the
    # writer, IMMEDIATE takes the write lock at BEGIN so two writers queue on busy_timeout instead of
    # failing with "database is locked" when a read lock would have to be upgraded mid-transaction.
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    # A file, not :memory:, so worker processes started by the tests share the test database.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test_db.sqlite3")}
else:
    # Reuse connections (a new PostgreSQL connection costs milliseconds on every request and Celery task);
    # health checks drop one the server closed instead of failing the request that finds it.
    DATABASES["default"]["CONN_MAX_AGE"] = env.int("DB_CONN_MAX_AGE", default=60)
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
# Our date formats (ISO, with seconds) before the locale's: locale formats win over DATETIME_FORMAT & co.
FORMAT_MODULE_PATH = ["scheduler_site.formats"]

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
MEDIA_ROOT = Path(env.str("SCHEDULER_MEDIA_ROOT", default=str(VAR_DIR / "files")))
MEDIA_URL = "media/"

# JSON lines by default (LOG_FORMAT=plain for a human at a terminal).
LOG_FORMAT = env.str("LOG_FORMAT", default="json")
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"},
        "json": {"()": "tasks_app.logformat.JsonFormatter"},
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "json" if LOG_FORMAT == "json" else "plain"},
    },
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # The embedded file-system transport has no host; kombu warns about that on every connection.
    "loggers": {"kombu.connection": {"level": "ERROR"}},
}

# --- REST framework ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: its header makes anonymous requests 401. Sessions let staff browse the API in the admin.
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "tasks_app.api.auth.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON bodies only: the serializers take each field's JSON type and nothing else, so a form body could not
    # even say priority=5 (SPEC §8, input strictness). Anything else is a 415.
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["tasks_app.api.throttling.TokenRateThrottle"],
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "tasks_app.api.errors.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer",
                                 "rest_framework.renderers.BrowsableAPIRenderer"],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "CLI Scheduler API",
    "DESCRIPTION": "Queue, inspect and cancel LLM coding CLI jobs (claude, codex, gemini).",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,  # request and response schemas differ (write-only credentials)
    "SWAGGER_UI_DIST": "SIDECAR",  # served from our static files: no CDN
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "tasks_app.api.schema.add_error_responses",
        "tasks_app.api.schema.forbid_unknown_fields",
    ],
    "ENUM_NAME_OVERRIDES": {
        "TaskStatusEnum": "tasks_app.models.TaskStatus",
        "RunStatusEnum": "tasks_app.models.TaskRun.Status",
    },
}
# Throttle counters live in the cache: per process by default; set CACHE_URL (e.g. redis://…/1) to share.
CACHES = {"default": env.cache_url("CACHE_URL", default="locmemcache://")}
# Inputs arrive base64-encoded inside JSON: allow the total input limit plus encoding overhead.
DATA_UPLOAD_MAX_MEMORY_SIZE = None  # set below, once the limits are known

# --- Celery ---------------------------------------------------------------------------------------
_EMBEDDED_BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    from kombu.transport import TRANSPORT_ALIASES

    # kombu's own writes a message's file before its content; ours renames a whole file into place.
    TRANSPORT_ALIASES["filesystem"] = "scheduler_site.fsbroker:Transport"
    for sub in ("queue", "processed", "control"):
        (_EMBEDDED_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    # One folder for in and out so every process on the box sees every message; processed files are
    # moved (an atomic rename on one file system, so two consumers never both take one message) into
    # processed/, which the reconciler prunes.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_EMBEDDED_BROKER_DIR / "queue"),
        "data_folder_out": str(_EMBEDDED_BROKER_DIR / "queue"),
        "processed_folder": str(_EMBEDDED_BROKER_DIR / "processed"),
        "control_folder": str(_EMBEDDED_BROKER_DIR / "control"),
        "store_processed": True,
        # Poll often: the folder listing is cheap and dispatch latency is what users feel.
        "polling_interval": 0.1,
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Only matters for unacked messages; ours are acked on receipt (below), so a long run is never
        # redelivered when it outlives this (celery#5935). Kept explicit so it can be shortened in tests.
        "visibility_timeout": env.int("SCHEDULER_BROKER_VISIBILITY_TIMEOUT", default=3600),
    }
    if env.str("SCHEDULER_BROKER_PREFIX", default=""):
        # Namespaces every key on a shared Redis (tests use one prefix per session; never a flush).
        CELERY_BROKER_TRANSPORT_OPTIONS["global_keyprefix"] = env.str("SCHEDULER_BROKER_PREFIX")
EMBEDDED_BROKER_PROCESSED_DIR = _EMBEDDED_BROKER_DIR / "processed"
# No result backend: the database (Task, TaskRun) is the source of truth for outcomes.
CELERY_TASK_IGNORE_RESULT = True
CELERY_RESULT_BACKEND = None
# Early ack: a lost run is recovered by the database lease and the reconciler, never by broker
# redelivery, which on Redis re-runs long jobs after visibility_timeout (celery#5935).
CELERY_TASK_ACKS_LATE = False
# One message at a time per process: a worker never hoards jobs that another box could start now.
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Recycle pool processes now and then so a slow leak in a CLI parser or driver cannot grow forever.
CELERY_WORKER_MAX_TASKS_PER_CHILD = env.int("SCHEDULER_WORKER_MAX_TASKS_PER_CHILD", default=500)
# Publishing retries briefly if the broker blips; a message that still cannot be sent is recovered by the
# lease expiring and the next dispatch pass, so no retry loop here needs to be long.
CELERY_TASK_PUBLISH_RETRY_POLICY = {"max_retries": 5, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}
# Anything not routed to a group queue is control-plane work (dispatch, reconcile).
CELERY_TASK_DEFAULT_QUEUE = "control"
# Survive a broker that comes up after the worker (honcho starts everything at once).
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# JSON only: messages carry ids and lease tokens, never pickled objects.
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
# Flower and `celery events` see workers and tasks out of the box.
CELERY_WORKER_SEND_TASK_EVENTS = True
CELERY_TASK_SEND_SENT_EVENT = True
# Beat keeps its timing in the database (django-celery-beat); this static entry is the dispatcher's
# safety-net tick and the lease reconciler.
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
SCHEDULER_TICK_SECONDS = env.float("SCHEDULER_TICK_SECONDS", default=5.0)
CELERY_BEAT_SCHEDULE = {
    "scheduler-tick": {
        "task": "workers.tick",
        "schedule": SCHEDULER_TICK_SECONDS,
        "options": {"queue": "control", "expires": 30},
    },
}
CELERY_TIMEZONE = "UTC"

# --- CLI Scheduler --------------------------------------------------------------------------------
SCHEDULER_ENCRYPTION_KEY = env.str("SCHEDULER_ENCRYPTION_KEY", default="")
SCHEDULER_WORK_DIR = Path(env.str("SCHEDULER_WORK_DIR", default=str(VAR_DIR / "work")))
# Each box's bare mirrors of the repositories its runs check out (fetched, never cloned again per run).
SCHEDULER_MIRROR_DIR = Path(env.str("SCHEDULER_MIRROR_DIR", default=str(VAR_DIR / "mirrors")))
# What a retry after a usage limit says to the CLI session it resumes (the session already holds the task).
SCHEDULER_RESUME_PROMPT = env.str(
    "SCHEDULER_RESUME_PROMPT", default="You were interrupted by a usage limit. Continue the task where you left off.")
SCHEDULER_KEEP_WORK_DIRS = env.bool("SCHEDULER_KEEP_WORK_DIRS", default=False)
SCHEDULER_DEFAULT_TIMEOUT = env.int("SCHEDULER_DEFAULT_TIMEOUT", default=3600)
SCHEDULER_MAX_TIMEOUT = env.int("SCHEDULER_MAX_TIMEOUT", default=24 * 3600)
SCHEDULER_MAX_INPUT_BYTES = env.int("SCHEDULER_MAX_INPUT_BYTES", default=10 * 1024 * 1024)
SCHEDULER_MAX_OUTPUT_BYTES = env.int("SCHEDULER_MAX_OUTPUT_BYTES", default=10 * 1024 * 1024)
SCHEDULER_MAX_TOTAL_BYTES = env.int("SCHEDULER_MAX_TOTAL_BYTES", default=50 * 1024 * 1024)
SCHEDULER_MAX_PROMPT_CHARS = env.int("SCHEDULER_MAX_PROMPT_CHARS", default=200_000)
SCHEDULER_INLINE_FILE_BYTES = env.int("SCHEDULER_INLINE_FILE_BYTES", default=256 * 1024)
# A schedule (interval or cron) may not fire more often than this: every firing is a paid CLI run.
SCHEDULER_MIN_SCHEDULE_INTERVAL = env.int("SCHEDULER_MIN_SCHEDULE_INTERVAL", default=60)
SCHEDULER_STDOUT_LIMIT = env.int("SCHEDULER_STDOUT_LIMIT", default=1024 * 1024)
SCHEDULER_ALLOW_DANGEROUS_FLAGS = env.bool("SCHEDULER_ALLOW_DANGEROUS_FLAGS", default=False)
# Extra variable names (or PREFIX_*) a group's env and credentials may hold, beyond each tool's allow-list
# (executors/envpolicy.py). Loader and interpreter variables (NODE_OPTIONS, LD_*, PYTHON*, …) stay refused.
SCHEDULER_ENV_ALLOW = env.list("SCHEDULER_ENV_ALLOW", default=[])
SCHEDULER_CLAUDE_BIN = env.str("SCHEDULER_CLAUDE_BIN", default="claude")
SCHEDULER_CODEX_BIN = env.str("SCHEDULER_CODEX_BIN", default="codex")
SCHEDULER_GEMINI_BIN = env.str("SCHEDULER_GEMINI_BIN", default="gemini")
SCHEDULER_LEASE_SECONDS = env.int("SCHEDULER_LEASE_SECONDS", default=60)
SCHEDULER_RETRY_BASE_SECONDS = env.float("SCHEDULER_RETRY_BASE_SECONDS", default=30.0)
SCHEDULER_RETRY_MAX_SECONDS = env.float("SCHEDULER_RETRY_MAX_SECONDS", default=600.0)
SCHEDULER_RATE_LIMIT_COOLDOWN_SECONDS = env.float("SCHEDULER_RATE_LIMIT_COOLDOWN_SECONDS", default=60.0)
# A reset time that has just passed (or is this very minute) still rests the account this long: never 0.
SCHEDULER_RATE_LIMIT_MIN_COOLDOWN_SECONDS = env.float("SCHEDULER_RATE_LIMIT_MIN_COOLDOWN_SECONDS", default=30.0)
# Account-level failures in a row (auth, CLI missing, API unreachable) that quarantine a group until resumed.
SCHEDULER_ACCOUNT_FAILURE_THRESHOLD = env.int("SCHEDULER_ACCOUNT_FAILURE_THRESHOLD", default=3)
# How soon a task whose account failed is tried again, on another account.
SCHEDULER_ACCOUNT_FAILURE_RETRY_SECONDS = env.float("SCHEDULER_ACCOUNT_FAILURE_RETRY_SECONDS", default=1.0)
SCHEDULER_CANCEL_POLL_SECONDS = env.float("SCHEDULER_CANCEL_POLL_SECONDS", default=1.0)
SCHEDULER_KILL_GRACE_SECONDS = env.float("SCHEDULER_KILL_GRACE_SECONDS", default=10.0)
# Each worker writes a heartbeat this often while connected to the broker; one silent for the timeout is not live,
# and a group whose queue no live worker consumes gets no leases.
SCHEDULER_WORKER_HEARTBEAT_SECONDS = env.float("SCHEDULER_WORKER_HEARTBEAT_SECONDS", default=10.0)
SCHEDULER_WORKER_TIMEOUT_SECONDS = env.float("SCHEDULER_WORKER_TIMEOUT_SECONDS", default=30.0)
# Every run in a bubblewrap sandbox (docs/security.md); "off" is an explicit opt-out, recorded on each run.
SCHEDULER_SANDBOX = env.str("SCHEDULER_SANDBOX", default="bwrap")
if SCHEDULER_SANDBOX not in ("bwrap", "off"):
    raise ImproperlyConfigured(f"SCHEDULER_SANDBOX must be 'bwrap' or 'off', not {SCHEDULER_SANDBOX!r}")
# Extra absolute paths a sandboxed CLI may see, os.pathsep-separated: read-only, and read-write.
SCHEDULER_SANDBOX_RO_PATHS = [p for p in env.str("SCHEDULER_SANDBOX_RO_PATHS", default="").split(os.pathsep) if p]
SCHEDULER_SANDBOX_RW_PATHS = [p for p in env.str("SCHEDULER_SANDBOX_RW_PATHS", default="").split(os.pathsep) if p]
SCHEDULER_LIVE_LOG_BYTES = env.int("SCHEDULER_LIVE_LOG_BYTES", default=1024 * 1024)
# Agent-aware runs (issue 16): the timeline kept per run, the idle (stall) timeout, the price table for CLIs that
# report tokens but no cost (model name or prefix -> [USD per million input tokens, per million output tokens]).
SCHEDULER_RUN_EVENTS_MAX = env.int("SCHEDULER_RUN_EVENTS_MAX", default=2000)
SCHEDULER_IDLE_TIMEOUT = env.int("SCHEDULER_IDLE_TIMEOUT", default=900)
try:
    SCHEDULER_PRICES = json.loads(env.str("SCHEDULER_PRICES", default="{}"))
except ValueError:
    SCHEDULER_PRICES = None
if not isinstance(SCHEDULER_PRICES, dict) or not all(
    isinstance(v, list | tuple) and len(v) == 2 and all(isinstance(x, int | float) for x in v)
    for v in SCHEDULER_PRICES.values()
):
    sys.exit('error: SCHEDULER_PRICES must be a JSON object of model name -> [USD per million input tokens, USD per '
             'million output tokens], e.g. {"gpt-5": [1.25, 10]}')
SCHEDULER_BUDGET_WARN_FRACTION = env.float("SCHEDULER_BUDGET_WARN_FRACTION", default=0.8)
SCHEDULER_LIVE_LOG_RETENTION_HOURS = env.float("SCHEDULER_LIVE_LOG_RETENTION_HOURS", default=24.0)
# Live streams (`?follow=1`) are served by the stream process (Procfile `stream`, an ASGI server), never by the WSGI
# web process, which redirects them to SCHEDULER_STREAM_URL (or refuses them, naming the stream process, if unset).
SCHEDULER_STREAM_URL = env.str("SCHEDULER_STREAM_URL", default="").rstrip("/")
SCHEDULER_SSE_MAX_SECONDS = env.int("SCHEDULER_SSE_MAX_SECONDS", default=3600)
# A comment this often on a quiet stream, so proxies and NAT keep it open and a vanished client is noticed.
SCHEDULER_SSE_KEEPALIVE_SECONDS = env.float("SCHEDULER_SSE_KEEPALIVE_SECONDS", default=15.0)
# One database poll this often serves every follower of the stream process (two queries, whatever their number).
SCHEDULER_SSE_POLL_SECONDS = env.float("SCHEDULER_SSE_POLL_SECONDS", default=0.5)
# Streams one stream process holds, in all and per API token (or admin user); one more is a 429.
SCHEDULER_SSE_MAX_STREAMS = env.int("SCHEDULER_SSE_MAX_STREAMS", default=500)
SCHEDULER_SSE_MAX_STREAMS_PER_TOKEN = env.int("SCHEDULER_SSE_MAX_STREAMS_PER_TOKEN", default=20)
# Requests the ASGI process works on at once, each on a thread with its own database connection; a stream counts
# only until its first byte (scheduler_site/asgi.py). Like the Procfile's gunicorn: 2 workers x 8 threads.
SCHEDULER_ASGI_THREADS = env.int("SCHEDULER_ASGI_THREADS", default=16)
for _name in ("SCHEDULER_ASGI_THREADS", "SCHEDULER_SSE_MAX_SECONDS", "SCHEDULER_SSE_KEEPALIVE_SECONDS",
              "SCHEDULER_SSE_POLL_SECONDS", "SCHEDULER_SSE_MAX_STREAMS", "SCHEDULER_SSE_MAX_STREAMS_PER_TOKEN"):
    if not globals()[_name] > 0:
        raise ImproperlyConfigured(f"{_name} must be greater than 0, not {globals()[_name]!r}")
# The ASGI entry point serves the admin's static files itself (the embedded one-command start has no web server
# in front); production serves them from STATIC_ROOT.
SCHEDULER_SERVE_STATIC = env.bool("SCHEDULER_SERVE_STATIC", default=False)
# /metrics: a bearer token if set, else only these networks may scrape.
SCHEDULER_METRICS_TOKEN = env.str("SCHEDULER_METRICS_TOKEN", default="")
SCHEDULER_METRICS_ALLOW = env.list("SCHEDULER_METRICS_ALLOW", default=["127.0.0.1/32", "::1/128"])
SCHEDULER_METRICS_CACHE_SECONDS = env.int("SCHEDULER_METRICS_CACHE_SECONDS", default=5)
SCHEDULER_API_ENABLED = env.bool("SCHEDULER_API_ENABLED", default=True)
SCHEDULER_API_THROTTLE_RATE = env.str("SCHEDULER_API_THROTTLE_RATE", default="1200/min")
DATA_UPLOAD_MAX_MEMORY_SIZE = SCHEDULER_MAX_TOTAL_BYTES * 4 // 3 + 1024 * 1024
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
SCHEDULER_INTAKE_MODEL = env.str("SCHEDULER_INTAKE_MODEL", default="gpt-4.1-mini")
# Per HTTP attempt; the openai client retries 429/5xx/timeouts itself (honouring Retry-After) up to MAX_RETRIES.
SCHEDULER_INTAKE_TIMEOUT_SECONDS = env.float("SCHEDULER_INTAKE_TIMEOUT_SECONDS", default=30.0)
SCHEDULER_INTAKE_MAX_RETRIES = env.int("SCHEDULER_INTAKE_MAX_RETRIES", default=3)
