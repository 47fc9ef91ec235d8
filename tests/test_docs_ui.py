"""The self-hosted docs pages must not pull anything from a CDN or other third-party host."""

from __future__ import annotations

import re

import pytest
from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient

from orchard.docs_ui import STATIC_DIR, install_docs

CDN_MARKERS = ("cdn.", "jsdelivr", "unpkg", "googleapis", "tiangolo")
# Every src=/href= attribute value in the page.
ATTR_URL = re.compile(r"""\b(?:src|href)\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
# Any absolute (http/https) or protocol-relative URL anywhere in the page, including inline JS.
ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[\w.-]+""", re.IGNORECASE)


def make_client(root_path: str = "") -> TestClient:
    app = FastAPI(title="Orchard", docs_url=None, redoc_url=None)

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"ok": "yes"}

    install_docs(app)
    return TestClient(app, root_path=root_path)


@pytest.fixture(scope="module")
def client() -> TestClient:
    return make_client()


def assert_self_contained(html: str) -> None:
    lowered = html.lower()
    for marker in CDN_MARKERS:
        assert marker not in lowered, marker
    # No absolute/protocol-relative URL at all. (The only "URL-ish" value that is not a plain
    # relative path is Swagger's oauth2RedirectUrl, built at run time from window.location.origin.)
    assert ABSOLUTE_URL.findall(html) == []
    for url in ATTR_URL.findall(html):
        assert url.startswith("/static/"), url


@pytest.mark.parametrize(
    ("page", "expected_assets"),
    [
        (
            "/docs",
            [
                "/static/swagger-ui/swagger-ui-bundle.js",
                "/static/swagger-ui/swagger-ui.css",
                "/static/swagger-ui/favicon-32x32.png",
            ],
        ),
        ("/redoc", ["/static/redoc/redoc.standalone.js", "/static/swagger-ui/favicon-32x32.png"]),
    ],
)
def test_docs_page_is_self_hosted(client: TestClient, page: str, expected_assets: list[str]) -> None:
    resp = client.get(page)
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/html")
    html = resp.text
    assert "<title>Orchard – API 文档</title>" in html
    assert "'/openapi.json'" in html or '"/openapi.json"' in html
    assert sorted(ATTR_URL.findall(html)) == sorted(expected_assets)
    assert_self_contained(html)


def test_swagger_oauth2_redirect_is_origin_relative(client: TestClient) -> None:
    html = client.get("/docs").text
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    resp = client.get("/docs/oauth2-redirect")
    assert resp.status_code == 200
    assert "swaggerUIRedirectOauth2" in resp.text
    assert_self_contained(resp.text)


@pytest.mark.parametrize(
    ("path", "content_type", "min_size"),
    [
        ("/static/swagger-ui/swagger-ui-bundle.js", "javascript", 500_000),
        ("/static/swagger-ui/swagger-ui.css", "text/css", 50_000),
        ("/static/swagger-ui/favicon-32x32.png", "image/png", 100),
        ("/static/redoc/redoc.standalone.js", "javascript", 500_000),
    ],
)
def test_assets_are_served(client: TestClient, path: str, content_type: str, min_size: int) -> None:
    resp = client.get(path)
    assert resp.status_code == 200
    assert content_type in resp.headers["content-type"]
    assert len(resp.content) >= min_size


def test_licenses_are_vendored() -> None:
    for rel in ("swagger-ui/LICENSE", "swagger-ui/NOTICE", "redoc/LICENSE"):
        assert (STATIC_DIR / rel).stat().st_size > 0, rel


def test_docs_excluded_from_schema(client: TestClient) -> None:
    assert set(client.get("/openapi.json").json()["paths"]) == {"/ping"}


def test_existing_static_mount_is_reused() -> None:
    app = FastAPI(docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    install_docs(app)
    assert [getattr(r, "path", None) for r in app.routes].count("/static") == 1
    assert TestClient(app).get("/static/swagger-ui/swagger-ui.css").status_code == 200


def test_root_path_is_prefixed() -> None:
    html = make_client(root_path="/api").get("/docs").text
    assert 'src="/api/static/swagger-ui/swagger-ui-bundle.js"' in html
    assert "url: '/api/openapi.json'" in html
    assert "window.location.origin + '/api/docs/oauth2-redirect'" in html
