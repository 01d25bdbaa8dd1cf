"""The flows endpoints: the registered flows, each described as JSON, and their diagrams.

Mermaid and DOT are text made in Python; SVG and PNG are rendered by
Graphviz's `dot` program on a worker thread, and without Graphviz the answer
is a 501 that says so (and suggests the text formats).

Rendered diagrams are kept (`api.diagram_cache`): a flow's diagram changes only
with its version, an attempt's only with its state and path, so Graphviz runs
once per distinct diagram, however many ask for it at once.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from litestar import Response, Router, get
from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIMediaType, OpenAPIResponse, OpenAPIType, Operation, Schema
from litestar.params import FromPath, QueryParameter

from api.errors import InvalidInput
from api.services import Services
from api.web.diagram_cache import DiagramCache, DiagramKey
from api.web.errors import documented
from api.web.schemas import FlowList, FlowSummary
from engine import diagrams
from engine.flow import FlowSpec

MEDIA_TYPES = {
    "svg": "image/svg+xml",
    "png": "image/png",
    # Litestar adds "; charset=utf-8" to every text/* type itself.
    "dot": "text/vnd.graphviz",
    "mermaid": "text/plain",
}
ALL_FORMATS = tuple(MEDIA_TYPES)
# An attempt's diagram is for reading on screen: no PNG.
ATTEMPT_FORMATS = ("svg", "dot", "mermaid")


def diagram_operation(formats: Sequence[str]) -> type[Operation]:
    """The OpenAPI operation of a diagram route: its 200 answer lists each format's media type.

    Litestar documents one media type per route; a diagram answers in the one
    the `format` parameter picks (SVG by default), so each it serves is listed.
    """

    @dataclass
    class DiagramOperation(Operation):
        def __post_init__(self) -> None:
            ok = (self.responses or {}).get("200")
            if isinstance(ok, OpenAPIResponse):
                ok.content = {
                    MEDIA_TYPES[fmt].split(";")[0]: OpenAPIMediaType(
                        schema=Schema(type=OpenAPIType.STRING)
                    )
                    for fmt in formats
                }

    return DiagramOperation


def format_parameter(formats: Sequence[str]) -> Any:
    """The `format` query parameter, its values listed in the schema."""
    return QueryParameter(description=" | ".join(formats), schema_extra={"enum": list(formats)})


def check_format(value: str, allowed: Sequence[str] = ALL_FORMATS) -> str:
    """`value` if it is exactly one of `allowed`, else `InvalidInput` (400)."""
    if value not in allowed:
        raise InvalidInput("format", "format must be one of: {choices}", choices=", ".join(allowed))
    return value


def _render(
    spec: FlowSpec, fmt: str, current: str | None, path: Sequence[tuple[str | None, str, str]]
) -> bytes:
    if fmt == "mermaid":
        return diagrams.mermaid(spec, current=current, path=path).encode()
    if fmt == "dot":
        return diagrams.dot(spec, current=current, path=path).encode()
    render = diagrams.svg if fmt == "svg" else diagrams.png
    return render(spec, current=current, path=path)


async def render_diagram(
    cache: DiagramCache,
    spec: FlowSpec,
    fmt: str,
    *,
    current: str | None = None,
    path: Sequence[tuple[str | None, str, str]] = (),
) -> Response[bytes]:
    """The diagram as a response; `GraphvizMissing` (501) for svg/png without Graphviz."""
    key: DiagramKey = (spec.name, spec.version, fmt, current, tuple(path))
    body = await cache.get(key, functools.partial(_render, spec, fmt, current, path))
    return Response(content=body, media_type=MEDIA_TYPES[fmt], status_code=200)


@get("/", summary="The registered flows", responses=documented(429, database=False))
async def list_flows(services: NamedDependency[Services]) -> FlowList:
    return FlowList(
        items=[
            FlowSummary(name=spec.name, version=spec.version, description=spec.description)
            for spec in services.engine.flows
        ]
    )


@get(
    "/{name:str}",
    summary="A flow's states, events, transitions and deadlines",
    responses=documented(400, 404, 429, database=False),
)
async def describe_flow(services: NamedDependency[Services], name: FromPath[str]) -> dict[str, Any]:
    return services.engine.flows.get(name).describe()


@get(
    "/{name:str}/diagram",
    summary="A flow's diagram",
    responses=documented(400, 404, 429, 501, database=False),
    media_type="text/plain",
    operation_class=diagram_operation(ALL_FORMATS),
)
async def flow_diagram(
    services: NamedDependency[Services],
    name: FromPath[str],
    format: Annotated[str, format_parameter(ALL_FORMATS)] = "svg",
) -> Response[bytes]:
    spec = services.engine.flows.get(name)
    return await render_diagram(services.diagrams, spec, check_format(format))


router = Router(
    path="/api/flows", route_handlers=[list_flows, describe_flow, flow_diagram], tags=["flows"]
)

route_handlers: list[Any] = [router]
