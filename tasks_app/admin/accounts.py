"""API tokens (the key shown once, only its hash kept) and which tenant each API user acts for."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.contrib.auth.admin import GroupAdmin, UserAdmin
from django.contrib.auth.models import Group
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from tasks_app.audit import audit
from tasks_app.models import ApiToken, Membership
from tasks_app.services.accounts import token_check_allowed, token_create, token_revoke


class ApiTokenAddForm(forms.ModelForm):
    by: Any = None  # the acting staff user (ApiTokenAdmin.get_form)

    class Meta:
        model = ApiToken
        fields = ("user", "name")

    def clean_user(self) -> Any:
        user = self.cleaned_data["user"]
        try:
            token_check_allowed(user=user, by=self.by)
        except PermissionDenied as exc:
            raise forms.ValidationError(str(exc)) from None
        return user


class AuditedAdminMixin:
    """Changes made through Django's own admin pages (users, permission groups, memberships) are audited like the
    services' changes: the admin's change message already names the changed fields."""

    def log_addition(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        audit("create", obj._meta.model_name, _object_id(obj), _changed_fields(message))
        return super().log_addition(request, obj, message)  # type: ignore[misc]

    def log_change(self, request: HttpRequest, obj: Any, message: Any) -> Any:
        audit("update", obj._meta.model_name, _object_id(obj), _changed_fields(message))
        return super().log_change(request, obj, message)  # type: ignore[misc]

    def log_deletions(self, request: HttpRequest, queryset: Any) -> Any:
        for obj in queryset:
            audit("delete", obj._meta.model_name, _object_id(obj))
        return super().log_deletions(request, queryset)  # type: ignore[misc]


def _object_id(obj: Any) -> str:
    return obj.get_username() if hasattr(obj, "get_username") else str(obj)


def _changed_fields(message: Any) -> list[str]:
    """Field names from the admin's structured change message ([{"changed": {"fields": [...]}}, …])."""
    names: list[str] = []
    for entry in message if isinstance(message, list) else []:
        for kind in ("added", "changed"):
            names += [str(name) for name in entry.get(kind, {}).get("fields", [])]
    return names


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API keys: created here or with `schedulerctl tokens create`; the key is shown once, only its hash kept."""

    list_display = ("prefix_shown", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name", "prefix")
    actions = ("revoke_tokens",)
    readonly_fields = ("prefix_shown", "user", "name", "created_at", "last_used_at", "revoked_at")

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, **kwargs: Any) -> Any:
        if obj is None:
            return type("ApiTokenAddForm", (ApiTokenAddForm,), {"by": request.user})
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return ("user", "name") if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return
        token, key = token_create(username=obj.user.get_username(), name=obj.name, by=request.user)
        obj.pk = token.pk
        self.message_user(request, format_html(
            "New API key for {}: <code>{}</code> — copy it now, it is not stored and cannot be shown again.",
            obj.user, key), messages.WARNING)

    def has_change_permission(self, request: HttpRequest, obj: ApiToken | None = None) -> bool:
        return False

    @admin.display(description="key")
    def prefix_shown(self, token: ApiToken) -> str:
        return f"{token.prefix}…"

    @admin.action(description="Revoke selected tokens")
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        for token in queryset:
            token_revoke(token_id=token.pk)
        self.message_user(request, f"revoked {queryset.count()} token(s)", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(AuditedAdminMixin, admin.ModelAdmin):
    """Which tenant each API user acts for (staff users see every tenant)."""

    list_display = ("user", "tenant")
    search_fields = ("user__username", "tenant")
    list_filter = ("tenant",)


# Django's own user and permission-group pages, audited.
for _model, _base in ((get_user_model(), UserAdmin), (Group, GroupAdmin)):
    if admin.site.is_registered(_model):
        admin.site.unregister(_model)
    admin.site.register(_model, type(f"Audited{_base.__name__}", (AuditedAdminMixin, _base), {}))
