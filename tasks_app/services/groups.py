"""Worker group writes. Credentials are write-only: stored encrypted, shown as key names."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from executors import ConfigurationError, adapter_for
from executors.envpolicy import check_env_names
from tasks_app.audit import audit, credential_changes
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.models import Tool, WorkerGroup
from tasks_app.services.enqueue import enqueue_dispatch

logger = logging.getLogger(__name__)
_ACCOUNT = re.compile(r"^[a-z0-9][a-z0-9-]{0,78}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The child must never be told where the scheduler's own state lives.
_RESERVED_ENV = frozenset({"DATABASE_URL", "SECRET_KEY", "CELERY_BROKER_URL", "SCHEDULER_ENCRYPTION_KEY",
                           "DJANGO_SETTINGS_MODULE", "PATH"})


# What reaches the CLI's process along with the account's key: changing any of it needs the permission
# tasks_app.manage_credentials (a base URL or a loader variable in `env` could send the key elsewhere).
CREDENTIAL_FIELDS = ("credentials", "credentials_set", "credentials_unset", "env", "extra_args",
                     "allow_dangerous_flags")
MANAGE_CREDENTIALS = "tasks_app.manage_credentials"


def _require_manage_credentials(by: Any, fields: Iterable[str]) -> None:
    """`by` is the acting user (API, admin); None is an operator at the box's shell (schedulerctl)."""
    touched = sorted(set(fields) & set(CREDENTIAL_FIELDS))
    if by is not None and touched and not by.has_perm(MANAGE_CREDENTIALS):
        raise PermissionDenied(f"changing {', '.join(touched)} needs the permission {MANAGE_CREDENTIALS}")


def _string_map(value: object, *, field: str) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValidationError({field: ["must be a JSON object of NAME: string"]})
    for key, item in value.items():
        if not isinstance(key, str) or not _ENV_NAME.match(key):
            raise ValidationError({field: [f"{key!r} is not a valid environment variable name"]})
        if key in _RESERVED_ENV:
            raise ValidationError({field: [f"{key} is reserved for the scheduler and cannot be given to a CLI"]})
        if not isinstance(item, str) or "\x00" in item:
            raise ValidationError({field: [f"the value of {key} must be a string without NUL bytes"]})
    return dict(value)


def _clean(*, tool: str, max_concurrent: object, env: object, credentials: object, extra_args: object,
           allow_dangerous_flags: bool) -> None:
    if not isinstance(max_concurrent, int) or isinstance(max_concurrent, bool) or not 1 <= max_concurrent <= 1000:
        raise ValidationError({"max_concurrent": ["must be an integer from 1 to 1000"]})
    for field, mapping in (("env", env), ("credentials", credentials)):
        try:
            check_env_names(tool, _string_map(mapping, field=field), extra_allowed=settings.SCHEDULER_ENV_ALLOW)
        except ConfigurationError as exc:
            raise ValidationError({field: [str(exc)]}) from None
    if not isinstance(extra_args, list):
        raise ValidationError({"extra_args": ["must be a list of '--flag' or '--flag=value' strings"]})
    try:
        adapter_for(tool).check_extra_args(
            extra_args, allow_dangerous=allow_dangerous_flags and settings.SCHEDULER_ALLOW_DANGEROUS_FLAGS
        )
    except ConfigurationError as exc:
        raise ValidationError({"extra_args": [str(exc)]}) from None


# Budgets (SPEC §8): USD with cents, up to the model fields' digits; None is "no budget".
_BUDGET_LIMITS = {"daily_budget_usd": Decimal("99999999.99"), "monthly_budget_usd": Decimal("9999999999.99")}


def _clean_budget(value: object, *, field: str) -> Decimal | None:
    """A budget in USD (a number or a numeric string, >= 0, at most 2 decimals) or None for none."""
    if value is None:
        return None
    rule = (f"must be an amount in USD from 0 to {_BUDGET_LIMITS[field]} with at most 2 decimals, or null (none) for "
            "no budget")
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        raise ValidationError({field: [rule]})
    try:
        amount = Decimal(str(value).strip())
    except InvalidOperation:
        raise ValidationError({field: [rule]}) from None
    if not amount.is_finite() or amount < 0 or amount > _BUDGET_LIMITS[field] or amount != amount.quantize(
            Decimal("0.01")):
        raise ValidationError({field: [rule]})
    return amount.quantize(Decimal("0.01"))


def group_create(
    *, tool: str, account: str, max_concurrent: int = 1, enabled: bool = True,
    credentials: dict[str, str] | None = None, env: dict[str, str] | None = None,
    allow_dangerous_flags: bool = False, extra_args: list[str] | None = None,
    daily_budget_usd: object = None, monthly_budget_usd: object = None, by: Any = None,
) -> WorkerGroup:
    _require_manage_credentials(by, [name for name, value in (
        ("credentials", credentials), ("env", env), ("extra_args", extra_args),
        ("allow_dangerous_flags", allow_dangerous_flags)) if value])
    if tool not in Tool.values:
        raise ValidationError({"tool": [f"{tool!r} is not a known tool; choose one of {', '.join(Tool.values)}"]})
    if not isinstance(account, str) or not _ACCOUNT.match(account):
        raise ValidationError({"account": ["must be lowercase letters, digits and '-' (1-79 chars), e.g. team-a"]})
    credentials, env, extra_args = credentials or {}, env or {}, extra_args or []
    _clean(tool=tool, max_concurrent=max_concurrent, env=env, credentials=credentials, extra_args=extra_args,
           allow_dangerous_flags=allow_dangerous_flags)
    budgets = {"daily_budget_usd": _clean_budget(daily_budget_usd, field="daily_budget_usd"),
               "monthly_budget_usd": _clean_budget(monthly_budget_usd, field="monthly_budget_usd")}
    group = WorkerGroup(
        name=f"{tool}-{account}", tool=tool, account=account, max_concurrent=max_concurrent, enabled=enabled,
        env=env, allow_dangerous_flags=allow_dangerous_flags, extra_args=extra_args, **budgets,
    )
    group.credentials = credentials
    try:
        with transaction.atomic():
            group.save()
            audit("create", "worker_group", group.name,
                  ["tool", "account", "max_concurrent", "enabled", *(["env"] if env else []),
                   *(["extra_args"] if extra_args else []),
                   *(["allow_dangerous_flags"] if allow_dangerous_flags else []),
                   *[field for field, value in budgets.items() if value is not None],
                   *credential_changes({}, credentials)])
    except IntegrityError:
        raise ValidationError({"account": [f"a group {group.name!r} already exists"]}) from None
    return group


def group_update(*, name: str, changes: dict[str, Any], by: Any = None) -> WorkerGroup:
    """Change settings. `credentials` replaces the whole set; `credentials_set`/`credentials_unset` edit keys.
    `by`: the acting user, who needs tasks_app.manage_credentials to touch CREDENTIAL_FIELDS."""
    allowed = {"max_concurrent", "enabled", "env", "credentials", "credentials_set", "credentials_unset",
               "allow_dangerous_flags", "extra_args", "daily_budget_usd", "monthly_budget_usd"}
    unknown = set(changes) - allowed
    if unknown:
        raise ValidationError({sorted(unknown)[0]: [f"cannot be changed; changeable: {', '.join(sorted(allowed))}"]})
    # An empty edit (no key to set or unset) touches nothing.
    _require_manage_credentials(by, [field for field, value in changes.items()
                                     if not (field in ("credentials_set", "credentials_unset") and not value)])
    with transaction.atomic():
        group = WorkerGroup.objects.select_for_update().filter(name=name).first()
        if group is None:
            raise ValidationError({"name": [f"no worker group named {name!r}"]})
        # Replacing the whole set must work even when the stored one can no longer be decrypted.
        credentials = changes["credentials"] if "credentials" in changes else group.credentials  # noqa: SIM401 - lazy
        credentials = {**credentials, **changes.get("credentials_set", {})}
        for key in changes.get("credentials_unset", []):
            credentials.pop(key, None)
        merged = {
            "max_concurrent": changes.get("max_concurrent", group.max_concurrent),
            "env": changes.get("env", group.env),
            "extra_args": changes.get("extra_args", group.extra_args),
            "allow_dangerous_flags": changes.get("allow_dangerous_flags", group.allow_dangerous_flags),
        }
        if not isinstance(merged["allow_dangerous_flags"], bool):
            raise ValidationError({"allow_dangerous_flags": ["must be true or false"]})
        if "enabled" in changes and not isinstance(changes["enabled"], bool):
            raise ValidationError({"enabled": ["must be true or false"]})
        _clean(tool=group.tool, credentials=credentials, **merged)
        merged["enabled"] = changes.get("enabled", group.enabled)
        for field in ("daily_budget_usd", "monthly_budget_usd"):  # null clears a budget
            merged[field] = _clean_budget(changes[field], field=field) if field in changes else getattr(group, field)
        changed = [key for key, value in merged.items() if getattr(group, key) != value]
        if "credentials" in changes or changes.get("credentials_set") or changes.get("credentials_unset"):
            changed += credential_changes(_readable_credentials(group), credentials)
        for key, value in merged.items():
            setattr(group, key, value)
        group.credentials = credentials
        group.save()
        if changed:
            audit("update", "worker_group", group.name, changed)
    if group.enabled:
        enqueue_dispatch()
    return group


def _group_set_enabled(name: str, enabled: bool) -> WorkerGroup:
    # A plain switch: pausing must work even if the group's other settings no longer validate
    # (e.g. SCHEDULER_ALLOW_DANGEROUS_FLAGS was turned off, or the encryption key changed).
    with transaction.atomic():
        group = WorkerGroup.objects.select_for_update().filter(name=name).first()
        if group is None:
            raise ValidationError({"name": [f"no worker group named {name!r}"]})
        group.enabled = enabled
        fields = ["enabled", "updated_at"]
        if enabled and group.quarantined_at is not None:  # resuming is how an operator lifts a quarantine
            group.quarantined_at, group.quarantine_reason, group.account_failures = None, "", 0
            fields += ["quarantined_at", "quarantine_reason", "account_failures"]
        group.save(update_fields=fields)
        audit("resume" if enabled else "pause", "worker_group", group.name, [f for f in fields if f != "updated_at"])
        if enabled:
            enqueue_dispatch()
    return group


def group_pause(*, name: str) -> WorkerGroup:
    return _group_set_enabled(name, False)


def group_resume(*, name: str) -> WorkerGroup:
    return _group_set_enabled(name, True)


def _readable_credentials(group: WorkerGroup) -> dict[str, str]:
    """The stored set, or {} when it can no longer be decrypted (then every key given counts as changed)."""
    try:
        return group.credentials
    except CredentialsUnreadable:
        return {}


def undecryptable_reason(worker: str) -> str:
    return (f"worker {worker} cannot decrypt the group's credentials: its SCHEDULER_ENCRYPTION_KEY differs from the "
            "one that stored them")


def group_quarantine_locked(group: WorkerGroup, *, reason: str) -> None:
    """Set the group aside with its reason, until an operator resumes it. The caller holds the group's row lock;
    a group already quarantined keeps its first reason."""
    if group.quarantined_at is not None:
        return
    group.quarantined_at, group.quarantine_reason = timezone.now(), reason[:2000]
    group.save(update_fields=["quarantined_at", "quarantine_reason", "updated_at"])
    audit("quarantine", "worker_group", group.name, ["quarantined_at", "quarantine_reason"])
    logger.warning("group %s quarantined: %s", group.name, group.quarantine_reason)


def groups_check_credentials(*, names: Iterable[str], worker: str) -> list[str]:
    """At a worker's start: the groups among `names` whose credentials this box cannot decrypt are quarantined
    (so they get no leases), and named in the return value."""
    unreadable = []
    for name in names:
        with transaction.atomic():
            group = WorkerGroup.objects.select_for_update().filter(name=name).first()
            if group is None:
                continue
            try:
                group.credentials  # noqa: B018 - decrypting is the check
            except CredentialsUnreadable:
                unreadable.append(name)
                group_quarantine_locked(group, reason=undecryptable_reason(worker))
    return unreadable
