"""Admin forms. A WorkerGroup is saved only through `group_create` / `group_update`, so the admin applies
exactly the rules the API and schedulerctl apply; credentials are write-only key/value edits."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from tasks_app.crypto import CredentialsUnreadable
from tasks_app.models import ConcurrencyLimit, Tool, WorkerGroup
from tasks_app.services.groups import group_create, group_update

# Service error keys that have no form field of their own land on the field that carries them.
_SERVICE_FIELD_ALIASES = {"credentials": "credentials_set"}
_SCOPE = re.compile(r"^(tool|model):(\S+)$")


class SecretTextarea(forms.Textarea):
    """A textarea that never renders its value back: a re-shown form must not echo a secret."""

    def format_value(self, value: Any) -> None:
        return None


def parse_credential_lines(text: str) -> dict[str, str]:
    """`KEY=VALUE` lines into a dict; blank lines and `#` comments are skipped, a later line wins.

    Error messages name the line number only, never its text: the text may be a pasted secret.
    """
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ValidationError(f"line {number} is not KEY=VALUE", code="credential_line")
        values[key.strip()] = value.strip()
    return values


class WorkerGroupForm(forms.ModelForm):
    """Validation *is* the save: the service validates and writes in one step, so it runs from
    `_post_clean` and its ValidationError becomes field errors on a re-rendered form. The admin's change
    view wraps the request in a transaction; the form's `save()` only hands back the saved group."""

    credentials_set = forms.CharField(
        label="Set credentials",
        required=False,
        widget=SecretTextarea(attrs={"rows": 4, "cols": 60, "autocomplete": "off", "spellcheck": "false"}),
        help_text="One KEY=VALUE per line, e.g. ANTHROPIC_API_KEY=…; adds or replaces those keys. "
        "Values are write-only: they are stored encrypted and never shown again.",
    )
    credentials_unset = forms.MultipleChoiceField(
        label="Remove credentials",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Keys to delete from the stored credentials.",
    )

    class Meta:
        model = WorkerGroup
        fields = ["tool", "account", "max_concurrent", "enabled", "env", "allow_dangerous_flags",
                  "extra_args"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_group: WorkerGroup | None = None
        for name in ("env", "extra_args"):
            if name in self.fields:
                # Their callable defaults turn on a hidden "initial" input; compare with the stored group.
                self.fields[name].show_hidden_initial = False
        if self.instance.pk is None:
            self.fields.pop("credentials_unset", None)
        else:
            try:
                names = self.instance.credential_names
            except CredentialsUnreadable:
                names = []
            self.fields["credentials_unset"].choices = [(name, name) for name in names]

    def clean_credentials_set(self) -> dict[str, str]:
        return parse_credential_lines(self.cleaned_data.get("credentials_set") or "")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        both = set(cleaned.get("credentials_set") or {}) & set(cleaned.get("credentials_unset") or [])
        if both:
            self.add_error("credentials_unset", f"{', '.join(sorted(both))} cannot be both set and removed")
        return cleaned

    def _post_clean(self) -> None:
        # Replaces ModelForm's instance construction and model validation: the service owns both.
        if self._errors:
            return
        try:
            self.saved_group = self._save_through_service()
        except ValidationError as exc:
            self._add_service_errors(exc)
        except CredentialsUnreadable as exc:
            self.add_error(None, str(exc))
        else:
            self.instance = self.saved_group

    def _save_through_service(self) -> WorkerGroup:
        data = self.cleaned_data
        settings = {
            "max_concurrent": data["max_concurrent"],
            "enabled": data["enabled"],
            "env": data.get("env") or {},
            "allow_dangerous_flags": data["allow_dangerous_flags"],
            "extra_args": data.get("extra_args") or [],
        }
        if self.instance.pk is None:
            return group_create(tool=data["tool"], account=data["account"],
                                credentials=data["credentials_set"], **settings)
        # Only what the operator changed, so a concurrent pause or edit elsewhere is not overwritten.
        changes = {name: value for name, value in settings.items() if name in self.changed_data}
        if data["credentials_set"]:
            changes["credentials_set"] = data["credentials_set"]
        if data.get("credentials_unset"):
            changes["credentials_unset"] = list(data["credentials_unset"])
        if not changes:
            return self.instance
        return group_update(name=self.instance.name, changes=changes)

    def _add_service_errors(self, exc: ValidationError) -> None:
        if not hasattr(exc, "error_dict"):
            self.add_error(None, exc.messages)
            return
        for name, messages in exc.message_dict.items():
            field = _SERVICE_FIELD_ALIASES.get(name, name)
            self.add_error(field if field in self.fields else None, messages)

    def save(self, commit: bool = True) -> WorkerGroup:
        if self.saved_group is None:
            raise ValueError("the form is not valid, so nothing was saved")
        return self.saved_group

    def save_m2m(self) -> None:
        """Nothing to do: the service saved everything; the admin calls this after `save()`."""


class ConcurrencyLimitForm(forms.ModelForm):
    class Meta:
        model = ConcurrencyLimit
        fields = ["scope", "max_concurrent"]
        help_texts = {"scope": "tool:<tool> (e.g. tool:claude) or model:<model name> (e.g. model:opus)."}

    def clean_scope(self) -> str:
        scope = self.cleaned_data["scope"].strip()
        match = _SCOPE.match(scope)
        if match is None:
            raise ValidationError("must be tool:<tool> or model:<model name>, without spaces")
        if match.group(1) == "tool" and match.group(2) not in Tool.values:
            known = ", ".join(Tool.values)
            raise ValidationError(f"{match.group(2)!r} is not a known tool; choose one of {known}")
        return scope
