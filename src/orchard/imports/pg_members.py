"""Fast path for member imports: set-based SQL over work tables instead of one round trip per row, on
PostgreSQL (work tables filled with COPY) and SQLite (filled with executemany; imports.pg_bulk.WorkTables).

For one batch (one transaction) of validated rows it must end in exactly the state the per-row
path (`imports.service._member`: identity resolution, then fill-blanks) would reach, so it takes
only the rows whose outcome does not depend on another row or on a conflict:

1. a row sharing a key, or the member a key belongs to, with another row of the batch goes back
   with those rows (the per-row path decides in file order who creates the member, which link and
   whose blanks win);
2. a row whose keys belong to several existing members goes back (the per-row path records the
   merge candidate and warns);
3. a row whose keys belong to no member creates one: members, aggregates and identities are
   written with set-based inserts from the work tables;
4. a row whose keys belong to one member fills that member's blanks — name, gender, birthday,
   region, home store, source channel — and moves its join date earlier, never overwriting what
   is there; its unknown keys are linked. Updated if anything changed, else unchanged;
5. marketing consent per channel, where the file gives it, is set as `members.consent` sets it
   (only where it differs, with history and audit rows): one statement on PostgreSQL, whose
   data-modifying CTEs SQLite lacks; four there, through a work table of the changes.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from orchard.errors import OrchardError
from orchard.identity.resolve import owners_of
from orchard.imports.pg_bulk import DIRTY, SYSTEM, RowOutcome, WorkTables
from orchard.kit.clock import utcnow

_TABLES = (
    "_imp_mrows (idx int PRIMARY KEY, member_id bigint, is_new boolean NOT NULL, name text, gender text NOT NULL, "
    "birthday date, region text, store_id bigint, joined_at timestamptz, source_channel text)",
    "_imp_mkeys (idx int NOT NULL, kind text NOT NULL, value text NOT NULL)",
    "_imp_mcons (idx int NOT NULL, channel text NOT NULL, granted boolean NOT NULL)",
)

#: Marketing consent as `members.consent.set_consent` changes it: only where it differs (a first
#: answer always counts), each change appended to consent_changes and the audit log.
_CONSENTS = """
WITH changed AS (
  INSERT INTO consents AS x (member_id, channel, purpose, granted, granted_at, withdrawn_at, source, updated_at)
  SELECT r.member_id, c.channel, 'marketing', c.granted, CASE WHEN c.granted THEN :now END,
         CASE WHEN NOT c.granted THEN :now END, :src, :now
  FROM _imp_mcons c JOIN _imp_mrows r ON r.idx = c.idx
  ON CONFLICT (member_id, channel, purpose) DO UPDATE SET granted = EXCLUDED.granted,
     granted_at = coalesce(EXCLUDED.granted_at, x.granted_at),
     withdrawn_at = coalesce(EXCLUDED.withdrawn_at, x.withdrawn_at),
     source = EXCLUDED.source, updated_at = EXCLUDED.updated_at
  WHERE x.granted <> EXCLUDED.granted
  RETURNING x.member_id, x.channel, x.granted
), history AS (
  INSERT INTO consent_changes (member_id, channel, purpose, granted, source, actor, at)
  SELECT member_id, channel, 'marketing', granted, :src, :actor, :now FROM changed
  RETURNING member_id, channel, granted
)
INSERT INTO audit_log (at, actor, action, entity, entity_id, data)
SELECT :now, :actor, CASE WHEN granted THEN 'consent.granted' ELSE 'consent.withdrawn' END, 'member',
       member_id::text, jsonb_build_object('channel', channel, 'purpose', 'marketing', 'source', CAST(:src AS text))
FROM history
RETURNING CAST(entity_id AS bigint)
"""

#: The same on SQLite, step by step: the answers that change something (a first answer always
#: does), then the consents, their history and the audit rows from that work table.
_SQLITE_CHANGES = (
    "SELECT r.member_id, c.channel, c.granted FROM _imp_mcons c JOIN _imp_mrows r ON r.idx = c.idx "
    "LEFT JOIN consents x ON x.member_id = r.member_id AND x.channel = c.channel AND x.purpose = 'marketing' "
    "WHERE x.granted IS NULL OR x.granted <> c.granted")
_SQLITE_CONSENTS = (
    "INSERT INTO consents (member_id, channel, purpose, granted, granted_at, withdrawn_at, source, updated_at) "
    "SELECT member_id, channel, 'marketing', granted, CASE WHEN granted THEN :now END, "
    "CASE WHEN NOT granted THEN :now END, :src, :now FROM _imp_mchanged WHERE true "
    "ON CONFLICT (member_id, channel, purpose) DO UPDATE SET granted = excluded.granted, "
    "granted_at = coalesce(excluded.granted_at, consents.granted_at), "
    "withdrawn_at = coalesce(excluded.withdrawn_at, consents.withdrawn_at), "
    "source = excluded.source, updated_at = excluded.updated_at",
    "INSERT INTO consent_changes (member_id, channel, purpose, granted, source, actor, at) "
    "SELECT member_id, channel, 'marketing', granted, :src, :actor, :now FROM _imp_mchanged",
    "INSERT INTO audit_log (at, actor, action, entity, entity_id, data) "
    "SELECT :now, :actor, CASE WHEN granted THEN 'consent.granted' ELSE 'consent.withdrawn' END, 'member', "
    "CAST(member_id AS text), json_object('channel', channel, 'purpose', 'marketing', 'source', :src) "
    "FROM _imp_mchanged",
)

#: Fill-blanks, as `members.service.fill_blanks` does it for one member: (column, blank test, new value).
_FILL = (
    ("name", "coalesce(m.name, '') = '' AND coalesce(s.name, '') <> ''", "s.name"),
    ("gender", "coalesce(m.gender, 'unknown') = 'unknown' AND s.gender <> 'unknown'", "s.gender"),
    ("birthday", "m.birthday IS NULL AND s.birthday IS NOT NULL", "s.birthday"),
    ("region", "coalesce(m.region, '') = '' AND coalesce(s.region, '') <> ''", "s.region"),
    ("home_store_id", "m.home_store_id IS NULL AND s.store_id IS NOT NULL", "s.store_id"),
    ("source_channel", "coalesce(m.source_channel, '') = '' AND coalesce(s.source_channel, '') <> ''",
     "s.source_channel"),
    ("joined_at", "s.joined_at < m.joined_at", "s.joined_at"),
)


def write_members(session: Session, items: list[tuple[int, dict[str, Any]]], source: str
                   ) -> tuple[dict[int, RowOutcome | OrchardError], list[int]]:
    """items: (index, clean row) in file order. Returns ({index: (status, None)}, indexes to run on
    the per-row path, in file order)."""
    owners = owners_of(session, {k for _, clean in items for k in clean["keys"]})
    # A row shares with another if they have a key or an existing member in common: the order of
    # such rows matters (who creates, whose blanks win), so they all take the per-row path.
    tokens = {i: {*clean["keys"], *(("member", owners[k]) for k in clean["keys"] if k in owners)}
              for i, clean in items}
    rows_of: dict[Any, int] = {}
    for row_tokens in tokens.values():
        for token in row_tokens:
            rows_of[token] = rows_of.get(token, 0) + 1
    slow: set[int] = set()
    fast: list[tuple[int, dict[str, Any], int | None]] = []
    for i, clean in items:
        members = {t[1] for t in tokens[i] if t[0] == "member"}
        if len(members) > 1 or any(rows_of[t] > 1 for t in tokens[i]):
            slow.add(i)
        else:
            fast.append((i, clean, next(iter(members), None)))
    if not fast:
        return {}, [i for i, _ in items]

    work = WorkTables(session)
    work.create(*_TABLES)
    work.fill("_imp_mrows", ["idx", "member_id", "is_new", "name", "gender", "birthday", "region", "store_id",
                             "joined_at", "source_channel"],
              [(i, mid, mid is None, c["name"], c["gender"], c["birthday"], c["region"], c["store_id"],
                c["joined_at"], c["source_channel"]) for i, c, mid in fast])
    work.fill("_imp_mkeys", ["idx", "kind", "value"],
              [(i, *key) for i, c, _ in fast for key in c["keys"] if key not in owners])
    work.fill("_imp_mcons", ["idx", "channel", "granted"],
              [(i, channel, granted) for i, c, _ in fast for channel, granted in c["consents"].items()])
    work.analyze()
    params = {"src": source, "now": utcnow()}
    work.number_new_members("_imp_mrows", "idx")
    work.execute(
        "INSERT INTO members (id, name, gender, birthday, region, status, home_store_id, joined_at, attributes, "
        "reduce_disturbance, source_channel, created_at, updated_at) "
        "SELECT member_id, name, gender, birthday, region, 'active', store_id, coalesce(joined_at, :now), '{}', "
        "false, coalesce(source_channel, :src), :now, :now FROM _imp_mrows WHERE is_new ORDER BY member_id", params)
    work.execute(
        "INSERT INTO member_aggregates (member_id, order_count, total_spend_fen, refund_fen) "
        "SELECT member_id, 0, 0, 0 FROM _imp_mrows WHERE is_new ORDER BY member_id")
    work.execute(
        "INSERT INTO identities (member_id, kind, value, source, created_at) "
        "SELECT r.member_id, k.kind, k.value, :src, :now FROM _imp_mkeys k JOIN _imp_mrows r ON r.idx = k.idx",
        params)
    sets = ", ".join(f"{col} = CASE WHEN {blank} THEN {new} ELSE m.{col} END" for col, blank, new in _FILL)
    # Rows sharing a member went to the per-row path, so a changed member id names one row here.
    changed = set(work.execute(
        f"UPDATE members AS m SET {sets}, updated_at = :now FROM _imp_mrows s "  # noqa: S608 - constant SQL
        f"WHERE NOT s.is_new AND m.id = s.member_id AND ({' OR '.join(f'({b})' for _, b, _ in _FILL)}) "
        "RETURNING id", params).scalars())
    consent_params = {**params, "actor": SYSTEM.actor}
    if work.sqlite:
        work.create_as("_imp_mchanged", _SQLITE_CHANGES)
        for statement in _SQLITE_CONSENTS:
            work.execute(statement, consent_params)
        consented = set(work.execute("SELECT member_id FROM _imp_mchanged").scalars())
    else:
        consented = set(work.execute(_CONSENTS, consent_params).scalars())
    work.execute(DIRTY.format(table="_imp_mrows"), params)
    work.close()
    outcome: dict[int, RowOutcome | OrchardError] = {}
    for i, clean, mid in fast:
        if mid is None:
            outcome[i] = ("created", None)
        elif mid in changed or mid in consented or any(k not in owners for k in clean["keys"]):
            outcome[i] = ("updated", None)
        else:
            outcome[i] = ("unchanged", None)
    return outcome, [i for i, _ in items if i in slow]
