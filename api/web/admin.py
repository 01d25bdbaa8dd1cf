"""The admin API under /api/admin/: accounts and webhooks, for the applications that use us.

Every route needs a key of role `admin` (`recovery support-key create --role admin`),
checked by the support API's guard; every call is audited under the key's name, and a
refusal too. Handlers stay thin: the body is parsed into a strict struct (or, for an
import, read as JSON or NDJSON as it streams in), `api.admin` and `api.webhooks` do the
work, and the answer is shaped here. Addresses are masked in lists; no answer carries a
password, a hash or a webhook secret, except the secret of a new endpoint, once.
"""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

from litestar import Request, Router, delete, get, patch, post
from litestar.di import NamedDependency
from litestar.params import JSONBody, PathParameter, QueryParameter
from msgspec import UNSET, Meta, Struct, UnsetType

from api.admin import importing
from api.admin.accounts import DEFAULT_PAGE, MAX_PAGE
from api.services import Services
from api.web.errors import NotJson, documented, request_locale
from api.web.schemas import _Strict
from api.web.support import ROLE_OPT, key_name, require_support_key

ADMIN_PATH = "/api/admin"
ADMIN = {ROLE_OPT: "admin"}
NDJSON = "application/x-ndjson"
JSON = "application/json"
AccountId = Annotated[str, PathParameter(description="the account's id (a UUID)")]
WebhookId = Annotated[str, PathParameter(description="the webhook endpoint's id (a UUID)")]
DeliveryId = Annotated[str, PathParameter(description="the delivery's id (a UUID)")]
Cursor = Annotated[str | None, QueryParameter(description="next_cursor of the previous page")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_PAGE)]
Email = Annotated[str, Meta(max_length=1024, description="one email address")]
Name = Annotated[str, Meta(min_length=1, max_length=200)]
Locale = Annotated[Literal["en", "fr"], Meta(description="the account's language")]


# -- bodies and answers ----------------------------------------------------------


class AccountCreate(_Strict):
    """One account: exactly one of `password` (checked against the policy) and
    `password_hash` (Argon2 PHC, bcrypt `$2b$` or Django `pbkdf2_sha256$`)."""

    email: Email
    name: Name
    locale: Locale = "en"
    birth_date: date | None = None
    password: Annotated[str, Meta(max_length=4096)] | None = None
    password_hash: Annotated[str, Meta(max_length=255)] | None = None


class AccountChanges(_Strict):
    """The fields to change; the others stay. `birth_date: null` forgets it."""

    email: Email | UnsetType = UNSET
    name: Name | UnsetType = UNSET
    locale: Locale | UnsetType = UNSET
    birth_date: date | UnsetType | None = UNSET
    disabled: Annotated[
        bool | UnsetType, Meta(description="no recovery mail, no sign-in; answers unchanged")
    ] = UNSET


class AccountItem(Struct, frozen=True):
    id: str
    email_masked: str
    locale: str
    disabled: bool
    created_at: datetime


class AccountPage(Struct, frozen=True):
    items: list[AccountItem]
    next_cursor: str | None


class AccountDetail(Struct, frozen=True):
    id: str
    email: str
    name: str
    locale: str
    birth_date: str | None
    disabled: bool
    created_at: datetime
    password_changed_at: datetime
    password_scheme: Annotated[
        str, Meta(description="argon2, or the imported form until the first sign-in")
    ]


class Imported(Struct, frozen=True):
    created: Annotated[int, Meta(description="how many accounts were created")]


class WebhookCreate(_Strict):
    url: Annotated[str, Meta(max_length=2048, description="an http(s) URL that takes POSTs")]
    events: Annotated[list[str], Meta(min_length=1, description="the event types to send it")]


class WebhookCreated(Struct, frozen=True):
    id: str
    secret: Annotated[
        str, Meta(description="the Standard Webhooks signing secret (whsec_...): shown only here")
    ]


class Webhook(Struct, frozen=True):
    id: str
    url: str
    events: list[str]
    created_at: datetime
    created_by: str


class WebhookList(Struct, frozen=True):
    items: list[Webhook]
    event_types: Annotated[list[str], Meta(description="every type an endpoint may ask for")]


class LastAnswer(Struct, frozen=True):
    status: Annotated[int | None, Meta(description="the HTTP status, or null: no answer")]
    body: Annotated[str | None, Meta(description="its first 500 characters, or what failed")]


class WebhookDelivery(Struct, frozen=True):
    id: str
    endpoint_id: str
    event_id: str
    event_type: str
    status: Annotated[str, Meta(description="pending | retrying | delivered | dead")]
    tries: int
    created_at: datetime
    next_try_at: datetime | None
    last_tried_at: datetime | None
    delivered_at: datetime | None
    give_up_at: datetime | None
    last_answer: LastAnswer | None
    body: Annotated[dict[str, Any], Meta(description="what is sent: type, timestamp, data")]


class WebhookDeliveryPage(Struct, frozen=True):
    items: list[WebhookDelivery]
    next_cursor: str | None


def _delivery(view: dict[str, Any]) -> WebhookDelivery:
    last = view.pop("last_answer")
    return WebhookDelivery(**view, last_answer=LastAnswer(**last) if last else None)


def _row(body: AccountCreate) -> dict[str, Any]:
    row: dict[str, Any] = {"email": body.email, "name": body.name, "locale": body.locale}
    if body.birth_date is not None:
        row["birth_date"] = body.birth_date.isoformat()
    if body.password is not None:
        row["password"] = body.password
    if body.password_hash is not None:
        row["password_hash"] = body.password_hash
    return row


# -- accounts ----------------------------------------------------------------------


@get(
    "/accounts",
    opt=ADMIN,
    summary="Accounts, newest first, addresses masked, one keyset page at a time",
    responses=documented(400, 401, 403, 429),
)
async def list_accounts(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    email: Annotated[str | None, QueryParameter(description="exact address (normalised)")] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> AccountPage:
    page = await services.engine.db.run(
        services.admin.list_sync, key_name(request), email=email, limit=limit, cursor=cursor
    )
    return AccountPage(items=[AccountItem(**i) for i in page.items], next_cursor=page.next_cursor)


@post(
    "/accounts",
    status_code=201,
    opt=ADMIN,
    summary="Create one account (with a password or an existing hash)",
    responses=documented(400, 401, 403, 409, 413, 415, 422, 429),
)
async def create_account(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    data: JSONBody[AccountCreate],
) -> AccountDetail:
    found = await services.engine.db.run(
        services.admin.create_sync, key_name(request), _row(data), request_locale(request)
    )
    return AccountDetail(**found)


IMPORT_ROUTE = dict(
    path="/accounts/import",
    status_code=200,
    opt=ADMIN,
    summary="Import many accounts: all or nothing, every bad row named",
    description=(
        'A JSON body `{"accounts": [...]}` (application/json) or one account per line '
        "(application/x-ndjson, read as it streams in). Each row takes exactly one of "
        "`password` (the policy applies) and `password_hash` (Argon2 PHC, bcrypt `$2b$`, "
        "Django `pbkdf2_sha256$`: verified at the first sign-in and rehashed to Argon2 "
        "then). One bad row refuses the batch: 422 `import_refused`, whose details list "
        'every bad row as `{"row", "code", "message"}` (rows count from 1), and nothing '
        "is created."
    ),
    responses=documented(400, 401, 403, 413, 415, 422, 429),
)


async def import_accounts(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Imported:
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip().lower()
    rows: list[object]
    if content_type == JSON:
        rows = importing.rows_of_json(await request.body())
    elif content_type == NDJSON:
        rows = []
        limit = services.settings.admin_import_max_rows
        async for row in _ndjson_rows(request):
            rows.append(row)
            if len(rows) > limit:
                break  # the importer refuses the count; read no further
    else:
        raise NotJson()
    summary = await _audited_import(services, key_name(request), rows)
    return Imported(created=summary.created)


async def _ndjson_rows(request: Request[Any, Any, Any]) -> Any:
    async for line in importing.ndjson_lines(request.stream()):
        for row in importing.rows_of_ndjson_lines([line]):
            yield row


async def _audited_import(services: Services, who: str, rows: list[object]) -> importing.Summary:
    """The import, audited under the key's name (its outcome, and how many rows)."""
    audit = services.admin.audit
    try:
        summary = await services.admin.importer.import_rows(rows)
    except Exception as exc:
        outcome = getattr(exc, "code", "error")
        await services.engine.db.run(
            audit.record,
            who,
            "admin.accounts.import",
            None,
            {"rows": len(rows), "outcome": outcome},
        )
        exc.audited = True  # type: ignore[attr-defined]
        raise
    detail = {"rows": len(rows), "outcome": "ok", "created": summary.by_scheme}
    await services.engine.db.run(audit.record, who, "admin.accounts.import", None, detail)
    return summary


@get(
    "/accounts/{account_id:str}",
    opt=ADMIN,
    summary="One account (never its password or hash)",
    responses=documented(400, 401, 403, 404, 429),
)
async def account_detail(
    request: Request[Any, Any, Any], services: NamedDependency[Services], account_id: AccountId
) -> AccountDetail:
    found = await services.engine.db.run(services.admin.get_sync, key_name(request), account_id)
    return AccountDetail(**found)


@patch(
    "/accounts/{account_id:str}",
    opt=ADMIN,
    summary="Change the address, name, language or birth date; disable or enable",
    description=(
        "A new address: the old one gets a notice, the account's links die and its live "
        "journeys end (`account.email_changed`). `disabled: true`: no recovery mail, no "
        "sign-in, its sessions and links revoked, every public answer unchanged "
        "(`account.disabled`, `sessions.revoked`)."
    ),
    responses=documented(400, 401, 403, 404, 409, 413, 415, 429),
)
async def change_account(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    account_id: AccountId,
    data: JSONBody[AccountChanges],
) -> AccountDetail:
    changes = {
        name: getattr(data, name)
        for name in data.__struct_fields__
        if getattr(data, name) is not UNSET
    }
    found = await services.engine.db.run(
        services.admin.update_sync, key_name(request), account_id, changes
    )
    return AccountDetail(**found)


@delete(
    "/accounts/{account_id:str}",
    status_code=204,
    opt=ADMIN,
    summary="Delete the account; its attempts keep their shape, not the person's data",
    responses=documented(400, 401, 403, 404, 429),
)
async def delete_account(
    request: Request[Any, Any, Any], services: NamedDependency[Services], account_id: AccountId
) -> None:
    await services.engine.db.run(services.admin.delete_sync, key_name(request), account_id)


# -- webhooks ----------------------------------------------------------------------


def _webhooks_audited(services: Services, who: str, action: str, target: str | None) -> Any:
    def run(work: Any, *args: Any, **kw: Any) -> Any:
        return services.admin.audited(who, action, target, {}, lambda: work(*args, **kw))

    return run


@post(
    "/webhooks",
    status_code=201,
    opt=ADMIN,
    summary="Register a webhook endpoint; its signing secret is shown only in this answer",
    description=(
        "Events are signed in the Standard Webhooks format (webhook-id, webhook-timestamp, "
        "webhook-signature) with the secret answered here, delivered after the change "
        "committed, retried with backoff for a day, then dead-lettered (replayable). A URL "
        "that resolves to a loopback, private or link-local address is refused unless "
        "RECOVERY_WEBHOOKS_ALLOW_PRIVATE=true."
    ),
    responses=documented(400, 401, 403, 413, 415, 429),
)
async def create_webhook(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    data: JSONBody[WebhookCreate],
) -> WebhookCreated:
    run = _webhooks_audited(services, key_name(request), "webhooks.create", None)
    endpoint_id, secret = await services.engine.db.run(
        run, services.webhooks.register_sync, data.url, list(data.events), key_name(request)
    )
    return WebhookCreated(id=endpoint_id, secret=secret)


@get(
    "/webhooks",
    opt=ADMIN,
    summary="The webhook endpoints (never their secrets), and every event type",
    responses=documented(400, 401, 403, 429),
)
async def list_webhooks(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> WebhookList:
    run = _webhooks_audited(services, key_name(request), "webhooks.list", None)
    found = await services.engine.db.run(run, services.webhooks.list_sync)
    return WebhookList(
        items=[Webhook(**w) for w in found], event_types=list(services.webhooks.known_events)
    )


@get(
    "/webhooks/{webhook_id:str}",
    opt=ADMIN,
    summary="One webhook endpoint",
    responses=documented(400, 401, 403, 404, 429),
)
async def webhook_detail(
    request: Request[Any, Any, Any], services: NamedDependency[Services], webhook_id: WebhookId
) -> Webhook:
    run = _webhooks_audited(services, key_name(request), "webhooks.read", webhook_id[:64])
    return Webhook(**await services.engine.db.run(run, services.webhooks.get_sync, webhook_id))


@delete(
    "/webhooks/{webhook_id:str}",
    status_code=204,
    opt=ADMIN,
    summary="Delete a webhook endpoint: nothing more is sent to it",
    responses=documented(400, 401, 403, 404, 429),
)
async def delete_webhook(
    request: Request[Any, Any, Any], services: NamedDependency[Services], webhook_id: WebhookId
) -> None:
    run = _webhooks_audited(services, key_name(request), "webhooks.delete", webhook_id[:64])
    await services.engine.db.run(run, services.webhooks.delete_sync, webhook_id)


@get(
    "/webhooks/{webhook_id:str}/deliveries",
    opt=ADMIN,
    summary="An endpoint's deliveries, newest first: status, tries, last answer",
    responses=documented(400, 401, 403, 404, 429),
)
async def list_deliveries(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    webhook_id: WebhookId,
    status: Annotated[
        Literal["pending", "retrying", "delivered", "dead"] | None,
        QueryParameter(description="only deliveries in this status"),
    ] = None,
    limit: Limit = DEFAULT_PAGE,
    cursor: Cursor = None,
) -> WebhookDeliveryPage:
    run = _webhooks_audited(services, key_name(request), "webhooks.deliveries", webhook_id[:64])
    page = await services.engine.db.run(
        run,
        services.webhooks.deliveries_sync,
        webhook_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )
    return WebhookDeliveryPage(
        items=[_delivery(d) for d in page.items], next_cursor=page.next_cursor
    )


@get(
    "/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}",
    opt=ADMIN,
    summary="One delivery: what is sent, its status, tries and last answer",
    responses=documented(400, 401, 403, 404, 429),
)
async def delivery_detail(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    webhook_id: WebhookId,
    delivery_id: DeliveryId,
) -> WebhookDelivery:
    run = _webhooks_audited(services, key_name(request), "webhooks.delivery", delivery_id[:64])
    found = await services.engine.db.run(
        run, services.webhooks.delivery_sync, webhook_id, delivery_id
    )
    return _delivery(found)


@post(
    "/webhooks/{webhook_id:str}/deliveries/{delivery_id:str}/replay",
    status_code=202,
    opt=ADMIN,
    summary="Send a delivered or dead-lettered delivery again (same id and body)",
    responses=documented(400, 401, 403, 404, 409, 429),
)
async def replay_delivery(
    request: Request[Any, Any, Any],
    services: NamedDependency[Services],
    webhook_id: WebhookId,
    delivery_id: DeliveryId,
) -> WebhookDelivery:
    run = _webhooks_audited(services, key_name(request), "webhooks.replay", delivery_id[:64])
    found = await services.engine.db.run(
        run, services.webhooks.replay_sync, webhook_id, delivery_id
    )
    return _delivery(found)


def route_handlers(settings: Any) -> list[Any]:
    """The admin router; an import may be as large as RECOVERY_ADMIN_IMPORT_MAX_BYTES."""
    # Made per application: the body cap is the setting's, not the app-wide one.
    importing_route = post(**IMPORT_ROUTE, request_max_body_size=settings.admin_import_max_bytes)(
        import_accounts
    )
    return [
        Router(
            path=ADMIN_PATH,
            route_handlers=[
                list_accounts,
                create_account,
                importing_route,
                account_detail,
                change_account,
                delete_account,
                create_webhook,
                list_webhooks,
                webhook_detail,
                delete_webhook,
                list_deliveries,
                delivery_detail,
                replay_delivery,
            ],
            guards=[require_support_key],
            security=[{"admin_key": []}],
            tags=["admin"],
            opt={"exclude_from_csrf": True},
        )
    ]


__all__ = ["route_handlers"]
