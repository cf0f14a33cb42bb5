"""Repositories: edited through repository_create / repository_update (so each change is audited), deleted through
repository_delete; credentials write-only, shown as key names with masked values."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from tasks_app.admin.common import MASK
from tasks_app.forms import RepositoryForm
from tasks_app.models import Repository
from tasks_app.presenters import credential_names
from tasks_app.services.groups import MANAGE_CREDENTIALS
from tasks_app.services.repositories import RepositoryInUse, repository_delete

_SETTINGS = ("url", "default_ref", "push_prefix")
_SECRETS = ("token", "username", "ssh_key")


@admin.register(Repository)
class RepositoryAdmin(admin.ModelAdmin):
    form = RepositoryForm
    list_display = ("name", "tenant", "url", "default_ref", "push_prefix", "has_credentials")
    list_filter = ("tenant",)
    search_fields = ("name", "url", "tenant")
    ordering = ("tenant", "name")

    def get_form(self, request: HttpRequest, obj: Repository | None = None, change: bool = False,
                 **kwargs: Any) -> Any:
        form = super().get_form(request, obj, change=change, **kwargs)
        return type(form.__name__, (form,), {"user": request.user})

    def get_fieldsets(self, request: HttpRequest, obj: Repository | None = None) -> list[tuple[Any, dict]]:
        may_set = request.user.has_perm(MANAGE_CREDENTIALS)
        if obj is None:
            fieldsets: list[tuple[Any, dict]] = [(None, {"fields": ("tenant", "name", *_SETTINGS)})]
            if may_set:
                fieldsets.append(("Credentials", {"fields": _SECRETS}))
            return fieldsets
        secrets = (*_SECRETS, "clear_credentials") if may_set else ()
        return [
            (None, {"fields": ("name", "tenant", *_SETTINGS)}),
            ("Credentials", {"fields": ("credential_keys_masked", *secrets)}),
            ("Audit", {"fields": ("created_by", "created_at", "updated_at")}),
        ]

    def get_readonly_fields(self, request: HttpRequest, obj: Repository | None = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        # Tasks name a repository by (tenant, name): its identity, which repository_update does not change.
        return ("name", "tenant", "credential_keys_masked", "created_by", "created_at", "updated_at")

    def save_model(self, request: HttpRequest, obj: Repository, form: Any, change: bool) -> None:
        """Nothing to do: RepositoryForm saved through repository_create / repository_update while validating."""

    def delete_model(self, request: HttpRequest, obj: Repository) -> None:
        try:
            repository_delete(tenant=obj.tenant, name=obj.name)
        except RepositoryInUse as exc:  # a task was created on it since the confirmation page
            self.message_user(request, str(exc), messages.ERROR)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Repository]) -> None:
        for repository in queryset:
            self.delete_model(request, repository)

    @admin.display(description="credentials", boolean=True)
    def has_credentials(self, repository: Repository) -> bool:
        return bool(repository.credentials_encrypted)

    @admin.display(description="stored credentials")
    def credential_keys_masked(self, repository: Repository) -> SafeString:
        names = credential_names(repository)
        if names is None:
            return format_html("<strong>{}</strong>", "Stored credentials cannot be decrypted: "
                                                      "SCHEDULER_ENCRYPTION_KEY differs from the one used to store "
                                                      "them.")
        if not names:
            return format_html("<em>{}</em>", "none")
        return format_html_join("\n", "<code>{}</code> = {}<br>", ((name, MASK) for name in names))
