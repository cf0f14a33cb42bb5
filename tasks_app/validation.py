"""Input rules shared by every producer (API, schedulerctl, admin, schedules, intake).

Each check raises `django.core.exceptions.ValidationError` with a ``{field: [message]}`` dict, so callers
can name the field and the rule without knowing where the rule lives.
"""

from __future__ import annotations

import json
import posixpath
import re
from datetime import UTC, datetime

from django.core.exceptions import ValidationError

MAX_PATH_CHARS = 1024
# NAME_MAX on Linux (ext4, xfs, tmpfs) and most other file systems: a longer name fails every run at write time.
MAX_SEGMENT_BYTES = 255
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_GLOB_CHARS = set("*?[")


def fail(field: str, message: str) -> ValidationError:
    return ValidationError({field: [message]})


def relative_path(value: object, *, field: str, allow_glob: bool = False) -> str:
    """A path confined to the job's work dir: relative, normalised, no `..`, no tricks."""
    if not isinstance(value, str) or not value:
        raise fail(field, "must be a non-empty string")
    if len(value) > MAX_PATH_CHARS:
        raise fail(field, f"must be at most {MAX_PATH_CHARS} characters")
    if _CONTROL.search(value):
        raise fail(field, f"{value!r} contains a NUL or control character")
    if "\\" in value:
        raise fail(field, f"{value!r} contains a backslash; use '/' between segments")
    if value.startswith("/") or re.match(r"^[A-Za-z]:", value) or value.startswith("~"):
        raise fail(field, f"{value!r} must be relative to the job's work dir, not absolute")
    segments = value.split("/")
    if ".." in segments:
        raise fail(field, f"{value!r} must not contain '..' segments")
    if any(len(segment.encode("utf-8", "surrogatepass")) > MAX_SEGMENT_BYTES for segment in segments):
        shown = repr(value) if len(value) <= 80 else f"{value[:80]!r}…"
        raise fail(field, f"{shown} has a segment longer than {MAX_SEGMENT_BYTES} bytes (UTF-8), "
                          "more than a file system allows in one name")
    normalised = posixpath.normpath(value)
    if normalised in (".", "") or normalised.startswith("../"):
        raise fail(field, f"{value!r} does not name a file inside the work dir")
    if not allow_glob and _GLOB_CHARS & set(normalised):
        raise fail(field, f"{value!r} must be a plain path, not a glob pattern")
    return normalised


def utc_timestamp(value: object, *, field: str) -> datetime:
    """A timestamp with a timezone, as UTC: Python reads offsets up to ±23:59, PostgreSQL refuses beyond ±15:59."""
    if not isinstance(value, datetime) or value.utcoffset() is None:
        raise fail(field, "must be a timestamp with a timezone, e.g. 2026-12-01T09:00:00Z")
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise fail(field, f"{value.isoformat()} is out of range once read in UTC") from None


def json_object(value: object, *, field: str, max_bytes: int = 64 * 1024) -> dict:
    """A JSON object PostgreSQL's jsonb can hold: no NUL in any string, no lone surrogate, bounded size."""
    if not isinstance(value, dict):
        raise fail(field, "must be a JSON object")
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        raise fail(field, "must contain only JSON values (no NaN or Infinity)") from None
    if "\\u0000" in encoded:
        raise fail(field, "must not contain NUL characters (\\u0000)")
    try:
        json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:
        raise fail(field, "must contain only valid Unicode text (no lone surrogates such as \\ud800)") from None
    if len(encoded.encode()) > max_bytes:
        raise fail(field, f"must be at most {max_bytes} bytes of JSON")
    return value


def is_glob(pattern: str) -> bool:
    return bool(_GLOB_CHARS & set(pattern))
