"""Staff accounts, login, credentials → principal, API keys."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.auth.models import AccessToken, ApiKey, Staff, StaffScope
from orchard.auth.roles import MASKED, ROLE_PERMS, STORE_SCOPED, Perm, Role
from orchard.auth.secrets import (
    APIKEY_PREFIX,
    TOKEN_PREFIX,
    hash_password,
    needs_rehash,
    new_secret,
    secret_hash,
    verify_password,
)
from orchard.config import get_settings
from orchard.errors import Conflict, InvalidInput, NotFound, Unauthorized
from orchard.kit.clock import utcnow
from orchard.org import service as org


@dataclass(frozen=True)
class Principal:
    """Who is calling. `store_ids` is None for unscoped roles, else the stores they may read."""

    kind: str  # "staff" | "apikey"
    id: int
    name: str
    role: Role
    store_ids: frozenset[int] | None
    masked: bool

    @property
    def actor(self) -> str:
        return f"{self.kind}:{self.id}"

    def can(self, perm: Perm) -> bool:
        return perm in ROLE_PERMS[self.role]


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise InvalidInput.field("role", f"must be one of {', '.join(r.value for r in Role)}") from None


def create_staff(session: Session, *, username: str, password: str, role: str, store_codes: list[str] = (),
                 display_name: str | None = None, actor: str = "system") -> Staff:
    role_ = _role(role)
    if not username or len(username) > 64:
        raise InvalidInput.field("username", "1–64 characters")
    if len(password) < 8:
        raise InvalidInput.field("password", "at least 8 characters")
    if role_ in STORE_SCOPED and not store_codes:
        raise InvalidInput.field("store", f"role {role_} needs at least one store or region")
    units = [org.get_by_code(session, c, field="store") for c in store_codes]
    staff = Staff(username=username, password_hash=hash_password(password), role=role_.value,
                  display_name=display_name)
    try:
        with session.begin_nested():
            session.add(staff)
            session.flush()
    except IntegrityError:
        raise Conflict(f"username {username!r} is taken", code="staff.username_taken") from None
    for unit in units:
        session.add(StaffScope(staff_id=staff.id, org_unit_id=unit.id))
    audit.record(session, actor=actor, action="staff.created", entity="staff", entity_id=staff.id,
                 data={"username": username, "role": role_.value, "scopes": list(store_codes)})
    session.flush()
    return staff


def update_staff(session: Session, *, staff_id: int, actor: str, role: str | None = None,
                 store_codes: list[str] | None = None, is_active: bool | None = None,
                 password: str | None = None, display_name: str | None = None) -> Staff:
    """Change a staff account. Any change of role, scope, activity or password ends the account's
    current sessions (its tokens are deleted), so a demoted or departed employee keeps no access."""
    staff = session.get(Staff, staff_id)
    if staff is None:
        raise NotFound("staff not found", code="staff.not_found")
    before = {"role": staff.role, "scopes": _scope_codes(session, staff.id), "is_active": staff.is_active}
    new_role = _role(role) if role is not None else Role(staff.role)
    codes = store_codes if store_codes is not None else before["scopes"]
    if new_role in STORE_SCOPED and not codes:
        raise InvalidInput.field("stores", f"role {new_role} needs at least one store or region")
    if store_codes is not None:
        units = [org.get_by_code(session, c, field="stores") for c in store_codes]
        session.execute(delete(StaffScope).where(StaffScope.staff_id == staff.id))
        session.add_all(StaffScope(staff_id=staff.id, org_unit_id=u.id) for u in units)
    staff.role = new_role.value
    if is_active is not None:
        staff.is_active = is_active
    if display_name is not None:
        staff.display_name = display_name
    if password is not None:
        if len(password) < 8:
            raise InvalidInput.field("password", "at least 8 characters")
        staff.password_hash = hash_password(password)
    session.flush()
    after = {"role": staff.role, "scopes": _scope_codes(session, staff.id), "is_active": staff.is_active}
    if after != before or password is not None:
        session.execute(delete(AccessToken).where(AccessToken.staff_id == staff.id))
        audit.record(session, actor=actor, action="staff.updated", entity="staff", entity_id=staff.id,
                     data={"before": before, "after": after, "password_changed": password is not None})
    return staff


def _scope_codes(session: Session, staff_id: int) -> list[str]:
    from orchard.org.models import OrgUnit

    return list(session.scalars(select(OrgUnit.code).join(StaffScope, StaffScope.org_unit_id == OrgUnit.id)
                                .where(StaffScope.staff_id == staff_id).order_by(OrgUnit.code)))


def login(session: Session, *, username: str, password: str) -> tuple[str, dt.datetime]:
    staff = session.scalar(select(Staff).where(Staff.username == username))
    if staff is None or not staff.is_active or not verify_password(staff.password_hash, password):
        raise Unauthorized("wrong username or password", code="auth.bad_credentials")
    if needs_rehash(staff.password_hash):
        staff.password_hash = hash_password(password)
    now = utcnow()
    session.execute(delete(AccessToken).where(AccessToken.expires_at < now))
    token = new_secret(TOKEN_PREFIX)
    expires = now + dt.timedelta(seconds=get_settings().token_ttl_seconds)
    session.add(AccessToken(token_hash=secret_hash(token), staff_id=staff.id, expires_at=expires))
    session.flush()
    return token, expires


def create_api_key(session: Session, *, name: str, role: str = "integrator", store_code: str | None = None,
                   actor: str = "system") -> tuple[ApiKey, str]:
    """Returns the row and the key itself, which is never stored and cannot be shown again."""
    role_ = _role(role)
    if not name or len(name) > 100:
        raise InvalidInput.field("name", "1–100 characters")
    store_id = org.store_id_for_code(session, store_code, field="store") if store_code else None
    if role_ in STORE_SCOPED and store_id is None:
        raise InvalidInput.field("store", f"role {role_} needs a store")
    secret = new_secret(APIKEY_PREFIX)
    key = ApiKey(name=name, prefix=secret[:10], key_hash=secret_hash(secret), role=role_.value, store_id=store_id)
    session.add(key)
    session.flush()
    audit.record(session, actor=actor, action="apikey.created", entity="api_key", entity_id=key.id,
                 data={"name": name, "role": role_.value, "store": store_code})
    return key, secret


def revoke_api_key(session: Session, *, key_id: int, actor: str) -> ApiKey:
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound("api key not found")
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        audit.record(session, actor=actor, action="apikey.revoked", entity="api_key", entity_id=key.id)
    session.flush()
    return key


def principal_for(session: Session, credential: str) -> Principal:
    """Resolve a bearer credential (access token or API key) to a principal, or raise 401."""
    digest = secret_hash(credential)
    if credential.startswith(APIKEY_PREFIX):
        key = session.scalar(select(ApiKey).where(ApiKey.key_hash == digest))
        if key is None or key.revoked_at is not None:
            raise Unauthorized("invalid or revoked API key", code="auth.bad_api_key")
        role = Role(key.role)
        stores = frozenset({key.store_id}) if key.store_id else (frozenset() if role in STORE_SCOPED else None)
        return Principal("apikey", key.id, key.name, role, stores, role in MASKED)
    if credential.startswith(TOKEN_PREFIX):
        row = session.execute(
            select(Staff, AccessToken.expires_at).join(AccessToken, AccessToken.staff_id == Staff.id)
            .where(AccessToken.token_hash == digest)
        ).first()
        if row is None or row.expires_at < utcnow() or not row.Staff.is_active:
            raise Unauthorized("invalid or expired token", code="auth.bad_token")
        staff = row.Staff
        role = Role(staff.role)
        stores = None
        if role in STORE_SCOPED:
            unit_ids = list(session.scalars(select(StaffScope.org_unit_id).where(StaffScope.staff_id == staff.id)))
            stores = org.stores_under(session, unit_ids)
        return Principal("staff", staff.id, staff.username, role, stores, role in MASKED)
    raise Unauthorized("unrecognised credential", code="auth.bad_credential")
