"""The OpenAPI document describes support-handled recovery: each operation, with examples."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.accounts.passwords import Argon2Hasher
from api.settings import Settings
from api.web.app import create_app

ERROR_REF = "#/components/schemas/ErrorBody"
OPERATIONS = {
    "/api/assisted-recovery": ("202", {"email", "contact_email", "name", "statement"}),
    "/api/assisted-recovery/confirm": ("200", {"contact_email", "code"}),
    "/api/assisted-recovery/answer": ("200", {"token", "answer"}),
    "/api/assisted-recovery/cancel": ("200", {"token"}),
}


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db: Path = tmp_path_factory.mktemp("openapi-assisted") / "openapi.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}"), hasher=Argon2Hasher.for_tests())
    with TestClient(app) as client:
        yield client.get("/schema/openapi.json").json()


def _schema(document: dict[str, Any], ref: str) -> dict[str, Any]:
    return dict(document["components"]["schemas"][ref.rsplit("/", 1)[-1]])


@pytest.mark.parametrize("path", sorted(OPERATIONS))
def test_each_operation_is_documented_with_its_body_answers_and_examples(
    document: dict[str, Any], path: str
) -> None:
    status, required = OPERATIONS[path]
    operation = document["paths"][path]["post"]
    assert operation["summary"] and operation["tags"] == ["public"]
    body = operation["requestBody"]["content"]["application/json"]["schema"]
    [example] = body["examples"]
    schema = _schema(document, body["allOf"][0]["$ref"])
    assert set(schema["required"]) == required
    assert set(example) <= set(schema["properties"]) and required <= set(example)
    ok = operation["responses"][status]["content"]["application/json"]
    assert ok["examples"], path
    for code in ("400", "413", "415", "429", "503"):
        answer = operation["responses"][code]["content"]["application/json"]["schema"]
        assert answer == {"$ref": ERROR_REF}, (path, code)


def test_the_request_documents_its_optional_details(document: dict[str, Any]) -> None:
    schema = _schema(document, "AssistedRequest")
    assert {"birth_date", "account_created"} <= set(schema["properties"]) - set(schema["required"])


def test_the_review_events_and_the_session_notices_are_documented(document: dict[str, Any]) -> None:
    events = document["paths"]["/api/support/attempts/{attempt_id}/events/{event}"]["post"]
    assert "approve, deny, request_info, cancel" in events["description"]
    examples = events["requestBody"]["content"]["application/json"]["schema"]["examples"]
    assert {"reason"} == set(examples[0]) and len(examples) == 4
    session = document["paths"]["/api/session"]["get"]
    assert "notices" in session["description"]
    answer = _schema(document, "SessionAnswer")
    assert "notices" in answer["properties"]
    notice = _schema(document, "SessionNotice")
    assert {"flow", "reference", "state", "requested_at", "effective_at", "message"} == set(
        notice["properties"]
    )
    detail = _schema(document, "SupportAttempt")
    assert "match | no_match | not_on_file" in detail["properties"]["flow_detail"]["description"]
