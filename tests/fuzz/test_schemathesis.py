"""schemathesis against the live server: no input crashes it, every answer is documented.

An outside tool that knows only the live server's `/schema/openapi.json`
generates requests for every operation, public and support, sends them to a
real `recovery serve`, and checks each answer: never a 5xx, a status code the
schema lists, the content type and headers it declares, a body that validates
against the declared schema, and, where the schema requires a bearer (support
key or session), that the server refuses the same request without it.

Two runs: valid requests (positive mode) and invalid ones (negative mode:
wrong types, missing fields, values outside the declared bounds). Generation
is bounded (MAX_EXAMPLES per operation and mode) and derandomised, so a run
takes minutes on CI and repeats exactly. Half of the valid cases carry real
values seeded by the fixtures (attempt ids, link tokens, credentials), so the
success answers are checked as well as the refusals.

schemathesis's own pytest loader for a schema behind a fixture
(`schemathesis.pytest.from_fixture`) fails under pytest 9 (it sets a node
attribute pytest no longer has), so each operation runs as a Hypothesis test
built from `APIOperation.as_strategy`, the library's documented building
block, and every failure of every operation is collected before reporting.
"""

from __future__ import annotations

from typing import Any

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import Failure, FailureGroup
from schemathesis.core.result import Ok
from schemathesis.schemas import APIOperation, BaseSchema
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.fuzz.conftest import MAX_EXAMPLES, Seeded, Tally

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    ignored_auth,
]
# Invalid input must be refused with a 4xx, not served (house rule: a clear error, nothing changed).
NEGATIVE_CHECKS = [*CHECKS, negative_data_rejection]
TOKEN_PURPOSE = {
    "/api/recovery/verify": "verify",
    "/api/recovery/password": "password",
    "/api/recovery/cancel": "cancel",
}
DIAGRAM_FORMATS = ("svg", "dot", "mermaid", "png")
REQUEST_TIMEOUT_SECONDS = 30
# Operations the run must reach: a schema that lost them would pass vacuously.
EXPECTED_OPERATIONS = {
    "POST /api/recovery",
    "POST /api/recovery/verify",
    "POST /api/recovery/password",
    "POST /api/recovery/cancel",
    "POST /api/login",
    "POST /api/logout",
    "GET /api/session",
    "GET /api/support/attempts",
    "GET /api/support/attempts/{attempt_id}",
    "POST /api/support/attempts/{attempt_id}/cancel",
    "POST /api/support/attempts/{attempt_id}/resend",
    "GET /api/support/stats",
}


def _seed_values(case: Case, seeded: Seeded, index: int) -> bool:
    """Put real values into every other valid case; True when something was replaced."""
    if index % 2 == 0:
        return False
    replaced = False
    if "attempt_id" in (case.path_parameters or {}):
        case.path_parameters["attempt_id"] = seeded.attempt_ids[index % len(seeded.attempt_ids)]
        replaced = True
    if "name" in (case.path_parameters or {}) and case.path.startswith("/api/flows/"):
        case.path_parameters["name"] = "password_recovery"
        replaced = True
    if case.path.endswith("/diagram"):
        # Each format in turn: each answers in its own media type.
        case.query = {**(case.query or {}), "format": DIAGRAM_FORMATS[(index // 2) % 4]}
        replaced = True
    body: Any = case.body
    purpose = TOKEN_PURPOSE.get(case.path)
    if purpose and isinstance(body, dict) and isinstance(body.get("token"), str):
        body["token"] = seeded.tokens[purpose]
        replaced = True
    # Every fourth valid sign-in uses the real credentials (each costs an Argon2 verify).
    # A well-formed address (the schema says "a string"; the domain wants an email).
    if case.path == "/api/recovery" and isinstance(body, dict) and "email" in body:
        body["email"] = f"fuzz-request-{index}@example.test"
        replaced = True
    quarter = index % 4 == 1
    if (
        case.path == "/api/login"
        and quarter
        and isinstance(body, dict)
        and isinstance(body.get("email"), str)
        and isinstance(body.get("password"), str)
    ):
        body["email"], body["password"] = seeded.email, seeded.password
        replaced = True
    if (
        case.path == "/api/support/attempts"
        and quarter
        and isinstance((case.query or {}).get("email"), str)
    ):
        case.query["email"] = seeded.email
        replaced = True
    return replaced


def _credentials(case: Case, seeded: Seeded, index: int) -> dict[str, str]:
    """The bearer a legitimate caller of this operation would send."""
    if case.path.startswith("/api/support/"):
        # Writes alternate between the roles: a read key must get a 403 there.
        writes = case.method.upper() == "POST"
        key = seeded.read_key if writes and index % 3 == 2 else seeded.write_key
        return {"Authorization": f"Bearer {key}"}
    if case.path == "/api/session":
        return {"Authorization": f"Bearer {seeded.session_token}"}
    if case.path == "/api/logout":
        return {"Authorization": f"Bearer {seeded.logout_token}"}
    return {}


def _failure_text(exc: BaseException) -> list[str]:
    failures = exc.exceptions if isinstance(exc, FailureGroup) else (exc,)
    return [
        f"{type(f).__name__}: {getattr(f, 'title', '')} {str(f).strip()[:600]}" for f in failures
    ]


def _fuzz_operation(
    operation: APIOperation, mode: GenerationMode, seeded: Seeded, tally: Tally
) -> list[str]:
    """Send MAX_EXAMPLES generated cases; every distinct failure, with a curl to replay it."""
    label = f"{operation.method.upper()} {operation.path}"
    found: dict[str, str] = {}

    @hypothesis.settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        derandomize=True,
        database=None,
        # Every example is sent and checked; nothing to shrink (failures are collected).
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
    def send(case: Case) -> None:
        index = tally.cases(label, mode)
        if mode.is_positive and _seed_values(case, seeded, index):
            tally.substituted += 1
        headers = _credentials(case, seeded, index)
        response = case.call(headers=headers, timeout=REQUEST_TIMEOUT_SECONDS)
        tally.record(label, mode, response.status_code)
        try:
            case.validate_response(
                response,
                checks=CHECKS if mode.is_positive else NEGATIVE_CHECKS,
                headers=headers,
            )
        except (Failure, FailureGroup) as exc:
            for text in _failure_text(exc):
                key = text.splitlines()[0][:200]
                if key not in found:
                    replay = case.as_curl_command(headers=headers)
                    found[key] = (
                        f"{label} [{mode.value}] -> {response.status_code}\n  {text}\n  {replay}"
                    )

    try:
        send()
    except Unsatisfiable:
        # No parameters and no body: there is no invalid request to make (negative mode).
        if tally.cases(label, mode) or mode.is_positive:
            raise
    return list(found.values())


def _operations(schema: BaseSchema) -> list[APIOperation]:
    operations = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), f"the live OpenAPI document is invalid: {result.err()}"
        operations.append(result.ok())
    return operations


@pytest.mark.slow
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_generated_request_crashes_the_server_and_every_answer_matches_the_schema(
    api_schema: BaseSchema, seeded: Seeded, tally: Tally, mode: GenerationMode
) -> None:
    """Every generated request, valid or not, gets a documented, schema-conforming answer."""
    operations = _operations(api_schema)
    labels = {f"{op.method.upper()} {op.path}" for op in operations}
    assert labels >= EXPECTED_OPERATIONS, f"missing from the schema: {EXPECTED_OPERATIONS - labels}"
    failures: list[str] = []
    for operation in operations:
        failures += _fuzz_operation(operation, mode, seeded, tally)
    sent = sum(n for (label, m), n in tally.by_operation.items() if m == mode.value)
    assert sent >= len(operations), "schemathesis sent fewer cases than there are operations"
    assert not failures, f"{len(failures)} distinct failure(s):\n\n" + "\n\n".join(failures)
