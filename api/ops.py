"""Operations endpoints: /health (alive), /ready (database and migrations), /metrics (Prometheus).

Each application has its own `CollectorRegistry`, so several apps in one
process (tests) never share counters. Attempts by state, transitions by
event and the dispatcher's queue depth are read from the database at scrape
time: the database is shared by every API process and worker, so these
numbers are the whole deployment's, not one process's. Mail send latency is
observed in-process, from the dispatcher's `on_send` callback.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

from litestar import Request, Response, get
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select, text

from api.app import SKIP_HOST_CHECK, Services
from api.schemas import Health, Ready
from engine.core import attempt_t, event_t

MAIL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
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
        with engine.db.transaction(write=False) as conn:
            by_state = {
                (flow, state): n
                for flow, state, n in conn.execute(
                    select(attempt_t.c.flow, attempt_t.c.state, func.count()).group_by(
                        attempt_t.c.flow, attempt_t.c.state
                    )
                )
            }
            fired = conn.execute(
                select(attempt_t.c.flow, event_t.c.event, event_t.c.accepted, func.count())
                .select_from(event_t.join(attempt_t, attempt_t.c.id == event_t.c.attempt_id))
                .group_by(attempt_t.c.flow, event_t.c.event, event_t.c.accepted)
            ).all()
        for spec in engine.flows:
            # Every state is reported, zero included, so dashboards see a steady series set.
            for state in spec.states:
                attempts.add_metric([spec.name, state], by_state.pop((spec.name, state), 0))
        for (flow, state), n in by_state.items():  # stored rows of unknown flows or states
            attempts.add_metric([flow, state], n)
        for flow, event, accepted, n in fired:
            transitions.add_metric([flow, event, "true" if accepted else "false"], n)
        yield attempts
        yield transitions
        dispatcher = self.services.dispatcher
        if dispatcher is not None:
            depth = GaugeMetricFamily(
                "recovery_dispatch_queue_depth",
                "Requested attempts and notifications waiting for the mail worker",
            )
            depth.add_metric([], dispatcher.queue_depth())
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
        """The dispatcher's `on_send` callback."""
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


@get(
    "/metrics",
    opt=OPS_OPT,
    summary="Prometheus metrics",
    tags=["operations"],
    media_type="text/plain",
)
async def metrics(
    request: Request[Any, Any, Any], services: NamedDependency[Services]
) -> Response[bytes]:
    registry: Metrics = request.app.state["metrics"]
    body = await services.engine.db.run(registry.render, write=False)
    # Given as a header, the exposition format's type is sent as is: as a media
    # type, Litestar appends a second `charset` to it, which scrapers refuse.
    return Response(
        content=body, media_type="text/plain", headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


route_handlers: list[Any] = [health, ready, metrics]
