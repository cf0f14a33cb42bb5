"""CLI Scheduler's tables (SPEC §2). Status changes go through `tasks_app.transitions.task_transition`."""

from __future__ import annotations

import re
import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from django.db.models import Q, Sum
from django.db.models.functions import Now
from django.utils import timezone
from django.utils.functional import cached_property

from executors.base import EventKind, FailureKind
from tasks_app import crypto
from tasks_app.budgets import BUDGET_FIELDS, GroupSpend, day_window, month_window


class Tool(models.TextChoices):
    CLAUDE = "claude", "claude"
    CODEX = "codex", "codex"
    GEMINI = "gemini", "gemini"


class TaskStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    LEASED = "leased", "leased"
    RUNNING = "running", "running"
    SUCCEEDED = "succeeded", "succeeded"
    FAILED = "failed", "failed"
    CANCELED = "canceled", "canceled"


ACTIVE_STATUSES = (TaskStatus.LEASED, TaskStatus.RUNNING)
TERMINAL_STATUSES = (TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED)


class EventSource(models.TextChoices):
    API = "api", "api"
    CLI = "cli", "cli"
    ADMIN = "admin", "admin"
    SCHEDULE = "schedule", "schedule"
    WORKER = "worker", "worker"
    SYSTEM = "system", "system"
    INTAKE = "intake", "intake"


# The executors own the list of failure kinds (they produce them); the model's choices are that list, so a kind
# the executors report is always one the database accepts and the retry policy knows.
FAILURE_KIND_CHOICES = [(kind.value, kind.label) for kind in FailureKind]


class WorkerGroup(models.Model):
    """One account of one tool. Its name is also the Celery queue its worker boxes consume."""

    name = models.SlugField(max_length=100, unique=True, help_text="<tool>-<account>; the Celery queue name.")
    tool = models.CharField(max_length=16, choices=Tool.choices)
    account = models.SlugField(max_length=80)
    max_concurrent = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1)])
    enabled = models.BooleanField(default=True, help_text="Paused groups receive no new work.")
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    env = models.JSONField(default=dict, blank=True, help_text="Plain env vars for the CLI (visible).")
    allow_dangerous_flags = models.BooleanField(default=False)
    extra_args = models.JSONField(default=list, blank=True, help_text="Extra CLI args from the allow-list.")
    rate_limited_until = models.DateTimeField(null=True, blank=True)
    daily_budget_usd = models.DecimalField(max_digits=10, decimal_places=2, null=True, blank=True,
                                           help_text="Spend per UTC day at which the group takes no work.")
    monthly_budget_usd = models.DecimalField(max_digits=12, decimal_places=2, null=True, blank=True,
                                             help_text="Spend per calendar month (UTC) at which it takes no work.")
    # Account-level failures (auth, CLI missing, API unreachable) in a row; at the threshold the group is
    # quarantined, and takes no work until an operator resumes it.
    account_failures = models.PositiveIntegerField(default=0, editable=False)
    quarantined_at = models.DateTimeField(null=True, blank=True, editable=False)
    quarantine_reason = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [("manage_credentials", "Can change a group's credentials, env, extra args and dangerous flags")]
        constraints = [
            models.UniqueConstraint(fields=["tool", "account"], name="workergroup_tool_account_unique"),
            models.CheckConstraint(condition=Q(max_concurrent__gte=1), name="workergroup_max_concurrent_gte_1"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def credentials(self) -> dict[str, str]:
        return crypto.decrypt_json(self.credentials_encrypted) if self.credentials_encrypted else {}

    @credentials.setter
    def credentials(self, value: dict[str, str]) -> None:
        self.credentials_encrypted = crypto.encrypt_json(value) if value else ""

    @property
    def credential_names(self) -> list[str]:
        return sorted(self.credentials)

    @cached_property
    def live_workers(self) -> int:
        """Live workers consuming this group's queue. List views set it for every group from one query
        (`selectors.groups_attach_live_workers`); on its own a group asks the database."""
        return sum(1 for queues in Worker.objects.live().values_list("queues", flat=True) if self.name in queues)

    @cached_property
    def spend(self) -> GroupSpend:
        """What its runs started in the current UTC day and month cost so far. The dispatcher and the list views set
        it for every group from one query (`TaskRun.objects.spend_by_group`); on its own a group asks the database."""
        return TaskRun.objects.spend_by_group(group_ids=[self.pk], now=timezone.now()).get(self.pk, GroupSpend())

    def budget(self, kind: str) -> Decimal | None:
        """The daily or monthly budget (`tasks_app.budgets.DAILY` / `MONTHLY`); None: no budget."""
        return getattr(self, BUDGET_FIELDS[kind])

    @property
    def budgets_reached(self) -> list[str]:
        """The windows (daily, monthly) whose budget its spend has reached; a budget of 0 is always reached."""
        return [kind for kind in BUDGET_FIELDS
                if self.budget(kind) is not None and self.spend.of(kind) >= self.budget(kind)]

    @property
    def over_budget(self) -> bool:
        return bool(self.budgets_reached)

    @property
    def health(self) -> str:
        """Why the group takes no work, if it takes none (SPEC §8): quarantined, paused, no_worker, over_budget,
        rate_limited; else ok."""
        if self.quarantined_at is not None:
            return "quarantined"
        if not self.enabled:
            return "paused"
        if not self.live_workers:
            return "no_worker"
        if self.over_budget:
            return "over_budget"
        if self.rate_limited:
            return "rate_limited"
        return "ok"

    @property
    def rate_limited(self) -> bool:
        """A rate limit in force now; `rate_limited_until` stays set, in the past, once it has expired."""
        return self.rate_limited_until is not None and self.rate_limited_until > timezone.now()


GROUP_HEALTH = ["ok", "paused", "rate_limited", "quarantined", "over_budget", "no_worker"]


class WorkerQuerySet(models.QuerySet["Worker"]):
    def live(self) -> WorkerQuerySet:
        """Registered, not stopped, and heartbeating within SCHEDULER_WORKER_TIMEOUT_SECONDS by the database's
        clock (each box writes its beats with the database's `Now()`, so box clocks do not matter)."""
        return self.filter(worker_live_q())


def worker_live_q() -> Q:
    cutoff = Now() - timedelta(seconds=settings.SCHEDULER_WORKER_TIMEOUT_SECONDS)
    return Q(stopped_at__isnull=True, last_heartbeat__gte=cutoff)


class Worker(models.Model):
    """A Celery worker process as it registers and heartbeats (`workers/registry.py`) while connected to the
    broker. Groups whose queue no live worker consumes get no leases."""

    hostname = models.CharField(max_length=255, help_text="The Celery node name, e.g. claude-main@box1.")
    pid = models.PositiveIntegerField()
    queues = models.JSONField(default=list, help_text="The queues it consumes.")
    concurrency = models.PositiveIntegerField(default=0)
    sandbox = models.CharField(max_length=8, blank=True, default="", help_text="How it runs CLIs: bwrap or off.")
    started_at = models.DateTimeField(default=timezone.now)
    last_heartbeat = models.DateTimeField()
    stopped_at = models.DateTimeField(null=True, blank=True, help_text="Set when it shut down cleanly.")

    objects = WorkerQuerySet.as_manager()

    class Meta:
        ordering = ["hostname", "-started_at"]
        constraints = [models.UniqueConstraint(fields=["hostname", "pid"], name="worker_hostname_pid_unique")]
        indexes = [models.Index(fields=["last_heartbeat"], name="worker_last_heartbeat_idx")]

    def __str__(self) -> str:
        return f"{self.hostname} (pid {self.pid})"


class Heartbeat(models.Model):
    """The last time a periodic duty ran, by name (`tick`: beat's safety-net tick, run by a control worker)."""

    TICK = "tick"

    name = models.CharField(max_length=64, primary_key=True)
    at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.name} at {self.at}"


class ConcurrencyLimit(models.Model):
    """A global cap across groups, for a scope like `tool:claude` or `model:opus`."""

    scope = models.CharField(max_length=120, unique=True)
    max_concurrent = models.PositiveIntegerField(validators=[MinValueValidator(1)])

    class Meta:
        ordering = ["scope"]

    def __str__(self) -> str:
        return f"{self.scope} ≤ {self.max_concurrent}"


class OverlapPolicy(models.TextChoices):
    SKIP = "skip", "skip while the previous instance is unfinished"
    ALLOW = "allow", "allow overlapping instances"
    QUEUE = "queue", "queue behind the previous instance"


class Schedule(models.Model):
    """A definition that spawns tasks: a task template, a timing, policies. Beat wakes it up through its
    PeriodicTask; `next_run_at` (our own arithmetic, `tasks_app.timing`) decides what is due."""

    name = models.CharField(max_length=200)
    tenant = models.CharField(max_length=100, default="default")
    created_by = models.CharField(max_length=150, blank=True, default="")
    cron = models.CharField(max_length=120, blank=True, default="", help_text="5-field cron, in `timezone`.")
    timezone = models.CharField(max_length=64, default="UTC")
    interval_seconds = models.PositiveIntegerField(null=True, blank=True)
    run_at = models.DateTimeField(null=True, blank=True, help_text="One-off: fire once at this time.")
    overlap_policy = models.CharField(max_length=8, choices=OverlapPolicy.choices, default=OverlapPolicy.SKIP)
    enabled = models.BooleanField(default=True)
    # The task template (the same fields and rules as a task).
    tool = models.CharField(max_length=16, choices=Tool.choices)
    model = models.CharField(max_length=120, blank=True, default="")
    prompt = models.TextField()
    input_files = models.JSONField(default=list, blank=True, help_text='[{"path", "content_base64"}]')
    output_files = models.JSONField(default=list, blank=True)
    priority = models.PositiveSmallIntegerField(default=5, validators=[MinValueValidator(1), MaxValueValidator(9)])
    max_attempts = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    timeout_seconds = models.PositiveIntegerField(null=True, blank=True)
    worker_group = models.ForeignKey(WorkerGroup, null=True, blank=True, on_delete=models.PROTECT,
                                     related_name="schedules")
    next_run_at = models.DateTimeField(null=True, blank=True)
    last_fired_at = models.DateTimeField(null=True, blank=True)
    periodic_task = models.OneToOneField("django_celery_beat.PeriodicTask", null=True, blank=True,
                                         on_delete=models.SET_NULL, related_name="+", editable=False)
    intake = models.JSONField(null=True, blank=True, editable=False,
                              help_text="Made by natural-language intake: the sentence, proposal and raw model answer.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="schedule_tenant_name_unique")]
        indexes = [models.Index(fields=["enabled", "next_run_at"], name="schedule_due_idx")]

    def __str__(self) -> str:
        return self.name

    @property
    def kind(self) -> str:
        return "cron" if self.cron else "interval" if self.interval_seconds else "once"

    @property
    def state(self) -> str:
        """`active` (fires at next_run_at), `paused` (its next_run_at is stale: resuming computes the next slot
        from then) or `finished` (nothing left to fire: a one-off that has fired or whose time has passed)."""
        if self.next_run_at is None:
            return "finished"
        return "active" if self.enabled else "paused"


class Repository(models.Model):
    """A git repository tasks run on (SPEC §8). The worker keeps a bare mirror of it per box and gives each run a
    checkout of one commit; the change comes back as `changes.patch` (and a pushed branch when `push_prefix` is
    set). Its credentials (an HTTPS token or an SSH deploy key) are used by the fetch and push only, outside the
    sandbox: never in argv, logs or the CLI's environment."""

    tenant = models.CharField(max_length=100, default="default")
    name = models.SlugField(max_length=100)
    url = models.CharField(max_length=1000, help_text="Any git URL: https://, ssh://, user@host:path, file:// or a "
                           "local path. Never with a password in it: that goes in the credentials.")
    credentials_encrypted = models.TextField(blank=True, default="", editable=False)
    default_ref = models.CharField(max_length=255, default="HEAD",
                                   help_text="Branch, tag or commit when a task names none (HEAD: the remote's own).")
    push_prefix = models.CharField(max_length=100, blank=True, default="",
                                   help_text="Push each task's change to the branch <prefix><task id>; empty: never.")
    created_by = models.CharField(max_length=150, blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["tenant", "name"]
        verbose_name_plural = "repositories"
        constraints = [models.UniqueConstraint(fields=["tenant", "name"], name="repository_tenant_name_unique")]

    def __str__(self) -> str:
        return self.name

    @property
    def credentials(self) -> dict[str, str]:
        return crypto.decrypt_json(self.credentials_encrypted) if self.credentials_encrypted else {}

    @credentials.setter
    def credentials(self, value: dict[str, str]) -> None:
        self.credentials_encrypted = crypto.encrypt_json(value) if value else ""

    @property
    def credential_names(self) -> list[str]:
        return sorted(self.credentials)


# How the output collector says a declared path was not there (executors.confinement).
_NOT_PRODUCED = re.compile(r"""declared output (['"])(?P<path>.*)\1 was not produced""")


class Task(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    tenant = models.CharField(max_length=100, default="default")
    created_by = models.CharField(max_length=150, blank=True, default="")
    tool = models.CharField(max_length=16, choices=Tool.choices)
    model = models.CharField(max_length=120, blank=True, default="")
    prompt = models.TextField()
    output_files = models.JSONField(default=list, blank=True)
    require_outputs = models.BooleanField(
        default=True, help_text="A declared output that was not produced fails the task (missing_output).")
    priority = models.PositiveSmallIntegerField(
        default=5, validators=[MinValueValidator(1), MaxValueValidator(9)], help_text="9 is most urgent."
    )
    status = models.CharField(max_length=16, choices=TaskStatus.choices, default=TaskStatus.QUEUED)
    scheduled_at = models.DateTimeField(null=True, blank=True, help_text="Not before this time.")
    worker_group = models.ForeignKey(
        WorkerGroup, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks"
    )
    worker_group_pinned = models.BooleanField(default=False, help_text="The client chose the group.")
    attempt = models.PositiveIntegerField(default=0, help_text="Runs so far, rate-limited ones included.")
    attempt_base = models.PositiveIntegerField(
        default=0, editable=False, help_text="`attempt` when the current budget began (an explicit retry)."
    )
    max_attempts = models.PositiveIntegerField(default=3, validators=[MinValueValidator(1)])
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    timeout_seconds = models.PositiveIntegerField()
    idle_timeout_seconds = models.PositiveIntegerField(
        null=True, blank=True, help_text="No event and no output for this long kills the run as stalled "
        "(empty: SCHEDULER_IDLE_TIMEOUT).")
    max_cost_usd = models.DecimalField(max_digits=10, decimal_places=4, null=True, blank=True,
                                       help_text="Spend per attempt at which the run is stopped (budget_exceeded).")
    max_turns = models.PositiveIntegerField(null=True, blank=True)
    idempotency_key = models.CharField(max_length=200, null=True, blank=True)
    request_fingerprint = models.CharField(max_length=64, blank=True, default="", editable=False)
    result = models.JSONField(null=True, blank=True)
    error_message = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    metadata = models.JSONField(default=dict, blank=True)
    schedule = models.ForeignKey(Schedule, null=True, blank=True, on_delete=models.SET_NULL, related_name="tasks",
                                 help_text="The schedule that spawned it (kept when the schedule is deleted).")
    repository = models.ForeignKey(Repository, null=True, blank=True, on_delete=models.PROTECT, related_name="tasks",
                                   help_text="Run in a checkout of this repository at `ref`.")
    ref = models.CharField(max_length=255, blank=True, default="",
                           help_text="Branch, tag or commit (empty: the repository's default_ref).")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="follow_ups",
                               help_text="The task this one follows up: it resumes that task's CLI session.")
    resume_session_id = models.CharField(max_length=200, blank=True, default="",
                                         help_text="The CLI session the first attempt resumes (a follow-up's).")
    depends_on = models.ManyToManyField("self", symmetrical=False, blank=True, related_name="dependents",
                                        help_text="Not dispatched until all of these succeeded.")
    # Parents in `depends_on` that have not succeeded yet: the dispatcher takes only tasks at 0.
    dependencies_pending = models.PositiveIntegerField(default=0, editable=False)
    lease_token = models.UUIDField(null=True, blank=True, editable=False)
    lease_expires_at = models.DateTimeField(null=True, blank=True, editable=False)
    cancel_requested_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Who asked for the cancel of a running task: the worker ends the task canceled in their name. Kept out of
    # `metadata`, which clients write.
    cancel_source = models.CharField(max_length=16, choices=EventSource.choices, blank=True, default="",
                                     editable=False)
    cancel_actor = models.CharField(max_length=200, blank=True, default="", editable=False)
    cancel_reason = models.TextField(blank=True, default="", editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["tenant", "idempotency_key"],
                condition=Q(idempotency_key__isnull=False),
                name="task_tenant_idempotency_key_unique",
            ),
            models.CheckConstraint(condition=Q(priority__gte=1, priority__lte=9), name="task_priority_1_9"),
        ]
        indexes = [
            # The dispatcher's walk: per tool and tenant, most urgent then oldest, queued rows only.
            models.Index(
                fields=["tool", "tenant", "-priority", "created_at"],
                condition=Q(status="queued"),
                name="task_dispatch_idx",
            ),
            # Slot counting and lease expiry look only at live rows.
            models.Index(
                fields=["worker_group", "lease_expires_at"],
                condition=Q(status__in=["leased", "running"]),
                name="task_active_idx",
            ),
            models.Index(fields=["tenant", "-created_at"], name="task_tenant_created_idx"),
            models.Index(fields=["tenant", "status", "-created_at"], name="task_tenant_status_idx"),
        ]

    def __str__(self) -> str:
        return f"{self.tool} task {self.id} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def attempts_in_budget(self) -> int:
        """Attempts charged to the current budget (`attempt` counts every run, earlier budgets included)."""
        return self.attempt - self.attempt_base

    @property
    def attempts_left(self) -> int:
        return self.max_attempts - self.attempts_in_budget

    @property
    def missing_outputs(self) -> list[str]:
        """Declared outputs the finished task's last run did not deliver (`run_finish` records them). Only once it
        has finished: a re-queued task keeps its previous result until its next run ends."""
        if not self.is_terminal or not isinstance(self.result, dict):
            return []
        if "missing_outputs" in self.result:
            return [str(path) for path in self.result["missing_outputs"] or []]
        # Finished before the key existed: the collector's sentences name the plain paths it did not find.
        return [match["path"] for error in self.result.get("output_errors") or []
                if (match := _NOT_PRODUCED.search(str(error)))]


class ScheduleFiring(models.Model):
    """One firing of a schedule: what was due, and what came of it. Unique per (schedule, fire time): a second
    beat, a restarted beat or a duplicated message finds the row and creates nothing."""

    class Outcome(models.TextChoices):
        CREATED = "created", "created a task"
        SKIPPED = "skipped", "skipped"

    schedule = models.ForeignKey(Schedule, on_delete=models.CASCADE, related_name="firings")
    fire_time = models.DateTimeField()
    outcome = models.CharField(max_length=8, choices=Outcome.choices)
    task = models.ForeignKey("Task", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    source = models.CharField(max_length=16, default="beat")
    reason = models.TextField(blank=True, default="")
    missed = models.PositiveIntegerField(default=0, help_text="Earlier slots not fired (downtime): never a storm.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-fire_time"]
        constraints = [models.UniqueConstraint(fields=["schedule", "fire_time"], name="firing_schedule_time_unique")]

    def __str__(self) -> str:
        return f"{self.schedule_id} @ {self.fire_time:%Y-%m-%d %H:%M:%S} {self.outcome}"


class TaskRunQuerySet(models.QuerySet["TaskRun"]):
    def spend_by_group(self, *, group_ids: list[int], now: datetime) -> dict[int, GroupSpend]:
        """Group id -> cost of its runs started in the UTC day and the calendar month of `now`, finished or in flight
        (a running run's `cost_usd` is its cost so far). One grouped query over `taskrun_group_started_idx`; groups
        with no run in the month are left out."""
        if not group_ids:
            return {}
        day, month = day_window(now), month_window(now)
        rows = (self.filter(worker_group_id__in=group_ids, started_at__gte=month.start, started_at__lt=month.end)
                .values_list("worker_group_id")
                .annotate(today=Sum("cost_usd", filter=Q(started_at__gte=day.start, started_at__lt=day.end)),
                          month=Sum("cost_usd"))
                .order_by())
        return {group_id: GroupSpend(today_usd=Decimal(str(today or 0)), month_usd=Decimal(str(month or 0)))
                for group_id, today, month in rows}


class TaskRun(models.Model):
    """One attempt: what actually ran, where, and how it ended."""

    class Status(models.TextChoices):
        RUNNING = "running", "running"
        SUCCEEDED = "succeeded", "succeeded"
        FAILED = "failed", "failed"
        CANCELED = "canceled", "canceled"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="runs")
    attempt = models.PositiveIntegerField()
    worker_group = models.ForeignKey(WorkerGroup, null=True, on_delete=models.PROTECT, related_name="runs")
    worker = models.CharField(max_length=200, blank=True, default="")
    celery_task_id = models.CharField(max_length=64, blank=True, default="")
    lease_token = models.UUIDField(editable=False)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.RUNNING)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True)
    stdout = models.TextField(blank=True, default="")
    stdout_truncated = models.BooleanField(default=False)
    stderr = models.TextField(blank=True, default="")
    stderr_truncated = models.BooleanField(default=False)
    failure_kind = models.CharField(max_length=20, choices=FAILURE_KIND_CHOICES, blank=True, default="")
    error_message = models.TextField(blank=True, default="", help_text="Why this attempt ended, if it failed.")
    notes = models.JSONField(default=list, blank=True,
                             help_text="What was changed to record this attempt (e.g. NUL bytes in its output).")
    retry_after_seconds = models.FloatField(null=True, blank=True)
    input_tokens = models.BigIntegerField(null=True, blank=True)
    output_tokens = models.BigIntegerField(null=True, blank=True)
    cost_usd = models.DecimalField(max_digits=12, decimal_places=6, null=True, blank=True,
                                   help_text="So far while running (from the stream), in all once finished.")
    cost_is_estimate = models.BooleanField(default=False, help_text="Computed from tokens and the price table.")
    turns = models.PositiveIntegerField(null=True, blank=True)
    session_id = models.CharField(max_length=200, blank=True, default="",
                                  help_text="claude's session, codex's thread, gemini's session.")
    latency_ms = models.PositiveIntegerField(null=True, blank=True)
    command = models.JSONField(default=list, blank=True, help_text="argv as run; never holds credentials.")
    sandbox = models.CharField(max_length=8, blank=True, default="",
                               help_text="How the CLI was contained: bwrap, or off (an explicit opt-out).")
    resumed_session_id = models.CharField(max_length=200, blank=True, default="",
                                          help_text="The CLI session this attempt resumed (a follow-up, or a retry "
                                          "after a usage limit).")
    base_sha = models.CharField(max_length=64, blank=True, default="", help_text="The commit the checkout was at.")
    diff_stat = models.JSONField(null=True, blank=True,
                                 help_text='Change against base_sha: {"files", "insertions", "deletions"}.')
    pushed_branch = models.CharField(max_length=255, blank=True, default="")
    pushed_sha = models.CharField(max_length=64, blank=True, default="")

    objects = TaskRunQuerySet.as_manager()

    class Meta:
        ordering = ["-attempt"]
        constraints = [models.UniqueConstraint(fields=["task", "attempt"], name="taskrun_task_attempt_unique")]
        indexes = [
            # Budgets: every dispatch pass sums each budgeted group's runs started this month (tasks_app.budgets).
            models.Index(fields=["worker_group", "started_at"], name="taskrun_group_started_idx"),
            # Usage per day (API, schedulerctl, dashboard) over a range of days, for every group and tenant.
            models.Index(fields=["started_at"], name="taskrun_started_idx"),
        ]

    def __str__(self) -> str:
        return f"run {self.attempt} of {self.task_id} ({self.status})"


class TaskLogChunk(models.Model):
    """Live output of a running attempt, flushed every second or so by the worker; bounded per run
    (SCHEDULER_LIVE_LOG_BYTES) and pruned after SCHEDULER_LIVE_LOG_RETENTION_HOURS. The finished TaskRun keeps
    its own (head + tail) copy."""

    run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="log_chunks")
    seq = models.PositiveIntegerField()
    stream = models.CharField(max_length=6, choices=[("stdout", "stdout"), ("stderr", "stderr")])
    data = models.TextField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="tasklogchunk_run_seq_unique")]

    def __str__(self) -> str:
        return f"{self.stream} #{self.seq} of run {self.run_id}"


class RunEvent(models.Model):
    """One step of a run's timeline (SPEC §8), normalised from the CLI's stream: message, tool_call,
    tool_result, usage, rate_limit, error, result. Bounded per run (SCHEDULER_RUN_EVENTS_MAX); pruned with the
    live logs."""

    run = models.ForeignKey(TaskRun, on_delete=models.CASCADE, related_name="events")
    seq = models.PositiveIntegerField()
    kind = models.CharField(max_length=16, choices=[(k.value, k.value) for k in EventKind])
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["run", "seq"]
        constraints = [models.UniqueConstraint(fields=["run", "seq"], name="runevent_run_seq_unique")]

    def __str__(self) -> str:
        return f"{self.kind} #{self.seq} of run {self.run_id}"


class TaskFile(models.Model):
    class Direction(models.TextChoices):
        INPUT = "input", "input"
        OUTPUT = "output", "output"

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="files")
    run = models.ForeignKey(TaskRun, null=True, blank=True, on_delete=models.CASCADE, related_name="files")
    direction = models.CharField(max_length=8, choices=Direction.choices)
    path = models.CharField(max_length=1024)
    size_bytes = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    content_type = models.CharField(max_length=200, default="application/octet-stream")
    content = models.BinaryField(null=True, blank=True)
    file = models.FileField(upload_to="task_files/%Y/%m/%d", null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["direction", "path"]
        indexes = [models.Index(fields=["task", "direction"], name="taskfile_task_direction_idx")]

    def __str__(self) -> str:
        return f"{self.direction} {self.path}"

    def read_bytes(self) -> bytes:
        if self.content is not None:
            return bytes(self.content)
        with self.file.open("rb") as handle:
            return handle.read()


class TaskEvent(models.Model):
    """Append-only audit trail: one row per status change, written in the same transaction."""

    task = models.ForeignKey(Task, on_delete=models.CASCADE, related_name="events")
    from_status = models.CharField(max_length=16, blank=True, default="")
    to_status = models.CharField(max_length=16, choices=TaskStatus.choices)
    source = models.CharField(max_length=16, choices=EventSource.choices)
    actor = models.CharField(max_length=200, blank=True, default="")
    reason = models.TextField(blank=True, default="")
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at", "id"]
        indexes = [models.Index(fields=["task", "created_at"], name="taskevent_task_created_idx")]

    def __str__(self) -> str:
        return f"{self.from_status or '∅'} → {self.to_status} ({self.source})"


class Membership(models.Model):
    """Which tenant a user acts for. API users see only their tenant's tasks (staff see all)."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="membership")
    tenant = models.CharField(max_length=100, default="default")

    def __str__(self) -> str:
        return f"{self.user} @ {self.tenant}"


class ApiToken(models.Model):
    """An API key. Only its SHA-256 is stored: the key is shown once, when it is created."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, default="")
    prefix = models.CharField(max_length=16, help_text="The key's first characters, to recognise it.")
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})"


class AuditEvent(models.Model):
    """One change to the configuration (SPEC §8): who, from where, what, which fields; never a secret value
    (credentials are named by key only). Written by the services in the change's own transaction."""

    actor = models.CharField(max_length=150, blank=True, default="")
    source = models.CharField(max_length=16, choices=EventSource.choices)
    action = models.CharField(max_length=32)
    object_type = models.CharField(max_length=32)
    object_id = models.CharField(max_length=200)
    changed = models.JSONField(default=list, blank=True, help_text="Names of the changed fields (and credential keys).")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["object_type", "object_id"], name="audit_object_idx")]

    def __str__(self) -> str:
        return f"{self.actor or '?'} {self.action} {self.object_type} {self.object_id} ({self.source})"
