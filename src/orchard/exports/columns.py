"""The field catalog: every column an export can have, its Chinese and English header, what it
holds, and which per-chunk lookup it needs. A caller picks columns by `key` (`fields=name,phone`);
without `fields` the columns marked `default` are exported, in catalog order.

Conventions: money in yuan with two decimals, the `_fen` twin as an integer (not exported by
default); times in the tenant's zone; identity columns list every value of that kind, earliest
linked first, joined with `|`, masked for masked principals exactly as `members.service` masks
them; enum values (gender, status) are the API's codes, so a file re-imports cleanly.
`catalog_table()` renders a catalog as Markdown for docs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from orchard.kit.tabular import yuan
from orchard.members.models import CHANNELS, PURPOSES


@dataclass(slots=True)
class RowContext:
    """What a column reads from: the chunk query's row plus the per-chunk lookups it asked for."""

    row: Any
    #: kind -> values of the member (masked for masked principals), earliest linked first.
    identities: dict[str, list[str]] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    #: (channel, purpose) pairs currently granted.
    consents: frozenset[tuple[str, str]] = frozenset()
    #: The member's aggregates row (None if it has none).
    agg: Any = None
    #: The order line of this row (orders with line columns); None for an order without lines.
    line: Any = None


@dataclass(frozen=True, slots=True)
class Column:
    key: str
    zh: str
    en: str
    value: Callable[[RowContext], Any]
    #: The per-chunk lookup it needs: "identity:<kind>", "tags", "consents", "aggregates" or "lines".
    needs: str | None = None
    default: bool = True
    doc: str = ""

    def header(self, english: bool) -> str:
        return self.en if english else self.zh


def _row(attr: str) -> Callable[[RowContext], Any]:
    return lambda c: getattr(c.row, attr)


def _money(attr: str) -> Callable[[RowContext], Any]:
    return lambda c: yuan(getattr(c.row, attr))


def _agg(attr: str) -> Callable[[RowContext], Any]:
    return lambda c: None if c.agg is None else getattr(c.agg, attr)


def _agg_money(attr: str) -> Callable[[RowContext], Any]:
    return lambda c: None if c.agg is None else yuan(getattr(c.agg, attr))


def _ident(kind: str) -> Callable[[RowContext], Any]:
    return lambda c: "|".join(c.identities.get(kind, ())) or None


def _line(attr: str) -> Callable[[RowContext], Any]:
    return lambda c: None if c.line is None else getattr(c.line, attr)


def _line_money(attr: str) -> Callable[[RowContext], Any]:
    return lambda c: None if c.line is None else yuan(getattr(c.line, attr))


def _identity(key: str, zh: str, en: str, *, kind: str | None = None, default: bool = True) -> Column:
    kind = kind or key
    # The kinds `members.service` masks for masked principals (external ids are not masked there either).
    masked = "; masked for masked principals" if kind in ("phone", "email", "card_no", "wechat_unionid",
                                                          "wechat_openid") else ""
    return Column(key, zh, en, _ident(kind), needs=f"identity:{kind}", default=default,
                  doc=f"every {kind} of the member, `|`-joined{masked}")


_CHANNEL_ZH = {"sms": "短信", "wechat": "微信", "app_push": "App推送", "email": "邮件", "wecom": "企业微信"}
_CHANNEL_EN = {"sms": "SMS", "wechat": "WeChat", "app_push": "app push", "email": "email", "wecom": "WeCom"}
_PURPOSE_ZH = {"marketing": "营销", "service": "服务"}


def _consent(channel: str, purpose: str) -> Column:
    return Column(f"{channel}_{purpose}", f"{_CHANNEL_ZH[channel]}{_PURPOSE_ZH[purpose]}授权",
                  f"{_CHANNEL_EN[channel]} {purpose} consent",
                  lambda c: (channel, purpose) in c.consents, needs="consents", default=purpose == "marketing",
                  doc=f"true when {channel}/{purpose} consent is currently granted (no record means false)")


MEMBERS: tuple[Column, ...] = (
    Column("id", "会员ID", "Member ID", _row("id")),
    Column("name", "姓名", "Name", _row("name")),
    Column("gender", "性别", "Gender", _row("gender"), doc="male / female / unknown"),
    Column("birthday", "生日", "Birthday", _row("birthday")),
    Column("region", "地区", "Region", _row("region")),
    Column("source_channel", "来源渠道", "Source channel", _row("source_channel")),
    Column("home_store_code", "门店编码", "Store code", _row("store_code"), doc="home store"),
    Column("home_store_name", "门店名称", "Store name", _row("store_name"), doc="home store"),
    Column("joined_at", "入会时间", "Joined at", _row("joined_at")),
    _identity("phone", "手机号", "Phone"),
    _identity("email", "邮箱", "Email"),
    _identity("card_no", "会员卡号", "Card number"),
    _identity("wechat_unionid", "微信UnionID", "WeChat UnionID"),
    _identity("wechat_openid", "微信OpenID", "WeChat OpenID", default=False),
    _identity("external_id", "外部ID", "External ID"),
    Column("tags", "标签", "Tags", lambda c: "|".join(c.tags) or None, needs="tags", doc="`|`-joined, by name"),
    *(_consent(channel, purpose) for channel in CHANNELS for purpose in PURPOSES),
    Column("order_count", "订单数", "Orders", _agg("order_count"), needs="aggregates",
           doc="paid orders not fully refunded"),
    Column("total_spend", "累计消费(元)", "Total spend (CNY)", _agg_money("total_spend_fen"), needs="aggregates",
           doc="net of refunds"),
    Column("total_spend_fen", "累计消费(分)", "Total spend (fen)", _agg("total_spend_fen"), needs="aggregates",
           default=False),
    Column("total_refund", "累计退款(元)", "Total refunds (CNY)", _agg_money("refund_fen"), needs="aggregates"),
    Column("total_refund_fen", "累计退款(分)", "Total refunds (fen)", _agg("refund_fen"), needs="aggregates",
           default=False),
    Column("first_order_at", "首次下单时间", "First order at", _agg("first_order_at"), needs="aggregates"),
    Column("last_order_at", "最近下单时间", "Last order at", _agg("last_order_at"), needs="aggregates"),
    Column("last_visit_at", "最近到店时间", "Last visit at", _agg("last_visit_at"), needs="aggregates"),
    Column("last_login_at", "最近登录时间", "Last login at", _agg("last_login_at"), needs="aggregates"),
    Column("last_event_at", "最近活跃时间", "Last event at", _agg("last_event_at"), needs="aggregates"),
    Column("reduce_disturbance", "减少打扰", "Reduce disturbance", _row("reduce_disturbance")),
    Column("attributes", "自定义属性", "Attributes", lambda c: c.row.attributes or None, doc="JSON"),
)

#: One row per order line when any `lines` column is chosen (the default), else one row per order.
ORDERS: tuple[Column, ...] = (
    Column("order_id", "订单ID", "Order ID", _row("id")),
    Column("source", "订单来源", "Source", _row("source")),
    Column("external_id", "外部订单号", "External order ID", _row("external_id")),
    Column("member_id", "会员ID", "Member ID", _row("member_id")),
    Column("member_name", "会员姓名", "Member name", _row("member_name")),
    _identity("member_phone", "会员手机号", "Member phone", kind="phone"),
    Column("store_code", "门店编码", "Store code", _row("store_code"), doc="where the order was placed"),
    Column("store_name", "门店名称", "Store name", _row("store_name")),
    Column("channel", "渠道", "Channel", _row("channel")),
    Column("status", "订单状态", "Status", _row("status"), doc="paid / partially_refunded / refunded"),
    Column("currency", "币种", "Currency", _row("currency")),
    Column("amount", "实付金额(元)", "Amount paid (CNY)", _money("amount_fen")),
    Column("amount_fen", "实付金额(分)", "Amount paid (fen)", _row("amount_fen"), default=False),
    Column("refunded", "已退款金额(元)", "Refunded (CNY)", _money("refunded_fen")),
    Column("refunded_fen", "已退款金额(分)", "Refunded (fen)", _row("refunded_fen"), default=False),
    Column("paid_at", "支付时间", "Paid at", _row("paid_at")),
    Column("properties", "订单属性", "Order properties", lambda c: c.row.properties or None, default=False,
           doc="JSON"),
    Column("line_no", "行号", "Line no.", _line("line_no"), needs="lines"),
    Column("sku", "商品编码", "SKU", _line("sku"), needs="lines"),
    Column("product_name", "商品名称", "Product name", _line("name"), needs="lines"),
    Column("category", "品类", "Category", _line("category"), needs="lines"),
    Column("quantity", "数量", "Quantity", _line("quantity"), needs="lines"),
    Column("unit_price", "单价(元)", "Unit price (CNY)", _line_money("unit_price_fen"), needs="lines"),
    Column("unit_price_fen", "单价(分)", "Unit price (fen)", _line("unit_price_fen"), needs="lines", default=False),
    Column("line_amount", "行金额(元)", "Line amount (CNY)", _line_money("amount_fen"), needs="lines"),
    Column("line_amount_fen", "行金额(分)", "Line amount (fen)", _line("amount_fen"), needs="lines",
           default=False),
    Column("refunded_quantity", "已退数量", "Refunded quantity", _line("refunded_quantity"), needs="lines"),
    Column("line_refunded", "行已退金额(元)", "Line refunded (CNY)", _line_money("refunded_fen"), needs="lines"),
    Column("line_refunded_fen", "行已退金额(分)", "Line refunded (fen)", _line("refunded_fen"), needs="lines",
           default=False),
)

EVENTS: tuple[Column, ...] = (
    Column("event_id", "事件ID", "Event ID", _row("id")),
    Column("name", "事件名称", "Event name", _row("name")),
    Column("occurred_at", "发生时间", "Occurred at", _row("occurred_at")),
    Column("member_id", "会员ID", "Member ID", _row("member_id"), doc="empty for an unlinked anonymous event"),
    Column("member_name", "会员姓名", "Member name", _row("member_name")),
    _identity("member_phone", "会员手机号", "Member phone", kind="phone"),
    Column("anonymous_id", "匿名ID", "Anonymous ID", _row("anonymous_id")),
    Column("store_code", "门店编码", "Store code", _row("store_code")),
    Column("store_name", "门店名称", "Store name", _row("store_name")),
    Column("source", "来源", "Source", _row("source")),
    Column("external_id", "外部事件ID", "External event ID", _row("external_id")),
    Column("received_at", "接收时间", "Received at", _row("received_at")),
    Column("properties", "事件属性", "Properties", lambda c: c.row.properties or None, doc="JSON"),
)

CATALOGS: dict[str, tuple[Column, ...]] = {"members": MEMBERS, "orders": ORDERS, "events": EVENTS}


def keys(catalog: tuple[Column, ...]) -> str:
    return ", ".join(c.key for c in catalog)


def catalog_table(catalog: tuple[Column, ...]) -> str:
    lines = ["| key | 中文表头 | English header | default | notes |", "|---|---|---|---|---|"]
    lines += [f"| `{c.key}` | {c.zh} | {c.en} | {'yes' if c.default else ''} | {c.doc.replace('|', chr(92) + '|')} |"
              for c in catalog]
    return "\n".join(lines)
