"""Users, their tenant, and API tokens (hashed; the key is returned once)."""

from __future__ import annotations

import hashlib
import re
import secrets

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from tasks_app.audit import audit
from tasks_app.models import ApiToken, Membership
from tasks_app.validation import tenant_name

KEY_PREFIX = "cs_"
_USERNAME = re.compile(r"^[\w.@+-]{1,150}$")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def user_tenant(user: AbstractBaseUser) -> str:
    """The tenant the user acts for. Staff without a membership act for `default`; any other user without one
    is refused: it must never fall into another tenant's tasks."""
    membership = getattr(user, "membership", None)
    if membership is not None:
        return membership.tenant
    if user.is_staff:
        return "default"
    raise PermissionDenied(f"user {user.get_username()!r} belongs to no tenant; an operator must give it one "
                           "(schedulerctl users add, or Memberships in the admin)")


def user_create(*, username: str, tenant: str, staff: bool = False) -> AbstractBaseUser:
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise ValidationError({"username": ["must be 1-150 letters, digits or @.+-_"]})
    tenant_name(tenant, field="tenant")
    users = get_user_model().objects
    with transaction.atomic():
        if users.filter(username=username).exists():
            raise ValidationError({"username": [f"a user named {username!r} already exists"]})
        user = users.create_user(username=username, is_staff=staff)
        user.set_unusable_password()  # API users authenticate with tokens; staff can set a password later
        user.save(update_fields=["password"])
        Membership.objects.create(user=user, tenant=tenant)
        audit("create", "user", username, ["username", "tenant", *(["is_staff"] if staff else [])])
    return user


def token_check_allowed(*, user: AbstractBaseUser, by: AbstractBaseUser | None) -> None:
    """May `by` (None: an operator at the shell) mint a key for `user`? A key acts with all of its user's rights,
    so only a superuser mints one for a superuser, and nobody for a user with rights they lack themselves."""
    if by is None or by.is_superuser:
        return
    if user.is_superuser:
        raise PermissionDenied("only a superuser can create a token for a superuser")
    missing = sorted(user.get_all_permissions() - by.get_all_permissions())
    if missing or (user.is_staff and not by.is_staff):
        what = ", ".join(missing[:3]) + (" …" if len(missing) > 3 else "") if missing else "staff status"
        raise PermissionDenied(f"{user.get_username()!r} has rights you do not have ({what}); ask a superuser")


def token_create(*, username: str, name: str = "", by: AbstractBaseUser | None = None) -> tuple[ApiToken, str]:
    """A new key for the user. Returns the row and the key, which is not stored and cannot be shown again."""
    user = get_user_model().objects.filter(username=username).first()
    if user is None:
        raise ValidationError({"user": [f"no user named {username!r}"]})
    token_check_allowed(user=user, by=by)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with transaction.atomic():
        token = ApiToken.objects.create(user=user, name=name, prefix=key[:10], key_hash=hash_key(key))
        audit("create", "api_token", f"{token.pk} ({token.prefix}… of {username})", ["user", "name"])
    return token, key


def token_revoke(*, token_id: int) -> ApiToken:
    with transaction.atomic():
        token = ApiToken.objects.select_for_update().get(pk=token_id)
        if token.revoked_at is None:
            token.revoked_at = timezone.now()
            token.save(update_fields=["revoked_at"])
            audit("revoke", "api_token", f"{token.pk} ({token.prefix}… of {token.user.get_username()})",
                  ["revoked_at"])
    return token


def token_authenticate(key: str) -> ApiToken | None:
    token = (
        ApiToken.objects.select_related("user", "user__membership")
        .filter(key_hash=hash_key(key), revoked_at__isnull=True, user__is_active=True)
        .first()
    )
    if token is not None and (token.last_used_at is None or (timezone.now() - token.last_used_at).total_seconds() > 60):
        # At most one write a minute per token: enough to see unused keys, no write per request.
        ApiToken.objects.filter(pk=token.pk).update(last_used_at=timezone.now())
    return token
