"""Per-client-IP rate limits on every endpoint but the probes, and who the client is.

Litestar's `RateLimitMiddleware` is the frame (its configuration, its
exclusions); the counting is ours, in `WindowCounters`: in memory, or in Redis
when several processes share the limits. Litestar's own counting keeps every
request's timestamp of the window in its store, JSON-encoded, and reads and
rewrites the whole list under a process-wide lock on every request: O(budget)
work per request (under load with a high budget, a quarter of the server's CPU)
and, with Redis, two round trips during which no other request of the process
is counted. The window is the same (it starts at a key's first request and
lasts `WINDOW_SECONDS`; a refused request does not count), but a window is two
numbers: when it ends and how many requests it admitted. In memory that is a
dict read and written without awaiting anything (the event loop runs one
request at a time, so no lock is needed); in Redis, one atomic script per
request (one round trip, and exact across processes, where a read then a
write was not). What else is ours:

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
from typing import Any, Protocol

from litestar.connection import ASGIConnection
from litestar.exceptions import TooManyRequestsException
from litestar.middleware.rate_limit import RateLimitConfig, RateLimitMiddleware
from litestar.types import Receive, Scope, Send

WINDOW_SECONDS = 60
# Where the windows live: a key prefix (Litestar's middleware's name, as its keys had),
# and in Redis a namespace of their own.
KEY_PREFIX = "QuietRateLimitMiddleware"
REDIS_NAMESPACE = "recovery-rate-limit"
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
    return scope_client_ip(connection.scope, trusted)


def scope_client_ip(scope: Scope, trusted: tuple[Network, ...]) -> str:
    """`client_ip` from the ASGI scope itself (no request object needed)."""
    client = scope.get("client")
    peer = str(client[0]) if client else ""
    if not trusted:
        return peer or "unknown"
    peer_ip = _ip(peer)
    if peer_ip is None or not any(peer_ip in net for net in trusted):
        return peer or "unknown"
    forwarded = ",".join(
        value.decode("latin-1")
        for name, value in scope.get("headers", ())
        if name.lower() == b"x-forwarded-for"
    )
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


class WindowCounters(Protocol):
    """Requests counted per key over windows of `WINDOW_SECONDS` from each key's first."""

    async def hit(self, key: str, budget: int) -> int | None:
        """Count one request against `key` unless its window already admitted `budget`:
        None if admitted, else the seconds until the window ends (refused)."""
        ...

    async def close(self) -> None:
        """Release what the counters hold (a connection)."""
        ...


class MemoryCounters:
    """The windows of one process, in a dict: `key -> [ends_at, admitted]`.

    Nothing here awaits, so one request's read and write of its window cannot
    interleave with another's. Windows that have ended are dropped once per
    window length, so the dict holds at most a minute's worth of keys.
    """

    def __init__(self, window_seconds: int = WINDOW_SECONDS) -> None:
        self.window_seconds = window_seconds
        self._windows: dict[str, list[int]] = {}
        self._prune_at = 0

    def hit_now(self, key: str, budget: int, now: int) -> int | None:
        window = self._windows.get(key)
        if window is None or window[0] <= now:
            if now >= self._prune_at:
                self._prune(now)
            window = self._windows[key] = [now + self.window_seconds, 0]
        if window[1] >= budget:
            return window[0] - now
        window[1] += 1
        return None

    def _prune(self, now: int) -> None:
        self._windows = {k: w for k, w in self._windows.items() if w[0] > now}
        self._prune_at = now + self.window_seconds

    async def hit(self, key: str, budget: int) -> int | None:
        # Wall-clock seconds, as Litestar's counting used: freezegun moves them in tests.
        return self.hit_now(key, budget, int(time.time()))

    async def close(self) -> None:
        self._windows.clear()


# KEYS[1] the window's key; ARGV[1] the budget, ARGV[2] the window's length in seconds.
# Returns {admitted (1 or 0), seconds until the window ends}.
_REDIS_HIT = """
local admitted = tonumber(redis.call('GET', KEYS[1]) or '0')
if admitted >= tonumber(ARGV[1]) then
  return {0, redis.call('TTL', KEYS[1])}
end
if redis.call('INCR', KEYS[1]) == 1 then
  redis.call('EXPIRE', KEYS[1], ARGV[2])
end
return {1, redis.call('TTL', KEYS[1])}
"""


class RedisCounters:
    """The windows of every process sharing one Redis: a key per window that expires
    with it, read and counted by one script (atomic in Redis, one round trip)."""

    def __init__(
        self, url: str, namespace: str = REDIS_NAMESPACE, window_seconds: int = WINDOW_SECONDS
    ) -> None:
        from redis.asyncio import Redis

        self.window_seconds = window_seconds
        self.namespace = namespace
        self._redis = Redis.from_url(url)
        self._script = self._redis.register_script(_REDIS_HIT)

    async def hit(self, key: str, budget: int) -> int | None:
        admitted, ttl = await self._script(
            keys=[f"{self.namespace}:{key}"], args=[budget, self.window_seconds]
        )
        if admitted:
            return None
        # -1 / -2 (no expiry, no key) cannot happen inside the script; be safe anyway.
        return int(ttl) if int(ttl) > 0 else self.window_seconds

    async def close(self) -> None:
        # The pool's connections belong to this event loop; a later start opens new ones.
        await self._redis.connection_pool.disconnect()


@dataclass
class BudgetedRateLimitConfig(RateLimitConfig):
    """Litestar's config, plus the rule that picks each request's budget (None: unlimited)
    and the counters that count."""

    budget_for: Callable[[Scope], int | None] = field(default=lambda _s: None)
    identify: Callable[[Scope], str] = field(default=lambda _s: "")
    counters: WindowCounters = field(default_factory=MemoryCounters)


class QuietRateLimitMiddleware(RateLimitMiddleware):
    """Litestar's middleware with a budget per kind of request, our counters, headers only
    on refusals, and `Retry-After` among them."""

    config: BudgetedRateLimitConfig

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = self.config
        budget = config.budget_for(scope)
        if budget is not None:
            key = f"{KEY_PREFIX}::{config.identify(scope)}"
            route_handler = scope.get("route_handler")
            if getattr(route_handler, "is_mount", False):
                key += "::mount"
            if getattr(route_handler, "is_static", False):
                key += "::static"
            left = await config.counters.hit(key, budget)
            if left is not None:
                raise TooManyRequestsException(headers=_refusal_headers(left, budget))
        await self.app(scope, receive, send)


def _refusal_headers(left: int, budget: int) -> dict[str, str]:
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


def rate_limit_config(
    budgets: Budgets, trusted_proxies: Iterable[str], counters: WindowCounters
) -> RateLimitConfig:
    """Limit every endpoint but the probes, per client IP and endpoint (see the module)."""
    trusted = parse_networks(tuple(trusted_proxies))

    def endpoint(scope: Scope) -> str:
        # The route template names the endpoint (a mount, static files, sees only its
        # remainder in the path); the raw path only where there is none.
        return scope.get("path_template") or scope.get("path", "")

    def identify(scope: Scope) -> str:
        return f"{scope_client_ip(scope, trusted)}::{scope['method']}::{endpoint(scope)}"

    def budget_for(scope: Scope) -> int | None:
        name = endpoint(scope)
        if name in PROBES:
            return None
        if name.startswith(KEYED_PREFIXES):
            return budgets.support
        in_console = name == CONSOLE_PREFIX or name.startswith(CONSOLE_PREFIX + "/")
        if in_console and name not in CONSOLE_SIGN_IN:
            return budgets.support
        return budgets.post if scope["method"] == "POST" else budgets.read

    return BudgetedRateLimitConfig(
        rate_limit=("minute", budgets.post),
        middleware_class=QuietRateLimitMiddleware,
        budget_for=budget_for,
        identify=identify,
        counters=counters,
    )


def rate_limit_counters(redis_url: str | None) -> WindowCounters:
    """Counters private to this app, or in Redis, shared by every process."""
    if redis_url:
        return RedisCounters(redis_url)
    return MemoryCounters()
