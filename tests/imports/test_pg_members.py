"""The set-based fast path for member imports ends in exactly the state of the per-row path (identity
resolution then fill-blanks), on each database, on random batches mixing new members, known members
with and without blanks, keys shared within the batch, keys of two members and consent answers.
Every table is compared (tests/imports/every_table.py)."""

import datetime as dt
import re

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from orchard import db
from orchard.audit.models import AuditEntry
from orchard.identity.models import Identity
from orchard.imports import pg_bulk, pg_members, rows
from orchard.imports import service as import_service
from orchard.members.models import Consent, ConsentChange, Member, MemberAggregate, MergeCandidate
from orchard.org.models import OrgUnit
from tests.conftest import wipe_tables
from tests.factories import make_org
from tests.imports import every_table

_row = st.fixed_dictionaries({
    "phone": st.sampled_from(["", "13800000001", "13800000002", "13800000003", "13800000004"]),
    "card_no": st.sampled_from(["", "C-1", "C-2", "C-9"]),
    "name": st.sampled_from(["", "王芳", "李雷"]),
    "gender": st.sampled_from(["", "男", "female"]),
    "birthday": st.sampled_from(["", "1990-01-02"]),
    "region": st.sampled_from(["", "上海"]),
    "store_code": st.sampled_from(["", "SH001", "GZ001"]),
    "joined_at": st.sampled_from(["2024-01-01", "2023-06-01T10:00:00+08:00"]),  # given: "now" differs per path
    "source_channel": st.sampled_from(["", "pos", "小程序"]),
    "consent_sms": st.sampled_from(["", "是", "否"]),
    "consent_email": st.sampled_from(["", "yes"]),
}).filter(lambda r: r["phone"] or r["card_no"])


def _dump() -> dict:
    with db.transaction(readonly=True) as s:
        keys: dict[int, set] = {}
        for ident in s.scalars(select(Identity)):
            keys.setdefault(ident.member_id, set()).add((ident.kind, ident.value, ident.source))
        who = {mid: tuple(sorted(v)) for mid, v in keys.items()}
        members = sorted((who.get(m.id), m.status, m.name, m.gender, m.birthday, m.region, m.home_store_id,
                          m.joined_at, m.source_channel, m.attributes, m.reduce_disturbance, a.order_count)
                         for m, a in s.execute(select(Member, MemberAggregate).join(
                             MemberAggregate, MemberAggregate.member_id == Member.id)))
        cands = sorted((who[c.member_a_id], who[c.member_b_id], c.reason) for c in s.scalars(select(MergeCandidate)))
        consents = sorted((who[c.member_id], c.channel, c.purpose, c.granted, c.granted_at is not None,
                           c.withdrawn_at is not None, c.source) for c in s.scalars(select(Consent)))
        changes = sorted((who[c.member_id], c.channel, c.granted, c.source, c.actor)
                         for c in s.scalars(select(ConsentChange)))
        audits = sorted((a.actor, a.action, who[int(a.entity_id)], sorted(a.data.items()))
                        for a in s.scalars(select(AuditEntry)))
    return {"members": members, "candidates": cands, "consents": consents, "changes": changes, "audit": audits}


def _run(setup: list[dict], batch: list[dict], fast: bool) -> tuple[dict, dict]:
    wipe_tables()
    make_org()
    with db.transaction() as s:
        stores = dict(s.execute(select(OrgUnit.code, OrgUnit.id).where(OrgUnit.kind == "store")).all())
        for raw in setup:
            import_service._member(s, rows.member_row(raw.get, stores), "crm")
    items = [(i, rows.member_row(raw.get, stores)) for i, raw in enumerate(batch)]
    with db.transaction() as s:
        if fast:
            outcome = pg_bulk.run_batch(s, items, "import", pg_members.write_members, import_service._member)
        else:
            outcome = {i: import_service._member(s, clean, "import") for i, clean in items}
    # Member ids differ between the paths (the fast one creates its members first); warnings name them.
    return ({i: (o[0], o[1] and re.sub(r"\[[\d, ]+\]", "[…]", o[1])) for i, o in outcome.items()}, _dump(),
            every_table.dump())


def test_members_fast_path_ends_where_the_per_row_path_does(clean_db):
    setup = [{"phone": "13800000001", "name": "王芳", "joined_at": "2025-01-01", "consent_sms": "是"},
             {"card_no": "C-9", "joined_at": "2025-01-01"}]
    batch = [{"phone": "13800000001", "card_no": "C-1", "name": "李雷", "gender": "女", "region": "上海",
              "store_code": "SH001", "joined_at": "2024-01-01", "consent_sms": "否"},  # fills, links, withdraws
             {"phone": "13800000002", "name": "新人", "joined_at": "2026-01-01", "consent_sms": "同意"},  # new
             {"phone": "13800000003", "joined_at": "2026-01-01"},  # shares a key with the next: per-row
             {"phone": "13800000003", "card_no": "C-3", "joined_at": "2025-01-01"},
             {"phone": "13800000002", "card_no": "C-9", "joined_at": "2026-01-01"}]  # keys of two members
    batch = batch[:4] + [{"phone": "13800000005", "card_no": "C-9", "joined_at": "2026-01-01"}]
    slow, fast = _run(setup, batch, False), _run(setup, batch, True)
    assert fast == slow
    assert [o[0] for o in slow[0].values()] == ["updated", "created", "created", "updated", "updated"]
    joined = [m for m in slow[1]["members"] if m[2] == "王芳"][0]
    assert joined[3] == "female" and joined[5] == "上海" and joined[7] == dt.datetime(2023, 12, 31, 16, tzinfo=dt.UTC)
    assert [(c[1], c[2]) for c in slow[1]["changes"]] == [("sms", False), ("sms", True), ("sms", True)]
    assert len(slow[1]["audit"]) == 3


def test_random_member_batches_end_where_the_per_row_path_does(clean_db):
    _random_batches()


@settings(max_examples=20, deadline=None)
@given(setup=st.lists(_row, max_size=5), batch=st.lists(_row, min_size=1, max_size=20))
def _random_batches(setup, batch):
    fast, slow = _run(setup, batch, True), _run(setup, batch, False)
    assert fast == slow, repr((setup, batch))
