"""Ready journeys (J4): shipped, editable journeys a brand starts from.

`install` creates the message templates and the journeys as drafts (nothing is sent until an
operator publishes them); existing codes are left alone, so re-running it is harmless. Coupon steps
are included only when a coupon template is given (brands set up their own coupons first).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from orchard.journeys import service
from orchard.journeys.models import Journey
from orchard.messaging import templates
from orchard.messaging.models import MessageTemplate

SIGN = "果园"

TEMPLATES: tuple[dict[str, Any], ...] = (
    {"code": "welcome_sms", "name": "欢迎入会", "channel": "sms", "purpose": "service",
     "body": "{{ member.name }}，欢迎加入{{ brand.name }}会员！您已获得{{ points.balance }}积分，可在小程序查看权益。"},
    {"code": "welcome_tips_sms", "name": "会员权益介绍", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，每周三会员日积分翻倍，生日月1.5倍积分，详情 "
             "{{ link('https://example.com/vip') }} 回T退订"},
    {"code": "first_order_sms", "name": "首单引导", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，首单专享优惠已到账，到店或线上下单即可使用。回T退订"},
    {"code": "repurchase_sms", "name": "复购提醒", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，好久不见！您常买的商品有新品上架，会员专享价等您来。回T退订"},
    {"code": "winback_gift_sms", "name": "流失挽回·礼券", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，我们想您了！送您一张回归礼券，7天内有效。回T退订"},
    {"code": "winback_gift_push", "name": "流失挽回·礼券推送", "channel": "app_push", "purpose": "marketing",
     "subject": "{{ brand.name }}", "body": "{{ member.name }}，我们想您了！回归礼券已放入您的账户，7天内有效。"},
    {"code": "winback_offer_sms", "name": "流失挽回·召回优惠", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，最后3天：老会员召回专享价，{{ store.name }}等您回来。回T退订"},
    {"code": "cart_sms", "name": "购物车提醒", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，您购物车里的商品库存紧张，下单即享会员价。回T退订"},
    {"code": "birthday_sms", "name": "生日祝福", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，生日快乐！生日月消费享1.5倍积分，生日礼已放入您的账户。回T退订"},
    {"code": "points_expiring_sms", "name": "积分到期提醒", "channel": "sms", "purpose": "service",
     "body": "{{ member.name }}，您有积分将于30天后到期，当前余额{{ points.balance }}分，可兑换好礼。"},
    {"code": "review_sms", "name": "评价邀请", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，您最近的购物体验如何？评价即送20积分。回T退订"},
    {"code": "cycle_sms", "name": "消费周期提醒", "channel": "sms", "purpose": "marketing",
     "body": "{{ member.name }}，按您的购买习惯，常买的商品快用完了吧？会员专享价已为您备好，欢迎回购。回T退订"},
)


def _send(template: str, nxt: str | None = None) -> dict[str, Any]:
    return {"type": "send", "template": template, "next": nxt}


def journeys(coupon_template_id: int | None = None) -> tuple[dict[str, Any], ...]:
    def coupon(nxt: str | None) -> dict[str, Any]:
        return {"type": "coupon", "template_id": coupon_template_id, "next": nxt}

    first_order_steps = {"send": _send("first_order_sms")}
    if coupon_template_id:
        first_order_steps = {"coupon": coupon("send"), **first_order_steps}
    return (
        {"code": "ready_welcome", "name": "欢迎系列", "graph": {
            "trigger": {"type": "event", "event": "sign_up"}, "entry": "hello",
            "steps": {"hello": _send("welcome_sms", "wait"),
                      "wait": {"type": "wait", "days": 3, "until_time": "10:00", "next": "tips"},
                      "tips": _send("welcome_tips_sms")}}},
        {"code": "ready_first_order", "name": "注册未下单·首单引导", "graph": {
            "trigger": {"type": "absence", "after": "joined", "absent": "$order", "days": 3},
            "entry": "coupon" if coupon_template_id else "send", "exit_on": {"event": "$order"},
            "steps": first_order_steps}},
        {"code": "ready_repurchase", "name": "首单后未复购", "graph": {
            "trigger": {"type": "absence", "after": "first_order", "absent": "$order", "days": 30},
            "entry": "send", "exit_on": {"event": "$order"}, "steps": {"send": _send("repurchase_sms")}}},
        {"code": "ready_winback", "name": "30天未消费·三级挽回", "reentry": "cooldown", "reentry_days": 90,
         "priority": 5, "graph": {
             "trigger": {"type": "absence", "after": "last_order", "absent": "$order", "days": 30},
             "entry": "coupon" if coupon_template_id else "gift", "exit_on": {"event": "$order"},
             "steps": {
                 # Level 1, days 0–7: a gift (coupon) by app push, SMS when push cannot reach them.
                 **({"coupon": coupon("gift")} if coupon_template_id else {}),
                 "gift": {"type": "send", "template": "winback_gift_push", "fallback": ["winback_gift_sms"],
                          "next": "wait1"},
                 "wait1": {"type": "wait", "days": 8, "until_time": "10:00", "next": "callback"},
                 # Level 2, days 8–15: a service call-back by the home store, and the shopping guide adds
                 # them on WeCom.
                 "callback": {"type": "task", "kind": "callback", "title": "回访：30天未消费会员",
                              "body": "了解近况与不满意之处，告知回归礼券", "due_hours": 72, "next": "wecom"},
                 "wecom": {"type": "task", "kind": "wecom", "title": "企微添加好友并问候",
                           "body": "添加会员企业微信，发送专属问候与新品信息", "due_hours": 72, "next": "wait2"},
                 "wait2": {"type": "wait", "days": 8, "until_time": "10:00", "next": "offer"},
                 # Level 3, days 16–30: the recall offer.
                 "offer": _send("winback_offer_sms")}}},
        {"code": "ready_cart", "name": "加购未下单·24小时提醒", "reentry": "cooldown", "reentry_days": 7, "graph": {
            "trigger": {"type": "event", "event": "added_to_cart"}, "entry": "wait",
            "exit_on": {"event": "$order"},
            "steps": {"wait": {"type": "wait", "hours": 24, "next": "send"}, "send": _send("cart_sms")}}},
        {"code": "ready_birthday", "name": "生日关怀（提前3天）", "reentry": "cooldown", "reentry_days": 300, "graph": {
            "trigger": {"type": "date", "field": "birthday", "days_before": 3}, "entry": "send",
            "steps": {"send": _send("birthday_sms")}}},
        {"code": "ready_points_expiring", "name": "积分到期提醒（提前30天）", "reentry": "cooldown",
         "reentry_days": 25, "graph": {
             "trigger": {"type": "date", "field": "points_expiring", "days_before": 30}, "entry": "send",
             "steps": {"send": _send("points_expiring_sms")}}},
        {"code": "ready_review", "name": "下单后评价邀请", "reentry": "always", "graph": {
            "trigger": {"type": "event", "event": "$order"}, "entry": "wait",
            "steps": {"wait": {"type": "wait", "days": 3, "until_time": "19:00", "next": "send"},
                      "send": _send("review_sms")}}},
        # Two days before the member's typical repurchase interval runs out (members with two orders
        # or more); once per cycle — a member who buys meanwhile moves the due day on.
        {"code": "ready_cycle", "name": "消费周期提醒", "reentry": "cooldown", "reentry_days": 7, "graph": {
            "trigger": {"type": "date", "field": "repurchase_due", "days_before": 2}, "entry": "send",
            "exit_on": {"event": "$order"}, "steps": {"send": _send("cycle_sms")}}},
    )


def install(session: Session, *, actor: str, coupon_template_id: int | None = None,
            publish: bool = False) -> dict[str, list[str]]:
    """Create what is missing; with `publish`, also publish and start the shipped journeys that are still
    drafts never published (e.g. installed by the demo for review) — never one an operator paused,
    archived or already runs."""
    created: dict[str, list[str]] = {"templates": [], "journeys": [], "published": []}
    for body in TEMPLATES:
        if session.scalar(select(MessageTemplate.id).where(MessageTemplate.code == body["code"])) is None:
            templates.create(session, actor=actor, sign_name=SIGN if body["channel"] == "sms" else None,
                             publish=True, **body)
            created["templates"].append(body["code"])
    for body in journeys(coupon_template_id):
        existing = session.scalar(select(Journey).where(Journey.code == body["code"]))
        if existing is None:
            service.create(session, actor=actor, **body)
            created["journeys"].append(body["code"])
        elif not (existing.status == "draft" and existing.live_version_id is None):
            continue
        if publish:
            service.publish(session, code=body["code"], actor=actor)
            created["published"].append(body["code"])
    return created
