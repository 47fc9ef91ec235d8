"""Dry run of a draft journey on SQLite and PostgreSQL: the path a member would take (entry and the
false condition, waits, branches, the deterministic variant, send verdicts with rendered text, caps
counted across the run's own sends, wait_event's timeout, webhook, points), versions, member scoping,
and that nothing at all is written."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sqlalchemy import func, select

from orchard import db
from orchard.db import Base
from orchard.identity.models import Identity
from orchard.journeys import dryrun, engine, service
from orchard.journeys import graph as G
from orchard.members.consent import set_consent
from orchard.members.models import Member
from orchard.messaging import templates
from tests.factories import api_key, headers
from tests.segments.helpers import event, member, tag

SH = ZoneInfo("Asia/Shanghai")
#: Tuesday 2026-11-24 22:30 in Shanghai: after quiet hours begin (21:00).
NOW = dt.datetime(2026, 11, 24, 22, 30, tzinfo=SH).astimezone(dt.UTC)

GRAPH = {"trigger": {"type": "event", "event": "sign_up"}, "entry": "welcome",
         "entry_condition": {"all": [{"field": "order_count", "op": "eq", "value": 0},
                                     {"tag": "黑名单", "has": False}]},
         "message_cap": {"max": 1, "days": 30},
         "steps": {
             "welcome": {"type": "send", "template": "welcome_sms", "next": "wait"},
             "wait": {"type": "wait", "days": 1, "until_time": "10:00", "next": "check"},
             "check": {"type": "condition", "if": {"field": "total_spend_fen", "op": "gte", "value": 100},
                       "then": "done", "else": "ab"},
             "ab": {"type": "split", "variants": [{"name": "A", "percent": 50, "next": "nudge"},
                                                  {"name": "B", "percent": 50, "next": "nudge"}]},
             "nudge": {"type": "send", "template": "welcome_sms", "next": "login"},
             "login": {"type": "wait_event", "event": "login", "timeout_hours": 48, "next": "done",
                       "timeout_next": "hook"},
             "hook": {"type": "webhook", "url": "https://crm.example.com/hooks/orchard", "payload": {"k": "v"},
                      "next": "gift"},
             "gift": {"type": "points", "amount": 50, "reason": "欢迎礼", "next": "done"},
             "done": {"type": "tag", "add": ["新客"]}}}


def counts() -> dict[str, int]:
    with db.transaction(readonly=True) as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) for t in Base.metadata.sorted_tables}


def test_dry_run_of_a_draft(client):
    from orchard.org.models import OrgUnit

    admin = headers(api_key("admin", name="ops"))
    with db.transaction() as s:
        sh = s.scalar(select(OrgUnit.id).where(OrgUnit.code == "SH001"))
        templates.create(s, code="welcome_sms", name="欢迎", channel="sms", purpose="marketing", sign_name="果园",
                         body="{{ member.name }}，欢迎加入，回T退订", actor="t", publish=True)
        new = member(s, "王芳", home_store_id=sh)
        buyer = member(s, "李雷", home_store_id=sh, orders=[(NOW - dt.timedelta(days=3), 5000)])
        tag(s, member(s, "拉黑"), "黑名单")
        s.add(Identity(member_id=new, kind="phone", value="+8613800000021"))
        set_consent(s, member_id=new, channel="sms", purpose="marketing", granted=True, source="t", actor="t")
        event(s, new, "sign_up", NOW - dt.timedelta(hours=1))
        service.create(s, code="welcome", name="欢迎旅程", graph=GRAPH, actor="t")  # a draft, never published

    with db.transaction() as s:
        out = dryrun.dry_run(s, service.get(s, "welcome"), s.get(Member, new), now=NOW)
    assert (out["version"], out["version_status"], out["outcome"]) == (1, "draft", "completed")
    assert out["entry"]["would_enter"] and out["trigger"]["matched"] is not None
    by_step = {st["step"]: st for st in out["steps"]}
    # Marketing at 22:30 waits for quiet hours to end; the text is rendered for this member.
    assert by_step["welcome"]["outcome"] == "deferred"
    assert by_step["welcome"]["tried"][0]["not_before"] == "2026-11-25T08:00:00+08:00"
    assert by_step["welcome"]["tried"][0]["rendered"]["body"] == "王芳，欢迎加入，回T退订"
    assert by_step["wait"]["until"] == "2026-11-26T10:00:00+08:00"
    assert by_step["check"]["outcome"] == "else"
    assert by_step["check"]["conditions"][0]["true"] is False
    same_run = dryrun._Run(journey_id=service_id("welcome"), member_id=new, trigger_key="")
    assert by_step["ab"]["variant"] == engine._variant(same_run, "ab", G.parse(GRAPH).steps["ab"])
    # The journey's cap (1 per 30 days) counts the welcome this run would already have sent.
    assert (by_step["nudge"]["outcome"], by_step["nudge"]["reason"]) == ("suppressed", "cap.journey")
    assert by_step["login"]["outcome"] == "timeout" and by_step["login"]["next"] == "hook"
    assert by_step["hook"]["outcome"] == "would_call"
    assert by_step["hook"]["payload"]["trigger"]["event"]["name"] == "sign_up"
    assert by_step["gift"]["summary"] == "发放 50 积分（欢迎礼）"
    assert [st["step"] for st in out["steps"]][-2:] == ["done", None]

    with db.transaction() as s:  # a login since the trigger takes wait_event's other branch
        event(s, new, "login", NOW + dt.timedelta(hours=2))
    with db.transaction() as s:
        out = dryrun.dry_run(s, service.get(s, "welcome"), s.get(Member, new), now=NOW + dt.timedelta(hours=3))
    assert {st["step"]: st for st in out["steps"]}["login"]["outcome"] == "event"
    with db.transaction() as s:  # the buyer fails the entry condition, and we are told which part
        out = dryrun.dry_run(s, service.get(s, "welcome"), s.get(Member, buyer), now=NOW)
    assert out["outcome"] == "not_entered" and out["entry"]["reason"] == "entry_condition"
    assert [c["path"] for c in out["entry"]["entry_condition"]["conditions"] if not c["true"]] == [
        "$.entry_condition.all[0]"]
    assert {st["step"]: st for st in out["steps"]}["check"]["outcome"] == "then"

    # Over the API: nothing is written, versions are chosen, members are scoped.
    before = counts()
    r = client.post("/api/v1/journeys/welcome/dry-run", headers=admin, json={"member_id": new})
    assert r.status_code == 200 and r.json()["steps"][0]["tried"][0]["template"] == "welcome_sms"
    assert client.post("/api/v1/journeys/welcome/dry-run", headers=admin,
                       json={"member_id": new, "version": 1}).json()["version"] == 1
    assert counts() == before
    assert client.post("/api/v1/journeys/welcome/dry-run", headers=admin,
                       json={"member_id": new, "version": 7}).status_code == 404
    gz_key = headers(api_key("admin", name="gz-ops", store="GZ001"))
    hidden = client.post("/api/v1/journeys/welcome/dry-run", headers=gz_key, json={"member_id": new})
    assert hidden.status_code == 404 and "王芳" not in hidden.text
    manager = headers(api_key("store_manager", name="sh-mgr", store="SH001"))
    assert client.post("/api/v1/journeys/welcome/dry-run", headers=manager,
                       json={"member_id": new}).status_code == 403


def service_id(code: str) -> int:
    with db.transaction(readonly=True) as s:
        return service.get(s, code).id
