"""Import routes: upload a file as a background job, follow it, download its error report.

`POST /imports` checks the credential, ends that transaction (an upload may take minutes and must
not hold SQLite's write lock or an idle PostgreSQL transaction), streams the body to the data
directory (`imports.uploads`), then queues the job and its audit row in one transaction, commits,
wakes the process's worker (`imports.jobs`) and answers 202 with the job and its `Location`.
"""

from __future__ import annotations

from pathlib import Path as FilePath
from typing import Annotated, Any
from urllib.parse import quote

from anyio import to_thread
from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.responses import FileResponse
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.auth.roles import Perm
from orchard.auth.service import Principal
from orchard.deps import Actor, SessionDep
from orchard.errors import Forbidden, NotFound
from orchard.imports import jobs, uploads
from orchard.imports.models import KINDS, ImportJob
from orchard.imports.schemas import ImportJobPage, ImportJobRead, Kind, Status
from orchard.kit import i18n

router = APIRouter(prefix="/imports", tags=["imports"])
JobId = Annotated[int, Path(ge=1, le=2**62)]
Limit = Annotated[int, Query(ge=1, le=200)]


def importer(principal: Actor(Perm.imports)) -> Principal:
    """`imports:run`, and not bound to a store: an import writes for every store and its error
    report holds raw rows of every store."""
    if principal.store_ids is not None:
        raise Forbidden("a store-bound credential may not use imports: they write and report data of every store",
                        code="auth.forbidden")
    return principal


Importer = Annotated[Principal, Depends(importer)]

_PROBLEM = {"application/problem+json": {"schema": {
    "type": "object", "required": ["type", "title", "status", "detail", "code"],
    "properties": {"type": {"type": "string"}, "title": {"type": "string"}, "status": {"type": "integer"},
                   "detail": {"type": "string"}, "code": {"type": "string"},
                   "errors": {"type": "array", "items": {"type": "object"}}}}}}
_UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {
    "schema": {
        "type": "object", "required": ["kind", "file"], "additionalProperties": False,
        "properties": {
            "kind": {"type": "string", "enum": list(KINDS), "description": "what the file holds"},
            "file": {"type": "string", "format": "binary",
                     "description": "CSV (UTF-8 with or without BOM, or GB18030) or XLSX (first sheet); "
                                    "the columns are those of `orchard import <kind>`"},
            "source": {"type": "string", "minLength": 1, "maxLength": 64, "pattern": r"^[A-Za-z0-9_.:\-]+$",
                       "default": "import",
                       "description": "source of the imported orders, refunds and events (part of their "
                                      "idempotency key, as `--source` on the command line)"},
            "earn": {"type": "boolean", "default": False,
                     "description": "orders only: the orders this import creates earn points, growth value and "
                                    "tier upgrades by the earning rules, as if sent to `POST /api/v1/orders` (a "
                                    "POS's nightly file), as `--earn` on the command line; orders already stored "
                                    "(a re-upload) earn nothing again. Without it an import loads history and "
                                    "earns nothing"}}}}}}}
_UPLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"description": "The job, queued (or already running)",
          "headers": {"Location": {"description": "the job's URL, /api/v1/imports/{id}",
                                   "schema": {"type": "string"}}}},
    400: {"description": "the body is not valid multipart/form-data (or was cut short)", "content": _PROBLEM},
    413: {"description": "the file is larger than ORCHARD_UPLOAD_MAX_BYTES (2 GB by default)", "content": _PROBLEM},
    415: {"description": "the body is not multipart/form-data", "content": _PROBLEM},
    422: {"description": "kind, file, source or earn missing or invalid (earn with a kind other than orders), or an "
                         "unknown field", "content": _PROBLEM},
}


def _english(request: Request) -> bool:
    return i18n.wants_english(request.headers.get("accept-language"))


def _queue(session: Session, principal: Principal, upload: uploads.Upload) -> ImportJob:
    job = jobs.create(session, principal=principal, upload=upload)
    session.commit()  # queued for real before the worker looks and before the 202
    return job


@router.post("", response_model=ImportJobRead, status_code=202, operation_id="createImport",
             openapi_extra=_UPLOAD_BODY, responses=_UPLOAD_RESPONSES)
async def create_import(request: Request, response: Response, session: SessionDep,
                        principal: Importer) -> ImportJobRead:
    """Upload a CSV or XLSX file of members, orders, refunds or events; it is imported in the
    background, like `orchard import <kind> FILE`. Answers 202 with the job (`Location` names it);
    poll `GET /api/v1/imports/{id}` until `status` is `succeeded` or `failed`. Rows that cannot be
    imported do not fail the job: they are counted in `errors` and listed in the error report."""
    await to_thread.run_sync(session.commit)
    upload = await uploads.receive(request)
    try:
        job = await to_thread.run_sync(_queue, session, principal, upload)
    except BaseException:
        upload.discard()
        raise
    worker = getattr(request.app.state, "import_worker", None)
    if worker is not None:
        worker.wake()
    response.headers["Location"] = f"{request.url.path.rstrip('/')}/{job.id}"
    return ImportJobRead.of(job, english=_english(request))


@router.get("", response_model=ImportJobPage, operation_id="listImports")
def list_imports(request: Request, session: SessionDep, principal: Importer, status: Status | None = None,
                 kind: Kind | None = None, limit: Limit = 50,
                 cursor: Annotated[str | None, Query(max_length=200)] = None) -> ImportJobPage:
    """Import jobs, newest first."""
    rows, nxt = jobs.list_jobs(session, status=status, kind=kind, limit=limit, cursor=cursor)
    english = _english(request)
    return ImportJobPage(items=[ImportJobRead.of(j, english=english) for j in rows], next_cursor=nxt)


@router.get("/{job_id}", response_model=ImportJobRead, operation_id="getImport")
def get_import(request: Request, session: SessionDep, principal: Importer, job_id: JobId) -> ImportJobRead:
    """One import job: status, rows processed so far, counts when done, why it failed."""
    return ImportJobRead.of(jobs.get(session, job_id), english=_english(request))


@router.get("/{job_id}/errors", operation_id="getImportErrors", response_class=FileResponse, responses={
    200: {"description": "The error report: 行号 row, 列 column, 原因 reason, 级别 level (error | warning), then "
                         "the original row. UTF-8 with BOM (opens in Excel).", "content": {"text/csv": {}}},
    404: {"description": "no such job, or it has no error report (no row errors or warnings, or not finished)",
          "content": _PROBLEM}})
def get_import_errors(request: Request, session: SessionDep, principal: Importer, job_id: JobId) -> FileResponse:
    """Download a finished job's error report (the download is audited: it holds raw rows)."""
    job = jobs.get(session, job_id)
    path = jobs.data_path(job.report_path) if job.report_path else None
    if path is None or not path.is_file():
        raise NotFound("this import has no error report: no row had an error or a warning, or it has not finished",
                       code="imports.no_report")
    audit.record(session, actor=principal.actor, action="import.errors_downloaded", entity="import_job",
                 entity_id=job.id)
    stem = FilePath(job.file_name).stem or "import"
    name = f"{stem}-{'errors' if _english(request) else '错误报告'}.csv"
    disposition = f"attachment; filename=\"import-{job.id}-errors.csv\"; filename*=UTF-8''{quote(name, safe='')}"
    return FileResponse(path, media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": disposition, "Cache-Control": "no-store"})
