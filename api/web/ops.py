"""Operations endpoints: /health (alive), /ready (database and migrations), /metrics (Prometheus).

Each application has its own `CollectorRegistry`, so several apps in one
process (tests) never share counters. Attempts by state, transitions by
event and the worker's queue depth are read from the database at scrape
time: the database is shared by every API process and worker, so these
numbers are the whole deployment's, not one process's. They come from the
engine's running totals (`engine.tally`), so a scrape reads a handful of rows
rather than the attempt table and the whole event log. Mail send latency is
observed in-process, from the mail's `on_send` callback.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.exceptions import NotAuthorizedException
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import text

from api.services import Services
from api.settings import Settings
from api.web.errors import MetricsNotServed, documented
from api.web.schemas import Health, Ready
from engine.tally import ACCEPTED, ATTEMPTS, REFUSED

MAIL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# A route sets this opt to skip the host check (health probes use whatever
# name reaches the container; they build no links).
SKIP_HOST_CHECK = "skip_host_check"
OPS_OPT = {SKIP_HOST_CHECK: True, "exclude_from_csrf": True}


class _DatabaseCollector(Collector):
    """Gauges and counters read from the shared database when Prometheus scrapes."""

    def __init__(self, services: Services) -> None:
        self.services = services

    def collect(self) -> Iterator[Metric]:
        engine = self.services.engine
        attempts = GaugeMetricFamily(
            "recovery_attempts", "Attempts by flow and current state", labels=["flow", "state"]
        )
        transitions = CounterMetricFamily(
            "recovery_transitions",
            "Events fired at attempts, by flow, event and whether they were accepted",
            labels=["flow", "event", "accepted"],
        )
        # The engine's running totals: a handful of rows, whatever the history holds.
        totals = engine.totals_sync()
        by_state = {(f, name): n for (f, kind, name), n in totals.items() if kind == ATTEMPTS}
        for spec in engine.flows:
            # Every state is reported, zero included, so dashboards see a steady series set.
            for state in spec.states:
                attempts.add_metric([spec.name, state], by_state.pop((spec.name, state), 0))
        for (flow, state), n in sorted(by_state.items()):  # stored rows of unknown flows or states
            attempts.add_metric([flow, state], n)
        for (flow, kind, event), n in sorted(totals.items()):
            if kind in (ACCEPTED, REFUSED):
                transitions.add_metric([flow, event, "true" if kind == ACCEPTED else "false"], n)
        yield attempts
        yield transitions
        depth = GaugeMetricFamily(
            "recovery_dispatch_queue_depth",
            "Attempts waiting for their flow's automatic work, and side effects not yet run",
        )
        depth.add_metric([], self.services.worker.pending())
        yield depth


class Metrics:
    """One application's Prometheus registry."""

    def __init__(self, services: Services) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.mail_latency = Histogram(
            "recovery_mail_send_seconds",
            "Time the mail transport took to accept (or refuse) a message",
            labelnames=["outcome"],
            buckets=MAIL_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(_DatabaseCollector(services))

    def observe_send(self, seconds: float, outcome: str) -> None:
        """The mail's `on_send` callback."""
        self.mail_latency.labels(outcome=outcome).observe(seconds)

    def render(self) -> bytes:
        """The exposition text (queries the database: call it off the event loop)."""
        return generate_latest(self.registry)


@get("/health", opt=OPS_OPT, summary="Alive", tags=["operations"])
async def health() -> Health:
    return Health(status="ok")


def _database_answers(services: Services) -> bool:
    try:
        with services.engine.db.transaction(write=False) as conn:
            conn.execute(text("SELECT 1"))
        return True
    except Exception:
        return False


def _migrations_current(services: Services) -> bool:
    from api.migrate import is_current

    try:
        return is_current(services.settings.database_url)
    except Exception:
        return False


@get(
    "/ready",
    opt=OPS_OPT,
    summary="Ready: the database answers and its schema is at the newest migration",
    tags=["operations"],
    responses={503: ResponseSpec(data_container=Ready, description="Not ready")},
)
async def ready(services: NamedDependency[Services]) -> Response[Ready]:
    database = await services.engine.db.run(_database_answers, services, write=False)
    migrations = database and await asyncio.to_thread(_migrations_current, services)
    ok = database and migrations
    return Response(
        Ready(status="ok" if ok else "unavailable", database=database, migrations=migrations),
        status_code=HTTP_200_OK if ok else HTTP_503_SERVICE_UNAVAILABLE,
    )


def metrics_listener_port(settings: Settings) -> int | None:
    """The port of the metrics listener (RECOVERY_METRICS_LISTEN), or None."""
    address = settings.metrics_address
    return address[1] if address else None


def check_metrics_access(request: Request[Any, Any, Any], settings: Settings) -> None:
    """/metrics is never public: only on the metrics listener when one is configured,
    only with the bearer token when one is; with neither, not at all (404)."""
    port = metrics_listener_port(settings)
    if port is not None:
        # The socket the connection came in on (uvicorn fills `server` from it).
        server = request.scope.get("server")
        if not server or server[1] != port:
            raise MetricsNotServed()
    elif settings.metrics_token is None:
        raise MetricsNotServed()
    if settings.metrics_token is not None:
        scheme, _, given = (request.headers.get("authorization") or "").partition(" ")
        expected = settings.metrics_token.get_secret_value().encode()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            raise NotAuthorizedException()


@get(
    "/metrics",
    opt=OPS_OPT,
    summary="Prometheus metrics",
    description=(
        "Never public: answers with RECOVERY_METRICS_TOKEN as a bearer token, or only on "
        "the RECOVERY_METRICS_LISTEN address; 404 where it is not served."
    ),
    tags=["operations"],
    media_type="text/plain",
    security=[{"metrics_token": []}],
    responses=documented(401, 404, 429),
)
async def metrics(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[bytes]:
    check_metrics_access(request, services.settings)
    registry: Metrics = request.app.state["metrics"]
    body = await services.engine.db.run(registry.render, write=False)
    # Given as a header, the exposition format's type is sent as is: as a media
    # type, Litestar appends a second `charset` to it, which scrapers refuse.
    return Response(
        content=body, media_type="text/plain", headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


route_handlers: list[Any] = [health, ready, metrics]
