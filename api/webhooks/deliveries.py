"""Delivering webhooks: the worker's outbox handler that signs and sends each delivery.

A delivery is sent as a POST of its JSON body with the Standard Webhooks headers
(`webhook-id`, the event's id, the same on every try; `webhook-timestamp`, the time of
this try; `webhook-signature`, `v1,` and the HMAC-SHA256 of `id.timestamp.body` under
the endpoint's secret, made by the `standardwebhooks` library). A 2xx answer delivers
it. Anything else (another status, a timeout, no connection) is retried with
exponential backoff, `RECOVERY_WEBHOOKS_RETRY_BASE_SECONDS` doubled at each try up to
`RECOVERY_WEBHOOKS_RETRY_MAX_SECONDS`, until `RECOVERY_WEBHOOKS_GIVE_UP_HOURS` after the
first try; then it is dead-lettered (`dead`), to be replayed through the admin API.
Each try records its status, the first 500 characters of the answer (or what went
wrong) and when; redirects are not followed.

The work happens in the worker, after the change's transaction committed, so a slow
or failing receiver costs the worker a slot for at most the timeout, and a person's
request nothing.
"""

from __future__ import annotations

import json
import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, Protocol

import httpx
from sqlalchemy import select, update
from standardwebhooks.webhooks import Webhook

from api.settings import Settings
from api.webhooks.endpoints import (
    DEAD,
    DELIVERED,
    QUEUED,
    RETRYING,
    delivery_t,
    endpoint_t,
    resolve_refusal_async,
)
from engine import Engine
from engine.clock import as_utc

log = logging.getLogger(__name__)

MAX_ANSWER_CHARS = 500
USER_AGENT = "account-recovery-webhooks/1"


class App(Protocol):
    """What delivering needs from the application."""

    settings: Settings
    engine: Engine


def body_text(body: dict[str, Any]) -> str:
    """The exact text sent and signed (compact JSON, keys in order)."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


def message_id(event_id: uuid.UUID) -> str:
    """The `webhook-id` of an event: the same on every try and every replay."""
    return f"msg_{event_id.hex}"


def signed_headers(secret: str, event_id: uuid.UUID, now: datetime, text: str) -> dict[str, str]:
    """The Standard Webhooks headers of one try."""
    msg_id = message_id(event_id)
    return {
        "content-type": "application/json",
        "user-agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": Webhook(secret).sign(msg_id, now, text),
    }


def backoff(settings: Settings, tries: int) -> timedelta:
    """How long to wait after the `tries`-th failed try."""
    seconds = settings.webhooks_retry_base_seconds * 2 ** max(0, tries - 1)
    return timedelta(seconds=min(seconds, settings.webhooks_retry_max_seconds))


async def _post(
    settings: Settings, url: str, text: str, headers: dict[str, str]
) -> tuple[int | None, str]:
    """One try: (status, answer text), or (None, what went wrong)."""
    refusal = await resolve_refusal_async(url, settings.webhooks_allow_private)
    if refusal is not None:
        return None, refusal
    try:
        async with httpx.AsyncClient(
            timeout=settings.webhooks_timeout_seconds, follow_redirects=False
        ) as client:
            answer = await client.post(url, content=text.encode("utf-8"), headers=headers)
    except httpx.TimeoutException:
        return None, "timed out"
    except httpx.HTTPError as exc:
        return None, f"could not connect ({type(exc).__name__})"
    return answer.status_code, answer.text[:MAX_ANSWER_CHARS]


async def deliver(app: App, item: dict[str, Any]) -> None:
    """The outbox handler of `webhook_delivery` items (see the module)."""
    engine = app.engine
    settings = app.settings

    async def finish(error: str | None = None, retry_at: datetime | None = None) -> None:
        await engine.db.run(engine.outbox_finish_sync, item["id"], error=error, retry_at=retry_at)

    try:
        delivery_id = uuid.UUID(str((item["payload"] or {})["delivery_id"]))
    except (KeyError, ValueError, TypeError):
        await finish("malformed payload")
        return
    found = await engine.db.run(_load, engine, delivery_id, write=False)
    if found is None or found.status not in QUEUED or found.deleted_at is not None:
        await finish()  # delivered, dead-lettered or deleted meanwhile: nothing to send
        return
    now = engine.clock.now()
    # Retried for a day from when it was recorded (a replay gives it a new day).
    window = timedelta(hours=settings.webhooks_give_up_hours)
    give_up_at = as_utc(found.give_up_at) if found.give_up_at else as_utc(found.created_at) + window
    text = body_text(found.body)
    headers = signed_headers(found.secret, found.event_id, now, text)
    status, answer = await _post(settings, found.url, text, headers)
    tries = found.tries + 1
    values: dict[str, Any] = {
        "tries": tries,
        "last_tried_at": now,
        "last_status": status,
        "last_answer": answer,
        "give_up_at": give_up_at,
    }
    if status is not None and 200 <= status < 300:
        values.update(status=DELIVERED, delivered_at=now, next_try_at=None)
        await engine.db.run(_update, engine, delivery_id, values)
        await finish()
        log.info("webhook delivery %s delivered (try %d)", delivery_id, tries)
        return
    # The outbox item's own count (the claim counted this try): a replay starts afresh.
    retry_at = now + backoff(settings, int(item["tries"]) + 1)
    if retry_at > give_up_at:
        values.update(status=DEAD, next_try_at=None)
        await engine.db.run(_update, engine, delivery_id, values)
        await finish(f"dead after {tries} tries")
        log.warning("webhook delivery %s dead-lettered after %d tries", delivery_id, tries)
        return
    values.update(status=RETRYING, next_try_at=retry_at)
    await engine.db.run(_update, engine, delivery_id, values)
    await finish(f"try {tries} failed", retry_at)
    log.info("webhook delivery %s: try %d failed, retry at %s", delivery_id, tries, retry_at)


def _load(engine: Engine, delivery_id: uuid.UUID) -> Any:
    with engine.db.transaction(write=False) as conn:
        return conn.execute(
            select(
                delivery_t.c.status,
                delivery_t.c.tries,
                delivery_t.c.event_id,
                delivery_t.c.body,
                delivery_t.c.give_up_at,
                delivery_t.c.created_at,
                endpoint_t.c.url,
                endpoint_t.c.secret,
                endpoint_t.c.deleted_at,
            )
            .join(endpoint_t, endpoint_t.c.id == delivery_t.c.endpoint_id)
            .where(delivery_t.c.id == delivery_id)
        ).first()


def _update(engine: Engine, delivery_id: uuid.UUID, values: dict[str, Any]) -> None:
    with engine.db.transaction() as conn:
        conn.execute(
            update(delivery_t)
            .where(delivery_t.c.id == delivery_id, delivery_t.c.status.in_(QUEUED))
            .values(**values)
        )
