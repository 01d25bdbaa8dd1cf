"""The OpenAPI document at /schema/openapi.json: every endpoint of SPEC §5, the bodies,
the error answers in the one error shape, and the two bearer schemes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from api.accounts.passwords import Argon2Hasher
from api.settings import Settings
from api.web.app import create_app

SPEC_ENDPOINTS = {
    ("post", "/api/recovery"),
    ("post", "/api/recovery/verify"),
    ("post", "/api/recovery/password"),
    ("post", "/api/recovery/cancel"),
    ("post", "/api/login"),
    ("post", "/api/logout"),
    ("get", "/api/session"),
    ("get", "/api/support/attempts"),
    ("get", "/api/support/attempts/{attempt_id}"),
    ("get", "/api/support/attempts/{attempt_id}/diagram"),
    ("post", "/api/support/attempts/{attempt_id}/cancel"),
    ("post", "/api/support/attempts/{attempt_id}/resend"),
    ("get", "/api/support/stats"),
    ("get", "/api/support/audit"),
    ("get", "/api/flows"),
    ("get", "/api/flows/{name}"),
    ("get", "/api/flows/{name}/diagram"),
    ("get", "/health"),
    ("get", "/ready"),
    ("get", "/metrics"),
}
ERROR_REF = "#/components/schemas/ErrorBody"


@pytest.fixture(scope="module")
def document(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    db: Path = tmp_path_factory.mktemp("openapi") / "openapi.db"
    app = create_app(Settings(database_url=f"sqlite:///{db}"), hasher=Argon2Hasher.for_tests())
    with TestClient(app) as client:
        answer = client.get("/schema/openapi.json")
        assert answer.status_code == 200
        yield answer.json()


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method, path): operation
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
    }


def test_every_endpoint_of_the_contract_is_documented(document: dict[str, Any]) -> None:
    assert set(_operations(document)) >= SPEC_ENDPOINTS


def test_both_bearer_schemes_are_declared_and_used_where_they_apply(
    document: dict[str, Any],
) -> None:
    schemes = document["components"]["securitySchemes"]
    assert schemes["support_key"] == {**schemes["support_key"], "type": "http", "scheme": "bearer"}
    assert schemes["session"]["scheme"] == "bearer"
    for (method, path), operation in _operations(document).items():
        if path.startswith("/api/support"):
            assert operation["security"] == [{"support_key": []}], (method, path)
            assert {"401", "403"} <= set(operation["responses"]), (method, path)
    for key in (("post", "/api/logout"), ("get", "/api/session")):
        assert _operations(document)[key]["security"] == [{"session": []}]


def test_error_answers_are_documented_with_the_one_error_schema(document: dict[str, Any]) -> None:
    expected = {
        ("post", "/api/recovery"): {"400", "413", "429"},
        ("post", "/api/recovery/verify"): {"400", "410"},
        ("post", "/api/recovery/password"): {"400", "409", "410", "413", "422", "429"},
        ("post", "/api/login"): {"400", "401", "429"},
        ("post", "/api/support/attempts/{attempt_id}/cancel"): {"401", "403", "404", "409"},
        ("get", "/api/flows/{name}/diagram"): {"400", "404", "501"},
    }
    operations = _operations(document)
    for key, statuses in expected.items():
        assert statuses <= set(operations[key]["responses"]), key
    for key, operation in operations.items():
        for status, response in operation["responses"].items():
            if status.startswith(("4", "5")) and key != ("get", "/ready"):
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, (key, status)
    error = document["components"]["schemas"]["ErrorBody"]
    info_ref = error["properties"]["error"]["$ref"].rsplit("/", 1)[-1]
    info = document["components"]["schemas"][info_ref]
    assert set(info["properties"]) == {"code", "message", "details"}


def test_request_and_answer_bodies_are_described(document: dict[str, Any]) -> None:
    schemas = document["components"]["schemas"]
    operations = _operations(document)

    def body_schema(key: tuple[str, str]) -> dict[str, Any]:
        ref = operations[key]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        return schemas[ref.rsplit("/", 1)[-1]]

    assert body_schema(("post", "/api/recovery"))["required"] == ["email"]
    assert set(body_schema(("post", "/api/recovery/password"))["required"]) == {
        "token",
        "password",
        "password_confirm",
    }
    assert set(body_schema(("post", "/api/login"))["required"]) == {"email", "password"}
    accepted = operations[("post", "/api/recovery")]["responses"]["202"]
    assert accepted["content"]["application/json"]["schema"]["$ref"].endswith("/Accepted")
    detail = operations[("get", "/api/support/attempts/{attempt_id}")]["responses"]["200"]
    ref = detail["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
    assert {"timeline", "allowed_events", "delivery", "email_masked"} <= set(
        schemas[ref]["properties"]
    )


def test_each_diagram_route_documents_exactly_the_formats_it_serves(
    document: dict[str, Any],
) -> None:
    """The attempt diagram serves SVG, DOT and Mermaid (no PNG), the flow diagram all four; both
    list their formats as the `format` parameter's values."""
    operations = _operations(document)
    expected = {
        "/api/support/attempts/{attempt_id}/diagram": (
            ["svg", "dot", "mermaid"],
            {"image/svg+xml", "text/vnd.graphviz", "text/plain"},
        ),
        "/api/flows/{name}/diagram": (
            ["svg", "png", "dot", "mermaid"],
            {"image/svg+xml", "image/png", "text/vnd.graphviz", "text/plain"},
        ),
    }
    for path, (formats, media_types) in expected.items():
        operation = operations[("get", path)]
        assert set(operation["responses"]["200"]["content"]) == media_types, path
        [parameter] = [p for p in operation["parameters"] if p["name"] == "format"]
        assert parameter["schema"]["enum"] == formats, path


@pytest.mark.parametrize(("profile", "minimum"), [("classic", 12), ("nist", 15)])
def test_the_password_field_follows_the_configured_policy(
    tmp_path: Path, profile: str, minimum: int
) -> None:
    """The new password's documented length is the configured profile's (12 or 15 to 128)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'p.db'}", password_policy=profile)
    with TestClient(create_app(settings, hasher=Argon2Hasher.for_tests())) as client:
        schemas = client.get("/schema/openapi.json").json()["components"]["schemas"]
    password = schemas["PasswordBody"]["properties"]["password"]
    assert (password["minLength"], password["maxLength"]) == (minimum, 128)
    assert f"{minimum} to 128 characters" in password["description"]
    assert schemas["PasswordBody"]["properties"]["password_confirm"]["maxLength"] == 128


def test_state_fields_list_the_states_of_the_flows(document: dict[str, Any]) -> None:
    """Every field holding a state, and the support list's state filter, enumerates them."""
    states = {
        "requested", "emailed", "link_opened", "password_set", "logged_in", "expired",
        "cancelled", "superseded", "unknown_account", "throttled", "undeliverable",
        # assisted_recovery's own
        "submitted", "confirming", "in_review", "review_overdue", "info_requested",
        "waiting", "granted", "denied",
    }  # fmt: skip
    schemas = document["components"]["schemas"]
    for component, prop in (
        ("AttemptItem", "state"),
        ("SupportAttempt", "state"),
        ("StateAnswer", "state"),
        ("ResendAnswer", "state"),
    ):
        assert set(schemas[component]["properties"][prop]["enum"]) == states, component
    for prop in ("from", "to"):
        assert set(schemas["TimelineEntry"]["properties"][prop]["enum"]) == states | {None}
    assert schemas["Verified"]["properties"]["state"]["const"] == "link_opened"
    [state] = [
        p
        for p in _operations(document)[("get", "/api/support/attempts")]["parameters"]
        if p["name"] == "state"
    ]
    assert set(state["schema"]["enum"]) == states | {None}


def test_retry_after_is_declared_wherever_it_is_sent(document: dict[str, Any]) -> None:
    """Every documented 429 (rate limit, login slow-down) and 503 (database outage) declares
    the Retry-After header it carries."""
    seen = 0
    for key, operation in _operations(document).items():
        for status in ("429", "503"):
            if status in operation["responses"]:
                seen += 1
                headers = operation["responses"][status].get("headers", {})
                assert headers["Retry-After"]["schema"]["type"] == "integer", (key, status)
    assert seen >= 20


def test_every_operation_with_a_body_documents_that_it_takes_only_application_json(
    document: dict[str, Any],
) -> None:
    """The 415 of any other Content-Type is part of each body-taking operation's contract."""
    with_body = {k: op for k, op in _operations(document).items() if "requestBody" in op}
    assert ("post", "/api/recovery") in with_body
    # The accounts import also takes an NDJSON stream (SPEC §9).
    ndjson = {("post", "/api/admin/accounts/import")}
    for key, operation in with_body.items():
        expected = (
            {"application/json", "application/x-ndjson"} if key in ndjson else {"application/json"}
        )
        assert set(operation["requestBody"]["content"]) == expected, key
        assert "415" in operation["responses"], key
