"""API tokens (the key shown once, only its hash kept) and which tenant each API user acts for."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html

from tasks_app.models import ApiToken, Membership
from tasks_app.services.accounts import token_create, token_revoke


class ApiTokenAddForm(forms.ModelForm):
    class Meta:
        model = ApiToken
        fields = ("user", "name")


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API keys: created here or with `schedulerctl tokens create`; the key is shown once, only its hash kept."""

    list_display = ("prefix_shown", "user", "name", "created_at", "last_used_at", "revoked_at")
    list_filter = ("revoked_at",)
    search_fields = ("user__username", "name", "prefix")
    actions = ("revoke_tokens",)
    readonly_fields = ("prefix_shown", "user", "name", "created_at", "last_used_at", "revoked_at")

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, **kwargs: Any) -> Any:
        return ApiTokenAddForm if obj is None else super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        return () if obj is None else self.readonly_fields

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> Any:
        return ("user", "name") if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiToken, form: Any, change: bool) -> None:
        if change:
            return
        token, key = token_create(username=obj.user.get_username(), name=obj.name)
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
class MembershipAdmin(admin.ModelAdmin):
    """Which tenant each API user acts for (staff users see every tenant)."""

    list_display = ("user", "tenant")
    search_fields = ("user__username", "tenant")
    list_filter = ("tenant",)
