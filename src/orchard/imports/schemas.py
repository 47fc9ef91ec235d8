"""Response shapes of `/api/v1/imports`."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, Field

from orchard.imports.models import ImportJob

Kind = Literal["members", "orders", "refunds", "events", "tags"]
Status = Literal["queued", "running", "succeeded", "failed"]

#: Failure messages by code, in Chinese and English; `{detail}` is the reader's own reason.
_MESSAGES = {
    "imports.unreadable": ("文件无法读取：{detail}", "The file cannot be read: {detail}"),
    "imports.interrupted": (
        "导入中断：运行该任务的服务进程已停止（重启、关闭或崩溃）。中断前已提交的批次已导入；导入是幂等的，"
        "重新上传同一文件即可完成（已导入的行计为未变）。",
        "Interrupted: the server process running this import stopped (restart, shutdown or crash). Batches "
        "committed before that are imported; imports are idempotent, so upload the same file again to finish "
        "(rows already imported then count as unchanged)."),
    "imports.internal": ("导入因服务器内部错误失败，详见服务器日志。",
                         "The import failed with an internal error; see the server log."),
}


class ImportJobRead(BaseModel):
    id: int
    kind: Kind
    status: Status = Field(description="queued → running → succeeded | failed")
    source: str = Field(description="source of the imported orders, refunds and events (idempotency key part)")
    earn: bool = Field(description="orders only: the orders this import creates earn points, growth value and tier "
                                   "upgrades by the earning rules, as if sent to the API")
    file_name: str = Field(description="the uploaded file's name, as the client sent it")
    size_bytes: int
    sha256: str = Field(description="SHA-256 of the uploaded file, hex")
    rows_processed: int = Field(description="rows read so far (advanced after every committed batch)")
    created: int
    unchanged: int
    updated: int
    errors: int = Field(description="rows refused; each is in the error report with its row number and reason")
    warnings: int = Field(description="rows imported with a warning (also in the error report)")
    unknown_columns: list[str] = Field(description="header columns that were not recognised and were ignored")
    has_error_report: bool = Field(description="GET /api/v1/imports/{id}/errors returns the CSV report")
    error_code: str | None = Field(description="why a failed job failed: imports.unreadable, imports.interrupted, "
                                               "imports.internal")
    error_message: str | None = Field(description="the same for people (Accept-Language: zh by default, or en)")
    created_by: str = Field(description='who uploaded: "staff:<id>" or "apikey:<id>"')
    created_at: dt.datetime
    started_at: dt.datetime | None
    finished_at: dt.datetime | None

    @classmethod
    def of(cls, job: ImportJob, *, english: bool = False) -> ImportJobRead:
        message = None
        if job.error_code:
            zh, en = _MESSAGES.get(job.error_code, ("{detail}", "{detail}"))
            message = (en if english else zh).format(detail=job.error_detail or "")
        return cls(id=job.id, kind=job.kind, status=job.status, source=job.source, earn=job.earn,
                   file_name=job.file_name,
                   size_bytes=job.size_bytes, sha256=job.sha256, rows_processed=job.rows_processed,
                   created=job.created, unchanged=job.unchanged, updated=job.updated, errors=job.errors,
                   warnings=job.warnings, unknown_columns=list(job.unknown_columns or []),
                   has_error_report=job.report_path is not None, error_code=job.error_code, error_message=message,
                   created_by=job.created_by, created_at=job.created_at, started_at=job.started_at,
                   finished_at=job.finished_at)


class ImportJobPage(BaseModel):
    items: list[ImportJobRead]
    next_cursor: str | None
