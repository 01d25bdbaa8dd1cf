"""The API reference, as the product serves it: every operation has a request example and an
example of every answer, each valid against its own schema; the page and its assets come
from the service itself."""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest

from tests.api.conftest import Api


@pytest.fixture
def document(api: Api) -> dict[str, Any]:
    answer = api.client.get("/schema/openapi.json")
    assert answer.status_code == 200
    return dict(answer.json())


def _operations(document: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [
        (f"{method.upper()} {path}", op)
        for path, item in document["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict) and "responses" in op
    ]


def _valid(document: dict[str, Any], schema: dict[str, Any], example: Any) -> list[str]:
    root = {"components": document["components"], "allOf": [schema]}
    validator = jsonschema_rs.validator_for(root)
    return [error.message for error in validator.iter_errors(example)]


def test_every_operation_has_request_and_answer_examples_that_fit_their_schemas(
    document: dict[str, Any],
) -> None:
    operations = _operations(document)
    assert len(operations) >= 34
    problems = []
    for key, operation in operations:
        body = operation.get("requestBody")
        for media_type, content in (body or {}).get("content", {}).items():
            if "example" not in content:
                problems.append(f"{key}: no request example for {media_type}")
            elif errors := _valid(document, content["schema"], content["example"]):
                problems.append(f"{key}: request example: {errors}")
        for status, answer in operation["responses"].items():
            for media_type, content in (answer.get("content") or {}).items():
                if media_type == "image/png":
                    continue  # bytes: nothing to show
                if "example" not in content:
                    problems.append(f"{key} {status}: no example for {media_type}")
                elif errors := _valid(document, content["schema"], content["example"]):
                    problems.append(f"{key} {status}: example: {errors}")
    assert problems == []


def test_an_example_that_does_not_fit_its_schema_is_caught(document: dict[str, Any]) -> None:
    """The check above can fail: a wrong example is reported."""
    assert _valid(document, {"$ref": "#/components/schemas/Accepted"}, {"status": 5})
    assert _valid(document, {"$ref": "#/components/schemas/SessionAnswer"}, {"locale": "en"})


def test_the_import_documents_both_of_its_body_forms(document: dict[str, Any]) -> None:
    body = document["paths"]["/api/admin/accounts/import"]["post"]["requestBody"]
    assert set(body["content"]) == {"application/json", "application/x-ndjson"}
    assert body["content"]["application/x-ndjson"]["schema"] == {
        "$ref": "#/components/schemas/AccountCreate"
    }


def test_the_reference_page_loads_only_this_services_files(api: Api) -> None:
    """The page names only same-origin files, no inline script, and allows data: images
    alone beyond the site's CSP; its assets are served."""
    page = api.client.get("/schema/reference")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    text = page.text
    assert "http://" not in text and "https://" not in text
    scripts = text.split("<script")[1:]
    assert scripts and all(
        s.startswith(' src="/') and s.split(">", 1)[1].startswith("</script") for s in scripts
    )
    assert page.headers["content-security-policy"].startswith("default-src 'self';")
    assert page.headers["content-security-policy"].endswith("img-src 'self' data:")
    for asset in (
        "/reference/assets/swagger-ui-bundle.js",
        "/reference/assets/swagger-ui.css",
        "/static/reference.js",
    ):
        answer = api.client.get(asset)
        assert answer.status_code == 200, asset
    assert "img-src" not in api.client.get("/login").headers["content-security-policy"]
