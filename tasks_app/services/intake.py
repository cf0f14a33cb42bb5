"""Natural-language intake: one sentence → a validated task or schedule proposal → (on confirm) the real thing.

The model is only a parser. Its answer is forced into a JSON schema (the endpoint's structured outputs), checked
here again for shape (a compatible endpoint may ignore the schema), and then by the same services as every other
producer (`task_spec_clean`, `schedule_clean`), so no answer can pass a rule the API would refuse. Relative times
("tomorrow 9am") are resolved by the model against the current local time we state in the system message; it
answers with absolute ISO 8601 times.

The HTTP call happens outside any transaction (it can take `timeout * (retries + 1)` plus backoff); the openai
client retries 429, 5xx and timeouts itself and honours Retry-After.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import openai
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from openai.types.chat import ChatCompletion

from tasks_app import timing
from tasks_app.models import EventSource, Schedule, Task, Tool
from tasks_app.services.schedules import ScheduleSpec, schedule_clean, schedule_create
from tasks_app.services.tasks import TaskSpec, task_create, task_spec_clean

KINDS = ("task", "schedule", "none")
MAX_TEXT_CHARS = 4000
MAX_KEYWORDS = 20
MAX_KEYWORD_CHARS = 60
MAX_RAW_RESPONSE_CHARS = 64 * 1024
NOT_CONFIGURED = "intake is not configured: set OPENAI_API_KEY"


class IntakeError(Exception):
    """Intake could not produce a proposal; nothing was created."""


class IntakeNotConfigured(IntakeError):
    """No OPENAI_API_KEY: the feature is off (HTTP 503)."""


class IntakeUpstreamError(IntakeError):
    """The model endpoint failed, timed out, or answered something that is not a proposal (HTTP 502)."""


@dataclass
class Proposal:
    kind: str
    reason: str = ""
    name: str = ""
    tool: str | None = None
    model: str = ""
    prompt: str = ""
    output_files: list[str] = field(default_factory=list)
    priority: int = 5
    run_at: datetime | None = None
    cron: str = ""
    timezone: str = ""
    interval_seconds: int | None = None
    keywords: list[str] = field(default_factory=list)
    worker_group: str | None = None

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_at"] = self.run_at.isoformat() if self.run_at else None
        return data


@dataclass
class IntakeResult:
    proposal: Proposal
    audit: dict[str, Any]  # stored on what gets created: the sentence, the time it was read, the raw answer
    created: Task | Schedule | None = None


def _nullable(kind: str, description: str) -> dict[str, Any]:
    return {"anyOf": [{"type": kind}, {"type": "null"}], "description": description}


# Strict structured outputs: every property required, no others; optional values are nullable instead.
PROPOSAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "kind": {"type": "string", "enum": list(KINDS),
                 "description": "task: one job, now or once at run_at. schedule: a repeating job (cron or "
                                "interval_seconds). none: no job to run."},
        "reason": {"type": "string",
                   "description": "kind none: why no job is proposed. Otherwise one sentence on how the request "
                                  "was understood."},
        "name": {"type": "string", "description": "short lowercase kebab-case name, e.g. docs-issue-summary"},
        "tool": {"anyOf": [{"type": "string", "enum": list(Tool.values)}, {"type": "null"}],
                 "description": "the coding CLI to run; null only for kind none"},
        "model": {"type": "string", "description": "the CLI's model if the user names one, else empty"},
        "prompt": {"type": "string",
                   "description": "a self-contained brief for the CLI with the sections Background, Goal, Steps, "
                                  "Acceptance criteria"},
        "output_files": {"type": "array", "items": {"type": "string"},
                         "description": "relative paths (or globs) of the files the job must write"},
        "priority": {"type": "integer", "description": "1 to 9, 9 most urgent; 5 unless the user says otherwise"},
        "run_at": _nullable("string", "absolute ISO 8601 time with UTC offset: when a task runs (null: now), "
                                      "or a one-off schedule"),
        "cron": _nullable("string", "5-field cron (minute hour day-of-month month weekday) in `timezone`"),
        "timezone": _nullable("string", "IANA timezone of the cron expression, e.g. Asia/Shanghai"),
        "interval_seconds": _nullable("integer", "for 'every N minutes/hours' schedules"),
        "keywords": {"type": "array", "items": {"type": "string"},
                     "description": "up to 5 short lowercase words to find the job later"},
        "worker_group": _nullable("string", "a worker group (<tool>-<account>) only if the user names one"),
    },
}
PROPOSAL_SCHEMA["required"] = list(PROPOSAL_SCHEMA["properties"])

SYSTEM_PROMPT = """\
You turn one request into a job proposal for CLI Scheduler, which runs the coding CLIs claude, codex and \
gemini headless in a fresh work directory. Answer only with the JSON object the schema describes.

The current local time is {now} ({weekday}) in the user's timezone {zone}.

- kind "task": one job, run now (run_at null) or once at run_at. kind "schedule": a repeating job, with either \
cron + timezone or interval_seconds. kind "none": greetings, questions you can answer without running a job, and \
requests no coding CLI can do; explain why in reason and leave the other fields empty, null or [].
- Resolve relative times ("tomorrow 9am", "in 2 hours", "next Monday") against the current local time above and \
give run_at as an absolute ISO 8601 time with its UTC offset, e.g. 2026-03-02T09:00:00+08:00.
- A cron expression is read in its timezone: use the timezone the user names ("Shanghai time" is Asia/Shanghai), \
else {zone}. "every weekday at 5pm" is "0 17 * * 1-5".
- tool: the CLI the user names; claude if they name none.
- prompt: a brief the CLI can act on alone, with the sections Background, Goal, Steps and Acceptance criteria; \
name the files it must write.
- output_files: relative paths inside the work directory, never absolute and never with "..".
- Never add command-line flags or options anywhere; the scheduler decides how the CLI runs.
"""


def intake_configured() -> bool:
    return bool(settings.OPENAI_API_KEY)


def intake_propose(*, text: str, zone_name: str, proposal: Proposal | None = None,
                   now: datetime | None = None) -> IntakeResult:
    """Ask the model for a proposal (or take the one a client sends back) and validate it. Writes nothing.

    Raises `IntakeNotConfigured`, `IntakeUpstreamError`, or `ValidationError` naming the field of a rule the
    proposal breaks.
    """
    if not intake_configured():
        raise IntakeNotConfigured(NOT_CONFIGURED)
    errors: dict[str, list[str]] = {}
    if not isinstance(text, str) or len(text) > MAX_TEXT_CHARS or "\x00" in text:
        errors["text"] = [f"must be a string of at most {MAX_TEXT_CHARS} characters without NUL"]
    elif proposal is None and not text.strip():
        errors["text"] = ["must say what to run (or send back a proposal to confirm)"]
    try:
        zone = timing.zone(zone_name)
    except timing.TimingError as exc:
        errors["timezone"] = [str(exc)]
    if errors:
        raise ValidationError(errors)
    now_local = (now or timezone.now()).astimezone(zone).replace(microsecond=0)
    audit: dict[str, Any] = {"text": text, "timezone": zone_name, "now": now_local.isoformat()}
    if proposal is None:
        proposal, answer = _ask_model(text=text, zone_name=zone_name, now_local=now_local)
        audit.update(answer)
    else:
        audit["raw_response"] = None  # confirmed from a proposal the client sent back, not a fresh answer
    if proposal.run_at is not None and timezone.is_aware(proposal.run_at):
        proposal.run_at = proposal.run_at.astimezone(zone)  # shown to the user in their own wall-clock time
    if proposal.kind == "schedule" and proposal.cron and not proposal.timezone:
        proposal.timezone = zone_name
    if proposal.kind == "none" and not proposal.reason.strip():
        proposal.reason = "the request does not describe a job to run"
    audit["proposal"] = proposal.as_dict()
    proposal_clean(proposal)
    return IntakeResult(proposal=proposal, audit=_without_nul(audit))


def intake_confirm(*, result: IntakeResult, tenant: str, created_by: str) -> Task | Schedule | None:
    """Create what the proposal describes through the ordinary services, with the audit attached.

    Tasks keep it in their first TaskEvent's data; schedules in `Schedule.intake` (their tasks are spawned
    later, by beat, and a schedule has no event trail of its own). Kind none creates nothing.
    """
    spec = proposal_clean(result.proposal)
    if isinstance(spec, TaskSpec):
        result.created, _ = task_create(spec=spec, tenant=tenant, created_by=created_by, source=EventSource.INTAKE,
                                        reason="created by intake", event_data=result.audit)
    elif isinstance(spec, ScheduleSpec):
        with transaction.atomic():  # the schedule and its audit, or neither
            schedule = schedule_create(spec=spec, tenant=tenant, created_by=created_by)
            schedule.intake = result.audit
            schedule.save(update_fields=["intake", "updated_at"])
        result.created = schedule
    return result.created


def proposal_clean(proposal: Proposal) -> TaskSpec | ScheduleSpec | None:
    """The spec the proposal stands for, after every rule of the target service. Writes nothing."""
    errors: dict[str, list[str]] = {}
    if proposal.kind not in KINDS:
        raise ValidationError({"kind": [f"must be one of {', '.join(KINDS)}"]})
    if proposal.kind == "none":
        return None
    if len(proposal.keywords) > MAX_KEYWORDS or any(
        not isinstance(k, str) or not k.strip() or len(k) > MAX_KEYWORD_CHARS or not k.isprintable()
        for k in proposal.keywords
    ):
        errors["keywords"] = [f"at most {MAX_KEYWORDS} printable words of 1 to {MAX_KEYWORD_CHARS} characters"]
    spec: TaskSpec | ScheduleSpec
    if proposal.kind == "task":
        if proposal.cron or proposal.interval_seconds is not None:
            errors["timing"] = ["a task runs once, now or at run_at; a repeating job is kind 'schedule'"]
        spec = TaskSpec(
            tool=proposal.tool or "", prompt=proposal.prompt, model=proposal.model,
            output_files=list(proposal.output_files), priority=proposal.priority, scheduled_at=proposal.run_at,
            worker_group=proposal.worker_group,
            metadata={"intake": {"name": proposal.name, "keywords": list(proposal.keywords)}},
        )
        clean: Any = task_spec_clean
    else:
        spec = ScheduleSpec(
            name=proposal.name, tool=proposal.tool or "", prompt=proposal.prompt, cron=proposal.cron,
            timezone=proposal.timezone or "UTC", interval_seconds=proposal.interval_seconds, run_at=proposal.run_at,
            model=proposal.model, output_files=list(proposal.output_files), priority=proposal.priority,
            worker_group=proposal.worker_group,
        )
        clean = schedule_clean
    try:
        clean(spec)
    except ValidationError as exc:
        for name, messages in exc.message_dict.items():
            errors.setdefault(name, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    return spec


def _ask_model(*, text: str, zone_name: str, now_local: datetime) -> tuple[Proposal, dict[str, Any]]:
    timeout = settings.SCHEDULER_INTAKE_TIMEOUT_SECONDS
    retries = settings.SCHEDULER_INTAKE_MAX_RETRIES
    client = openai.OpenAI(api_key=settings.OPENAI_API_KEY, base_url=settings.OPENAI_BASE_URL or None,
                           timeout=timeout, max_retries=retries)
    system = SYSTEM_PROMPT.format(now=now_local.isoformat(), weekday=now_local.strftime("%A"), zone=zone_name)
    try:
        response = client.chat.completions.with_raw_response.create(
            model=settings.SCHEDULER_INTAKE_MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": text}],
            response_format={"type": "json_schema", "json_schema": {
                "name": "job_proposal", "strict": True, "schema": PROPOSAL_SCHEMA}},
        )
        raw = response.text
        completion = response.parse()
    except openai.APITimeoutError:
        raise IntakeUpstreamError(
            f"the intake endpoint did not answer within {timeout:g} s (attempts: {retries + 1})") from None
    except openai.APIConnectionError as exc:
        raise IntakeUpstreamError(f"could not reach the intake endpoint: {exc}") from None
    except openai.RateLimitError:
        raise IntakeUpstreamError(
            f"the intake endpoint is rate limiting (HTTP 429) after {retries} retries; try again later") from None
    except openai.APIStatusError as exc:
        detail = exc.body.get("message") if isinstance(exc.body, dict) else None
        raise IntakeUpstreamError(
            f"the intake endpoint answered HTTP {exc.status_code}: {_clip(str(detail or exc.message))}") from None
    except (openai.OpenAIError, ValueError) as exc:
        raise IntakeUpstreamError(
            f"the intake endpoint's answer is not a chat completion: {_clip(str(exc))}") from None
    finally:
        client.close()
    answer = {"intake_model": settings.SCHEDULER_INTAKE_MODEL, "raw_response": raw[:MAX_RAW_RESPONSE_CHARS]}
    choices = completion.choices if isinstance(completion, ChatCompletion) else None
    if not choices:
        raise IntakeUpstreamError(f"the intake endpoint's answer is not a chat completion: {_clip(raw, 80)!r}")
    choice = choices[0]
    if choice.message.refusal:
        return Proposal(kind="none", reason=f"the model declined: {_clip(choice.message.refusal)}"), answer
    if choice.finish_reason == "length":
        raise IntakeUpstreamError("the model's answer was cut off (finish_reason 'length')")
    content = choice.message.content or ""
    try:
        data = json.loads(content)
    except ValueError as exc:
        raise IntakeUpstreamError(f"the model's answer is not JSON ({exc}): {_clip(content, 80)!r}") from None
    return proposal_from_answer(data, zone_name=zone_name), answer


def proposal_from_answer(data: object, *, zone_name: str) -> Proposal:
    """The model's JSON as a Proposal; the shape only (types, presence). The rules come after, in the services."""
    if not isinstance(data, dict):
        raise IntakeUpstreamError(f"the model's answer is not a JSON object but {type(data).__name__}")
    missing = [name for name in PROPOSAL_SCHEMA["properties"] if name not in data]
    if missing:
        raise IntakeUpstreamError(f"the model's answer lacks {', '.join(missing)}")

    def wrong(name: str, expected: str) -> IntakeUpstreamError:
        return IntakeUpstreamError(f"the model's answer has {name} {_clip(repr(data[name]), 60)}; expected {expected}")

    def text(name: str, *, nullable: bool = False) -> Any:
        value = data[name]
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            raise wrong(name, "a string" + (" or null" if nullable else ""))
        return value

    def integer(name: str, *, nullable: bool = False) -> Any:
        value = data[name]
        if value is None and nullable:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            raise wrong(name, "an integer" + (" or null" if nullable else ""))
        return value

    def strings(name: str) -> list[str]:
        value = data[name]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise wrong(name, "a list of strings")
        return value

    kind = text("kind")
    if kind not in KINDS:
        raise wrong("kind", " or ".join(KINDS))
    run_at_text = text("run_at", nullable=True)
    run_at = None
    if run_at_text:
        try:
            run_at = datetime.fromisoformat(run_at_text.replace("Z", "+00:00"))
        except ValueError:
            raise wrong("run_at", "an ISO 8601 time") from None
        if timezone.is_naive(run_at):  # told to give an offset; a bare wall-clock time is the user's
            run_at = run_at.replace(tzinfo=timing.zone(zone_name))
    return Proposal(
        kind=kind, reason=text("reason"), name=text("name"), tool=text("tool", nullable=True), model=text("model"),
        prompt=text("prompt"), output_files=strings("output_files"), priority=integer("priority"), run_at=run_at,
        cron=text("cron", nullable=True) or "", timezone=text("timezone", nullable=True) or "",
        interval_seconds=integer("interval_seconds", nullable=True), keywords=strings("keywords"),
        worker_group=text("worker_group", nullable=True),
    )


def _clip(value: str, limit: int = 300) -> str:
    value = " ".join(str(value).split())
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _without_nul(value: Any) -> Any:
    """PostgreSQL's jsonb cannot hold NUL; the audit keeps everything else verbatim."""
    if isinstance(value, str):
        return value.replace("\x00", "\\u0000")
    if isinstance(value, dict):
        return {key: _without_nul(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_without_nul(item) for item in value]
    return value
