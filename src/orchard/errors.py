"""Business errors and the one place that turns every error into an RFC 9457 problem response.

A service raises an `OrchardError` subclass carrying its HTTP status and a machine `code`; handlers
here render `application/problem+json` with `type`, `title`, `status`, `detail`, `code` and, for
input errors, `errors: [{"field": "...", "reason": "..."}]`. Nothing else renders errors.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from orchard.kit import i18n

log = logging.getLogger("orchard")

PROBLEM = "application/problem+json"


class OrchardError(Exception):
    status_code = 400
    code = "bad_request"
    title = "请求无效"

    def __init__(self, detail: str | None = None, *, errors: list[dict[str, Any]] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.errors = errors or []
        self.extra = extra

    def to_problem(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "type": f"https://orchard.dev/problems/{self.code}",
            "title": self.title,
            "status": self.status_code,
            "detail": self.detail,
            "code": self.code,
        }
        if self.errors:
            body["errors"] = self.errors
        body.update(self.extra)
        return body


class InvalidInput(OrchardError):
    status_code = 422
    code = "invalid_input"
    title = "输入无效"

    @classmethod
    def field(cls, field: str, reason: str) -> InvalidInput:
        return cls(f"{field}: {reason}", errors=[{"field": field, "reason": reason}])


class NotFound(OrchardError):
    status_code = 404
    code = "not_found"
    title = "未找到"


class Conflict(OrchardError):
    status_code = 409
    code = "conflict"
    title = "冲突"


class Unauthorized(OrchardError):
    status_code = 401
    code = "unauthorized"
    title = "未认证"


class TooManyRequests(OrchardError):
    status_code = 429
    code = "too_many_requests"
    title = "请求过于频繁"


class Forbidden(OrchardError):
    status_code = 403
    code = "forbidden"
    title = "无权限"


def problem_response(status: int, body: dict[str, Any], headers: dict[str, str] | None = None,
                     request: Request | None = None) -> JSONResponse:
    if request is not None and "title" in body:
        body = {**body, "title": i18n.title(body["title"], request.headers.get("accept-language"))}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def orchard_problem(req: Request, exc: OrchardError) -> JSONResponse:
    """The response for a business error (the handler's, and the thin spend path's, which runs outside
    the exception middleware)."""
    headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
    if "retry_after" in exc.extra:
        headers = {"Retry-After": str(exc.extra["retry_after"])}
    return problem_response(exc.status_code, exc.to_problem(), headers, req)


def busy_problem(req: Request, exc: Exception) -> JSONResponse:
    """Every database connection stayed busy past the pool's wait: overload, not a fault. A 503 with
    Retry-After tells a POS or an integration to back off and retry (idempotently)."""
    log.warning("database connection pool exhausted: %s", exc)
    body = {"type": "https://orchard.dev/problems/server.busy", "title": "服务繁忙", "status": 503,
            "detail": "the server is busy; retry shortly", "code": "server.busy"}
    return problem_response(503, body, {"Retry-After": "2"}, req)


def _loc_to_field(loc: tuple | list) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or (str(loc[0]) if loc else "")


def validation_errors(exc_errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for e in exc_errors:
        loc = e.get("loc") or ("body",)
        if e.get("type") == "json_invalid":  # loc is ("body", <character offset>)
            reason = f"invalid JSON at character {loc[-1]}: {(e.get('ctx') or {}).get('error', 'decode error')}"
            out.append({"field": "body", "reason": reason, "in": "body"})
        else:
            out.append({"field": _loc_to_field(loc), "reason": e.get("msg", "invalid"), "in": str(loc[0])})
    return out


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(OrchardError)
    async def _orchard(req: Request, exc: OrchardError):
        return orchard_problem(req, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(req: Request, exc: RequestValidationError):
        errors = validation_errors(list(exc.errors()))
        detail = "; ".join(f"{e['field']}: {e['reason']}" for e in errors[:5])
        return problem_response(422, InvalidInput(detail, errors=errors).to_problem(), None, req)

    @app.exception_handler(DataError)
    async def _data(req: Request, exc: DataError):
        # The database refused a value the schemas let through (a NUL character in text, a number
        # out of the column's range): the client's input, not a server fault.
        log.info("database rejected a value: %s", exc.orig)
        return problem_response(422, InvalidInput("a value cannot be stored (e.g. it contains a NUL character "
                                                  "or is out of range)", code="invalid_input.unstorable").to_problem(),
                                None, req)

    @app.exception_handler(PoolTimeout)
    async def _busy(req: Request, exc: PoolTimeout):
        return busy_problem(req, exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(req: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed", 401: "unauthorized"}.get(exc.status_code, "http_error")
        body = {"type": f"https://orchard.dev/problems/{code}", "title": str(exc.detail),
                "status": exc.status_code, "detail": str(exc.detail), "code": code}
        return problem_response(exc.status_code, body, getattr(exc, "headers", None), req)

    @app.exception_handler(Exception)
    async def _unexpected(req: Request, exc: Exception):
        log.exception("unhandled error", exc_info=exc)
        body = {"type": "https://orchard.dev/problems/internal", "title": "内部错误", "status": 500,
                "detail": "internal error", "code": "internal"}
        return problem_response(500, body, None, req)
