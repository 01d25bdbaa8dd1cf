"""Per-client-IP rate limits on public POST endpoints, and who the client is.

Litestar's `RateLimitMiddleware` does the counting in a store (memory, or
Redis when several processes share the limits). Two things are ours:

- the key is the client IP *and* the path, so each endpoint has its own
  budget (Litestar's default key is the IP alone);
- successful answers carry no `RateLimit-*` headers. A header counting down
  would make two "Forgot password?" answers differ, and the contract is that
  they are byte-identical; a refused request gets them, plus `Retry-After`.

The client IP is the direct peer, unless that peer is a configured trusted
proxy: then `X-Forwarded-For` is read from the right, skipping trusted
proxies, and the first address that is not one is the client. A forged
header from an untrusted peer is ignored, so it cannot reset a counter.
"""

from __future__ import annotations

import functools
import ipaddress
import time
from collections.abc import Iterable
from typing import Any

from litestar.connection import ASGIConnection
from litestar.middleware.rate_limit import CacheObject, RateLimitConfig, RateLimitMiddleware
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.types import Send

STORE_NAME = "rate_limit"
MAX_FORWARDED_HOPS = 20

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@functools.lru_cache(maxsize=32)
def parse_networks(values: tuple[str, ...]) -> tuple[Network, ...]:
    """Trusted proxies as networks: single addresses or CIDR ranges."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values if v.strip())


def _ip(value: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value.strip().strip("[]"))
    except ValueError:
        return None


def client_ip(connection: ASGIConnection[Any, Any, Any, Any], trusted: tuple[Network, ...]) -> str:
    """The address of whoever sent the request (see the module docstring)."""
    peer = connection.client.host if connection.client else ""
    peer_ip = _ip(peer)
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer or "unknown"
    forwarded = ",".join(connection.headers.getall("x-forwarded-for", []))
    hops = [h.strip() for h in forwarded.split(",") if h.strip()][-MAX_FORWARDED_HOPS:]
    client = str(peer_ip)
    for hop in reversed(hops):
        hop_ip = _ip(hop)
        if hop_ip is None:
            break  # garbage from further left cannot be trusted
        client = str(hop_ip)
        if not any(hop_ip in net for net in trusted):
            break
    return client


class QuietRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's middleware, with headers only on refusals, and `Retry-After` among them."""

    def create_send_wrapper(self, send: Send, cache_object: CacheObject) -> Send:
        return send

    def create_response_headers(self, cache_object: CacheObject) -> dict[str, str]:
        headers = super().create_response_headers(cache_object)
        headers["Retry-After"] = str(max(1, cache_object.reset - int(time.time())))
        return headers


def rate_limit_config(per_minute: int, trusted_proxies: Iterable[str]) -> RateLimitConfig:
    """Limit every POST outside the support API (which needs a key) to `per_minute` per IP."""
    trusted = parse_networks(tuple(trusted_proxies))

    def identify(request: Any) -> str:
        return f"{client_ip(request, trusted)}::{request.url.path}"

    # async: Litestar would run a sync check on a worker thread for every request.
    async def applies(request: Any) -> bool:
        return request.method == "POST" and not request.url.path.startswith("/api/support")

    return RateLimitConfig(
        rate_limit=("minute", per_minute),
        identifier_for_request=identify,
        check_throttle_handler=applies,
        middleware_class=QuietRateLimitMiddleware,
        store=STORE_NAME,
    )


def rate_limit_store(redis_url: str | None) -> Store:
    """A store private to this app, or Redis shared by every process."""
    if redis_url:
        from litestar.stores.redis import RedisStore

        return RedisStore.with_client(url=redis_url, namespace="recovery-rate-limit")
    return MemoryStore()
