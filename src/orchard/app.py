"""The FastAPI application: routers under /api/v1, Segment-compatible tracking under /v1, local docs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from orchard import __version__
from orchard.api import api_router
from orchard.docs_ui import install_docs
from orchard.errors import install_handlers
from orchard.events import ingest_pg
from orchard.idempotency.middleware import IdempotencyMiddleware
from orchard.imports.jobs import lifespan as jobs_lifespan
from orchard.loyalty import spend_pg
from orchard.messaging.links import router as links_router
from orchard.tracking.endpoints import router as tracking_router

DESCRIPTION = """Orchard 会员运营 CRM 的开放接口。

认证：`Authorization: Bearer <access token 或 API key>`。金额单位为分（fen）；时间为 ISO 8601，
不带时区的时间按租户时区（默认 Asia/Shanghai）解释。错误为 RFC 9457 `application/problem+json`。
写操作支持 `Idempotency-Key` 头。文件导入（`POST /api/v1/imports`）在后台运行，轮询任务状态即可。"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The thin spend and ingest paths' connection pools (PostgreSQL), then the import worker and the
    scheduler."""
    async with spend_pg.pool_for(app), ingest_pg.pool_for(app), jobs_lifespan(app):
        yield


def create_app() -> FastAPI:
    app = FastAPI(title="Orchard", version=__version__, description=DESCRIPTION, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", lifespan=lifespan)
    install_handlers(app)
    app.include_router(api_router)
    app.include_router(tracking_router)
    app.include_router(links_router)
    install_docs(app)
    spend_pg.install(app)  # inside the Idempotency-Key middleware: keyed spends are recorded as before
    ingest_pg.install(app)  # likewise for single events and batches of events
    app.add_middleware(IdempotencyMiddleware)

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
