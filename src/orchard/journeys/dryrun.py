"""Dry run: the path one member would take through a journey version right now, step by step.

An operator checks a draft before publishing ("what would 王芳 get?"): would she enter (re-entry
policy, entry condition — and which of its conditions is false), and then each step with what it
would do — waits as the time they end, condition branches with the conditions that decided them,
her deterministic split variant (or the held-out control group), each send with its template, the
respect verdict (would be sent, deferred by quiet hours, or suppressed and why) and the rendered
text, coupons, points, tags, tasks and webhooks described, `wait_event` taking its timeout branch
unless the event already happened since the trigger.

It only reads. It uses the engine's own helpers (`_variant`, `_wake_after`, `send_order`,
`falls_back`, `webhook_data`) and the segment compiler, so it cannot drift from what a real run does,
and runs inside a savepoint that is always rolled back, so even a helper that flushed could not
leave a row behind. The clock moves with the waits: a step after "wait 3 days" is judged 3 days from
now (quiet hours, cap windows, relative conditions) on the data known now. Sends it would make count
toward the caps of later sends in the same run, as rows would.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from jinja2 import TemplateError, UndefinedError
from sqlalchemy import case, exists, func, select
from sqlalchemy.orm import Session

from orchard.errors import InvalidInput, NotFound
from orchard.events.models import Event, Order
from orchard.journeys import engine
from orchard.journeys import graph as G
from orchard.journeys.models import OPEN, Journey, JourneyRun, JourneyVersion
from orchard.kit.clock import tenant_zone, utcnow
from orchard.members.models import Member
from orchard.messaging import links, outbox, respect, templates
from orchard.messaging.models import Message, MessageTemplate
from orchard.segments import compiler as C
from orchard.segments import evaluate
from orchard.segments import language as lang


@dataclass
class _Run:
    """What the engine's helpers read from a run, for a run that does not exist."""

    journey_id: int
    member_id: int
    trigger_key: str
    id: int | None = None


def _local(at: dt.datetime) -> str:
    return at.astimezone(tenant_zone()).isoformat()


def _short(at: dt.datetime) -> str:
    return at.astimezone(tenant_zone()).strftime("%Y-%m-%d %H:%M")


def version_for(session: Session, journey: Journey, number: int | None) -> JourneyVersion:
    """The version asked for, or the newest one (draft or not)."""
    stmt = select(JourneyVersion).where(JourneyVersion.journey_id == journey.id)
    stmt = stmt.where(JourneyVersion.version == number) if number is not None else \
        stmt.order_by(JourneyVersion.version.desc()).limit(1)
    version = session.scalar(stmt)
    if version is None:
        raise NotFound("journey version not found", code="journey.version_not_found")
    return version


def dry_run(session: Session, journey: Journey, member: Member, *, version: int | None = None,
            now: dt.datetime | None = None) -> dict[str, Any]:
    """The member's path through `version` (default: the newest) of the journey, as data; writes nothing."""
    now = now or utcnow()
    savepoint = session.begin_nested()
    try:
        return _DryRun(session, journey, version_for(session, journey, version), member, now).run()
    finally:
        savepoint.rollback()


class _DryRun:
    def __init__(self, session: Session, journey: Journey, version: JourneyVersion, member: Member,
                 now: dt.datetime) -> None:
        self.session, self.journey, self.version, self.member, self.now = session, journey, version, member, now
        self.parsed = G.parse(version.graph)
        self.policy = respect.get_policy(session)
        self.pending: list[respect.Pending] = []
        #: After a coupon step, what later templates see as `coupon` (its code is drawn when issued).
        self.coupon: dict[str, str] | None = None

    def run(self) -> dict[str, Any]:
        trigger, since, key = self._trigger()
        entry = self._entry()
        steps, outcome = self._walk(since, key)
        return {"journey": self.journey.code, "version": self.version.version,
                "version_status": self.version.status, "member_id": self.member.id, "at": _local(self.now),
                "trigger": trigger, "entry": entry, "as_if_entered": not entry["would_enter"], "steps": steps,
                "outcome": outcome if entry["would_enter"] else "not_entered",
                "exit_on": self.parsed.exit_on.event if self.parsed.exit_on else None,
                "message_cap": self.parsed.message_cap.model_dump() if self.parsed.message_cap else None}

    # -- entry -------------------------------------------------------------------------------------

    def _trigger(self) -> tuple[dict[str, Any], dt.datetime, str]:
        """The trigger, and for an event trigger the member's latest qualifying event (within its
        `max_age_hours`): what a `wait_event` looks after, and what a webhook reports."""
        t = self.parsed.trigger
        out: dict[str, Any] = {"type": t.type}
        if not isinstance(t, G.EventTrigger):
            out["summary"] = "假定此刻触发"
            return out, self.now, "dry-run"
        fresh = self.now - dt.timedelta(hours=t.max_age_hours)
        if t.event == "$order":
            o = Order.__table__
            row = self.session.execute(select(o.c.id, o.c.paid_at.label("at")).where(
                o.c.member_id == self.member.id, o.c.status != "refunded", o.c.paid_at >= fresh,
                o.c.paid_at <= self.now).order_by(o.c.paid_at.desc()).limit(1)).first()
            prefix = "o"
        else:
            e = Event.__table__
            stmt = select(e.c.id, e.c.occurred_at.label("at")).where(
                e.c.member_id == self.member.id, e.c.name == t.event, e.c.occurred_at >= fresh,
                e.c.occurred_at <= self.now)
            ctx = C.context(self.session, now=self.now)
            for i, f in enumerate(t.where):
                stmt = stmt.where(C.prop_filter(e.c.properties, f, ctx, f"$.trigger.where[{i}]"))
            row = self.session.execute(stmt.order_by(e.c.occurred_at.desc()).limit(1)).first()
            prefix = "e"
        out["event"] = t.event
        if row is None:
            out["matched"] = None
            out["summary"] = f"近 {t.max_age_hours} 小时内没有 {t.event}，假定此刻触发"
            return out, self.now, "dry-run"
        at = row.at
        out["matched"] = {"id": row.id, "at": _local(at)}
        out["summary"] = f"{_short(at)} 的 {t.event} 触发"
        return out, at, f"{prefix}:{row.id}"

    def _entry(self) -> dict[str, Any]:
        """Would the member enter now: live, the re-entry policy, the entry condition (each condition's value)."""
        out: dict[str, Any] = {"would_enter": True, "reason": None, "reentry": self.journey.reentry}
        if self.member.status != "active":
            out.update(would_enter=False, reason="member.inactive", summary="会员已被合并，不会进入")
            return out
        R = JourneyRun.__table__
        earlier = select(R.c.id).where(R.c.journey_id == self.journey.id, R.c.member_id == self.member.id)
        if self.journey.reentry == "once":
            blocked, why = earlier, "该旅程只进入一次，会员已进入过"
        elif self.journey.reentry == "cooldown":
            days = self.journey.reentry_days or 0
            blocked = earlier.where(R.c.entered_at > self.now - dt.timedelta(days=days))
            why = f"{days} 天内已进入过（冷却期）"
        else:
            blocked, why = earlier.where(R.c.status.in_(OPEN)), "会员正在该旅程中（每次只能有一个进行中的运行）"
        if self.session.scalar(select(exists(blocked))):
            out.update(would_enter=False, reason="reentry", summary=why)
        if self.parsed.entry_condition is not None:
            hit, conditions = self._evaluate(self.parsed.entry_condition, self.now, "$.entry_condition")
            out["entry_condition"] = {"met": hit, "conditions": conditions}
            if not hit and out["would_enter"]:
                false = ", ".join(c["path"] for c in conditions if not c["true"])
                out.update(would_enter=False, reason="entry_condition", summary=f"进入条件不满足：{false}")
        if out["would_enter"]:
            out["summary"] = "会进入"
        return out

    def _evaluate(self, definition: Any, at: dt.datetime, root: str) -> tuple[bool, list[dict[str, Any]]]:
        """The definition's answer for the member at `at`, and each of its conditions' own value (so the
        operator sees which one is false), in one statement."""
        compiled = evaluate.compile_definition(self.session, definition, now=at, root=root)
        leaves = lang.leaves(compiled.tree, root)
        columns = [case((C.compile_condition(leaf, compiled.ctx, path), 1), else_=0).label(f"c{i}")
                   for i, (leaf, path) in enumerate(leaves)]
        row = self.session.execute(select(case((compiled.condition, 1), else_=0).label("hit"), *columns)
                                   .select_from(C.frame(compiled.ctx))
                                   .where(C.live(), C.m.c.id == self.member.id)).one()
        conditions = [{"path": path, "condition": lang.dump(leaf), "true": bool(row._mapping[f"c{i}"])}
                      for i, (leaf, path) in enumerate(leaves)]
        return bool(row.hit), conditions

    # -- steps -------------------------------------------------------------------------------------

    def _walk(self, since: dt.datetime, key: str) -> tuple[list[dict[str, Any]], str]:
        run = _Run(journey_id=self.journey.id, member_id=self.member.id, trigger_key=key)
        at, sid = self.now, self.parsed.entry
        seen: set[str] = set()
        out: list[dict[str, Any]] = []
        while True:
            if sid in seen:  # a loop (always through a wait): once round is enough to show
                out.append({"step": sid, "type": "loop", "at": _local(at), "outcome": "loop",
                            "summary": f"回到步骤 {sid}（循环），此后重复"})
                return out, "loop"
            seen.add(sid)
            step = self.parsed.steps[sid]
            item: dict[str, Any] = {"step": sid, "type": step.type, "at": _local(at)}
            out.append(item)
            nxt, at, end = self._step(run, sid, step, at, since, item)
            if end is not None:
                return out, end
            if nxt is None:
                out.append({"step": None, "type": "end", "at": _local(at), "outcome": "completed",
                            "summary": "旅程完成"})
                return out, "completed"
            item["next"] = nxt
            sid = nxt

    def _step(self, run: _Run, sid: str, step: Any, at: dt.datetime, since: dt.datetime,
              item: dict[str, Any]) -> tuple[str | None, dt.datetime, str | None]:
        """Describe one step into `item`; returns (next step, the clock after it, end outcome or None)."""
        s = self.session
        if isinstance(step, G.Wait):
            until = engine._wake_after(step, at)
            item.update(outcome="waits", until=_local(until), summary=f"等待至 {_short(until)}")
            return step.next, until, None
        if isinstance(step, G.WaitEvent):
            happened = s.scalar(select(Event.id).where(
                Event.member_id == self.member.id, Event.name == step.event, Event.occurred_at >= since,
                Event.occurred_at <= at).limit(1))
            if happened:
                item.update(outcome="event", summary=f"{step.event} 已发生，走 next")
                return step.next, at, None
            until = at + dt.timedelta(hours=step.timeout_hours)
            item.update(outcome="timeout", until=_local(until),
                        summary=f"等待 {step.event} 至 {_short(until)}，尚未发生：超时分支")
            return step.timeout_next, until, None
        if isinstance(step, G.Condition):
            hit, conditions = self._evaluate(step.if_, at, f"$.steps.{sid}.if")
            item.update(outcome="then" if hit else "else", conditions=conditions,
                        summary="条件成立：走 then" if hit else "条件不成立：走 else（"
                        + ", ".join(c["path"] for c in conditions if not c["true"]) + " 为假）")
            return (step.then if hit else step.else_), at, None
        if isinstance(step, G.Split):
            variant = engine._variant(run, sid, step)
            item.update(outcome="variant", variant=variant)
            if variant == "control":
                item["summary"] = "分入对照组：此后不再触达（仍计入统计）"
                return None, at, "control"
            item["summary"] = f"分入变体 {variant}"
            return next(v.next for v in step.variants if v.name == variant), at, None
        if isinstance(step, G.Send):
            self._send(sid, step, at, item)
            return step.next, at, None
        if isinstance(step, G.WebhookStep):
            data = engine.webhook_data(s, run, self.journey, sid, step)
            verdict = respect.check(s, member=self.member, channel="webhook", purpose="service",
                                    policy=self.policy, now=at)
            item.update(outcome="would_call" if verdict.ok else "suppressed", url=step.url, payload=data,
                        reason=verdict.reason,
                        summary=f"调用 webhook {step.url}" if verdict.ok else f"不调用：{verdict.reason}")
            return step.next, at, None
        if isinstance(step, G.CouponStep):
            from orchard.coupons.models import CouponTemplate

            template = s.get(CouponTemplate, step.template_id)
            if template is not None:
                self.coupon = {"code": "（发券时生成）", "name": template.name, "valid_to": ""}
            item.update(outcome="coupon", template_id=step.template_id,
                        name=template.name if template else None,
                        summary=f"发放优惠券「{template.name}」" if template
                        else f"优惠券模板 {step.template_id} 不存在")
            return step.next, at, None
        if isinstance(step, G.PointsStep):
            item.update(outcome="points", amount=step.amount, ledger_reason=step.reason,
                        summary=f"发放 {step.amount} 积分（{step.reason}）")
            return step.next, at, None
        if isinstance(step, G.TagStep):
            parts = ([f"添加标签 {'、'.join(step.add)}"] if step.add else []) + \
                    ([f"移除标签 {'、'.join(step.remove)}"] if step.remove else [])
            item.update(outcome="tag", add=step.add, remove=step.remove, summary="；".join(parts) or "不改标签")
            return step.next, at, None
        if isinstance(step, G.TaskStep):
            from orchard.org.models import OrgUnit

            store = s.get(OrgUnit, self.member.home_store_id) if self.member.home_store_id else None
            due = at + dt.timedelta(hours=step.due_hours)
            kind = "回访" if step.kind == "callback" else "企业微信"
            item.update(outcome="task", kind=step.kind, title=step.title, store=store.code if store else None,
                        due_at=_local(due), summary=f"为{store.name if store else '（无归属门店）'}创建{kind}任务"
                                                    f"「{step.title}」，{_short(due)} 到期")
            return step.next, at, None
        if isinstance(step, G.Exit):
            item.update(outcome="exited", summary="退出旅程")
            return None, at, "exited"
        raise AssertionError(type(step).__name__)  # pragma: no cover — the graph parser admits nothing else

    def _send(self, sid: str, step: G.Send, at: dt.datetime, item: dict[str, Any]) -> None:
        """Each template the step would try, in order, with its verdict and rendered text, as the engine
        would try them (fallback only when the channel cannot reach the member)."""
        s = self.session
        cap = respect.JourneyCap(self.journey.id, self.parsed.message_cap.max, self.parsed.message_cap.days) \
            if self.parsed.message_cap else None
        tried: list[dict[str, Any]] = []
        item.update(outcome="nothing_sent", tried=tried, summary="不发送")
        for code in engine.send_order(s, step, self.member.id):
            template = s.scalar(select(MessageTemplate).where(MessageTemplate.code == code))
            entry: dict[str, Any] = {"template": code}
            tried.append(entry)
            if template is None or template.status != "published":
                entry.update(verdict="invalid", reason="template.missing" if template is None
                             else "template.unpublished")
                item["summary"] = f"模板 {code} {'不存在' if template is None else '未发布'}（发布时会被拒绝）"
                return
            entry.update(channel=template.channel, purpose=template.purpose)
            grant = (template.provider_template or template.code) if template.channel == "wechat_subscribe" else None
            verdict = respect.check(s, member=self.member, channel=template.channel, purpose=template.purpose,
                                    policy=self.policy, now=at, grant=grant, journey_cap=cap, pending=self.pending)
            entry.update(self._render(template, code))
            if verdict.ok:
                self.pending.append(respect.Pending(template.channel, template.purpose, self.journey.id,
                                                    verdict.recipient, at))
                if verdict.not_before is not None:
                    entry.update(verdict="deferred", not_before=_local(verdict.not_before))
                    item.update(outcome="deferred", template=code,
                                summary=f"通过 {template.channel} 发送「{code}」，免打扰时段顺延至 "
                                        f"{_short(verdict.not_before)}")
                else:
                    entry["verdict"] = "would_send"
                    item.update(outcome="would_send", template=code,
                                summary=f"通过 {template.channel} 发送「{code}」")
                return
            entry.update(verdict="suppressed", reason=verdict.reason, detail=verdict.detail)
            if verdict.reason in ("cap.all", f"cap.{template.channel}"):
                entry["may_preempt"] = self._preemptible(at)
            item.update(outcome="suppressed", reason=verdict.reason,
                        summary=f"「{code}」不发送：{verdict.reason}（{verdict.detail}）")
            if not engine.falls_back(verdict.reason):
                return

    def _render(self, template: MessageTemplate, code: str) -> dict[str, Any]:
        collector = links.Collector(f"dry-run:{code}:{self.member.id}")
        extra: dict[str, Any] = {"event": {}, **({"coupon": self.coupon} if self.coupon else {})}
        context = {**outbox.context_for(self.session, self.member, extra), "link": collector}
        try:
            return {"rendered": templates.render_template(template, context)}
        except (UndefinedError, TemplateError, InvalidInput) as exc:
            return {"rendered": None, "render_error": str(exc)[:500]}

    def _preemptible(self, at: dt.datetime) -> int:
        """Queued lower-priority marketing the engine would cancel to make room (reason "priority")."""
        days = max(c.days for c in self.policy.caps.values()) if self.policy.caps else 0
        return self.session.scalar(select(func.count()).select_from(Message).where(
            Message.member_id == self.member.id, Message.purpose == "marketing", Message.status == "queued",
            Message.priority < self.journey.priority, Message.created_at > at - dt.timedelta(days=days))) or 0

