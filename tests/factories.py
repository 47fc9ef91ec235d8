"""Plain factory functions (no framework): each commits, as the API would."""

from __future__ import annotations

from sqlalchemy import select

from orchard import db
from orchard.auth import service as auth
from orchard.org import service as org
from orchard.org.models import OrgUnit

PASSWORD = "s3cret-pass"


def make_org() -> None:
    """HQ → EAST (SH001, HZ001), SOUTH (GZ001)."""
    with db.transaction() as s:
        if s.scalar(select(OrgUnit.id).where(OrgUnit.code == "HQ")):
            return
        org.create_unit(s, kind="hq", code="HQ", name="总部")
        org.create_unit(s, kind="region", code="EAST", name="华东", parent_code="HQ")
        org.create_unit(s, kind="region", code="SOUTH", name="华南", parent_code="HQ")
        org.create_unit(s, kind="store", code="SH001", name="上海店", parent_code="EAST")
        org.create_unit(s, kind="store", code="HZ001", name="杭州店", parent_code="EAST")
        org.create_unit(s, kind="store", code="GZ001", name="广州店", parent_code="SOUTH")


def token_for(client, role: str, stores: list[str] | None = None, username: str | None = None) -> str:
    """Create a staff account and log in through the API; returns the bearer token."""
    make_org()
    username = username or f"{role}_{'_'.join(stores or ['all'])}".lower()
    with db.transaction() as s:
        auth.create_staff(s, username=username, password=PASSWORD, role=role, store_codes=stores or [])
    r = client.post("/api/v1/auth/token", json={"username": username, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return r.json()["access_token"]


def api_key(role: str = "integrator", name: str = "pos", store: str | None = None) -> str:
    make_org()
    with db.transaction() as s:
        _, secret = auth.create_api_key(s, name=name, role=role, store_code=store)
    return secret


def headers(token: str, **extra: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", **extra}


def order(external_id: str, phone: str = "13812341234", *, lines=None, amount_fen=None,
          paid_at="2026-10-01T10:00:00+08:00", store_code: str | None = "SH001", source: str = "pos", **member) -> dict:
    body = {"source": source, "external_id": external_id, "paid_at": paid_at, "store_code": store_code,
            "member": {"identities": {"phone": phone}, **member},
            "lines": lines if lines is not None else [
                {"sku": "A", "name": "茶", "category": "茶叶", "quantity": 2, "unit_price_fen": 5000},
                {"sku": "B", "name": "杯", "category": "茶具", "quantity": 1, "unit_price_fen": 3000}]}
    if amount_fen is not None:
        body["amount_fen"] = amount_fen
    return body
