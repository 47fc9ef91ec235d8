"""The field catalog: every name a `field` condition may use, its type, and the operators it takes.

A field's type decides its operators and values; `check` enforces both and reports the JSON path,
so an editor learns "$.all[2].value: expected a number" rather than a database error. The SQL for
each field lives in `compiler.py`; the catalog is data, served to editors with the JSON Schema.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from orchard.errors import InvalidInput
from orchard.members.models import GENDERS
from orchard.scoring.models import STAGES, VALUE_TIERS
from orchard.scoring.rfm import CLASSES
from orchard.segments import language as lang

#: The eight RFM classes (S3), by code.
RFM_CLASSES = tuple(code for code, *_ in CLASSES)

_OPS = {
    "text": {"eq", "ne", "in", "not_in", "contains", "exists", "not_exists"},
    "enum": {"eq", "ne", "in", "not_in", "exists", "not_exists"},
    "int": {"eq", "ne", "in", "not_in", "gt", "gte", "lt", "lte", "between", "exists", "not_exists"},
    "bool": {"eq"},
    "date": {"eq", "before", "after", "between", "within_next_days", "exists", "not_exists"},
    "datetime": {"before", "after", "between", "within_last_days", "older_than_days", "exists", "not_exists"},
    "days": {"eq", "ne", "gt", "gte", "lt", "lte", "between", "exists", "not_exists"},
}


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: str  # text | enum | int | bool | date | datetime | days
    label_zh: str
    label_en: str
    choices: tuple[str, ...] = ()
    #: Whether a member's answer can change with time alone (and so has flip times).
    timed: bool = False


def _f(name: str, type_: str, zh: str, en: str, choices: tuple[str, ...] = ()) -> FieldSpec:
    return FieldSpec(name, type_, zh, en, choices, timed=type_ in ("datetime", "days"))


CATALOG: dict[str, FieldSpec] = {f.name: f for f in (
    _f("name", "text", "姓名", "Name"),
    _f("gender", "enum", "性别", "Gender", GENDERS),
    _f("birthday", "date", "生日", "Birthday"),
    _f("birthday_month", "int", "生日月份", "Birthday month"),
    _f("region", "text", "地区", "Region"),
    _f("source_channel", "text", "来源渠道", "Source channel"),
    _f("home_store", "text", "归属门店（编码）", "Home store (code)"),
    _f("joined_at", "datetime", "入会时间", "Joined at"),
    _f("days_since_joined", "days", "入会天数", "Days since joining"),
    _f("reduce_disturbance", "bool", "减少打扰", "Reduce disturbance"),
    _f("order_count", "int", "订单数", "Orders"),
    _f("total_spend_fen", "int", "累计消费（分，扣除退款）", "Spend, net of refunds (fen)"),
    _f("refund_fen", "int", "累计退款（分）", "Refunded (fen)"),
    _f("avg_order_fen", "int", "客单价（分）", "Average order value (fen)"),
    _f("first_order_at", "datetime", "首单时间", "First order at"),
    _f("last_order_at", "datetime", "最近下单时间", "Last order at"),
    _f("last_visit_at", "datetime", "最近到店时间", "Last visit at"),
    _f("last_login_at", "datetime", "最近登录时间", "Last login at"),
    _f("last_event_at", "datetime", "最近活跃时间", "Last activity at"),
    _f("days_since_last_order", "days", "距最近下单天数", "Days since last order"),
    _f("days_since_first_order", "days", "距首单天数", "Days since first order"),
    _f("days_since_last_visit", "days", "距最近到店天数", "Days since last visit"),
    _f("days_since_last_login", "days", "距最近登录天数", "Days since last login"),
    _f("days_since_last_event", "days", "距最近活跃天数", "Days since last activity"),
    _f("points_balance", "int", "积分余额", "Points balance"),
    _f("points_expiring", "int", "即将过期积分（within_days 天内）", "Points expiring within `within_days`"),
    _f("growth_value", "int", "成长值", "Growth value"),
    _f("tier", "enum", "会员等级（编码）", "Tier (code)"),
    _f("lifecycle_stage", "enum", "生命周期阶段", "Lifecycle stage", STAGES),
    _f("lifecycle_since", "datetime", "进入当前阶段的时间", "In the current stage since"),
    _f("rfm_class", "enum", "RFM 分类", "RFM class", RFM_CLASSES),
    _f("r_score", "int", "R 分（1–5）", "R score (1–5)"),
    _f("f_score", "int", "F 分（1–5）", "F score (1–5)"),
    _f("m_score", "int", "M 分（1–5）", "M score (1–5)"),
    _f("recency_days", "int", "R：距最近下单天数（评分时）", "Recency days (at scoring)"),
    _f("value_tier", "enum", "价值分层", "Value tier", VALUE_TIERS),
)}

ATTRIBUTE_PREFIX = "attributes."
_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z0-9_\-\u4e00-\u9fff]{1,64}$")
#: Event property names usable in `where` filters and `prop`.
_PROP = re.compile(r"^[A-Za-z0-9_\-.\u4e00-\u9fff]{1,64}$")
#: Properties of `$order` (the pseudo-event for orders): line-level and order-level.
ORDER_PROPS = {"category": "text", "sku": "text", "store": "text", "channel": "text", "amount_fen": "int"}


def spec_for(name: str, path: str) -> FieldSpec:
    """The field's spec; a custom attribute's type is decided by its operator and value (`_attribute`)."""
    if name in CATALOG:
        return CATALOG[name]
    if name.startswith(ATTRIBUTE_PREFIX):
        key = name[len(ATTRIBUTE_PREFIX):]
        if not _ATTRIBUTE_KEY.match(key):
            raise InvalidInput.field(path + ".field", "a custom attribute key is 1–64 letters, digits, _ or -")
        return FieldSpec(name, "attribute", "自定义属性 " + key, "Custom attribute " + key)
    raise InvalidInput.field(path + ".field", f"unknown field {name!r}")


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def parse_when(value: Any, path: str) -> dt.date | dt.datetime:
    """An ISO date (a whole day in the tenant's zone) or an ISO date-time with an offset."""
    if isinstance(value, str):
        try:
            if len(value) == 10:
                return dt.date.fromisoformat(value)
            parsed = dt.datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            if parsed.tzinfo is None:
                raise InvalidInput.field(path, "a date-time needs its offset (e.g. +08:00); or give a bare date")
            return parsed
    raise InvalidInput.field(path, "expected an ISO date (2026-11-11) or date-time with offset")


def check_field(cond: lang.Field, path: str) -> FieldSpec:
    """Semantic checks of one `field` condition; returns its spec (with a custom attribute's type)."""
    spec = spec_for(cond.field, path)
    op, value, vpath = cond.op, cond.value, path + ".value"
    if spec.type == "attribute":
        if op in ("exists", "not_exists"):
            return spec
        sample = value[0] if op in ("in", "not_in", "between") and isinstance(value, list) and value else value
        kind = "int" if _is_number(sample) else "text"
        if op in _OPS["int"] - _OPS["text"] and kind != "int":
            raise InvalidInput.field(vpath, f"{op} compares numbers: give a number")
        spec = FieldSpec(spec.name, kind + "_attribute", spec.label_zh, spec.label_en)
        base = kind
    else:
        base = spec.type
    if op not in _OPS[base]:
        raise InvalidInput.field(path + ".op", f"{op} does not apply to {spec.name} ({base}); use one of "
                                               + ", ".join(sorted(_OPS[base])))
    if (cond.within_days is not None) != (spec.name == "points_expiring"):
        raise InvalidInput.field(path + ".within_days", "within_days is required for points_expiring and "
                                                        "allowed for nothing else")
    if op in ("exists", "not_exists"):
        if value is not None:
            raise InvalidInput.field(vpath, f"{op} takes no value")
        return spec
    if value is None:
        raise InvalidInput.field(vpath, "required")
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value or len(value) > 1000:
            raise InvalidInput.field(vpath, f"{op} takes a list of 1–1000 values")
        for i, item in enumerate(value):
            _check_scalar(spec, base, item, f"{vpath}[{i}]")
        return spec
    if op == "between":
        if not isinstance(value, list) or len(value) != 2:
            raise InvalidInput.field(vpath, "between takes [low, high]")
        for i, item in enumerate(value):
            _check_scalar(spec, base, item, f"{vpath}[{i}]", dates=base in ("date", "datetime"))
        low, high = value
        if base in ("date", "datetime"):
            low, high = parse_when(low, vpath + "[0]"), parse_when(high, vpath + "[1]")
            if type(low) is not type(high):
                raise InvalidInput.field(vpath, "give two dates or two date-times")
        if low > high:
            raise InvalidInput.field(vpath, "low is above high")
        return spec
    if op in ("within_last_days", "older_than_days", "within_next_days"):
        top = 366 if op == "within_next_days" else 36600
        if not _is_int(value) or not (0 if op == "within_next_days" else 1) <= value <= top:
            raise InvalidInput.field(vpath, f"{op} takes a whole number of days up to {top}")
        return spec
    if op in ("before", "after") or (base == "date" and op == "eq"):
        parse_when(value, vpath)
        return spec
    _check_scalar(spec, base, value, vpath)
    if op == "contains" and not str(value):
        raise InvalidInput.field(vpath, "contains needs some text")
    return spec


def _check_scalar(spec: FieldSpec, base: str, value: Any, path: str, *, dates: bool = False) -> None:
    if dates:
        parse_when(value, path)
    elif base in ("int", "days"):
        if not _is_int(value) and not (spec.type.endswith("attribute") and _is_number(value)):
            raise InvalidInput.field(path, "expected a whole number")
    elif base == "bool":
        if not isinstance(value, bool):
            raise InvalidInput.field(path, "expected true or false")
    elif base in ("text", "enum"):
        if not isinstance(value, str) or len(value) > 200:
            raise InvalidInput.field(path, "expected text (up to 200 characters)")
        if spec.choices and value not in spec.choices:
            raise InvalidInput.field(path, f"{value!r} is not one of " + ", ".join(spec.choices))


def check_behaviour(cond: lang.Behaviour, path: str) -> None:
    order = cond.event == "$order"
    if not order and not re.match(r"^[A-Za-z\u4e00-\u9fff][A-Za-z0-9_.:\-\u4e00-\u9fff ]{0,63}$", cond.event):
        raise InvalidInput.field(path + ".event", "not an event name (or \"$order\" for orders)")
    if cond.last_days is not None and cond.since_joined:
        raise InvalidInput.field(path + ".since_joined", "give last_days or since_joined, not both")
    if cond.last_days is None and not cond.since_joined:
        raise InvalidInput.field(path + ".last_days", f"a behaviour needs a window: last_days (up to "
                                                      f"{lang.MAX_WINDOW_DAYS}) or since_joined")
    if cond.last_days is not None and cond.last_days > lang.MAX_WINDOW_DAYS:
        raise InvalidInput.field(path + ".last_days", f"the window is too large: at most {lang.MAX_WINDOW_DAYS} days")
    if cond.measure == "count":
        if cond.prop is not None:
            raise InvalidInput.field(path + ".prop", "count takes no prop")
    else:
        if cond.prop is None:
            raise InvalidInput.field(path + ".prop", f"{cond.measure} needs the property to measure")
        _check_prop(cond.prop, order, path + ".prop", numeric=cond.measure == "sum")
    for i, f in enumerate(cond.where):
        fpath = f"{path}.where[{i}]"
        kind = _check_prop(f.prop, order, fpath + ".prop")
        if f.op == "exists":
            if f.value is not None:
                raise InvalidInput.field(fpath + ".value", "exists takes no value")
            continue
        if f.op in ("in", "not_in"):
            if not isinstance(f.value, list) or not f.value or len(f.value) > 1000:
                raise InvalidInput.field(fpath + ".value", f"{f.op} takes a list of 1–1000 values")
            items = f.value
        else:
            items = [f.value]
        for j, item in enumerate(items):
            ipath = fpath + ".value" + (f"[{j}]" if f.op in ("in", "not_in") else "")
            if f.op in ("gt", "gte", "lt", "lte") or kind == "int":
                if not _is_number(item):
                    raise InvalidInput.field(ipath, "expected a number")
            elif not isinstance(item, str | int | float | bool) or isinstance(item, str) and len(item) > 200:
                raise InvalidInput.field(ipath, "expected text, a number or true/false")
        if f.op == "contains" and not isinstance(f.value, str):
            raise InvalidInput.field(fpath + ".value", "contains needs text")


def _check_prop(prop: str, order: bool, path: str, *, numeric: bool = False) -> str:
    if order:
        if prop not in ORDER_PROPS:
            raise InvalidInput.field(path, "orders are filtered by " + ", ".join(ORDER_PROPS))
        if numeric and ORDER_PROPS[prop] != "int":
            raise InvalidInput.field(path, "only amount_fen can be summed")
        return ORDER_PROPS[prop]
    if not _PROP.match(prop):
        raise InvalidInput.field(path, "a property name is 1–64 letters, digits, _, - or .")
    return "any"


def catalog_json(language: str = "zh-CN") -> list[dict[str, Any]]:
    zh = not language.lower().startswith("en")
    return [{"field": f.name, "type": f.type, "label": f.label_zh if zh else f.label_en,
             "operators": sorted(_OPS[f.type]), **({"choices": list(f.choices)} if f.choices else {})}
            for f in CATALOG.values()]
