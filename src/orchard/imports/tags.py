"""Tag imports (SPEC S1): a file of members and the tags they carry, from another system's 人群包 or a
spreadsheet an operations team keeps.

Each row names a member by its identity keys (as order and event files do) and one or more tags. The
member must exist — a tag file never creates people — and its keys must all belong to that one member.
A tag named for the first time is created in the catalog with source 'import' (as staff create tags by
first use), and the row reports it as a warning so that a typo is seen. Assignments made here have
source 'import': a rule refresh never takes them away. A member who carries the tag only by a rule
keeps it with source 'import' from now on (the file says the member has it, whatever the rule says
later). Every assignment added is written to the tag history, and the member is queued for the
segments' real-time sweep.

The batch writer does all of a batch in a few statements on both databases (one look-up of the
keys, one of the tags, one of the existing assignments, then inserts and updates for the whole
batch); `write_tag` is the same for one row, used when a concurrent writer makes the batch fail on
a unique key (`pg_bulk.run_batch` then replays the batch row by row) and as the reference in tests.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.orm import Session

from orchard.errors import OrchardError
from orchard.identity.resolve import owners_of
from orchard.imports.pg_bulk import RowOutcome
from orchard.imports.rows import RowError
from orchard.kit.clock import utcnow
from orchard.members.models import MemberTag, Tag, TagChange
from orchard.segments import dirty

SOURCE = "import"
#: SQLite binds at most 32,766 parameters per statement: member ids are looked up in chunks.
_CHUNK = 5000


def _member_of(keys: list[tuple[str, str]], owners: dict[tuple[str, str], int]) -> int:
    """The one member all of a row's known keys belong to; a RowError naming the first key's column."""
    column = {"phone": "member_phone", "external_id": "member_external_id", "card_no": "member_card_no"}[keys[0][0]]
    members = {owners[k] for k in keys if k in owners}
    if not members:
        raise RowError(column, "no member has these keys (a tag file does not create members)")
    if len(members) > 1:
        raise RowError(column, f"the keys belong to several members {sorted(members)}")
    return members.pop()


def _tags(session: Session, names: set[str], actor: str) -> tuple[dict[str, int], set[str]]:
    """Tag ids by name, creating the missing ones with source 'import'; and the names created."""
    ids = dict(session.execute(select(Tag.name, Tag.id).where(Tag.name.in_(sorted(names)))).tuples().all())
    created = sorted(names - ids.keys())
    if created:
        now = utcnow()
        session.execute(insert(Tag), [{"name": n, "kind": "attribute", "source": SOURCE, "created_at": now,
                                       "description": f"导入创建 created by an import ({actor})"} for n in created])
        ids.update(session.execute(select(Tag.name, Tag.id).where(Tag.name.in_(created))).tuples().all())
    return ids, set(created)


def write_tags(session: Session, items: list[tuple[int, dict[str, Any]]], source: str
               ) -> tuple[dict[int, RowOutcome | OrchardError], list[int]]:
    """A batch of clean rows ({"keys", "tags"}) in a few set-based statements: (outcome by row, [])."""
    actor = f"import:{source}"
    owners = owners_of(session, {k for _, clean in items for k in clean["keys"]})
    outcome: dict[int, RowOutcome | OrchardError] = {}
    rows: list[tuple[int, int, list[str]]] = []
    for i, clean in items:
        try:
            rows.append((i, _member_of(clean["keys"], owners), clean["tags"]))
        except RowError as exc:
            outcome[i] = exc
    if not rows:
        return outcome, []
    tag_ids, created = _tags(session, {n for _, _, names in rows for n in names}, actor)
    members = sorted({m for _, m, _ in rows})
    have: dict[tuple[int, int], str] = {}
    for i in range(0, len(members), _CHUNK):
        have.update({(m, t): s for m, t, s in session.execute(
            select(MemberTag.member_id, MemberTag.tag_id, MemberTag.source)
            .where(MemberTag.member_id.in_(members[i:i + _CHUNK]),
                   MemberTag.tag_id.in_(sorted(set(tag_ids.values())))))})
    now = utcnow()
    added: dict[tuple[int, int], None] = {}  # insertion-ordered set: history in file order
    adopted: set[tuple[int, int]] = set()
    for i, member_id, names in rows:
        status, new_tags = "unchanged", [n for n in names if n in created]
        for name in names:
            pair = (member_id, tag_ids[name])
            if pair in added or pair in adopted:
                continue  # an earlier row of this batch did it
            if pair not in have:
                added[pair] = None
                status = "created"
            elif have[pair] == "rule":
                adopted.add(pair)
                status = "updated" if status == "unchanged" else status
        created.difference_update(new_tags)  # the warning goes to the first row naming the tag
        outcome[i] = (status, f"新标签已创建 tag created: {', '.join(new_tags)}" if new_tags else None)
    if added:
        session.execute(insert(MemberTag), [{"member_id": m, "tag_id": t, "source": SOURCE, "added_by": actor,
                                             "added_at": now} for m, t in added])
        session.execute(insert(TagChange), [{"member_id": m, "tag_id": t, "change": "added", "source": SOURCE,
                                             "actor": actor, "at": now} for m, t in added])
    if adopted:  # by primary key, in one executemany
        session.execute(update(MemberTag), [{"member_id": m, "tag_id": t, "source": SOURCE, "added_by": actor}
                                              for m, t in sorted(adopted)])
    dirty.mark(session, {m for m, _ in added} | {m for m, _ in adopted}, at=now)
    return outcome, []


def write_tag(session: Session, clean: dict[str, Any], source: str) -> RowOutcome:
    """One row: the per-row form of `write_tags` (the same decisions, one row at a time)."""
    outcome, _ = write_tags(session, [(0, clean)], source)
    result = outcome[0]
    if isinstance(result, RowError):
        raise result
    return result  # type: ignore[return-value]

