"""Webhook endpoints and their deliveries: registering, listing, replaying, and recording.

`record_deliveries` is what `api.events.emit` runs inside the caller's transaction:
one delivery row per live endpoint subscribed to the event's type, each queued in
the outbox for the worker (`api.webhooks.deliveries`). `Webhooks` is the admin
side: register an endpoint (its secret shown once), list and read endpoints and
their deliveries (status, tries, last answer), delete an endpoint, replay a
delivery.

A URL must be http(s) and, unless `RECOVERY_WEBHOOKS_ALLOW_PRIVATE=true`, resolve only
to public addresses: no loopback, private, link-local, reserved or multicast one, so
an admin key cannot make the service call into its own network. It is checked when
the endpoint is registered and again before every try (a name may resolve elsewhere
later).
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import secrets
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import Connection, insert, select, tuple_, update

from api.errors import InvalidInput, RecoveryError
from api.support.cursors import decode_cursor, encode_cursor
from api.webhooks.models import WebhookDelivery, WebhookEndpoint
from engine import Database
from engine.clock import Clock, as_utc
from engine.core import enqueue

endpoint_t = WebhookEndpoint.__table__
delivery_t = WebhookDelivery.__table__

# The outbox kind that carries a delivery to the worker.
DELIVERY = "webhook_delivery"
PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"
STATUSES = (PENDING, RETRYING, DELIVERED, DEAD)
QUEUED = (PENDING, RETRYING)
SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
MAX_URL_CHARS = 2048
MAX_PAGE = 200
DEFAULT_PAGE = 50


class WebhookNotFound(RecoveryError):
    """No live webhook endpoint has this id."""

    code = "webhook_not_found"

    def __init__(self) -> None:
        super().__init__("no webhook endpoint has this id")


class DeliveryNotFound(RecoveryError):
    """No delivery of this endpoint has this id."""

    code = "delivery_not_found"

    def __init__(self) -> None:
        super().__init__("this endpoint has no delivery with this id")


class DeliveryQueued(RecoveryError):
    """A replay of a delivery that is still queued (pending or retrying)."""

    code = "delivery_queued"

    def __init__(self) -> None:
        super().__init__("this delivery is still queued: it will be tried again by itself")


class UrlRefused(RecoveryError):
    """A webhook URL that is not http(s), or that resolves to an address we never call."""

    code = "webhook_url_refused"

    def __init__(self, message: str, **params: Any) -> None:
        super().__init__(message, details=[{"field": "url", "message": message}], params=params)


def _address_refused(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return (
        address.is_loopback
        or address.is_private
        or address.is_link_local
        or address.is_reserved
        or address.is_multicast
        or address.is_unspecified
        or not address.is_global
    )


def check_url_form(url: object) -> str:
    """The URL if it is an absolute http(s) URL we could call, else `UrlRefused`."""
    if not isinstance(url, str) or not url or len(url) > MAX_URL_CHARS:
        raise UrlRefused("the URL must be an absolute http or https URL")
    parts = urlsplit(url)
    try:
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        raise UrlRefused("the URL must be an absolute http or https URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.fragment:
        raise UrlRefused("the URL must be an absolute http or https URL")
    if any(not c.isprintable() or c.isspace() for c in url):
        raise UrlRefused("the URL must be an absolute http or https URL")
    return url


def resolve_refusal(url: str, allow_private: bool) -> str | None:
    """Why the URL's host may not be called (a text), or None (blocking: resolves)."""
    host = urlsplit(url).hostname or ""
    if allow_private:
        return None
    try:
        literal = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses = [literal]
    else:
        try:
            found = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
        except (OSError, UnicodeError):
            return "the URL's host name does not resolve"
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in found]
    if not addresses or any(_address_refused(a) for a in addresses):
        return "the URL resolves to a loopback, private or link-local address"
    return None


async def resolve_refusal_async(url: str, allow_private: bool) -> str | None:
    """`resolve_refusal` off the event loop."""
    return await asyncio.to_thread(resolve_refusal, url, allow_private)


def new_secret() -> str:
    """A Standard Webhooks signing secret: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def record_deliveries(
    conn: Connection, now: datetime, event_id: uuid.UUID, event_type: str, body: dict[str, Any]
) -> int:
    """One delivery per live endpoint subscribed to `event_type`, each queued; how many."""
    endpoints = conn.execute(
        select(endpoint_t.c.id, endpoint_t.c.events).where(endpoint_t.c.deleted_at.is_(None))
    ).all()
    count = 0
    for endpoint_id, events in endpoints:
        if event_type not in (events or ()):
            continue
        delivery_id = uuid.uuid4()
        conn.execute(
            insert(delivery_t).values(
                id=delivery_id,
                endpoint_id=endpoint_id,
                event_id=event_id,
                event_type=event_type,
                body=body,
                status=PENDING,
                tries=0,
                created_at=now,
                give_up_at=None,
                next_try_at=now,
            )
        )
        enqueue(conn, DELIVERY, {"delivery_id": str(delivery_id)}, now=now)
        count += 1
    return count


@dataclass(frozen=True)
class Page:
    """One page of a list, newest first, and the cursor of the next one."""

    items: list[dict[str, Any]]
    next_cursor: str | None


def _iso(value: datetime | None) -> datetime | None:
    return as_utc(value) if value is not None else None


def endpoint_view(row: Any) -> dict[str, Any]:
    """An endpoint as the admin API shows it: never its secret."""
    return {
        "id": str(row.id),
        "url": row.url,
        "events": list(row.events or ()),
        "created_at": as_utc(row.created_at),
        "created_by": row.created_by,
    }


def delivery_view(row: Any) -> dict[str, Any]:
    """A delivery as the admin API shows it: where it stands, and the last answer."""
    return {
        "id": str(row.id),
        "endpoint_id": str(row.endpoint_id),
        "event_id": str(row.event_id),
        "event_type": row.event_type,
        "status": row.status,
        "tries": row.tries,
        "created_at": as_utc(row.created_at),
        "next_try_at": _iso(row.next_try_at) if row.status in QUEUED else None,
        "last_tried_at": _iso(row.last_tried_at),
        "delivered_at": _iso(row.delivered_at),
        "give_up_at": _iso(row.give_up_at),
        "last_answer": {"status": row.last_status, "body": row.last_answer}
        if row.last_tried_at is not None
        else None,
        "body": dict(row.body or {}),
    }


def _uuid(value: object, error: RecoveryError) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        raise error from None


class Webhooks:
    """Registering endpoints, and reading or replaying their deliveries (sync: the admin
    API runs these on the database's threads)."""

    def __init__(
        self,
        db: Database,
        clock: Clock,
        *,
        known_events: Sequence[str],
        allow_private: bool,
        give_up_after: timedelta,
    ) -> None:
        self.db = db
        self.clock = clock
        self.known_events = tuple(known_events)
        self.allow_private = allow_private
        self.give_up_after = give_up_after

    def register_sync(self, url: object, events: object, created_by: str) -> tuple[str, str]:
        """A new endpoint for `events` at `url`: its (id, secret); the secret is shown once."""
        url = check_url_form(url)
        if not isinstance(events, list | tuple) or not events:
            raise InvalidInput("events", "name at least one event type")
        unknown = [e for e in events if not isinstance(e, str) or e not in self.known_events]
        if unknown:
            raise InvalidInput(
                "events",
                "event types must be among: {choices}",
                choices=", ".join(self.known_events),
            )
        refusal = resolve_refusal(url, self.allow_private)
        if refusal is not None:
            raise UrlRefused(refusal)
        endpoint_id, secret = uuid.uuid4(), new_secret()
        with self.db.transaction() as conn:
            conn.execute(
                insert(endpoint_t).values(
                    id=endpoint_id,
                    url=url,
                    events=list(dict.fromkeys(events)),
                    secret=secret,
                    created_at=self.clock.now(),
                    created_by=created_by[:100],
                )
            )
        return str(endpoint_id), secret

    def _endpoint(self, conn: Connection, endpoint_id: object) -> Any:
        found = conn.execute(
            select(endpoint_t).where(
                endpoint_t.c.id == _uuid(endpoint_id, WebhookNotFound()),
                endpoint_t.c.deleted_at.is_(None),
            )
        ).first()
        if found is None:
            raise WebhookNotFound()
        return found

    def list_sync(self) -> list[dict[str, Any]]:
        """Every live endpoint, newest first."""
        with self.db.transaction(write=False) as conn:
            rows = conn.execute(
                select(endpoint_t)
                .where(endpoint_t.c.deleted_at.is_(None))
                .order_by(endpoint_t.c.created_at.desc(), endpoint_t.c.id.desc())
            ).all()
        return [endpoint_view(r) for r in rows]

    def get_sync(self, endpoint_id: object) -> dict[str, Any]:
        with self.db.transaction(write=False) as conn:
            return endpoint_view(self._endpoint(conn, endpoint_id))

    def delete_sync(self, endpoint_id: object) -> None:
        """The endpoint receives nothing more; its queued deliveries are given up."""
        now = self.clock.now()
        with self.db.transaction() as conn:
            found = self._endpoint(conn, endpoint_id)
            conn.execute(
                update(endpoint_t).where(endpoint_t.c.id == found.id).values(deleted_at=now)
            )
            conn.execute(
                update(delivery_t)
                .where(delivery_t.c.endpoint_id == found.id, delivery_t.c.status.in_(QUEUED))
                .values(status=DEAD, last_answer="the endpoint was deleted")
            )

    def deliveries_sync(
        self,
        endpoint_id: object,
        *,
        status: str | None = None,
        limit: int = DEFAULT_PAGE,
        cursor: str | None = None,
    ) -> Page:
        """The endpoint's deliveries, newest first, one keyset page at a time."""
        if status is not None and status not in STATUSES:
            raise InvalidInput(
                "status", "status must be one of: {choices}", choices=", ".join(STATUSES)
            )
        if not 1 <= limit <= MAX_PAGE:
            raise InvalidInput("limit", "limit must be between 1 and {most}", most=MAX_PAGE)
        after = decode_cursor(cursor) if cursor is not None else None
        with self.db.transaction(write=False) as conn:
            endpoint = self._endpoint(conn, endpoint_id)
            query = (
                select(delivery_t)
                .where(delivery_t.c.endpoint_id == endpoint.id)
                .order_by(delivery_t.c.created_at.desc(), delivery_t.c.id.desc())
                .limit(limit + 1)
            )
            if status is not None:
                query = query.where(delivery_t.c.status == status)
            if after is not None:
                query = query.where(tuple_(delivery_t.c.created_at, delivery_t.c.id) < after)
            rows = conn.execute(query).all()
        more = len(rows) > limit
        rows = rows[:limit]
        next_cursor = encode_cursor(rows[-1].created_at, rows[-1].id) if more else None
        return Page([delivery_view(r) for r in rows], next_cursor)

    def delivery_sync(self, endpoint_id: object, delivery_id: object) -> dict[str, Any]:
        with self.db.transaction(write=False) as conn:
            return delivery_view(self._delivery(conn, endpoint_id, delivery_id))

    def _delivery(self, conn: Connection, endpoint_id: object, delivery_id: object) -> Any:
        endpoint = self._endpoint(conn, endpoint_id)
        found = conn.execute(
            select(delivery_t).where(
                delivery_t.c.id == _uuid(delivery_id, DeliveryNotFound()),
                delivery_t.c.endpoint_id == endpoint.id,
            )
        ).first()
        if found is None:
            raise DeliveryNotFound()
        return found

    def replay_sync(self, endpoint_id: object, delivery_id: object) -> dict[str, Any]:
        """Send a delivered or dead-lettered delivery again (the same body and id, a fresh
        day of retries); `DeliveryQueued` if it is still on its way."""
        now = self.clock.now()
        with self.db.transaction() as conn:
            found = self._delivery(conn, endpoint_id, delivery_id)
            if found.status in QUEUED:
                raise DeliveryQueued()
            conn.execute(
                update(delivery_t)
                .where(delivery_t.c.id == found.id)
                .values(status=PENDING, next_try_at=now, give_up_at=now + self.give_up_after)
            )
            enqueue(conn, DELIVERY, {"delivery_id": str(found.id)}, now=now)
            found = self._delivery(conn, endpoint_id, delivery_id)
        return delivery_view(found)
