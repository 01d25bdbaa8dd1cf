"""Examples for the API reference: a request and an answer for every operation of /schema.

`add_examples(document)` writes them into the OpenAPI document (each media type's
`example`), so the reference page (/schema/reference) shows a filled-in body for
every request and every answer, errors included. Success answers and request
bodies are written per operation below; error answers come from one example per
status (with a few operations saying something more precise). A test checks that
every operation has them and that each validates against its own schema, so a
new route without examples fails the suite.

It also documents what the import takes, which Litestar cannot see (the route reads
its body itself, as JSON or as an NDJSON stream).
"""

from __future__ import annotations

from typing import Any

ATTEMPT = "6f1c1a52-7d2e-4c5b-9a51-2b7e0d3c9f10"
ACCOUNT = "0b9e5d7a-3c1f-4e2a-8b6d-5f4a3c2b1a09"
WEBHOOK = "8e7d6c5b-4a39-4281-9f0e-1d2c3b4a5f60"
DELIVERY = "2a3b4c5d-6e7f-4081-92a3-b4c5d6e7f809"
EVENT = "c1d2e3f4-a5b6-4c7d-8e9f-0a1b2c3d4e5f"
AT = "2026-12-01T09:00:00Z"
LATER = "2026-12-01T10:00:00Z"
TOKEN = "Qm9yZWFsaXMtdG9rZW4tb2YtZm9ydHktdGhyZWUtY2hhcg"
SESSION = "c2Vzc2lvbi10b2tlbi1vZi1mb3J0eS10aHJlZS1jaGFycw"
PASSWORD = "Lilac-Umbrella-Sonata-97!"
CURSOR = "WyIyMDI2LTEyLTAxVDA5OjAwOjAwKzAwOjAwIiwiNmYxYzFhNTIiXQ"


def _error(code: str, message: str, details: list[dict[str, Any]] | None = None) -> Any:
    return {"error": {"code": code, "message": message, "details": details or []}}


ERRORS: dict[str, Any] = {
    "400": _error(
        "invalid_input",
        "the request is not valid",
        [{"field": "email", "source": "body", "message": "must be a string"}],
    ),
    "401": _error("unauthorized", "a valid bearer key is required"),
    "403": _error("forbidden", "this key may not do that"),
    "404": _error("not_found", "there is nothing at this address"),
    "409": _error(
        "event_refused",
        "event 'cancel' refused in state 'logged_in': wrong_state",
        [{"event": "cancel", "state": "logged_in", "reason": "wrong_state"}],
    ),
    "410": _error(
        "link_expired", "this link can no longer be used: it has expired", [{"reason": "expired"}]
    ),
    "413": _error("body_too_large", "the request body is too large"),
    "415": _error("unsupported_media_type", "the body must be JSON, sent as application/json"),
    "422": _error(
        "password_policy",
        "the new password does not meet the password rules",
        [
            {
                "code": "too_short",
                "field": "password",
                "message": "The password must be at least 12 characters long.",
            }
        ],
    ),
    "429": _error("rate_limited", "too many requests; try again after the time in Retry-After"),
    "501": _error(
        "graphviz_missing",
        "Graphviz's 'dot' program was not found on PATH; install Graphviz (Debian package "
        "'graphviz') to render SVG or PNG, or ask for DOT or Mermaid",
    ),
    "503": _error(
        "unavailable",
        "the service is briefly unavailable; nothing was recorded, try again shortly",
    ),
}
# Where an operation's error says more than the status's usual example.
ERROR_OVERRIDES: dict[str, dict[str, Any]] = {
    "POST /api/login": {
        "401": _error("invalid_credentials", "the email address or password is incorrect"),
        "429": _error("login_slowed_down", "too many failed attempts; try again in 4 seconds"),
    },
    "POST /api/logout": {"401": _error("invalid_session", "not signed in")},
    "GET /api/session": {"401": _error("invalid_session", "not signed in")},
    "POST /api/recovery/verify": {"400": _error("unknown_token", "this link is not valid")},
    "POST /api/recovery/password": {
        "409": _error(
            "link_used",
            "this link can no longer be used: it was already used",
            [{"reason": "used"}],
        )
    },
    "POST /api/admin/accounts": {
        "409": _error("account_exists", "an account with this email address already exists")
    },
    "PATCH /api/admin/accounts/{account_id}": {
        "409": _error("account_exists", "an account with this email address already exists"),
        "404": _error("account_not_found", "no account has this id"),
    },
    "GET /api/admin/accounts/{account_id}": {
        "404": _error("account_not_found", "no account has this id")
    },
    "DELETE /api/admin/accounts/{account_id}": {
        "404": _error("account_not_found", "no account has this id")
    },
    "POST /api/admin/accounts/import": {
        "422": _error(
            "import_refused",
            "no account was created: 2 rows are not valid",
            [
                {
                    "row": 2,
                    "code": "invalid_email",
                    "message": "email must be one address of the form name@example.com",
                },
                {
                    "row": 5,
                    "code": "unsupported_hash",
                    "message": "password_hash must be an Argon2 PHC string, a bcrypt $2b$ "
                    "hash or a Django pbkdf2_sha256$ hash",
                },
            ],
        )
    },
    "POST /api/admin/webhooks": {
        "400": _error(
            "webhook_url_refused",
            "the URL resolves to a loopback, private or link-local address",
            [
                {
                    "field": "url",
                    "message": "the URL resolves to a loopback, private or link-local address",
                }
            ],
        )
    },
    "POST /api/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/replay": {
        "409": _error(
            "delivery_queued", "this delivery is still queued: it will be tried again by itself"
        )
    },
    "GET /metrics": {"401": _error("unauthorized", "a valid bearer key is required")},
    "GET /ready": {"503": {"status": "unavailable", "database": False, "migrations": False}},
}

_TIMELINE = [
    {
        "seq": 1,
        "event": "start",
        "from": None,
        "to": "requested",
        "actor": "person",
        "at": AT,
        "accepted": True,
        "detail": {"client_ip": "203.0.113.7"},
    },
    {
        "seq": 2,
        "event": "dispatch",
        "from": "requested",
        "to": "emailed",
        "actor": "system",
        "at": AT,
        "accepted": True,
        "detail": {"tries": 1},
    },
]
_ACCOUNT = {
    "id": ACCOUNT,
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "locale": "en",
    "birth_date": "1815-12-10",
    "disabled": False,
    "created_at": AT,
    "password_changed_at": AT,
    "password_scheme": "bcrypt",
}
_WEBHOOK = {
    "id": WEBHOOK,
    "url": "https://app.example.com/hooks/recovery",
    "events": ["password.changed", "sessions.revoked"],
    "created_at": AT,
    "created_by": "my-app",
}
_DELIVERY = {
    "id": DELIVERY,
    "endpoint_id": WEBHOOK,
    "event_id": EVENT,
    "event_type": "password.changed",
    "status": "delivered",
    "tries": 2,
    "created_at": AT,
    "next_try_at": None,
    "last_tried_at": LATER,
    "delivered_at": LATER,
    "give_up_at": "2026-12-02T09:00:00Z",
    "last_answer": {"status": 204, "body": ""},
    "body": {
        "type": "password.changed",
        "timestamp": AT,
        "data": {
            "account_id": ACCOUNT,
            "attempt_id": ATTEMPT,
            "flow": "password_recovery",
            "changed_at": AT,
        },
    },
}
_ROW = {
    "email": "ada@example.com",
    "name": "Ada Lovelace",
    "locale": "en",
    "birth_date": "1815-12-10",
    "password_hash": "$2b$12$R9h/cIPz0gi.URNNX3kh2OPST9/PgBkqquzi.Ss7KIUgO2t0jWMUW",
}
_MERMAID = "stateDiagram-v2\n    [*] --> requested\n    requested --> emailed: dispatch\n"

# (request body example or None, {status: answer example}) per operation.
OPERATIONS: dict[str, tuple[Any, dict[str, Any]]] = {
    "POST /api/recovery": ({"email": "ada@example.com"}, {"202": {"status": "accepted"}}),
    "POST /api/recovery/verify": (
        {"token": TOKEN},
        {"200": {"attempt_id": ATTEMPT, "state": "link_opened", "expires_at": LATER}},
    ),
    "POST /api/recovery/password": (
        {"token": TOKEN, "password": PASSWORD, "password_confirm": PASSWORD},
        {"200": {"state": "password_set"}},
    ),
    "POST /api/recovery/cancel": ({"token": TOKEN}, {"200": {"state": "cancelled"}}),
    "POST /api/recovery/code": (
        {"email": "ada@example.com", "code": "042917"},
        {
            "200": {
                "attempt_id": ATTEMPT,
                "state": "link_opened",
                "expires_at": LATER,
                "token": TOKEN,
            }
        },
    ),
    "POST /api/assisted-recovery": (
        {
            "email": "jane.doe@oldcompany.example",
            "contact_email": "jane.doe@mail.example",
            "name": "Jane Doe",
            "statement": "I left the company and its mailbox was closed. "
            "I still sign in on my phone.",
            "birth_date": "1985-03-14",
            "account_created": "2019-06",
        },
        {"202": {"status": "accepted"}},
    ),
    "POST /api/assisted-recovery/confirm": (
        {"contact_email": "jane.doe@mail.example", "code": "042917"},
        {"200": {"status": "confirmed"}},
    ),
    "POST /api/assisted-recovery/answer": (
        {"token": TOKEN, "answer": "The last time I signed in was from Lyon, on my phone, in May."},
        {"200": {"status": "answered"}},
    ),
    "POST /api/assisted-recovery/cancel": ({"token": TOKEN}, {"200": {"state": "cancelled"}}),
    "POST /api/login": (
        {"email": "ada@example.com", "password": PASSWORD},
        {"200": {"session_token": SESSION, "expires_at": LATER, "account_id": ACCOUNT}},
    ),
    "POST /api/logout": (None, {}),
    "GET /api/session": (
        None,
        {
            "200": {
                "email_masked": "a***@e***e.com",
                "expires_at": LATER,
                "account_id": ACCOUNT,
                "locale": "en",
                "notices": [
                    {
                        "flow": "assisted_recovery",
                        "reference": "QJHL-KQDG",
                        "state": "waiting",
                        "requested_at": AT,
                        "effective_at": "2026-12-04T10:00:00Z",
                        "message": "A request to move your account to another address was "
                        "approved; it takes effect on 4 December 2026 at 10:00 UTC unless you "
                        "cancel it from the email we sent.",
                    }
                ],
            }
        },
    ),
    "GET /api/support/attempts": (
        None,
        {
            "200": {
                "items": [
                    {
                        "id": ATTEMPT,
                        "reference": "DXR4-7QKM",
                        "flow": "password_recovery",
                        "state": "emailed",
                        "email_masked": "a***@e***e.com",
                        "created_at": AT,
                        "updated_at": AT,
                        "deadline_at": LATER,
                    }
                ],
                "next_cursor": CURSOR,
            }
        },
    ),
    "GET /api/support/attempts/{attempt_id}": (
        None,
        {
            "200": {
                "id": ATTEMPT,
                "reference": "DXR4-7QKM",
                "flow": "password_recovery",
                "flow_version": 2,
                "state": "emailed",
                "created_at": AT,
                "updated_at": AT,
                "deadline_at": LATER,
                "email_masked": "a***@e***e.com",
                "locale": "en",
                "route": None,
                "client_ip": "203.0.113.7",
                "user_agent": "Mozilla/5.0",
                "delivery": {"status": "sent", "tries": 1, "last_error": None, "sent_at": AT},
                "timeline": _TIMELINE,
                "allowed_events": ["open_link", "expire", "cancel", "supersede"],
                "support_events": ["cancel"],
                "flow_detail": {},
            }
        },
    ),
    "GET /api/support/attempts/{attempt_id}/diagram": (None, {"200": _MERMAID}),
    "POST /api/support/attempts/{attempt_id}/cancel": (
        {"reason": "the account owner called: it was not them"},
        {"200": {"state": "cancelled"}},
    ),
    "POST /api/support/attempts/{attempt_id}/events/{event}": (
        {"reason": "the account owner called: it was not them"},
        {"200": {"state": "cancelled"}},
    ),
    "POST /api/support/attempts/{attempt_id}/resend": (
        {},
        {
            "202": {
                "attempt_id": ATTEMPT,
                "state": "requested",
                "reference": "DXR4-7QKM",
                "resend_of": "1e2d3c4b-5a69-4788-9766-554433221100",
            }
        },
    ),
    "GET /api/support/stats": (
        None,
        {
            "200": {
                "flow": "password_recovery",
                "since": "2026-11-24T09:00:00Z",
                "until": AT,
                "total": 120,
                "states": {"logged_in": 80, "expired": 25, "unknown_account": 15},
                "funnel": [
                    {"step": "requested", "count": 120, "conversion": None, "median_seconds": None},
                    {"step": "emailed", "count": 105, "conversion": 0.875, "median_seconds": 1.2},
                ],
            }
        },
    ),
    "GET /api/support/audit": (
        None,
        {
            "200": {
                "items": [
                    {
                        "id": 42,
                        "key_name": "alice",
                        "action": "cancel",
                        "target": ATTEMPT,
                        "at": AT,
                        "detail": {"reason": "caller asked", "outcome": "ok"},
                    }
                ],
                "next_cursor": None,
            }
        },
    ),
    "GET /api/admin/accounts": (
        None,
        {
            "200": {
                "items": [
                    {
                        "id": ACCOUNT,
                        "email_masked": "a***@e***e.com",
                        "locale": "en",
                        "disabled": False,
                        "created_at": AT,
                    }
                ],
                "next_cursor": CURSOR,
            }
        },
    ),
    "POST /api/admin/accounts": (
        {"email": "ada@example.com", "name": "Ada Lovelace", "password": PASSWORD},
        {"201": {**_ACCOUNT, "password_scheme": "argon2"}},
    ),
    "POST /api/admin/accounts/import": (
        {
            "accounts": [
                _ROW,
                {
                    "email": "grace@example.com",
                    "name": "Grace Hopper",
                    "password_hash": "pbkdf2_sha256$1000000$c2FsdHNhbHQ$"
                    "ZpFv+8vXl8nJm1fM0cVqJ0pQ9JfE8bQq2r0m3hB3m6Q=",
                },
            ]
        },
        {"200": {"created": 2}},
    ),
    "GET /api/admin/accounts/{account_id}": (None, {"200": _ACCOUNT}),
    "PATCH /api/admin/accounts/{account_id}": (
        {"email": "ada.lovelace@example.com", "disabled": False},
        {"200": {**_ACCOUNT, "email": "ada.lovelace@example.com"}},
    ),
    "DELETE /api/admin/accounts/{account_id}": (None, {}),
    "POST /api/admin/webhooks": (
        {"url": "https://app.example.com/hooks/recovery", "events": ["password.changed"]},
        {"201": {"id": WEBHOOK, "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}},
    ),
    "GET /api/admin/webhooks": (
        None,
        {
            "200": {
                "items": [_WEBHOOK],
                "event_types": [
                    "password.changed",
                    "sessions.revoked",
                    "account.email_changed",
                    "recovery.completed",
                ],
            }
        },
    ),
    "GET /api/admin/webhooks/{webhook_id}": (None, {"200": _WEBHOOK}),
    "DELETE /api/admin/webhooks/{webhook_id}": (None, {}),
    "GET /api/admin/webhooks/{webhook_id}/deliveries": (
        None,
        {"200": {"items": [_DELIVERY], "next_cursor": None}},
    ),
    "GET /api/admin/webhooks/{webhook_id}/deliveries/{delivery_id}": (None, {"200": _DELIVERY}),
    "POST /api/admin/webhooks/{webhook_id}/deliveries/{delivery_id}/replay": (
        None,
        {
            "202": {
                **_DELIVERY,
                "status": "pending",
                "next_try_at": LATER,
                "delivered_at": None,
            }
        },
    ),
    "GET /api/flows": (
        None,
        {
            "200": {
                "items": [
                    {
                        "name": "password_recovery",
                        "version": 1,
                        "description": '"Forgot password?": request, email a link, set a new '
                        "password, sign in.",
                    }
                ]
            }
        },
    ),
    "GET /api/flows/{name}": (
        None,
        {
            "200": {
                "name": "password_recovery",
                "version": 1,
                "description": "...",
                "initial_state": "requested",
                "states": [{"name": "requested", "final": False, "initial": True}],
                "events": ["dispatch"],
                "transitions": [
                    {
                        "from": "requested",
                        "event": "dispatch",
                        "to": "emailed",
                        "guards": ["mail_accepted"],
                        "effects": ["keep_the_link"],
                    }
                ],
                "deadlines": [
                    {
                        "state": "emailed",
                        "after_seconds": 3600,
                        "computed": False,
                        "event": "expire",
                        "restart": True,
                    }
                ],
                "funnel": ["requested", "emailed"],
                "live_states": ["emailed", "link_opened"],
            }
        },
    ),
    "GET /api/flows/{name}/diagram": (None, {"200": _MERMAID}),
    "GET /health": (None, {"200": {"status": "ok"}}),
    "GET /ready": (None, {"200": {"status": "ready", "database": True, "migrations": True}}),
    "GET /metrics": (
        None,
        {"200": '# TYPE recovery_attempts gauge\nrecovery_attempts{state="emailed"} 3.0\n'},
    ),
}

IMPORT = "POST /api/admin/accounts/import"
# A diagram answers in the format asked for: each media type shows its own.
TEXT_EXAMPLES: dict[str, Any] = {
    "image/svg+xml": '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"></svg>',
    "image/png": None,
    "text/vnd.graphviz": "digraph password_recovery { requested -> emailed [label=dispatch] }",
}


def _import_body(document: dict[str, Any]) -> None:
    """The import's body, as the route reads it (JSON list in an object, or NDJSON rows)."""
    operation = document.get("paths", {}).get("/api/admin/accounts/import", {}).get("post")
    if operation is None:
        return
    row = {"$ref": "#/components/schemas/AccountCreate"}
    operation["requestBody"] = {
        "required": True,
        "description": "The rows: a JSON object, or one row per line (NDJSON).",
        "content": {
            "application/json": {
                "schema": {
                    "type": "object",
                    "required": ["accounts"],
                    "properties": {"accounts": {"type": "array", "items": row}},
                    "additionalProperties": False,
                }
            },
            "application/x-ndjson": {"schema": row},
        },
    }


def add_examples(document: dict[str, Any]) -> None:
    """Every operation's request and answers get their example (see the module)."""
    _import_body(document)
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            key = f"{method.upper()} {path}"
            request, answers = OPERATIONS.get(key, (None, {}))
            body = operation.get("requestBody")
            if body is not None and request is not None:
                for media_type, content in body.get("content", {}).items():
                    content["example"] = _ROW if media_type == "application/x-ndjson" else request
            overrides = ERROR_OVERRIDES.get(key, {})
            for status, answer in operation["responses"].items():
                example = answers.get(status, overrides.get(status, ERRORS.get(status)))
                for media_type, content in (answer.get("content") or {}).items():
                    shown = TEXT_EXAMPLES.get(media_type, example)
                    if shown is not None:
                        content["example"] = shown
