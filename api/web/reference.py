"""The API reference page: Swagger UI at /schema/reference, from files served here.

Swagger UI 5 (the `swagger-ui-bundle-v2` package: it renders OpenAPI 3.1) is served
from this service under /reference/assets/, and the page starts it from a file of
ours (`static/reference.js`), never from an inline script: the site's CSP
(`default-src 'self'`) allows neither a CDN nor inline code. The page reads the same
document as /schema/openapi.json, with its examples (`api.web.examples`), and lets a
reader try each operation against this service ("Try it out").
"""

from __future__ import annotations

import html
from typing import Any

from litestar import Request, Router
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.static_files import create_static_files_router
from swagger_ui_bundle import swagger_ui_path

ASSETS_PATH = "/reference/assets"
PAGE_PATH = "/reference"
DOCUMENT_URL = "/schema/openapi.json"
# The Swagger UI files the page loads (the rest of the package is not served).
ASSETS = ("swagger-ui-bundle.js", "swagger-ui.css")


class ReferencePlugin(SwaggerRenderPlugin):
    """Swagger UI on local files, started by a script file (no inline script)."""

    def __init__(self) -> None:
        super().__init__(
            path=PAGE_PATH,
            js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            css_url=f"{ASSETS_PATH}/swagger-ui.css",
            standalone_preset_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            favicon="",
        )

    def render(self, request: Request[Any, Any, Any], openapi_schema: dict[str, Any]) -> bytes:
        title = html.escape(f"{openapi_schema['info']['title']}: API reference")
        page = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="{self.css_url}">
</head>
<body>
<main id="reference" data-document="{DOCUMENT_URL}" aria-label="{title}"></main>
<script src="{self.js_url}"></script>
<script src="/static/reference.js"></script>
</body>
</html>
"""
        return page.encode()


assets_router: Router = create_static_files_router(
    path=ASSETS_PATH,
    directories=[swagger_ui_path],
    name="reference-assets",
    include_in_schema=False,
    opt={"exclude_from_csrf": True},
)

route_handlers: list[Router] = [assets_router]
