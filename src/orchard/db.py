"""Database engine, sessions and the declarative base.

One transaction per request or job: services only `flush()`; the edge (an API dependency, a CLI
command) commits. SQLite runs in WAL mode with foreign keys on and takes its write lock at BEGIN
(`BEGIN IMMEDIATE`), so two writers queue instead of failing half-way with "database is locked".
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    ColumnElement,
    DateTime,
    Integer,
    MetaData,
    TypeDecorator,
    any_,
    bindparam,
    create_engine,
    event,
    text,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from orchard.config import get_settings

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

#: 64-bit ids on PostgreSQL; SQLite needs plain INTEGER for its rowid alias (autoincrement).
BigId = BigInteger().with_variant(Integer(), "sqlite")
#: JSONB on PostgreSQL (indexable, compact); JSON text on SQLite.
Json = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """Timestamps are stored in UTC and always come back timezone-aware (UTC), on both databases."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(dt.UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=dt.UTC)
        return value.astimezone(dt.UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # Autocommit at the driver level: SQLAlchemy's begin event below issues BEGIN IMMEDIATE itself.
    dbapi_conn.isolation_level = None
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def _sqlite_begin(conn) -> None:
    # Read-only sessions (GET requests) begin deferred so they never wait for the write lock.
    conn.exec_driver_sql("BEGIN" if conn.get_execution_options().get("orchard_readonly") else "BEGIN IMMEDIATE")


def make_engine(url: str | None = None) -> Engine:
    url = url or get_settings().database_url
    if url.startswith("sqlite"):
        engine = create_engine(url, echo=get_settings().db_echo, connect_args={"check_same_thread": False})
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        # As many connections as the server has worker threads (AnyIO's default 40), so a burst of
        # requests waits for the database, not for the pool.
        engine = create_engine(url, echo=get_settings().db_echo, pool_size=10, max_overflow=30,
                               pool_pre_ping=True)
    return engine


@lru_cache
def get_engine() -> Engine:
    return make_engine()


@lru_cache
def _factory(readonly: bool = False) -> sessionmaker[Session]:
    engine = get_engine().execution_options(orchard_readonly=True) if readonly else get_engine()
    return sessionmaker(bind=engine, expire_on_commit=False)


def new_session(*, readonly: bool = False) -> Session:
    """A new session. `readonly` only changes how SQLite begins (deferred, not IMMEDIATE); it is
    for requests that do not write."""
    return _factory(readonly)()


@contextmanager
def transaction(*, readonly: bool = False) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error: the one transaction of
    a request, a CLI command or a job."""
    session = new_session(readonly=readonly)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def reset_caches() -> None:
    """Forget the cached engine and session factory (tests switch databases)."""
    if get_engine.cache_info().currsize:
        get_engine().dispose()
    get_engine.cache_clear()
    _factory.cache_clear()
    get_settings.cache_clear()


#: `work_mem` for set-based passes over every member (scoring, rule tags, segment refreshes and
#: previews). PostgreSQL's default (4 MB) makes their hashes and sorts spill to disk and, worse,
#: keeps the planner from hashing `IN (subquery)` sets of more than ~300k ids.
BATCH_WORK_MEM = "64MB"


def batch_settings(session: Session) -> None:
    """For the rest of this transaction (PostgreSQL; a no-op on SQLite): `work_mem` = BATCH_WORK_MEM, and
    no JIT — these statements are costed high enough to trigger it, and compiling their many expressions
    took longer than running them (2.3 s of a 2.8 s preview count at 200k members)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL work_mem = '{BATCH_WORK_MEM}'"))
        session.execute(text("SET LOCAL jit = off"))


def one_of(session: Session, column: Any, values: Iterable[Any]) -> ColumnElement[bool]:
    """`column IN (values)` for a batch of a few hundred values. On PostgreSQL it is `column = ANY(:array)`,
    one parameter psycopg sends as it is; `IN` renders one bound parameter per value, which SQLAlchemy
    expands and psycopg parses again on every execution (a quarter of the CPU of an outbox dispatch round)."""
    values = list(values)
    if session.get_bind().dialect.name == "postgresql":
        return column == any_(bindparam(None, values, type_=postgresql.ARRAY(column.type)))
    return column.in_(values)
