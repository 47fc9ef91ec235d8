"""Import jobs: one row per file uploaded to `POST /api/v1/imports`, run in the background by
`imports.jobs` (queued → running → succeeded | failed)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Boolean, CheckConstraint, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, Json, UTCDateTime
from orchard.kit.clock import utcnow

KINDS = ("members", "orders", "refunds", "events", "tags")
STATUSES = ("queued", "running", "succeeded", "failed")


class ImportJob(Base):
    __tablename__ = "import_jobs"
    __table_args__ = (
        CheckConstraint("kind in ('members','orders','refunds','events','tags')", name="kind"),
        CheckConstraint("status in ('queued','running','succeeded','failed')", name="status"),
        Index("ix_import_jobs_status_id", "status", "id"),
    )

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    source: Mapped[str] = mapped_column(String(64))
    #: The name the client gave the file (base name only), for people; never used as a path.
    file_name: Mapped[str] = mapped_column(String(255))
    #: Where the upload is kept, relative to ORCHARD_DATA_DIR.
    file_path: Mapped[str] = mapped_column(String(500))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: Orders only: the orders the import creates earn points (`orchard import orders --earn`).
    earn: Mapped[bool] = mapped_column(Boolean, default=False, server_default="false")
    sha256: Mapped[str] = mapped_column(String(64))
    #: Rows read so far: advanced after every committed batch, set to the total at the end.
    rows_processed: Mapped[int] = mapped_column(BigInteger, default=0)
    created: Mapped[int] = mapped_column(BigInteger, default=0)
    unchanged: Mapped[int] = mapped_column(BigInteger, default=0)
    updated: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    warnings: Mapped[int] = mapped_column(BigInteger, default=0)
    unknown_columns: Mapped[list[str]] = mapped_column(Json, default=list)
    #: The per-row error report (CSV), relative to ORCHARD_DATA_DIR; null when there is none.
    report_path: Mapped[str | None] = mapped_column(String(500))
    #: Why a failed job failed: a machine code (imports.unreadable, imports.interrupted,
    #: imports.internal) and the reader's own words for an unreadable file.
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_detail: Mapped[str | None] = mapped_column(Text)
    #: "staff:12", "apikey:3": who uploaded.
    created_by: Mapped[str] = mapped_column(String(64))
    #: "host:pid:token" of the process running the job; with `heartbeat_at` it tells a job whose
    #: process died from one still running elsewhere.
    worker: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime)
