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


MAX_REF_CHARS = 255
# check-ref-format's forbidden characters (plus whitespace, which it refuses as well): `~^:` would be read as revision
# syntax, `?*[` as a pattern, `\` is never a path separator in a ref.
_REF_FORBIDDEN = set(" ~^:?*[\\")


def git_ref(value: object, *, field: str) -> str:
    """A branch, tag or commit as `git check-ref-format --allow-onelevel` accepts it (a hex sha passes too), and never
    something git would read as an option or a revision expression."""
    if not isinstance(value, str) or not value:
        raise fail(field, "must be a non-empty branch, tag or commit name")
    if len(value) > MAX_REF_CHARS:
        raise fail(field, f"must be at most {MAX_REF_CHARS} characters")
    shown = repr(value) if len(value) <= 80 else f"{value[:80]!r}…"
    if _CONTROL.search(value) or any(c.isspace() for c in value):
        raise fail(field, f"{shown} contains a space or a control character; a git ref cannot")
    if value.startswith("-"):
        raise fail(field, f"{shown} starts with '-': git would read it as an option")
    bad = sorted(_REF_FORBIDDEN & set(value))
    if bad:
        raise fail(field, f"{shown} contains {' '.join(repr(c) for c in bad)}; a git ref cannot contain any of "
                          "~ ^ : ? * [ \\ or a space")
    if ".." in value or "@{" in value or value == "@":
        raise fail(field, f"{shown} contains '..' or '@{{}}' (or is '@'): git would read it as a revision range or "
                          "reflog expression, not a ref")
    if value.startswith("/") or value.endswith("/") or "//" in value:
        raise fail(field, f"{shown} must not start or end with '/' or contain '//'")
    if value.endswith("."):
        raise fail(field, f"{shown} must not end with '.'")
    for segment in value.split("/"):
        if segment.startswith(".") or segment.endswith(".lock"):
            raise fail(field, f"{shown} has a segment {segment!r} that starts with '.' or ends with '.lock'")
    return value


MAX_PUSH_PREFIX_CHARS = 100
_TASK_ID_EXAMPLE = "00000000-0000-0000-0000-000000000000"


def push_prefix(value: object, *, field: str = "push_prefix") -> str:
    """Empty (never push), or what a task's branch name starts with: `<prefix><task id>` must be a valid ref."""
    if not isinstance(value, str):
        raise fail(field, "must be a string (empty: never push)")
    if not value:
        return value
    if len(value) > MAX_PUSH_PREFIX_CHARS:
        raise fail(field, f"must be at most {MAX_PUSH_PREFIX_CHARS} characters")
    try:
        git_ref(value + _TASK_ID_EXAMPLE, field=field)
    except ValidationError:
        raise fail(field, f"{value!r} followed by a task id is not a valid branch name; use letters, digits and "
                          "-_./ such as 'scheduler/' (no '..', spaces or ~^:?*[\\, no segment starting with '.')"
                   ) from None
    return value


MAX_URL_CHARS = 1000
URL_SCHEMES = ("https", "http", "ssh", "git", "file")
# `<transport>::<address>` makes git run a remote helper (`ext::` runs any command, `fd::` reads a descriptor): the
# first segment as git itself reads it (transport.c: URL scheme characters, then "::").
_REMOTE_HELPER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9+.-]*::")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# scp-like `[user@]host:path` (git reads it so when a ':' comes before any '/'); host or [IPv6], never starting
# with '-' (ssh would read `-oProxyCommand=…` as an option).
_SCP_LIKE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._~+-]+)@)?(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):"
                       r"(?P<path>[^/].*|/.+)$")
_SCP_PASSWORD = re.compile(r"^[^/@]*:[^/@]*@")
_HOST = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\])$")


def git_url(value: object, *, field: str = "url") -> str:
    """Where a repository is fetched from: https://, http://, ssh://, git://, file://, scp-like user@host:path or an
    absolute local path. Never a remote-helper form (`ext::…` runs a command), an option (`-…`), whitespace, or a
    password or token in the URL itself (it would show in logs and process lists: it goes in the credentials)."""
    if not isinstance(value, str) or not value:
        raise fail(field, "must be a non-empty git URL")
    if len(value) > MAX_URL_CHARS:
        raise fail(field, f"must be at most {MAX_URL_CHARS} characters")
    if _CONTROL.search(value) or any(c.isspace() for c in value):
        raise fail(field, "must not contain spaces or control characters")
    if value.startswith("-"):
        raise fail(field, "must not start with '-': git would read it as an option")
    helper = _REMOTE_HELPER.match(value)
    if helper:
        raise fail(field, f"the remote-helper form {helper.group(0)!r} is refused (it can run commands); use one of "
                          "https://, http://, ssh://, git://, file://, user@host:path or an absolute path")
    scheme = _SCHEME.match(value)
    if scheme is None:
        if value.startswith("/"):
            return value
        if _SCP_PASSWORD.match(value):
            raise fail(field, "must not carry a password (user:secret@host:path): put the secret in the credentials")
        scp = _SCP_LIKE.match(value)
        if scp is None:
            raise fail(field, "must be https://, http://, ssh://, git://, file://, scp-like user@host:path or an "
                              "absolute local path (a relative path depends on the worker's directory)")
        return value
    name = scheme.group(1).lower()
    if name not in URL_SCHEMES:
        raise fail(field, f"the scheme {name}:// is not one of {', '.join(s + '://' for s in URL_SCHEMES)}")
    rest = value[scheme.end():]
    authority, _, _ = rest.partition("/")
    if name == "file":
        if not rest.startswith("/"):
            raise fail(field, "a file:// URL must name an absolute path: file:///srv/git/project.git")
        return value
    userinfo, at, host_port = authority.rpartition("@")
    if at and name in ("https", "http"):
        raise fail(field, "must not carry a user name, password or token (https://user:secret@host): put the token "
                          "(and username) in the credentials, which are stored encrypted and never shown")
    if at and (":" in userinfo or userinfo.startswith("-") or not userinfo):
        raise fail(field, "must not carry a password (user:secret@host): put the secret in the credentials")
    host = re.sub(r":[0-9]{1,5}$", "", host_port)
    if not host or not _HOST.match(host):
        raise fail(field, f"{host_port!r} is not a host name (or host:port); a host cannot start with '-'")
    return value


_TENANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


def tenant_name(value: object, *, field: str = "tenant") -> str:
    if not isinstance(value, str) or not _TENANT.match(value):
        raise fail(field, "must be 1-100 letters, digits or ._- starting with a letter or digit")
    return value


_REPOSITORY_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$")


def repository_name(value: object, *, field: str = "name") -> str:
    """A slug that cannot be read as an option on a command line (`schedulerctl repos rm NAME`)."""
    if not isinstance(value, str) or not _REPOSITORY_NAME.match(value):
        raise fail(field, "must be a slug of 1-100 letters, digits, '-' or '_' starting with a letter or digit")
    return value
