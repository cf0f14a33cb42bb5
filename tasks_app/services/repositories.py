"""Repository writes (SPEC §8). Credentials — an HTTPS token (optionally with its username) or an SSH deploy key —
are write-only: stored encrypted, shown and audited as key names, never logged."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Any

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction

from tasks_app import validation
from tasks_app.audit import audit, credential_changes
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.models import TERMINAL_STATUSES, Repository, Task
from tasks_app.services.groups import MANAGE_CREDENTIALS

logger = logging.getLogger(__name__)

CREDENTIAL_KEYS = ("token", "username", "ssh_key")
CREDENTIALS_RULE = 'must be {"token": "…"} (optionally with "username") or {"ssh_key": "<private key>"}'
# A block as ssh-keygen and openssl write it: OpenSSH's own format, PKCS#8, or the older RSA/EC/DSA ones.
_PRIVATE_KEY = re.compile(r"\A-----BEGIN ((?:[A-Z0-9]+ )*)PRIVATE KEY-----\n[A-Za-z0-9+/=:,\- \n]+\n"
                          r"-----END \1PRIVATE KEY-----\Z")
_MAX_TOKEN_CHARS, _MAX_USERNAME_CHARS, _MAX_SSH_KEY_CHARS = 4096, 200, 16384

# What decides where a repository's secret goes, and what it is used for: setting the credentials, or, once a
# repository has some, changing the URL they are sent to or whether they push (push_prefix). Like a group's
# credentials and env, it needs tasks_app.manage_credentials (superusers have it).
GUARDED_FIELDS = ("credentials", "url", "push_prefix")
CHANGEABLE = ("url", "credentials", "default_ref", "push_prefix")


class RepositoryInUse(Exception):
    """Tasks refer to the repository: deleting it would take their history (which commit they ran on) with it."""


def _require_manage_credentials(by: Any, fields: Iterable[str]) -> None:
    """`by` is the acting user (API, admin); None is an operator at the box's shell (schedulerctl)."""
    fields = sorted(set(fields))
    if by is not None and fields and not by.has_perm(MANAGE_CREDENTIALS):
        raise PermissionDenied(f"changing a repository's {', '.join(fields)} needs the permission {MANAGE_CREDENTIALS}"
                               " (it decides where its credentials are sent and whether they push)")


def _clean_credentials(value: object) -> dict[str, str]:
    """The credentials as stored; every message names the key and the rule, never the value."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise validation.fail("credentials", CREDENTIALS_RULE)
    unknown = sorted(str(key)[:100] for key in value if key not in CREDENTIAL_KEYS)
    if unknown:
        raise validation.fail("credentials", f"unknown key{'s' if len(unknown) > 1 else ''} "
                                             f"{', '.join(repr(k) for k in unknown)}; {CREDENTIALS_RULE}")
    for key, item in value.items():
        if not isinstance(item, str) or not item:
            raise validation.fail("credentials", f"the value of {key} must be a non-empty string")
    if "ssh_key" in value and len(value) > 1:
        raise validation.fail("credentials", f"ssh_key cannot be combined with token or username; {CREDENTIALS_RULE}")
    if "username" in value and "token" not in value:
        raise validation.fail("credentials", "username goes with a token: give token as well")
    cleaned = dict(value)
    if "token" in value:
        for key, limit in (("token", _MAX_TOKEN_CHARS), ("username", _MAX_USERNAME_CHARS)):
            item = value.get(key)
            if item is not None and (len(item) > limit or not item.isprintable() or any(c.isspace() for c in item)
                                     or (key == "username" and ":" in item)):
                raise validation.fail("credentials", f"{key} must be at most {limit} printable characters without "
                                                     f"spaces{' or :' if key == 'username' else ''}")
    if "ssh_key" in value:
        # ssh reads a key only with its final newline; a key pasted into a form or a JSON string often lacks it.
        key_text = value["ssh_key"].replace("\r\n", "\n").strip() + "\n"
        if len(key_text) > _MAX_SSH_KEY_CHARS or not _PRIVATE_KEY.match(key_text.rstrip("\n")):
            raise validation.fail("credentials", "ssh_key must be a private key block: -----BEGIN OPENSSH PRIVATE "
                                                 "KEY----- … -----END OPENSSH PRIVATE KEY----- (or another PEM "
                                                 f"PRIVATE KEY block), at most {_MAX_SSH_KEY_CHARS} characters")
        cleaned["ssh_key"] = key_text
    return cleaned


def _transport(url: str) -> str:
    """How git reaches `url`: its scheme, "file" for a local path, "ssh" for scp-like user@host:path."""
    if "://" in url:
        return url.split("://", 1)[0].lower()
    return "file" if url.startswith("/") else "ssh"


def _check_url_and_credentials(url: str, credentials: dict[str, str]) -> None:
    transport = _transport(url)
    if "token" in credentials:
        if transport == "http":
            raise validation.fail("url", "http:// would send the token unencrypted: use https:// (http:// is for "
                                         "repositories without credentials)")
        if transport != "https":
            raise validation.fail("credentials", f"a token is sent over https://, but the URL is {transport}: use an "
                                                 "ssh_key, or an https:// URL")
    if "ssh_key" in credentials and transport != "ssh":
        raise validation.fail("credentials", f"an ssh_key is used over ssh:// or user@host:path, but the URL is "
                                             f"{transport}: use a token with https://, or an SSH URL")


def _collect(checks: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run every field's check; raise one ValidationError naming every field that failed, else return the values."""
    values: dict[str, Any] = {}
    errors: dict[str, list[str]] = {}
    for name, check in checks.items():
        try:
            values[name] = check()
        except ValidationError as exc:
            for field, messages in exc.message_dict.items():
                errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return values


def _label(repository: Repository) -> str:
    return f"{repository.tenant}/{repository.name}"


def repository_create(
    *, tenant: str, name: str, url: str, credentials: dict[str, str] | None = None, default_ref: str = "HEAD",
    push_prefix: str = "", created_by: str = "", by: Any = None,
) -> Repository:
    """`by`: the acting user (None: an operator at the shell), who needs tasks_app.manage_credentials to give
    credentials."""
    _require_manage_credentials(by, ["credentials"] if credentials else [])
    values = _collect({
        "tenant": lambda: validation.tenant_name(tenant),
        "name": lambda: validation.repository_name(name),
        "url": lambda: validation.git_url(url),
        "credentials": lambda: _clean_credentials(credentials),
        "default_ref": lambda: validation.git_ref(default_ref, field="default_ref"),
        "push_prefix": lambda: validation.push_prefix(push_prefix),
    })
    _check_url_and_credentials(values["url"], values["credentials"])
    repository = Repository(tenant=tenant, name=name, url=url, default_ref=default_ref, push_prefix=push_prefix,
                            created_by=created_by[:150])
    repository.credentials = values["credentials"]
    duplicate = ValidationError({"name": [f"a repository named {name!r} already exists in tenant {tenant!r}"]})
    if Repository.objects.filter(tenant=tenant, name=name).exists():
        raise duplicate
    changed = ["tenant", "name", "url", "default_ref", *(["push_prefix"] if push_prefix else []),
               *credential_changes({}, values["credentials"])]
    try:
        with transaction.atomic():
            repository.save()
            audit("create", "repository", _label(repository), changed)
    except IntegrityError:  # created meanwhile by another request
        raise duplicate from None
    logger.info("repository %s created (%s)", _label(repository), ", ".join(sorted(changed)))
    return repository


def _readable_credentials(repository: Repository) -> dict[str, str] | None:
    """The stored set, or None when it can no longer be decrypted (SCHEDULER_ENCRYPTION_KEY changed)."""
    try:
        return repository.credentials
    except CredentialsUnreadable:
        return None


def repository_update(*, tenant: str, name: str, changes: dict[str, Any], by: Any = None) -> Repository:
    """Change `url`, `default_ref`, `push_prefix` and/or `credentials` (replaced as a whole; `{}` or None clears
    them). `by` as for repository_create; it also needs the permission to change the URL or push prefix of a
    repository that has credentials."""
    unknown = sorted(set(changes) - set(CHANGEABLE))
    if unknown:
        raise ValidationError({unknown[0]: [f"cannot be changed; changeable: {', '.join(CHANGEABLE)}"]})
    with transaction.atomic():
        repository = Repository.objects.select_for_update().filter(tenant=tenant, name=name).first()
        if repository is None:
            raise ValidationError({"name": [f"no repository named {name!r} in tenant {tenant!r}"]})
        guarded = [field for field in ("url", "push_prefix")
                   if field in changes and changes[field] != getattr(repository, field)]
        _require_manage_credentials(by, [*(["credentials"] if "credentials" in changes else []),
                                         *(guarded if repository.credentials_encrypted else [])])
        checks: dict[str, Callable[[], Any]] = {
            "url": lambda: validation.git_url(changes["url"]),
            "credentials": lambda: _clean_credentials(changes["credentials"]),
            "default_ref": lambda: validation.git_ref(changes["default_ref"], field="default_ref"),
            "push_prefix": lambda: validation.push_prefix(changes["push_prefix"]),
        }
        values = _collect({field: check for field, check in checks.items() if field in changes})
        before = _readable_credentials(repository)
        # Replacing the whole set must work even when the stored one can no longer be decrypted.
        credentials = values.get("credentials", before)
        if credentials is not None:
            _check_url_and_credentials(values.get("url", repository.url), credentials)
        changed = [field for field in ("url", "default_ref", "push_prefix")
                   if field in values and values[field] != getattr(repository, field)]
        for field in changed:
            setattr(repository, field, values[field])
        if "credentials" in values:
            changed += credential_changes(before or {}, values["credentials"])
            repository.credentials = values["credentials"]
        if changed:
            repository.save()
            audit("update", "repository", _label(repository), changed)
    if changed:
        logger.info("repository %s changed (%s)", _label(repository), ", ".join(sorted(changed)))
    return repository


def repository_delete(*, tenant: str, name: str) -> None:
    """Delete a repository no task refers to. Tasks keep theirs for their history (which commit they ran on, and
    a retry needs it), so while any task — finished or not — refers to it, this refuses (RepositoryInUse)."""
    with transaction.atomic():
        # The row lock waits for a task being created on it (its foreign key holds a share lock), so the count
        # below sees that task too.
        repository = Repository.objects.select_for_update().filter(tenant=tenant, name=name).first()
        if repository is None:
            raise ValidationError({"name": [f"no repository named {name!r} in tenant {tenant!r}"]})
        tasks = Task.objects.filter(repository=repository)
        total = tasks.count()
        if total:
            unfinished = tasks.exclude(status__in=TERMINAL_STATUSES).count()
            raise RepositoryInUse(
                f"repository {name!r} is used by {total} task{'s' if total != 1 else ''} ({unfinished} unfinished); "
                "tasks keep their repository for their history and retries, so it cannot be deleted (change its "
                "url or credentials instead)")
        audit("delete", "repository", _label(repository))
        repository.delete()
    logger.info("repository %s/%s deleted", tenant, name)
