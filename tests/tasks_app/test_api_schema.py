"""Property-based run against the live server's OpenAPI schema (schemathesis): for every operation, generated
requests (authenticated as staff) never get a 5xx, and every response matches the schema."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tasks_app.services.accounts import token_create, user_create
from tests.factories import WorkerGroupFactory
from tests.fakes.fake_openai import FakeOpenAI
from tests.tasks_app.test_intake import none_answer

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES_PER_OPERATION = 20


@pytest.fixture
def intake_answers_none(settings):  # no 503 from an unconfigured intake, and no paid endpoint either
    with FakeOpenAI(default_answer=none_answer()) as fake:
        settings.OPENAI_API_KEY, settings.OPENAI_BASE_URL = "sk-fuzz", fake.base_url
        yield


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("intake_answers_none")
def test_no_server_errors_and_responses_match_the_schema(live_server) -> None:
    user_create(username="fuzzer", tenant="fuzz", staff=True)
    WorkerGroupFactory(account="main")
    key = token_create(username="fuzzer")[1]
    schema = schemathesis.openapi.from_url(f"{live_server.url}/api/schema/?format=json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14  # every endpoint of SPEC §5 that exists so far
    statuses: list[int] = []

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES_PER_OPERATION, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            response = case.call_and_validate(headers={"Authorization": f"Token {key}"}, checks=CHECKS)
            statuses.append(response.status_code)

        run()

    # Not vacuous: many requests went out, and both successes and refusals came back.
    assert len(statuses) >= 10 * len(operations)
    assert {200, 201} & set(statuses) and {400, 404} <= set(statuses)
