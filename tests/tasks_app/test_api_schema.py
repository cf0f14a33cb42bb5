"""Property-based run against the live server's OpenAPI schema (schemathesis), on the configured database
(PostgreSQL under `make test`): every operation, as a staff user and as a tenant user, with requests that fit the
schema and requests that do not, on generated ids and on real rows. None gets a 5xx; a request that does not fit
the schema is refused; every response matches the schema."""

from __future__ import annotations

from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.parameters import ParameterLocation
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from tasks_app.models import TaskRun
from tasks_app.services.accounts import token_create, user_create
from tasks_app.services.repositories import repository_create
from tasks_app.services.schedules import ScheduleSpec, schedule_create
from tasks_app.services.tasks import InputFile, TaskSpec, stored_file, task_create
from tests.factories import WorkerGroupFactory
from tests.fakes.fake_openai import FakeOpenAI
from tests.tasks_app.test_intake import none_answer


def response_matches_schema(ctx: Any, response: Any, case: Any) -> bool | None:
    """The response's body fits its schema; a server-sent event stream (`logs?follow=1`) is documented as one string,
    not event by event, so only its content type is checked."""
    if response.headers.get("content-type", [""])[0].startswith("text/event-stream"):
        return None
    return response_schema_conformance(ctx, response, case)


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_matches_schema]


def body_rejected(ctx: Any, response: Any, case: Any) -> bool | None:
    """A body that does not fit the schema (a wrong JSON type, an unknown field, …) is refused (SPEC §8). Query
    filters keep django-filter's leniency: an empty `created_after` is no filter, not an error."""
    phase = case.meta.phase.data if case.meta is not None else None
    if getattr(phase, "parameter_location", None) != ParameterLocation.BODY:
        return None
    return negative_data_rejection(ctx, response, case)


# A path that does not fit the schema gets Django's own (HTML) 404 before any view: checked for no 5xx, refusal of
# a bad body and a documented status only.
NEGATIVE_CHECKS = [not_a_server_error, body_rejected, status_code_conformance]
# Bounded so that the whole run stays under two minutes on two cores: examples per operation, user and mode.
EXAMPLES = {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 12}
ON_REAL_ROWS = 10


@pytest.fixture
def intake_answers_none(settings):  # no 503 from an unconfigured intake, and no paid endpoint either
    with FakeOpenAI(default_answer=none_answer()) as fake:
        settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "sk-fuzz", fake.base_url
        yield


def _rows() -> dict[str, str]:
    """One of each object in the fuzzed tenant, so that generated requests also reach real rows."""
    group = WorkerGroupFactory(account="main")
    repository = repository_create(tenant="fuzz", name="app", url="https://git.example/app.git",
                                   credentials={"token": "fuzz-token-value"})
    # On a repository: deleting that one is a 409, and its run shows what it changed.
    task, _ = task_create(spec=TaskSpec(tool="claude", prompt="fuzz", input_files=[InputFile("in.txt", b"in")],
                                        repository=repository.name, ref="main"),
                          tenant="fuzz", source="api")
    run = TaskRun.objects.create(task=task, attempt=1, lease_token=task.pk, status="succeeded", base_sha="a" * 40,
                                 diff_stat={"files": 1, "insertions": 2, "deletions": 0})
    output = stored_file(task=task, run=run, direction="output", path="out/report.md", data=b"# report")
    output.save()
    schedule = schedule_create(spec=ScheduleSpec(name="fuzz", tool="claude", prompt="p", cron="0 9 * * *"),
                               tenant="fuzz")
    return {"task": str(task.pk), "file": str(output.pk), "schedule": str(schedule.pk), "group": group.name,
            "repository": repository.name}


def _real_path_parameters(path: str, rows: dict[str, str]) -> dict[str, str] | None:
    if path.startswith("/api/v1/tasks/{id}"):
        return {"id": rows["task"], **({"file_id": rows["file"]} if "{file_id}" in path else {})}
    if path.startswith("/api/v1/schedules/{id}"):
        return {"id": rows["schedule"]}
    if path.startswith("/api/v1/worker-groups/{name}"):
        return {"name": rows["group"]}
    if path.startswith("/api/v1/repositories/{name}"):
        return {"name": rows["repository"]}
    return None


def _run(operation: Any, key: str, mode: GenerationMode, examples: int, statuses: list[int],
         path_parameters: dict[str, str] | None = None) -> None:
    checks = NEGATIVE_CHECKS if mode == GenerationMode.NEGATIVE else CHECKS

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters))
    @settings(max_examples=examples, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case: Any) -> None:
        response = case.call_and_validate(headers={"Authorization": f"Token {key}"}, checks=checks)
        statuses.append(response.status_code)

    try:
        run()
    except Unsatisfiable:
        if mode == GenerationMode.POSITIVE:
            raise  # only an operation that takes nothing (GET /schedules/) has no wrong request to make


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("intake_answers_none")
def test_no_server_errors_and_responses_match_the_schema(live_server, settings) -> None:
    settings.SCHEDULER_API_THROTTLE_RATE = ""  # thousands of requests a minute, on purpose
    settings.SCHEDULER_SSE_MAX_SECONDS = 1  # a followed log of an unfinished task ends instead of hanging the run
    user_create(username="fuzz-staff", tenant="fuzz", staff=True)
    user_create(username="fuzz-user", tenant="fuzz")
    keys = [token_create(username="fuzz-staff")[1], token_create(username="fuzz-user")[1]]
    rows = _rows()
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 27  # every endpoint of SPEC §5 that exists so far
    statuses: list[int] = []

    for operation in operations:
        real = _real_path_parameters(operation.path, rows)
        for key in keys:
            for mode, examples in EXAMPLES.items():
                _run(operation, key, mode, examples, statuses)
            if real is not None:
                _run(operation, key, GenerationMode.POSITIVE, ON_REAL_ROWS, statuses, path_parameters=real)

    # Not vacuous: many requests went out, and successes, refusals and tenant-scoped 404s/403s all came back.
    assert len(statuses) >= 10 * len(operations)
    assert {200, 201, 204, 400, 403, 404} <= set(statuses)
