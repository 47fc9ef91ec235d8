"""Earning rules (SPEC L2): what an order or an event earns, rule by rule, with the inputs.

Three kinds of rule, each with a validated `config`:

* **amount** — `points` per `per_fen` spent (10 points per ¥100: points=10, per_fen=10000), rounded
  per rule (floor, round half up, ceil), over the order lines that pass its filters (stores,
  channels, categories, SKUs, each with exclusions) and an optional minimum order amount. An order
  with lines earns on what was paid: an order-level discount is spread over the lines pro rata.
* **event** — fixed `points` for a behaviour event (sign_up, check_in, profile_completed, review,
  share or any custom name), optionally only when event properties equal given values.
* **multiplier** — a factor on the amount rules, when: `member_day` (weekdays and/or days of the
  month, within an optional time window, in the tenant's zone), `birthday_month`, `tier` (the
  member's tier is one of the given levels), or `campaign` (always, i.e. within the rule's own
  starts_at/ends_at).

A rule feeds points or growth value (`target`); each target is evaluated with its own rules.

Evaluation order (documented in the README): amount rules by priority (higher first, then older
first); a matching rule with `stop_further` ends the amount rules below it. Every matching
multiplier applies to each line it matches, in the fixed order member_day → birthday_month → tier →
campaign, then by priority; a matching multiplier with `stop_further` ends the multipliers after it.
Factors multiply exactly (fractions); each amount rule rounds once, at the end, then its caps per
member (day / ISO week / month in the tenant's zone, and lifetime) cut it, counting what the rule
already awarded net of reversals. Every rule must be active and inside its starts_at/ends_at at the
moment of earning (the order's paid_at, the event's time).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from fractions import Fraction
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from orchard.kit.clock import tenant_zone

Codes = Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=500)]
Rounding = Literal["floor", "round", "ceil"]
PERIODS = ("day", "week", "month", "lifetime")
MULTIPLIER_ORDER = ("member_day", "birthday_month", "tier", "campaign")


class Caps(BaseModel):
    """Most points one member may get from the rule per period (net of reversals)."""

    model_config = ConfigDict(extra="forbid")
    day: Annotated[int, Field(ge=1, le=10**12)] | None = None
    week: Annotated[int, Field(ge=1, le=10**12)] | None = None
    month: Annotated[int, Field(ge=1, le=10**12)] | None = None
    lifetime: Annotated[int, Field(ge=1, le=10**12)] | None = None


class Filters(BaseModel):
    """Empty lists match everything; exclusions win over inclusions."""

    model_config = ConfigDict(extra="forbid")
    stores: Codes = []
    exclude_stores: Codes = []
    channels: Codes = []
    exclude_channels: Codes = []
    categories: Codes = []
    exclude_categories: Codes = []
    exclude_skus: Codes = []

    def order_matches(self, store: str | None, channel: str | None) -> bool:
        return _in(store, self.stores, self.exclude_stores) and _in(channel, self.channels, self.exclude_channels)

    def line_matches(self, category: str | None, sku: str | None) -> bool:
        return _in(category, self.categories, self.exclude_categories) and (sku is None or
                                                                             sku not in self.exclude_skus)


def _in(value: str | None, include: list[str], exclude: list[str]) -> bool:
    if include and value not in include:
        return False
    return value is None or value not in exclude


class AmountConfig(Filters):
    points: Annotated[int, Field(ge=1, le=10**9)]
    per_fen: Annotated[int, Field(ge=1, le=10**11)]
    rounding: Rounding = "floor"
    min_order_fen: Annotated[int, Field(ge=0, le=10**13)] = 0
    caps: Caps = Caps()


class EventConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    event: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]
    points: Annotated[int, Field(ge=1, le=10**9)]
    stores: Codes = []
    #: Only events whose properties equal these values.
    properties: dict[Annotated[str, Field(max_length=64)], str | int | bool] = {}
    caps: Caps = Caps()


class MemberDay(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["member_day"]
    #: ISO weekdays, 1 = Monday … 7 = Sunday.
    weekdays: list[Annotated[int, Field(ge=1, le=7)]] = []
    month_days: list[Annotated[int, Field(ge=1, le=31)]] = []
    #: Local time window [from, to) on those days; default the whole day.
    from_time: dt.time | None = Field(None, alias="from")
    to_time: dt.time | None = Field(None, alias="to")

    @model_validator(mode="after")
    def _some_day(self) -> MemberDay:
        if not self.weekdays and not self.month_days:
            raise ValueError("a member day needs weekdays or month_days")
        if (self.from_time is None) != (self.to_time is None) or (self.from_time and self.from_time >= self.to_time):
            raise ValueError("give both `from` and `to`, with `from` before `to`")
        return self

    def holds(self, local: dt.datetime) -> bool:
        if local.isoweekday() not in self.weekdays and local.day not in self.month_days:
            return False
        return self.from_time is None or self.from_time <= local.time().replace(tzinfo=None) < self.to_time


class BirthdayMonth(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["birthday_month"]


class TierWhen(BaseModel):
    """The member's tier (its effective one, an override included) is one of `levels` (codes)."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["tier"]
    levels: Annotated[list[Annotated[str, Field(min_length=1, max_length=32)]], Field(min_length=1, max_length=20)]


class Campaign(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["campaign"]


class MultiplierConfig(Filters):
    factor: Decimal = Field(gt=0, le=100, max_digits=6, decimal_places=3)
    when: Annotated[MemberDay | BirthdayMonth | TierWhen | Campaign, Field(discriminator="type")]

    @field_validator("factor", mode="before")
    @classmethod
    def _no_float(cls, value: Any) -> Any:
        return str(value) if isinstance(value, float) else value


CONFIGS: dict[str, type[BaseModel]] = {"amount": AmountConfig, "event": EventConfig, "multiplier": MultiplierConfig}


@dataclass(frozen=True)
class Rule:
    """A rule as evaluation needs it (loaded from `EarningRule` or built by tests)."""

    id: int
    name: str
    kind: str
    config: Any
    priority: int = 0
    stop_further: bool = False
    starts_at: dt.datetime | None = None
    ends_at: dt.datetime | None = None
    #: "points" or "growth" (成长值): the same arithmetic feeds either.
    target: str = "points"

    def live_at(self, at: dt.datetime) -> bool:
        return (self.starts_at is None or self.starts_at <= at) and (self.ends_at is None or at < self.ends_at)


def parse_config(kind: str, config: dict[str, Any]) -> Any:
    return CONFIGS[kind].model_validate(config)


@dataclass(frozen=True)
class Line:
    line_no: int | None  # None: an order without lines (the whole order)
    amount_fen: int
    category: str | None = None
    sku: str | None = None


@dataclass(frozen=True)
class Cart:
    """What an order brings to evaluation."""

    paid_at: dt.datetime
    amount_fen: int
    lines: Sequence[Line]
    store: str | None = None
    channel: str | None = None
    birthday: dt.date | None = None
    #: The member's effective tier code, for tier multipliers.
    tier: str | None = None


@dataclass
class Outcome:
    """What one rule gave: points per line, and the explanation the member's history shows."""

    rule_id: int
    name: str
    kind: str
    points: int
    lines: dict[int | None, int]
    text: str
    inputs: dict[str, Any] = field(default_factory=dict)

    def as_json(self) -> dict[str, Any]:
        return {"rule_id": self.rule_id, "name": self.name, "kind": self.kind, "points": self.points,
                "text": self.text, "inputs": self.inputs,
                "lines": {("order" if k is None else str(k)): v for k, v in self.lines.items()}}


#: (rule, period) → points the member already got from the rule in the period holding `at`.
CapsUsed = Callable[[int, str, dt.datetime], int]


def period_start(period: str, at: dt.datetime) -> dt.datetime | None:
    """Start (UTC) of the day / ISO week / month holding `at` in the tenant's zone; None for lifetime."""
    local = at.astimezone(tenant_zone())
    day = dt.datetime(local.year, local.month, local.day, tzinfo=local.tzinfo)
    if period == "day":
        start = day
    elif period == "week":
        start = day - dt.timedelta(days=local.isoweekday() - 1)
    elif period == "month":
        start = day.replace(day=1)
    else:
        return None
    return start.astimezone(dt.UTC)


def period_end(period: str, start: dt.datetime) -> dt.datetime:
    local = start.astimezone(tenant_zone())
    if period == "day":
        end = local + dt.timedelta(days=1)
    elif period == "week":
        end = local + dt.timedelta(days=7)
    else:
        end = (local.replace(day=28) + dt.timedelta(days=4)).replace(day=1)
    # Re-anchor in the zone (a DST zone would shift a plain addition; Asia/Shanghai has none).
    return dt.datetime(end.year, end.month, end.day, tzinfo=local.tzinfo).astimezone(dt.UTC)


def _round(x: Fraction, mode: str) -> int:
    if mode == "floor":
        return x.numerator // x.denominator
    if mode == "ceil":
        return -((-x.numerator) // x.denominator)
    return (2 * x.numerator + x.denominator) // (2 * x.denominator)


def distribute(total: int, shares: dict[Any, Fraction]) -> dict[Any, int]:
    """`total` whole points over keys in proportion to `shares` (largest remainder): parts sum to
    `total` exactly, so a line refund later reverses exactly what the line earned."""
    weight = sum(shares.values(), Fraction(0))
    if total == 0 or weight == 0:
        return {k: 0 for k in shares}
    exact = {k: total * s / weight for k, s in shares.items()}
    parts = {k: _round(x, "floor") for k, x in exact.items()}
    left = total - sum(parts.values())
    for k in sorted(exact, key=lambda k: (-(exact[k] - parts[k]), str(k)))[:left]:
        parts[k] += 1
    return parts


def _yuan(fen: Fraction | int) -> str:
    return f"¥{Decimal(int(round(Fraction(fen)))) / 100:.2f}"


def _factor_text(f: Fraction) -> str:
    d = Decimal(f.numerator) / Decimal(f.denominator)
    return format(d.normalize(), "f")


def evaluate_order(cart: Cart, rules: Sequence[Rule], caps_used: CapsUsed | None = None) -> list[Outcome]:
    """Every amount rule's outcome for `cart`, in evaluation order (rules that gave nothing included
    with 0 and the reason, so a dry run explains itself)."""
    at = cart.paid_at
    live = sorted((r for r in rules if r.live_at(at)), key=lambda r: (-r.priority, r.id))
    multipliers = _multipliers(cart, [r for r in live if r.kind == "multiplier"])
    lines = list(cart.lines) or [Line(None, cart.amount_fen)]
    by_no = {ln.line_no: ln for ln in lines}
    line_total = sum(ln.amount_fen for ln in lines)
    # What was paid, spread over the lines (an order-level discount or fee lands pro rata).
    paid = {ln.line_no: (Fraction(ln.amount_fen * cart.amount_fen, line_total) if line_total else Fraction(0))
            for ln in lines}
    out: list[Outcome] = []
    for rule in (r for r in live if r.kind == "amount"):
        cfg: AmountConfig = rule.config
        if not cfg.order_matches(cart.store, cart.channel):
            out.append(Outcome(rule.id, rule.name, "amount", 0, {}, "门店或渠道不适用 store or channel excluded"))
            continue
        if cart.amount_fen < cfg.min_order_fen:
            out.append(Outcome(rule.id, rule.name, "amount", 0, {},
                               f"订单金额低于 {_yuan(cfg.min_order_fen)} below the minimum order"))
            continue
        eligible = {ln.line_no: paid[ln.line_no] for ln in lines if _line_in(cfg, ln)}
        base = sum(eligible.values(), Fraction(0))
        if base == 0:
            out.append(Outcome(rule.id, rule.name, "amount", 0, {}, "没有适用的商品 no eligible lines"))
            continue
        exact: dict[int | None, Fraction] = {}
        used: dict[int, dict[str, Any]] = {}
        for line_no, fen in eligible.items():
            factor = Fraction(1)
            for m, applies in multipliers:
                if applies(by_no[line_no]):
                    factor *= Fraction(m.config.factor)
                    used.setdefault(m.id, {"rule_id": m.id, "name": m.name, "factor": str(m.config.factor),
                                           "when": m.config.when.type, "lines": []})["lines"].append(line_no)
            exact[line_no] = fen * cfg.points / cfg.per_fen * factor
        total_exact = sum(exact.values(), Fraction(0))
        points = _round(total_exact, cfg.rounding)
        text = f"{_yuan(base)} × {cfg.points}/{_yuan(cfg.per_fen)}"
        for u in used.values():
            some = "" if len(u["lines"]) == len(eligible) else " (部分商品 some lines)"
            text += f" × {_factor_text(Fraction(u['factor']))} {u['name']}{some}"
        text += f" = {points}"
        if total_exact != points:
            text += f" ({_factor_text(total_exact)}, {cfg.rounding})"
        inputs: dict[str, Any] = {"eligible_fen": _factor_text(base), "points": cfg.points, "per_fen": cfg.per_fen,
                                  "rounding": cfg.rounding, "multipliers": list(used.values()),
                                  "exact": _factor_text(total_exact)}
        points, cap_text = _capped(rule, cfg.caps, points, at, caps_used)
        if cap_text:
            text += f"; {cap_text}"
            inputs["capped_to"] = points
        out.append(Outcome(rule.id, rule.name, "amount", points, distribute(points, exact), text, inputs))
        if rule.stop_further:
            break
    return out


def _multipliers(cart: Cart, rules: list[Rule]) -> list[tuple[Rule, Callable[[Line], bool]]]:
    """The multipliers that hold for this cart, in stacking order, each with its line test."""
    local = cart.paid_at.astimezone(tenant_zone())
    ordered = sorted(rules, key=lambda r: (MULTIPLIER_ORDER.index(r.config.when.type), -r.priority, r.id))
    chosen = []
    for rule in ordered:
        cfg: MultiplierConfig = rule.config
        when = cfg.when
        if not cfg.order_matches(cart.store, cart.channel):
            continue
        if isinstance(when, MemberDay) and not when.holds(local):
            continue
        if isinstance(when, BirthdayMonth) and (cart.birthday is None or cart.birthday.month != local.month):
            continue
        if isinstance(when, TierWhen) and cart.tier not in when.levels:
            continue
        chosen.append((rule, lambda ln, cfg=cfg: _line_in(cfg, ln)))
        if rule.stop_further:
            break
    return chosen


def _line_in(cfg: Filters, line: Line) -> bool:
    """A line passes the category/SKU filters; an order without lines passes only filters that do
    not ask for a category (it has none)."""
    if line.line_no is None:
        return not cfg.categories
    return cfg.line_matches(line.category, line.sku)


def _capped(rule: Rule, caps: Caps, points: int, at: dt.datetime, caps_used: CapsUsed | None) -> tuple[int, str]:
    """Points after every cap of the rule: the least room left over all its periods (a day's room
    can exceed what the week or lifetime still allows), named by the period that binds — the first
    in day → week → month → lifetime order among equally tight ones."""
    if points <= 0 or caps_used is None:
        return points, ""
    binding: tuple[int, str, int] | None = None
    for period in PERIODS:
        cap = getattr(caps, period)
        if cap is None:
            continue
        left = max(0, cap - caps_used(rule.id, period, at))
        if left < points and (binding is None or left < binding[0]):
            binding = (left, period, cap)
    if binding is None:
        return points, ""
    left, period, cap = binding
    return left, f"每{_PERIOD_ZH[period]}上限 {cap} cap per {period} → {left}"


_PERIOD_ZH = {"day": "日", "week": "周", "month": "月", "lifetime": "人终身"}


@dataclass(frozen=True)
class EventFacts:
    name: str
    occurred_at: dt.datetime
    store: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)


def evaluate_event(event: EventFacts, rules: Sequence[Rule], caps_used: CapsUsed | None = None) -> list[Outcome]:
    live = sorted((r for r in rules if r.kind == "event" and r.live_at(event.occurred_at)),
                  key=lambda r: (-r.priority, r.id))
    out = []
    for rule in live:
        cfg: EventConfig = rule.config
        if cfg.event != event.name or (cfg.stores and event.store not in cfg.stores):
            continue
        if any(event.properties.get(k) != v for k, v in cfg.properties.items()):
            continue
        points, cap_text = _capped(rule, cfg.caps, cfg.points, event.occurred_at, caps_used)
        text = f"{event.name} +{cfg.points}" + (f"; {cap_text}" if cap_text else "")
        out.append(Outcome(rule.id, rule.name, "event", points, {None: points} if points else {}, text,
                           {"event": event.name, "points": cfg.points}))
        if rule.stop_further:
            break
    return out
