"""One table for the org tree: an HQ row, region rows under it, store rows under a region (or HQ)."""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from sqlalchemy import CheckConstraint, ForeignKey, String
from sqlalchemy.orm import Mapped, mapped_column

from orchard.db import Base, BigId, UTCDateTime
from orchard.kit.clock import utcnow


class UnitKind(StrEnum):
    hq = "hq"
    region = "region"
    store = "store"


class OrgUnit(Base):
    __tablename__ = "org_units"
    __table_args__ = (CheckConstraint("kind in ('hq','region','store')", name="kind"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    #: Business code used by integrators and imports (e.g. POS store code "SH001").
    code: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("org_units.id"), index=True)
    city: Mapped[str | None] = mapped_column(String(100))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime, default=utcnow)
