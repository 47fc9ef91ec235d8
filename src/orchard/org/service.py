"""Org tree operations and the expansion of a staff scope (regions) into store ids."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.errors import Conflict, InvalidInput, NotFound
from orchard.org.models import OrgUnit, UnitKind

_PARENT_KIND = {UnitKind.hq: (), UnitKind.region: (UnitKind.hq,), UnitKind.store: (UnitKind.hq, UnitKind.region)}


def create_unit(session: Session, *, kind: str, code: str, name: str, parent_code: str | None = None,
                city: str | None = None) -> OrgUnit:
    try:
        kind_ = UnitKind(kind)
    except ValueError:
        raise InvalidInput.field("kind", "must be one of hq, region, store") from None
    parent_id = None
    if parent_code:
        parent = get_by_code(session, parent_code, field="parent_code")
        if parent.kind not in _PARENT_KIND[kind_]:
            raise InvalidInput.field("parent_code", f"a {kind_} cannot sit under a {parent.kind}")
        parent_id = parent.id
    elif kind_ is not UnitKind.hq and session.scalar(select(OrgUnit.id).where(OrgUnit.kind == "hq")):
        raise InvalidInput.field("parent_code", "required once an HQ exists")
    unit = OrgUnit(kind=kind_.value, code=code, name=name, parent_id=parent_id, city=city)
    try:
        with session.begin_nested():
            session.add(unit)
            session.flush()
    except IntegrityError:
        raise Conflict(f"org unit code {code!r} already exists", code="org.code_taken") from None
    return unit


def get_by_code(session: Session, code: str, *, field: str = "store_code") -> OrgUnit:
    unit = session.scalar(select(OrgUnit).where(OrgUnit.code == code))
    if unit is None:
        raise InvalidInput.field(field, f"unknown org unit code {code!r}")
    return unit


def store_id_for_code(session: Session, code: str | None, *, field: str = "store_code") -> int | None:
    if code is None:
        return None
    unit = get_by_code(session, code, field=field)
    if unit.kind != UnitKind.store:
        raise InvalidInput.field(field, f"{code!r} is a {unit.kind}, not a store")
    return unit.id


def get_unit(session: Session, unit_id: int) -> OrgUnit:
    unit = session.get(OrgUnit, unit_id)
    if unit is None:
        raise NotFound("org unit not found")
    return unit


def stores_under(session: Session, unit_ids: list[int]) -> frozenset[int]:
    """Store ids equal to or below the given units (HQ → regions → stores, three levels)."""
    if not unit_ids:
        return frozenset()
    level = set(unit_ids)
    stores: set[int] = set()
    seen: set[int] = set()
    while level:
        rows = session.execute(select(OrgUnit.id, OrgUnit.kind).where(OrgUnit.id.in_(level))).all()
        stores.update(r.id for r in rows if r.kind == UnitKind.store)
        seen |= level
        level = set(session.scalars(select(OrgUnit.id).where(OrgUnit.parent_id.in_(level)))) - seen
    return frozenset(stores)


def list_units(session: Session) -> list[OrgUnit]:
    return list(session.scalars(select(OrgUnit).order_by(OrgUnit.id)))
