"""Request parsing (types only; the rules live in the services, shared with every producer) and responses."""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import models
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from executors.base import EventKind
from tasks_app import selectors, timing
from tasks_app.models import (
    FAILURE_KIND_CHOICES,
    GROUP_HEALTH,
    AuditEvent,
    OverlapPolicy,
    Repository,
    Schedule,
    Task,
    TaskEvent,
    TaskFile,
    TaskRun,
    Tool,
    Worker,
    WorkerGroup,
)
from tasks_app.presenters import credential_names, worker_command
from tasks_app.services.chains import MAX_PARENTS
from tasks_app.services.tasks import TaskSpec, input_file_from_payload


class StrictCharField(serializers.CharField):
    """A string, and only a string: DRF would quietly turn 42 or true into "42" / "True"."""

    default_error_messages = {"not_a_string": "must be a string, not {type}"}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string", type=type(data).__name__)
        return super().to_internal_value(data)


class StrictSlugField(StrictCharField, serializers.SlugField):
    pass


class StrictIntegerField(serializers.IntegerField):
    """A JSON integer: DRF would take "5" (and Python counts true as 1). 7.0 is still 7, as in JSON Schema."""

    default_error_messages = {"not_an_integer": "must be an integer, not {type}",
                              "not_whole": "must be a whole number"}

    def to_internal_value(self, data: Any) -> int:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("not_an_integer", type=type(data).__name__)
        if isinstance(data, float):
            if not data.is_integer():
                self.fail("not_whole")
            data = int(data)
        return super().to_internal_value(data)


class StrictFloatField(serializers.FloatField):
    """A JSON number: DRF would take "2.5" (and true as 1.0)."""

    default_error_messages = {"not_a_number": "must be a number, not {type}"}

    def to_internal_value(self, data: Any) -> float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("not_a_number", type=type(data).__name__)
        return super().to_internal_value(data)


class StrictDecimalField(serializers.DecimalField):
    """A JSON number (answered as one too): DRF would take "5.00"."""

    default_error_messages = {"not_a_number": "must be a number, not {type}"}

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.fail("not_a_number", type=type(data).__name__)
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """true or false: DRF would also take "yes", "0", 1."""

    default_error_messages = {"not_a_boolean": "must be true or false, not {type}"}

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("not_a_boolean", type=type(data).__name__)
        return data


class StrictChoiceField(serializers.ChoiceField):
    default_error_messages = {"not_a_string": "must be a string, not {type}"}

    def to_internal_value(self, data: Any) -> Any:
        if not isinstance(data, str):
            self.fail("not_a_string", type=type(data).__name__)
        return super().to_internal_value(data)


# Every key of the body must be a writable field, or the request is a 400 naming each one that is not: a misspelt
# "priorty" would otherwise run at the default priority without a word. (Comments, not docstrings, here and below:
# drf-spectacular would show a base class's docstring as the description of every request body.)
class StrictFieldsMixin:
    fields: Any

    def to_internal_value(self, data: Any) -> Any:
        unknown = self._unknown_fields(data) if isinstance(data, Mapping) else {}
        try:
            value = super().to_internal_value(data)  # type: ignore[misc]
        except serializers.ValidationError as exc:
            if unknown and isinstance(exc.detail, Mapping):
                raise serializers.ValidationError({**exc.detail, **unknown}) from None
            raise
        if unknown:
            raise serializers.ValidationError(unknown)
        return value

    def _unknown_fields(self, data: Mapping) -> dict[str, list[str]]:
        writable = sorted(name for name, field in self.fields.items() if not field.read_only)
        errors: dict[str, list[str]] = {}
        for key in data:
            name = str(key)
            if name in writable:
                continue
            if name in self.fields:
                message = "is read-only here"
            else:
                close = difflib.get_close_matches(name, writable, n=1)
                message = "is not a field of this request" + (f"; did you mean {close[0]!r}?" if close else "")
            errors[name[:100]] = [message]
        return errors


class StrictSerializer(StrictFieldsMixin, serializers.Serializer):
    pass


# For writes through a ModelSerializer: the fields it builds from the model are strict too.
class StrictModelSerializer(StrictFieldsMixin, serializers.ModelSerializer):
    serializer_field_mapping = {
        **serializers.ModelSerializer.serializer_field_mapping,
        models.CharField: StrictCharField,
        models.SlugField: StrictSlugField,
        models.TextField: StrictCharField,
        models.IntegerField: StrictIntegerField,
        models.PositiveIntegerField: StrictIntegerField,
        models.BooleanField: StrictBooleanField,
    }
    serializer_choice_field = StrictChoiceField


class InputFileSerializer(StrictSerializer):
    path = StrictCharField(trim_whitespace=False, max_length=1024)
    content = StrictCharField(trim_whitespace=False, allow_blank=True, required=False)
    content_base64 = StrictCharField(trim_whitespace=False, allow_blank=True, required=False)


class FollowUpSerializer(StrictSerializer):
    prompt = StrictCharField(trim_whitespace=False, allow_blank=True,
                             help_text="The next turn: the CLI gets it in the parent's resumed session.")


# Items of any JSON type reach the service, whose errors name `depends_on[i]` and the rule (a DRF child field would
# answer in its own nested shape); the schema says what is accepted.
@extend_schema_field({"type": "array", "items": {"type": "string", "format": "uuid"}, "maxItems": MAX_PARENTS,
                      "uniqueItems": True})
class TaskIdListField(serializers.ListField):
    child = serializers.JSONField()


class TaskCreateSerializer(StrictSerializer):
    tool = StrictChoiceField(choices=Tool.choices)
    prompt = StrictCharField(trim_whitespace=False, allow_blank=True)
    model = StrictCharField(required=False, allow_blank=True, default="", max_length=120)
    input_files = InputFileSerializer(many=True, required=False, default=list)
    output_files = serializers.ListField(
        child=StrictCharField(trim_whitespace=False, allow_blank=True, max_length=1024), required=False,
        default=list, max_length=1000,
    )
    priority = StrictIntegerField(required=False, default=5, min_value=1, max_value=9)
    scheduled_at = serializers.DateTimeField(required=False, allow_null=True, default=None)
    max_attempts = StrictIntegerField(required=False, default=3, min_value=1, max_value=20)
    timeout_seconds = StrictIntegerField(required=False, allow_null=True, default=None, min_value=1)
    idempotency_key = StrictCharField(required=False, allow_null=True, default=None, max_length=200)
    worker_group = StrictCharField(required=False, allow_null=True, default=None, max_length=100)
    metadata = serializers.DictField(required=False, default=dict)
    max_cost_usd = StrictFloatField(required=False, allow_null=True, default=None,
                                    help_text="Stop an attempt once its spend crosses this (budget_exceeded).")
    max_turns = StrictIntegerField(required=False, allow_null=True, default=None)
    idle_timeout_seconds = StrictIntegerField(
        required=False, allow_null=True, default=None,
        help_text="No event and no output for this long kills the attempt as stalled (default "
                  "SCHEDULER_IDLE_TIMEOUT).")
    depends_on = TaskIdListField(
        required=False, default=list, max_length=1000,
        help_text=f"Ids of tasks (at most {MAX_PARENTS}) that must all succeed first; their outputs arrive as inputs "
                  "under `<id>/<path>`. One that fails or is canceled cancels this task.")
    repository = StrictCharField(required=False, allow_null=True, default=None, max_length=100,
                                 help_text="Run in a checkout of this repository of your tenant (its name).")
    ref = StrictCharField(required=False, allow_blank=True, default="", max_length=255, trim_whitespace=False,
                          help_text="Branch, tag or commit of the repository; empty: its default_ref.")
    require_outputs = StrictBooleanField(
        required=False, default=True,
        help_text="A declared output the run did not deliver (a path not written, a glob that matched nothing) "
                  "fails the task (missing_output). false: it succeeds, with missing_outputs listing them.")

    def to_spec(self) -> TaskSpec:
        data = self.validated_data
        try:
            inputs = [input_file_from_payload(dict(item), index=i) for i, item in enumerate(data["input_files"])]
        except DjangoValidationError as exc:
            raise serializers.ValidationError(exc.message_dict) from None
        return TaskSpec(
            tool=data["tool"], prompt=data["prompt"], model=data["model"], input_files=inputs,
            output_files=list(data["output_files"]), priority=data["priority"], scheduled_at=data["scheduled_at"],
            max_attempts=data["max_attempts"], timeout_seconds=data["timeout_seconds"],
            idempotency_key=data["idempotency_key"], worker_group=data["worker_group"],
            metadata=dict(data["metadata"]), max_cost_usd=data["max_cost_usd"], max_turns=data["max_turns"],
            idle_timeout_seconds=data["idle_timeout_seconds"], depends_on=list(data["depends_on"]),
            repository=data["repository"], ref=data["ref"], require_outputs=data["require_outputs"],
        )


class DiffStatSerializer(serializers.Serializer):
    files = serializers.IntegerField()
    insertions = serializers.IntegerField()
    deletions = serializers.IntegerField()


class TaskRunSerializer(serializers.ModelSerializer):
    worker_group = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    cost_usd = serializers.FloatField(read_only=True, allow_null=True)
    # Blank while running and on success: say so in the schema (a read-only model field would drop allow_blank).
    failure_kind = serializers.ChoiceField(choices=FAILURE_KIND_CHOICES, allow_blank=True, read_only=True)
    diff_stat = DiffStatSerializer(read_only=True, allow_null=True,
                                   help_text="A run on a repository: its change against base_sha (null: none ran).")

    class Meta:
        model = TaskRun
        fields = [
            "id", "attempt", "status", "worker_group", "worker", "started_at", "finished_at", "exit_code",
            "failure_kind", "error_message", "retry_after_seconds", "input_tokens", "output_tokens", "cost_usd",
            "cost_is_estimate", "turns", "session_id", "resumed_session_id",
            "latency_ms", "command", "sandbox", "base_sha", "diff_stat", "pushed_branch", "pushed_sha",
            "stdout", "stdout_truncated", "stderr", "stderr_truncated",
        ]
        read_only_fields = fields


class TaskEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = TaskEvent
        fields = ["id", "from_status", "to_status", "source", "actor", "reason", "data", "created_at"]
        read_only_fields = fields


class TaskFileSerializer(serializers.ModelSerializer):
    attempt = serializers.IntegerField(source="run.attempt", read_only=True, allow_null=True, default=None)

    class Meta:
        model = TaskFile
        fields = ["id", "direction", "path", "size_bytes", "sha256", "content_type", "attempt", "created_at"]
        read_only_fields = fields


class LogQuerySerializer(serializers.Serializer):
    follow = serializers.BooleanField(required=False, default=False)
    after = serializers.IntegerField(required=False, default=0, min_value=0, max_value=2**31 - 1)


class TaskLogChunkSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    stream = serializers.CharField()
    data = serializers.CharField()


class TaskLogSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(allow_null=True)
    finished = serializers.BooleanField()
    chunks = TaskLogChunkSerializer(many=True)
    next_after = serializers.IntegerField()
    stdout = serializers.CharField(allow_blank=True)
    stderr = serializers.CharField(allow_blank=True)


class TimelineEventSerializer(serializers.Serializer):
    seq = serializers.IntegerField()
    kind = serializers.ChoiceField(choices=[k.value for k in EventKind])
    at = serializers.DateTimeField()
    data = serializers.DictField()


class TimelineSerializer(serializers.Serializer):
    attempt = serializers.IntegerField(allow_null=True)
    finished = serializers.BooleanField()
    session_id = serializers.CharField(allow_blank=True)
    cost_usd = serializers.FloatField(allow_null=True)
    cost_is_estimate = serializers.BooleanField()
    events = TimelineEventSerializer(many=True)
    next_after = serializers.IntegerField()


class TaskSerializer(serializers.ModelSerializer):
    worker_group = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    repository = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    max_cost_usd = serializers.FloatField(read_only=True, allow_null=True)
    attempts_in_budget = serializers.IntegerField(
        read_only=True, help_text="Attempts charged to the current budget (of max_attempts); `attempt` counts every "
                                  "run, those before an explicit retry included.")
    missing_outputs = serializers.ListField(
        child=serializers.CharField(), read_only=True,
        help_text="Once finished: the declared outputs its last run did not deliver (empty: none missing).")

    class Meta:
        model = Task
        fields = [
            "id", "tenant", "created_by", "tool", "model", "prompt", "output_files", "priority", "status",
            "scheduled_at", "worker_group", "repository", "ref", "attempt", "attempts_in_budget", "max_attempts",
            "next_attempt_at", "timeout_seconds", "require_outputs", "missing_outputs",
            "idle_timeout_seconds", "max_cost_usd", "max_turns", "idempotency_key", "result", "error_message",
            "started_at", "finished_at", "metadata", "created_at",
            "updated_at",
        ]
        read_only_fields = fields


class ConversationTurnSerializer(serializers.Serializer):
    """One turn of a conversation (a task and its follow-ups): what was asked, how it ended, what it changed."""

    id = serializers.UUIDField()
    status = serializers.CharField()
    prompt = serializers.CharField()
    created_at = serializers.DateTimeField()
    final_message = serializers.CharField(allow_blank=True)
    session_id = serializers.CharField(allow_blank=True)
    diff_stat = serializers.JSONField(allow_null=True, help_text='{"files", "insertions", "deletions"}.')
    patch_file = serializers.IntegerField(allow_null=True, help_text="The id of its changes.patch output, if any.")


class TaskDetailSerializer(TaskSerializer):
    files = TaskFileSerializer(many=True, read_only=True)
    latest_run = serializers.SerializerMethodField()
    parent = serializers.PrimaryKeyRelatedField(read_only=True, allow_null=True,
                                                help_text="The task this one follows up (it resumed its session).")
    resume_session_id = serializers.CharField(read_only=True, allow_blank=True)
    follow_ups = serializers.SerializerMethodField(help_text="Tasks that follow this one up, oldest first.")
    conversation = serializers.SerializerMethodField(
        help_text="The turns that led here, first to last (this task included).")
    depends_on = serializers.SerializerMethodField(help_text="Tasks that must all succeed before this one runs.")
    dependents = serializers.SerializerMethodField(help_text="Tasks that wait for this one.")
    waiting_on = serializers.SerializerMethodField(
        help_text="While queued: the tasks of depends_on that have not succeeded yet (why it is not dispatched).")

    class Meta(TaskSerializer.Meta):
        fields = [*TaskSerializer.Meta.fields, "files", "latest_run", "parent", "resume_session_id", "follow_ups",
                  "conversation", "depends_on", "dependents", "waiting_on"]
        read_only_fields = fields

    def _chain(self, task: Task) -> selectors.TaskChain:
        cache = self.__dict__.setdefault("_chains", {})
        if task.pk not in cache:
            cache[task.pk] = selectors.task_chain(task=task)
        return cache[task.pk]

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_depends_on(self, task: Task) -> list[str]:
        return self._chain(task).depends_on

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_dependents(self, task: Task) -> list[str]:
        return self._chain(task).dependents

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_waiting_on(self, task: Task) -> list[str]:
        return self._chain(task).waiting_on

    @extend_schema_field(TaskRunSerializer(allow_null=True))
    def get_latest_run(self, task: Task) -> dict[str, Any] | None:
        run = selectors.task_latest_run(task_id=task.pk)
        return TaskRunSerializer(run).data if run is not None else None

    @extend_schema_field(serializers.ListField(child=serializers.UUIDField()))
    def get_follow_ups(self, task: Task) -> list[str]:
        return [str(pk) for pk in selectors.task_follow_up_ids(task_id=task.pk)]

    @extend_schema_field(ConversationTurnSerializer(many=True))
    def get_conversation(self, task: Task) -> list[dict[str, Any]]:
        return ConversationTurnSerializer(selectors.task_conversation_turns(task), many=True).data



class WorkerGroupSerializer(StrictModelSerializer):
    """Credentials are write-only: responses list their key names, never values."""

    credentials = serializers.DictField(child=StrictCharField(trim_whitespace=False), write_only=True,
                                        required=False)
    credential_names = serializers.ListField(child=StrictCharField(), read_only=True)
    env = serializers.DictField(child=StrictCharField(trim_whitespace=False, allow_blank=True), required=False)
    extra_args = serializers.ListField(child=StrictCharField(trim_whitespace=False), required=False)
    running = serializers.IntegerField(read_only=True, required=False)
    queued = serializers.IntegerField(read_only=True, required=False)
    health = serializers.ChoiceField(choices=GROUP_HEALTH, read_only=True)
    rate_limited = serializers.BooleanField(
        read_only=True, help_text="A rate limit is in force now (rate_limited_until stays set once it has passed).")
    live_workers = serializers.IntegerField(read_only=True, help_text="Live workers consuming the group's queue.")
    worker_command = serializers.SerializerMethodField(help_text="Starts a worker for this group on a box.")
    # Budgets: the rules (>= 0, cents) are the service's, shared with schedulerctl and the admin; null: no budget.
    daily_budget_usd = StrictDecimalField(max_digits=10, decimal_places=2, allow_null=True, required=False,
                                          coerce_to_string=False, help_text="USD per UTC day; null: none.")
    monthly_budget_usd = StrictDecimalField(max_digits=12, decimal_places=2, allow_null=True, required=False,
                                            coerce_to_string=False, help_text="USD per month (UTC); null: none.")
    spend_today_usd = serializers.DecimalField(source="spend.today_usd", max_digits=18, decimal_places=6,
                                               coerce_to_string=False, read_only=True,
                                               help_text="Cost of its runs started this UTC day, in flight included.")
    spend_month_usd = serializers.DecimalField(source="spend.month_usd", max_digits=18, decimal_places=6,
                                               coerce_to_string=False, read_only=True,
                                               help_text="Cost of its runs started this month (UTC), in flight "
                                                         "included.")

    class Meta:
        model = WorkerGroup
        fields = [
            "name", "tool", "account", "max_concurrent", "enabled", "credentials", "credential_names", "env",
            "allow_dangerous_flags", "extra_args", "health", "live_workers", "worker_command", "rate_limited",
            "rate_limited_until",
            "quarantined_at", "quarantine_reason", "running", "queued", "daily_budget_usd", "monthly_budget_usd",
            "spend_today_usd", "spend_month_usd", "created_at", "updated_at",
        ]
        read_only_fields = ["name", "rate_limited_until", "quarantined_at", "quarantine_reason", "created_at",
                            "updated_at"]
        validators: list[Any] = []  # uniqueness is the service's to report, with its field-named message
        extra_kwargs = {"account": {"validators": []}, "max_concurrent": {"min_value": 1, "max_value": 1000}}


    def get_worker_command(self, group: WorkerGroup) -> str:
        return worker_command(group)


class WorkerGroupUpdateSerializer(WorkerGroupSerializer):
    class Meta(WorkerGroupSerializer.Meta):
        read_only_fields = ["name", "tool", "account", "rate_limited_until", "created_at", "updated_at"]


class RepositorySerializer(serializers.ModelSerializer):
    """Credentials are write-only: responses say whether there are some, and their key names, never values."""

    has_credentials = serializers.SerializerMethodField()
    credential_names = serializers.SerializerMethodField()

    class Meta:
        model = Repository
        fields = ["name", "tenant", "url", "default_ref", "push_prefix", "has_credentials", "credential_names",
                  "created_by", "created_at", "updated_at"]
        read_only_fields = fields

    @extend_schema_field(serializers.BooleanField())
    def get_has_credentials(self, repository: Repository) -> bool:
        return bool(repository.credentials_encrypted)

    @extend_schema_field(serializers.ListField(child=serializers.CharField(), allow_null=True,
                                               help_text="null: stored, but unreadable with this encryption key."))
    def get_credential_names(self, repository: Repository) -> list[str] | None:
        return credential_names(repository)


# The rules (URL forms, ref names, credential shapes) are the service's, shared with schedulerctl and the admin.
class RepositoryWriteSerializer(StrictSerializer):
    name = StrictCharField(max_length=100, trim_whitespace=False, help_text="A slug, unique in its tenant.")
    tenant = StrictCharField(required=False, max_length=100, trim_whitespace=False,
                             help_text="Staff may create it in another tenant than their own.")
    url = StrictCharField(max_length=1000, trim_whitespace=False,
                          help_text="https://, http:// (no credentials), ssh://, git://, file://, user@host:path or "
                                    "an absolute path; never a password or token in it.")
    credentials = serializers.DictField(
        child=StrictCharField(trim_whitespace=False), write_only=True, required=False, allow_null=True,
        help_text='{"token"} (optionally with "username") for https://, or {"ssh_key"} for SSH. Write-only; '
                  "replaced as a whole; {} or null removes them.")
    default_ref = StrictCharField(required=False, max_length=255, trim_whitespace=False,
                                  help_text="Branch, tag or commit when a task names none (default HEAD).")
    push_prefix = StrictCharField(required=False, allow_blank=True, max_length=100, trim_whitespace=False,
                                  help_text="Push each task's change to <push_prefix><task id>; empty: never.")


class RepositoryUpdateSerializer(RepositoryWriteSerializer):
    name = StrictCharField(read_only=True)
    tenant = StrictCharField(read_only=True)
    url = StrictCharField(required=False, max_length=1000, trim_whitespace=False)


class WorkerSerializer(serializers.ModelSerializer):
    alive = serializers.BooleanField(read_only=True, help_text="Heartbeating within SCHEDULER_WORKER_TIMEOUT_SECONDS.")
    queues = serializers.ListField(child=serializers.CharField(), read_only=True)

    class Meta:
        model = Worker
        fields = ["hostname", "pid", "queues", "concurrency", "sandbox", "alive", "started_at", "last_heartbeat",
                  "stopped_at"]
        read_only_fields = fields


class AuditEventSerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEvent
        fields = ["id", "actor", "source", "action", "object_type", "object_id", "changed", "created_at"]
        read_only_fields = fields


class ScheduleWriteSerializer(StrictSerializer):
    """Exactly one timing (cron + timezone, interval_seconds, or run_at) and the task template as flat fields."""

    name = StrictCharField(max_length=200)
    cron = StrictCharField(required=False, allow_blank=True, max_length=120)
    timezone = StrictCharField(required=False, max_length=64)
    interval_seconds = StrictIntegerField(required=False, allow_null=True, max_value=31622400,
                                          help_text="At least SCHEDULER_MIN_SCHEDULE_INTERVAL (default 60).")
    run_at = serializers.DateTimeField(required=False, allow_null=True)
    overlap_policy = StrictChoiceField(choices=OverlapPolicy.choices, required=False)
    enabled = StrictBooleanField(required=False)
    tool = StrictChoiceField(choices=Tool.choices)
    prompt = StrictCharField(trim_whitespace=False, allow_blank=True)
    model = StrictCharField(required=False, allow_blank=True, max_length=120)
    input_files = InputFileSerializer(many=True, required=False)
    output_files = serializers.ListField(child=StrictCharField(trim_whitespace=False, allow_blank=True,
                                                               max_length=1024), required=False, max_length=1000)
    priority = StrictIntegerField(required=False, min_value=1, max_value=9)
    max_attempts = StrictIntegerField(required=False, min_value=1, max_value=20)
    timeout_seconds = StrictIntegerField(required=False, allow_null=True, min_value=1)
    worker_group = StrictCharField(required=False, allow_null=True, max_length=100)

    def changes(self) -> dict[str, Any]:
        """The validated fields as ScheduleSpec keyword arguments (input files decoded)."""
        data = dict(self.validated_data)
        if "input_files" in data:
            try:
                data["input_files"] = [input_file_from_payload(dict(item), index=i)
                                       for i, item in enumerate(data["input_files"])]
            except DjangoValidationError as exc:
                raise serializers.ValidationError(exc.message_dict) from None
        if data.get("cron") is None:
            data.pop("cron", None)
        return data


class ScheduleSerializer(serializers.ModelSerializer):
    worker_group = serializers.SlugRelatedField(slug_field="name", read_only=True, allow_null=True)
    input_files = serializers.SerializerMethodField()
    next_run_at_local = serializers.SerializerMethodField()
    state = serializers.ChoiceField(
        choices=["active", "paused", "finished"], read_only=True,
        help_text="paused: next_run_at is stale (resuming computes the next slot from then); finished: nothing "
                  "left to fire.")

    class Meta:
        model = Schedule
        fields = [
            "id", "name", "tenant", "created_by", "cron", "timezone", "interval_seconds", "run_at", "overlap_policy",
            "enabled", "state", "tool", "model", "prompt", "input_files", "output_files", "priority", "max_attempts",
            "timeout_seconds", "worker_group", "next_run_at", "next_run_at_local", "last_fired_at", "created_at",
            "updated_at",
        ]
        read_only_fields = fields

    @extend_schema_field(serializers.ListField(child=serializers.CharField()))
    def get_input_files(self, schedule: Schedule) -> list[str]:
        return [item["path"] for item in schedule.input_files]

    @extend_schema_field(serializers.DateTimeField(allow_null=True))
    def get_next_run_at_local(self, schedule: Schedule) -> str | None:
        value = timing.local(schedule.next_run_at, schedule.timezone)
        return value.isoformat() if value is not None else None
