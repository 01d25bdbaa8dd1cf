"""Per-client-IP rate limits on every endpoint but the probes, and who the client is.

Litestar's `RateLimitMiddleware` does the counting in a store (memory, or
Redis when several processes share the limits). What is ours:

- the key is the client IP *and* the endpoint (its route template, so
  `/api/support/attempts/{id}` is one endpoint whatever the id), so each endpoint
  has its own budget (Litestar's default key is the IP alone);
- three budgets: POSTs of the public API and pages (`public_rate_limit_per_minute`),
  public GETs and every other method (`public_get_rate_limit_per_minute`: pages,
  link checks, diagrams, /metrics, static files), and the support API
  (`support_rate_limit_per_minute`, higher: agents click a lot, but a request with
  a bad key is audited, so it must not be free either);
- `/health` and `/ready` are not limited: a probe asks every few seconds from one
  address, and a 429 there would take a healthy process out of rotation; neither
  does more than one cheap query;
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
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import CacheObject, RateLimitConfig, RateLimitMiddleware
from litestar.stores.base import Store
from litestar.stores.memory import MemoryStore
from litestar.types import Receive, Scope, Send

STORE_NAME = "rate_limit"
WINDOW_SECONDS = 60
PROBES = ("/health", "/ready")
SUPPORT_PREFIX = "/api/support"
# The APIs that need a key: agents and applications click and call a lot.
KEYED_PREFIXES = (SUPPORT_PREFIX, "/api/admin")
# The support console: agents' budget, but its sign-in counts as a public form.
CONSOLE_PREFIX = "/support"
CONSOLE_SIGN_IN = ("/support/login", "/support/login/code")
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


@dataclass
class BudgetedRateLimitConfig(RateLimitConfig):
    """Litestar's config, plus the rule that picks each request's budget (None: unlimited)."""

    budget_for: Callable[[Request[Any, Any, Any]], int | None] = field(default=lambda _r: None)


class QuietRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's middleware with a budget per kind of request, headers only on refusals,
    and `Retry-After` among them."""

    config: BudgetedRateLimitConfig

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope["litestar_app"]
        request: Request[Any, Any, Any] = app.request_class(scope)
        budget = self.config.budget_for(request)
        if budget is not None:
            store = self.config.get_store_from_app(app)
            key = self.cache_key_from_request(request)
            async with self._lock:
                history = await self.retrieve_cached_history(key, store)
                if len(history.history) >= budget:
                    raise TooManyRequestsException(headers=_refusal_headers(history, budget))
                await self.set_cached_history(key=key, cache_object=history, store=store)
        await self.app(scope, receive, send)


def _refusal_headers(history: CacheObject, budget: int) -> dict[str, str]:
    left = history.reset - int(time.time())
    return {
        "RateLimit-Policy": f"{budget}; w={WINDOW_SECONDS}",
        "RateLimit-Limit": str(budget),
        "RateLimit-Remaining": "0",
        "RateLimit-Reset": str(max(0, left)),
        "Retry-After": str(max(1, left)),
    }


@dataclass(frozen=True)
class Budgets:
    """Requests a minute per client IP and endpoint, by kind of request."""

    post: int
    read: int
    support: int


def rate_limit_config(budgets: Budgets, trusted_proxies: Iterable[str]) -> RateLimitConfig:
    """Limit every endpoint but the probes, per client IP and endpoint (see the module)."""
    trusted = parse_networks(tuple(trusted_proxies))

    def identify(request: Any) -> str:
        # The route template names the endpoint; the raw path only where there is none.
        endpoint = request.scope.get("path_template") or request.scope.get("path", "")
        return f"{client_ip(request, trusted)}::{request.method}::{endpoint}"

    def budget_for(request: Any) -> int | None:
        # The template, not the path: a mount (static files) sees only its remainder.
        endpoint = request.scope.get("path_template") or request.scope.get("path", "")
        if endpoint in PROBES:
            return None
        if endpoint.startswith(KEYED_PREFIXES):
            return budgets.support
        in_console = endpoint == CONSOLE_PREFIX or endpoint.startswith(CONSOLE_PREFIX + "/")
        if in_console and endpoint not in CONSOLE_SIGN_IN:
            return budgets.support
        return budgets.post if request.method == "POST" else budgets.read

    return BudgetedRateLimitConfig(
        rate_limit=("minute", budgets.post),
        identifier_for_request=identify,
        middleware_class=QuietRateLimitMiddleware,
        store=STORE_NAME,
        budget_for=budget_for,
    )


def rate_limit_store(redis_url: str | None) -> Store:
    """A store private to this app, or Redis shared by every process."""
    if redis_url:
        from litestar.stores.redis import RedisStore

        return RedisStore.with_client(url=redis_url, namespace="recovery-rate-limit")
    return MemoryStore()
