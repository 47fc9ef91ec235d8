"""Self-hosted interactive API docs (Swagger UI and ReDoc).

FastAPI's built-in ``/docs`` and ``/redoc`` pages load their JavaScript, CSS
and favicon from public CDNs (jsDelivr, fastapi.tiangolo.com). Those are
unreliable from mainland China and unreachable in offline / air-gapped
deployments, which leaves a blank docs page. Here the assets are vendored
under ``orchard/static`` (swagger-ui-dist 5.x, redoc 2.x standalone; licences
alongside) and served by the app itself, so the docs pages make no requests to
third-party hosts at load time.

Create the app with ``docs_url=None, redoc_url=None`` and call
:func:`install_docs` on it.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.routing import Mount

STATIC_DIR = Path(__file__).parent / "static"
STATIC_PREFIX = "/static"
SWAGGER_JS = f"{STATIC_PREFIX}/swagger-ui/swagger-ui-bundle.js"
SWAGGER_CSS = f"{STATIC_PREFIX}/swagger-ui/swagger-ui.css"
FAVICON = f"{STATIC_PREFIX}/swagger-ui/favicon-32x32.png"
REDOC_JS = f"{STATIC_PREFIX}/redoc/redoc.standalone.js"
OAUTH2_REDIRECT = "/docs/oauth2-redirect"


def install_docs(app: FastAPI) -> None:
    """Mount ``/static`` (if needed) and add ``/docs``, ``/docs/oauth2-redirect`` and ``/redoc``."""
    if not any(isinstance(r, Mount) and r.path == STATIC_PREFIX for r in app.routes):
        app.mount(STATIC_PREFIX, StaticFiles(directory=STATIC_DIR), name="static")
    if app.openapi_url is None:  # schema disabled: nothing to document (FastAPI does the same)
        return
    openapi_path = app.openapi_url
    title = app.title + " – API 文档"

    def _root(request: Request) -> str:
        # Honour a reverse-proxy root_path, as FastAPI's own docs routes do.
        return request.scope.get("root_path", "").rstrip("/")

    def _openapi_url(request: Request) -> str:
        return _root(request) + openapi_path

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui_html(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_swagger_ui_html(
            openapi_url=_openapi_url(request),
            title=title,
            swagger_js_url=root + SWAGGER_JS,
            swagger_css_url=root + SWAGGER_CSS,
            swagger_favicon_url=root + FAVICON,
            oauth2_redirect_url=root + OAUTH2_REDIRECT,
            init_oauth=app.swagger_ui_init_oauth,
            swagger_ui_parameters=app.swagger_ui_parameters,
        )

    @app.get(OAUTH2_REDIRECT, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc_html(request: Request) -> HTMLResponse:
        root = _root(request)
        return get_redoc_html(
            openapi_url=_openapi_url(request),
            title=title,
            redoc_js_url=root + REDOC_JS,
            redoc_favicon_url=root + FAVICON,  # default favicon is fetched from fastapi.tiangolo.com
            with_google_fonts=False,
        )
