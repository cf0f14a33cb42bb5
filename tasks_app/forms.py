"""Admin forms. A WorkerGroup is saved only through `group_create` / `group_update`, a Repository only through
`repository_create` / `repository_update`, and a Schedule only through `schedule_create` / `schedule_update`, so the
admin applies exactly the rules the API and schedulerctl apply; credentials are write-only."""

from __future__ import annotations

import re
from typing import Any

from django import forms
from django.core.exceptions import NON_FIELD_ERRORS, PermissionDenied, ValidationError
from django.utils import timezone
from django.utils.html import escape

from tasks_app import timing
from tasks_app.crypto import CredentialsUnreadable
from tasks_app.models import ConcurrencyLimit, Repository, Schedule, Tool, WorkerGroup
from tasks_app.services.groups import CREDENTIAL_FIELDS, MANAGE_CREDENTIALS, group_create, group_update
from tasks_app.services.repositories import repository_create, repository_update
from tasks_app.services.schedules import ScheduleSpec, schedule_create, schedule_update

# Service error keys that have no form field of their own land on the field that carries them.
_SERVICE_FIELD_ALIASES = {"credentials": "credentials_set"}
_SCOPE = re.compile(r"^(tool|model):(\S+)$")
# "output_files[2]" or "input_files[0].path": an item of a list field; the error belongs to the list's field.
_ITEM_KEY = re.compile(r"^(\w+)\[(\d+)\]")


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
                  "extra_args", "daily_budget_usd", "monthly_budget_usd"]
        labels = {"daily_budget_usd": "Daily budget (USD)", "monthly_budget_usd": "Monthly budget (USD)"}
        # The admin renders help texts as HTML: the model's "<tool>-<account>" would be read as two tags.
        help_texts = {"name": escape(WorkerGroup._meta.get_field("name").help_text)}

    user: Any = None  # the acting staff user: the admin sets it (WorkerGroupAdmin.get_form)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_group: WorkerGroup | None = None
        if self.user is not None and not self.user.has_perm(MANAGE_CREDENTIALS):
            # What reaches the CLI with the account's key is shown, not editable, without the permission.
            for name in CREDENTIAL_FIELDS:
                if name in ("credentials_set", "credentials_unset"):
                    self.fields.pop(name, None)
                elif name in self.fields:
                    self.fields[name].disabled = True
                    self.fields[name].help_text = f"Changing it needs the permission {MANAGE_CREDENTIALS}."
        for name in ("env", "extra_args"):
            if name in self.fields:
                # Their callable defaults turn on a hidden "initial" input; compare with the stored group.
                self.fields[name].show_hidden_initial = False
        if self.instance.pk is None:
            self.fields.pop("credentials_unset", None)
        elif "credentials_unset" in self.fields:  # (not there for a user who may not edit credentials)
            try:
                names = self.instance.credential_names
            except CredentialsUnreadable:
                names = []
            self.fields["credentials_unset"].choices = [(name, name) for name in names]

    def clean_credentials_set(self) -> dict[str, str]:
        return parse_credential_lines(self.cleaned_data.get("credentials_set") or "")

    def _credentials_set(self) -> dict[str, str]:
        return self.cleaned_data.get("credentials_set") or {}

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
        except (CredentialsUnreadable, PermissionDenied) as exc:
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
            "daily_budget_usd": data.get("daily_budget_usd"),  # empty: no budget
            "monthly_budget_usd": data.get("monthly_budget_usd"),
        }
        if self.instance.pk is None:
            return group_create(tool=data["tool"], account=data["account"], credentials=self._credentials_set(),
                                by=self.user, **settings)
        # Only what the operator changed, so a concurrent pause or edit elsewhere is not overwritten.
        # (A disabled field is not the user's to change, whatever was posted: JSONField.has_changed ignores that.)
        changes = {name: value for name, value in settings.items()
                   if name in self.changed_data and not self.fields[name].disabled}
        if self._credentials_set():
            changes["credentials_set"] = self._credentials_set()
        if data.get("credentials_unset"):
            changes["credentials_unset"] = list(data["credentials_unset"])
        if not changes:
            return self.instance
        return group_update(name=self.instance.name, changes=changes, by=self.user)

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


class RepositoryForm(forms.ModelForm):
    """Like WorkerGroupForm, validation *is* the save (`_post_clean` calls the service). The secret boxes are
    write-only and shown only to users with tasks_app.manage_credentials; filling one replaces the stored
    credentials as a whole."""

    token = forms.CharField(
        label="HTTPS token", required=False, strip=True,
        widget=forms.PasswordInput(render_value=False, attrs={"autocomplete": "new-password"}),
        help_text="For an https:// URL (e.g. a fine-grained personal access token). Write-only.")
    username = forms.CharField(label="Token user name", required=False, max_length=200,
                               help_text="Only if the host wants one with the token (e.g. x-access-token).")
    ssh_key = forms.CharField(
        label="SSH private key", required=False, strip=False,
        widget=SecretTextarea(attrs={"rows": 6, "cols": 70, "autocomplete": "off", "spellcheck": "false"}),
        help_text="For ssh:// or user@host:path: a deploy key's private block (-----BEGIN OPENSSH PRIVATE KEY-----"
                  " …). Write-only.")
    clear_credentials = forms.BooleanField(label="Remove the stored credentials", required=False)

    class Meta:
        model = Repository
        fields = ["tenant", "name", "url", "default_ref", "push_prefix"]

    user: Any = None  # the acting staff user: the admin sets it (RepositoryAdmin.get_form)
    SECRET_FIELDS = ("token", "username", "ssh_key", "clear_credentials")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_repository: Repository | None = None
        if self.user is not None and not self.user.has_perm(MANAGE_CREDENTIALS):
            for name in self.SECRET_FIELDS:
                self.fields.pop(name, None)
            if self.instance.credentials_encrypted:  # where the secret goes, and whether it pushes
                for name in ("url", "push_prefix"):
                    if name in self.fields:
                        self.fields[name].disabled = True
                        self.fields[name].help_text = f"Changing it needs the permission {MANAGE_CREDENTIALS}."
        if self.instance.pk is None:
            self.fields.pop("clear_credentials", None)

    def _credentials(self) -> dict[str, str] | None:
        """The new set when a secret box was filled, {} to remove them, None to leave them as they are."""
        data = self.cleaned_data
        if data.get("ssh_key", "").strip() or data.get("token"):
            given = {key: data[key] for key in ("token", "username", "ssh_key") if data.get(key, "").strip()}
            return given
        if data.get("username"):
            return {"username": data["username"]}  # the service says it needs a token
        return {} if data.get("clear_credentials") else None

    def _post_clean(self) -> None:
        # Replaces ModelForm's instance construction and model validation: the service owns both.
        if self._errors:
            return
        try:
            self.saved_repository = self._save_through_service()
        except ValidationError as exc:
            if not hasattr(exc, "error_dict"):
                self.add_error(None, exc.messages)
                return
            for name, messages in exc.message_dict.items():
                if name == "credentials":  # on the box that was filled (never echoing it)
                    name = "ssh_key" if self.cleaned_data.get("ssh_key", "").strip() else "token"
                self.add_error(name if name in self.fields else None, messages)
        except (CredentialsUnreadable, PermissionDenied) as exc:
            self.add_error(None, str(exc))
        else:
            self.instance = self.saved_repository

    def _save_through_service(self) -> Repository:
        data = self.cleaned_data
        credentials = self._credentials()
        if self.instance.pk is None:
            return repository_create(
                tenant=data["tenant"], name=data["name"], url=data["url"], credentials=credentials,
                default_ref=data["default_ref"], push_prefix=data.get("push_prefix") or "",
                created_by=self.user.get_username() if self.user is not None else "", by=self.user)
        # Only what the operator changed, so an edit elsewhere meanwhile is not overwritten.
        changes: dict[str, Any] = {name: data[name] for name in ("url", "default_ref", "push_prefix")
                                   if name in self.changed_data and not self.fields[name].disabled}
        if credentials is not None:
            changes["credentials"] = credentials
        if not changes:
            return self.instance
        return repository_update(tenant=self.instance.tenant, name=self.instance.name, changes=changes, by=self.user)

    def save(self, commit: bool = True) -> Repository:
        if self.saved_repository is None:
            raise ValueError("the form is not valid, so nothing was saved")
        return self.saved_repository

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


class LinesField(forms.Field):
    """A list of strings edited as one per line; blank lines are dropped. Compared as a list, so an untouched
    textarea does not count as a change."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 60, "spellcheck": "false"})

    def prepare_value(self, value: Any) -> Any:
        return "\n".join(str(item) for item in value) if isinstance(value, list) else value

    def to_python(self, value: Any) -> list[str]:
        if isinstance(value, list):
            return value
        return [line.strip() for line in str(value or "").splitlines() if line.strip()]

    def has_changed(self, initial: Any, data: Any) -> bool:
        return self.to_python(initial) != self.to_python(data)


class ScheduleForm(forms.ModelForm):
    """Like WorkerGroupForm, validation *is* the save: `_post_clean` calls schedule_create / schedule_update and
    maps their ValidationError onto the fields. A one-off `run_at` is entered and shown as wall-clock time in the
    schedule's own timezone, the zone its cron is read in."""

    # Set by ScheduleAdmin.get_form: the operator recorded as the schedule's creator.
    created_by = ""

    output_files = LinesField(
        required=False,
        help_text="Relative paths or glob patterns to collect after each run, one per line.",
    )

    class Meta:
        model = Schedule
        fields = ["name", "tenant", "enabled", "cron", "timezone", "interval_seconds", "run_at", "tool", "model",
                  "prompt", "output_files", "priority", "max_attempts", "timeout_seconds", "worker_group",
                  "overlap_policy"]
        help_texts = {
            "cron": "5-field cron (minute hour day month weekday), read in the timezone below, e.g. 0 9 * * 1-5.",
            "timezone": "IANA name, e.g. Europe/Berlin. Cron and a one-off time are read in this zone.",
            "interval_seconds": "Every N seconds, counted from the last firing.",
            "run_at": "One-off: fire once at this wall-clock time in the schedule's timezone.",
            "timeout_seconds": "Empty: the server's default.",
            "worker_group": "Optional: pin the spawned tasks to this group (of the same tool).",
        }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.saved_schedule: Schedule | None = None
        if self.instance.pk is not None and self.instance.run_at is not None and "run_at" in self.fields:
            try:
                wall_clock = timing.local(self.instance.run_at, self.instance.timezone)
            except timing.TimingError:
                wall_clock = None
            if wall_clock is not None:
                self.initial["run_at"] = wall_clock.replace(tzinfo=None)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        run_at, zone_name = cleaned.get("run_at"), cleaned.get("timezone") or "UTC"
        if run_at is not None:
            # The widget read the wall-clock time in the server's zone; re-read it in the schedule's zone. A bad
            # zone is left for the service to name on the timezone field.
            try:
                zone = timing.zone(zone_name)
            except timing.TimingError:
                zone = None
            if zone is not None:
                cleaned["run_at"] = timezone.make_naive(run_at).replace(tzinfo=zone)
        return cleaned

    def _post_clean(self) -> None:
        # Replaces ModelForm's instance construction and model validation: the service owns both.
        if self._errors:
            return
        try:
            self.saved_schedule = self._save_through_service()
        except ValidationError as exc:
            self._add_service_errors(exc)
        else:
            self.instance = self.saved_schedule

    def _values(self) -> dict[str, Any]:
        data = self.cleaned_data
        group = data.get("worker_group")
        return {
            "name": data["name"],
            "enabled": data["enabled"],
            "cron": data.get("cron") or "",
            "timezone": data.get("timezone") or "UTC",
            "interval_seconds": data.get("interval_seconds"),
            "run_at": data.get("run_at"),
            "tool": data["tool"],
            "model": data.get("model") or "",
            "prompt": data["prompt"],
            "output_files": data.get("output_files") or [],
            "priority": data["priority"],
            "max_attempts": data["max_attempts"],
            "timeout_seconds": data.get("timeout_seconds"),
            "worker_group": group.name if group is not None else None,
            "overlap_policy": data["overlap_policy"],
        }

    def _save_through_service(self) -> Schedule:
        values = self._values()
        if self.instance.pk is None:
            return schedule_create(spec=ScheduleSpec(**values), tenant=self.cleaned_data["tenant"],
                                   created_by=self.created_by)
        # Only what the operator changed, so a pause or trigger elsewhere is not overwritten. The timing goes as a
        # whole: the service replaces it, so a cron left filled next to a new interval is refused, not dropped;
        # and a new timezone moves a one-off's wall-clock time with it.
        changed = set(self.changed_data)
        timing_fields = {"cron", "timezone", "interval_seconds", "run_at"}
        if changed & timing_fields:
            changed |= timing_fields
        changes = {name: value for name, value in values.items() if name in changed}
        if not changes:
            return self.instance
        return schedule_update(schedule_id=self.instance.pk, changes=changes)

    def _add_service_errors(self, exc: ValidationError) -> None:
        if not hasattr(exc, "error_dict"):
            self.add_error(None, exc.messages)
            return
        for name, messages in exc.message_dict.items():
            item = _ITEM_KEY.match(name)
            field = item.group(1) if item else name
            if field not in self.fields:
                # "timing" spans three fields; anything else unknown keeps its key so the message stays clear.
                keep_key = name not in ("timing", NON_FIELD_ERRORS)
                self.add_error(None, [f"{name}: {message}" if keep_key else message for message in messages])
            elif item and isinstance(self.fields[field], LinesField):
                line = int(item.group(2)) + 1
                self.add_error(field, [f"line {line}: {message}" for message in messages])
            else:
                self.add_error(field, messages)

    def save(self, commit: bool = True) -> Schedule:
        if self.saved_schedule is None:
            raise ValueError("the form is not valid, so nothing was saved")
        return self.saved_schedule

    def save_m2m(self) -> None:
        """Nothing to do: the service saved everything; the admin calls this after `save()`."""
