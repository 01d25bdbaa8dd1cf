"""The OpenAPI document at /schema/openapi.json, and what the types alone cannot tell Litestar.

Litestar builds the document from the handlers and the structs. Three facts
depend on the configuration or on the registered flows rather than on the
types, so `refine` fills them in once, when the document is first served:

- the new password's length follows the configured policy profile;
- each `state` field, and the `state` filter of the support list, lists the
  states of the registered flows;
- every 429 and 503 answer declares the `Retry-After` header it carries;
- every operation's request and answers carry an example (`api.web.examples`).

The reference page at /schema/reference (`api.web.reference`) renders the same
document with Swagger UI, from files the service serves itself.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator
from typing import Any

from litestar import Request
from litestar.openapi.config import OpenAPIConfig
from litestar.openapi.plugins import JsonRenderPlugin, OpenAPIRenderPlugin
from litestar.openapi.spec import Components, SecurityScheme

from api.accounts.policy import PasswordPolicy
from api.web.examples import add_examples
from engine import FlowRegistry

RETRY_AFTER = {
    "description": "seconds to wait before trying again",
    "schema": {"type": "integer", "minimum": 1},
}
# (component, property) pairs that hold a state name, and whether null is allowed.
STATE_PROPERTIES = (
    ("AttemptItem", "state", False),
    ("SupportAttempt", "state", False),
    ("StateAnswer", "state", False),
    ("ResendAnswer", "state", False),
    ("TimelineEntry", "from", True),
    ("TimelineEntry", "to", True),
)


def openapi_config(render: JsonRenderPlugin, *pages: OpenAPIRenderPlugin) -> OpenAPIConfig:
    """OpenAPI at /schema/openapi.json, and the reference page(s) that render it."""
    return OpenAPIConfig(
        title="Account recovery",
        version="1.0.0",
        description=(
            '"Forgot password?" as a persisted state machine: the public recovery and '
            "sign-in API, the support API, flow diagrams and operations endpoints. Every "
            'error answers {"error": {"code", "message", "details"}}.'
        ),
        path="/schema",
        render_plugins=[render, *pages],
        components=Components(
            security_schemes={
                "support_key": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A support key (recovery support-key create); role read or write",
                ),
                "admin_key": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A key of role admin (recovery support-key create --role admin)",
                ),
                "session": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="The session_token returned by POST /api/login",
                ),
                "metrics_token": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="RECOVERY_METRICS_TOKEN, for /metrics",
                ),
            }
        ),
    )


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if isinstance(operation, dict) and "responses" in operation:
                yield f"{method} {path}", operation


def _state_schema(states: Iterable[str], nullable: bool, description: str | None) -> dict[str, Any]:
    names: list[Any] = sorted(set(states))
    schema: dict[str, Any] = {"type": ["string", "null"] if nullable else "string"}
    schema["enum"] = [*names, None] if nullable else names
    if description:
        schema["description"] = description
    return schema


def refine(document: dict[str, Any], policy: PasswordPolicy, flows: FlowRegistry) -> None:
    """Fill in, in place, the facts the configuration and the flows decide (module docstring)."""
    schemas = document.get("components", {}).get("schemas", {})
    body = schemas.get("PasswordBody", {}).get("properties", {})
    limits = f"{policy.min_length} to {policy.max_length} characters after NFKC normalisation"
    if "password" in body:
        body["password"].update(
            minLength=policy.min_length,
            maxLength=policy.max_length,
            description=(
                f"the new password ({limits}, policy {policy.profile!r}); one outside these "
                "bounds is refused with 422 and its violation code"
            ),
        )
    if "password_confirm" in body:
        body["password_confirm"].update(
            maxLength=policy.max_length,
            description="the new password again, exactly (422 confirmation_mismatch otherwise)",
        )
    states = [state for spec in flows for state in spec.states]
    for component, prop, nullable in STATE_PROPERTIES:
        found = schemas.get(component, {}).get("properties", {})
        if prop in found:
            found[prop] = _state_schema(states, nullable, found[prop].get("description"))
    for _label, operation in _operations(document):
        for parameter in operation.get("parameters", []):
            if parameter.get("name") == "state" and parameter.get("in") == "query":
                parameter["schema"] = _state_schema(states, True, parameter.get("description"))
        for status, answer in operation["responses"].items():
            if status in ("429", "503"):
                answer.setdefault("headers", {})["Retry-After"] = dict(RETRY_AFTER)
    # A request and an answer for every operation, for the reference page.
    add_examples(document)


class RefinedJsonRenderPlugin(JsonRenderPlugin):
    """Serves the document as JSON, refined once for this application's policy and flows."""

    def __init__(self, policy: PasswordPolicy, flows: FlowRegistry) -> None:
        super().__init__()
        self.policy = policy
        self.flows = flows
        self._refined: dict[str, Any] | None = None

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        if self._refined is None:
            refined = copy.deepcopy(openapi_schema)
            refine(refined, self.policy, self.flows)
            self._refined = refined
        return self.render_json(request, self._refined)
