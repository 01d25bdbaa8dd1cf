"""Building the application: services from settings, then the Litestar app around them.

`create_app(settings)` builds everything per call, so each test (and each
server process) gets its own database pool, stores and metrics registry;
nothing lives at module level. Schema creation is not done here: `recovery
serve` applies migrations first, and tests create tables with fixtures.

What wraps every request:
- access log (outermost, so 404s are logged too): method, path without query,
  status, duration, request id (`api.logs`);
- security headers on every answer (Strict-Transport-Security too when the
  public base URL is https), and `Cache-Control: no-store` on the recovery,
  login and session answers (added by the access log's wrapper of `send`, so
  each answer passes one wrapper for both);
- allowed hosts (Litestar's middleware, answering in the JSON error shape);
- per-IP, per-endpoint rate limits on every endpoint but /health and /ready
  (`api.ratelimit`);
- a body size cap (`request_max_body_size`), and one exception table
  (`api.errors`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator
from typing import Any
from urllib.parse import urlsplit

from litestar import Litestar, Request
from litestar.config.allowed_hosts import AllowedHostsConfig
from litestar.datastructures import State
from litestar.di import Provide
from litestar.exceptions import InternalServerException, NotFoundException
from litestar.middleware.allowed_hosts import AllowedHostsMiddleware
from litestar.middleware.base import DefineMiddleware
from litestar.types import ASGIApp, Receive, Scope, Send

from api.accounts.passwords import PasswordHasher
from api.logs import AccessLogMiddleware, OnResponseStart, RawHeaders
from api.services import Services, build_services
from api.settings import Settings
from api.web import admin, assisted, assisted_pages, console, ops, pages, public, reference, support
from api.web import flows as flow_routes
from api.web.errors import ClientDisconnected, InvalidHost, JsonTooDeep, NotJson, exception_handlers
from api.web.openapi import RefinedJsonRenderPlugin, openapi_config
from api.web.ops import SKIP_HOST_CHECK
from api.web.ratelimit import Budgets, rate_limit_config, rate_limit_counters
from engine.clock import Clock

log = logging.getLogger("api.app")

# Host names that cannot belong to someone else on the internet: the loopback
# names. They let a probe or a scraper on the machine in; a link is never built
# from the Host header anyway (it comes from public_base_url), so they forge
# nothing. Any other name must be configured (RECOVERY_EXTRA_ALLOWED_HOSTS: tests
# add Litestar's TestClient name, testserver.local, there).
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1")
# Sent when the public base URL is https: browsers then refuse plain http for a year.
HSTS = "max-age=31536000"
METRICS_PATH = "/metrics"
CSP = "content-security-policy"
# Host header values whose verdict a HostGuard remembers.
HOST_VERDICTS = 256

SECURITY_HEADERS = {
    "content-security-policy": (
        "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "referrer-policy": "no-referrer",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
}
# The API reference page (Swagger UI) draws its icons as data: images; no other page may.
PAGE_CSP = {
    "/schema/reference": SECURITY_HEADERS["content-security-policy"] + "; img-src 'self' data:"
}
# Answers that can hold a token, a session or a person's data: never cached.
NO_STORE_PREFIXES = (
    "/api/recovery",
    "/api/assisted-recovery",
    "/api/login",
    "/api/logout",
    "/api/session",
    "/api/support",
    "/api/admin",
)
NO_STORE_PAGES = ("/recovery", "/assisted-recovery", "/login")


def allowed_hosts(settings: Settings) -> list[str]:
    """The host names the service answers to: the public one, the loopback names, and
    any configured in RECOVERY_EXTRA_ALLOWED_HOSTS."""
    return sorted({settings.public_host, *LOCAL_HOSTS, *settings.extra_allowed_hosts})


def _hostname(host_header: str) -> str:
    """`example.com:8000` → `example.com`; `[::1]:8000` → `::1`; "" when malformed.

    The port is checked too (`127.0.0.1:evil`, `localhost:99999` are malformed):
    anything that later builds the request's URL would raise on it.
    """
    try:
        parts = urlsplit(f"//{host_header}")
        parts.port  # noqa: B018  (raises ValueError on a bad port)
    except ValueError:
        return ""
    if parts.path or parts.query or parts.fragment or parts.username is not None:
        return ""
    return parts.hostname or ""


class RecoveryRequest(Request[Any, Any, Any]):
    """Litestar's request, with two ends of a body that are the client's doing, not ours:

    - JSON nested too deeply for the decoder is a 400: msgspec has no depth limit,
      and about 1,000 levels of `[` make it raise the builtin `RecursionError`,
      which Litestar would answer as a 500 with a traceback logged;
    - a client gone before its body was complete (or cut off by the server's body
      timeout) is `ClientDisconnected`, which Litestar would log as a 500.
    """

    async def json(self) -> Any:
        try:
            return await super().json()
        except RecursionError:
            raise JsonTooDeep() from None

    async def stream(self) -> AsyncGenerator[bytes, None]:
        try:
            async for chunk in super().stream():
                yield chunk
        except InternalServerException:
            # The only one Litestar's stream raises: "client disconnected prematurely".
            raise ClientDisconnected() from None


class HostGuard(AllowedHostsMiddleware):
    """Litestar's allowed-hosts middleware, matching the name without its port, and
    refusing with an exception so the answer has the JSON error shape.

    A client sends the same Host header on every request, so the verdict on each
    header value is remembered (up to `HOST_VERDICTS` values, then forgotten all at
    once): parsing it cost more than the rest of the check.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verdicts: dict[bytes, bool] = {}

    def _allowed(self, host: bytes) -> bool:
        verdict = self._verdicts.get(host)
        if verdict is None:
            assert self.allowed_hosts_regex is not None
            name = _hostname(host.decode("latin-1"))
            verdict = bool(name) and self.allowed_hosts_regex.fullmatch(name) is not None
            if len(self._verdicts) >= HOST_VERDICTS:
                self._verdicts.clear()
            self._verdicts[host] = verdict
        return verdict

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.allowed_hosts_regex is not None:
            host = next((value for name, value in scope["headers"] if name == b"host"), b"")
            if not self._allowed(host):
                raise InvalidHost()
        await self.app(scope, receive, send)


class MetricsListenerGuard:
    """On the metrics listener's socket (RECOVERY_METRICS_LISTEN) only /metrics answers:
    the listener is for the scraper, not a second way into the service."""

    def __init__(self, app: ASGIApp, port: int) -> None:
        self.app = app
        self.port = port

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if server and server[1] == self.port and scope.get("path") != METRICS_PATH:
            raise NotFoundException()
        await self.app(scope, receive, send)


JSON_MEDIA_TYPE = "application/json"


class JsonBodyGuard:
    """A handler that takes a JSON body takes it only as application/json (415 otherwise).

    Litestar parses any body as JSON whatever its Content-Type. A browser sends a
    cross-site POST with `text/plain` or a form type without a CORS preflight, so a
    third-party page could make visitors' browsers drive the JSON API; with
    application/json required, such a request needs a preflight this service never
    grants. A request with no body at all is left to the handler (a missing body is its
    400, an optional one is fine).

    A middleware after routing (it reads the route's handler from the scope) rather
    than a guard: Litestar copies the handler object for every guard call, which cost
    more than the check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._takes_data: dict[int, bool] = {}

    def _handler_takes_data(self, handler: Any) -> bool:
        takes = self._takes_data.get(id(handler))
        if takes is None:
            signature = getattr(handler, "parsed_fn_signature", None)
            takes = signature is not None and "data" in signature.parameters
            self._takes_data[id(handler)] = takes
        return takes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self._handler_takes_data(scope.get("route_handler")):
            _require_json(scope["headers"])
        await self.app(scope, receive, send)


def _require_json(headers: Any) -> None:
    content_type = length = None
    chunked = False
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == b"content-type":
            content_type = value if content_type is None else content_type
        elif name == b"content-length":
            length = value if length is None else length
        elif name == b"transfer-encoding":
            chunked = True
    if content_type is None:
        if chunked or length not in (None, b"0"):
            raise NotJson()
        return
    media_type = content_type.split(b";", 1)[0].strip().lower()
    if media_type != JSON_MEDIA_TYPE.encode():
        raise NotJson()


_NO_STORE_UNDER_PAGES = tuple(page + "/" for page in NO_STORE_PAGES)


def _needs_no_store(path: str) -> bool:
    return (
        path.startswith(NO_STORE_PREFIXES)
        or path in NO_STORE_PAGES
        or path.startswith(_NO_STORE_UNDER_PAGES)
    )


def security_headers(settings: Settings) -> OnResponseStart:
    """What every response gets (`AccessLogMiddleware` calls it at each response start):
    the security headers (a route may set a stricter CSP itself), Strict-Transport-Security
    when the site is https, and `Cache-Control: no-store` where an answer can hold a
    secret or a person's data."""
    always = dict(SECURITY_HEADERS)
    if urlsplit(settings.public_base_url).scheme == "https":
        always["strict-transport-security"] = HSTS
    defaults = [(name.encode(), value.encode()) for name, value in always.items()]
    cache_control = b"cache-control"
    no_store = (cache_control, b"no-store")
    # A page with its own CSP (the API reference's) gets it in place of the site's.
    page_defaults = {
        path: [(n, csp.encode() if n == CSP.encode() else v) for n, v in defaults]
        for path, csp in PAGE_CSP.items()
    }

    def add_security_headers(headers: RawHeaders, path: str) -> None:
        present = {name.lower() for name, _ in headers}
        chosen = page_defaults.get(path, defaults)
        headers.extend(header for header in chosen if header[0] not in present)
        if _needs_no_store(path):
            if cache_control in present:
                headers[:] = [h for h in headers if h[0].lower() != cache_control]
            headers.append(no_store)

    return add_security_headers


def create_app(
    settings: Settings,
    *,
    services: Services | None = None,
    run_worker: bool = False,
    hasher: PasswordHasher | None = None,
    clock: Clock | None = None,
) -> Litestar:
    """The application for `settings`.

    Services passed in belong to the caller (who closes them); services built
    here are closed when the application shuts down. With `run_worker`, the worker
    (every flow's automatic work: the mail among it) runs as a background task
    between startup and shutdown.
    """
    owned = services is None
    if services is None:
        services = build_services(settings, hasher=hasher, clock=clock)
    svc = services
    metrics = ops.Metrics(svc)
    if svc.mail.on_send is None:
        svc.mail.on_send = metrics.observe_send

    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []

    async def start_worker() -> None:
        if run_worker:
            stop.clear()
            tasks.append(asyncio.create_task(svc.worker.run_forever(stop)))
            log.info("worker started (every flow's automatic work, the mail among it)")

    async def stop_worker() -> None:
        stop.set()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        tasks.clear()

    async def close_database() -> None:
        await counters.close()
        if owned:
            svc.close()

    route_handlers: list[Any] = [
        *public.route_handlers,
        *assisted.route_handlers,
        *support.route_handlers,
        *admin.route_handlers(settings),
        *flow_routes.route_handlers,
        *ops.route_handlers,
    ]
    # The HTML pages (api/pages.py) bring their templates and the CSRF cookie of their forms.
    route_handlers.extend(pages.route_handlers)
    route_handlers.extend(assisted_pages.route_handlers)
    route_handlers.extend(reference.route_handlers)
    # The support console (api/web/console.py): its own templates and stylesheet.
    route_handlers.extend(console.route_handlers)
    template_config = pages.template_config()
    csrf_config = pages.csrf_config(settings)

    budgets = Budgets(
        post=settings.public_rate_limit_per_minute,
        read=settings.public_get_rate_limit_per_minute,
        support=settings.support_rate_limit_per_minute,
    )
    counters = rate_limit_counters(settings.redis_url)
    rate_limit = rate_limit_config(budgets, settings.trusted_proxies, counters)
    host_config = AllowedHostsConfig(
        allowed_hosts=allowed_hosts(settings),
        exclude_opt_key=SKIP_HOST_CHECK,
        www_redirect=False,
    )
    middleware: list[Any] = [DefineMiddleware(HostGuard, config=host_config)]
    if settings.metrics_address is not None:
        port = settings.metrics_address[1]
        middleware.append(DefineMiddleware(MetricsListenerGuard, port=port))
    middleware.append(rate_limit.middleware)
    middleware.append(DefineMiddleware(JsonBodyGuard))
    app = Litestar(
        route_handlers=route_handlers,
        dependencies={"services": Provide(lambda: svc, use_cache=True, sync_to_thread=False)},
        exception_handlers=exception_handlers(),
        middleware=middleware,
        request_class=RecoveryRequest,
        on_startup=[start_worker],
        on_shutdown=[stop_worker, close_database],
        after_exception=[support.audit_refusal],
        openapi_config=openapi_config(
            RefinedJsonRenderPlugin(svc.policy, svc.engine.flows), reference.ReferencePlugin()
        ),
        request_max_body_size=settings.max_body_bytes,
        template_config=template_config,
        csrf_config=csrf_config,
        state=State(
            {"services": svc, "metrics": metrics, console.STATE_KEY: console.room_for(svc)}
        ),
        logging_config=None,
        debug=False,
    )
    # Outermost, around Litestar's router: unmatched paths (404) are logged too, and every
    # answer, errors included, gets the security headers.
    app.asgi_handler = AccessLogMiddleware(app.asgi_handler, security_headers(settings))
    return app
