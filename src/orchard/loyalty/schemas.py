"""API shapes of the points ledger."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from orchard.kit.clock import PlausibleDate, PlausibleDateTime

Points = Annotated[int, Field(ge=1, le=10**12)]
ExternalId = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[^\x00]+$")]
Reason = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[^\x00]+$")]
Source = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")]


class Expiring(BaseModel):
    amount: int
    expires_at: dt.datetime


class PointsRead(BaseModel):
    member_id: int
    #: Σ of all entries: what the member holds, pending points included.
    balance: int
    #: Spendable now: not pending, not past expiry.
    available: int
    #: Earned but not usable yet (T+N).
    pending: int
    #: What expires within `expiring_within_days` (default 90), soonest first.
    expiring: list[Expiring]
    #: Points a refund took back after they were spent (refund policy "debt"): the next earning
    #: repays it first. The balance is negative by this much when no points are left.
    debt: int = 0


class SpendIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Points
    reason: Reason
    external_id: ExternalId
    source: Source = "api"
    store_code: Annotated[str, Field(max_length=64)] | None = None


class AdjustIn(BaseModel):
    """A manual correction: positive credits a lot (expiring by the configured policy unless
    `expires_at` is given), negative debits like a spend. The reason is required and audited."""

    model_config = ConfigDict(extra="forbid")
    amount: Annotated[int, Field(ge=-(10**12), le=10**12)]
    reason: Reason
    external_id: ExternalId
    source: Source = "api"
    store_code: Annotated[str, Field(max_length=64)] | None = None
    expires_at: PlausibleDateTime | None = None
    pending_until: PlausibleDateTime | None = None


class EntryRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    member_id: int
    kind: str
    amount: int
    balance_after: int
    reason: str
    source: str
    external_id: str
    actor: str
    explanation: dict[str, Any]
    store_id: int | None
    order_id: int | None = None
    created_at: dt.datetime


class EntryPage(BaseModel):
    items: list[EntryRead]
    next_cursor: str | None


class RuleIn(BaseModel):
    """An earning rule. `config` depends on `kind` (see loyalty.rules and the README):
    amount {points, per_fen, rounding, min_order_fen, caps, stores, channels, categories, exclude_*};
    event {event, points, stores, properties, caps}; multiplier {factor, when: {type: member_day |
    birthday_month | campaign, …}, stores, channels, categories, exclude_*}."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
    kind: Literal["amount", "event", "multiplier"]
    #: points (spendable) or growth (成长值: drives tiers, never spent).
    target: Literal["points", "growth"] = "points"
    status: Literal["active", "inactive"] = "active"
    priority: Annotated[int, Field(ge=-1000, le=1000)] = 0
    stop_further: bool = False
    starts_at: PlausibleDateTime | None = None
    ends_at: PlausibleDateTime | None = None
    config: dict[str, Any]


class RuleRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    name: str
    kind: str
    target: str
    status: str
    priority: int
    stop_further: bool
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None
    config: dict[str, Any]
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class CartLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    line_no: Annotated[int, Field(ge=1, le=100000)] | None = None
    sku: Annotated[str, Field(max_length=64)] | None = None
    category: Annotated[str, Field(max_length=64)] | None = None
    amount_fen: Annotated[int, Field(ge=0, le=10**13)]


class CartIn(BaseModel):
    """A cart or an order to explain: what would it earn, rule by rule? With `member_id`, the
    member's birthday and what the rules' caps have left for the member count too."""

    model_config = ConfigDict(extra="forbid")
    member_id: Annotated[int, Field(ge=1, le=2**62)] | None = None
    paid_at: PlausibleDateTime | None = None
    amount_fen: Annotated[int, Field(ge=0, le=10**13)] | None = None
    store_code: Annotated[str, Field(max_length=64)] | None = None
    channel: Annotated[str, Field(max_length=32)] | None = None
    birthday: dt.date | None = None
    #: A tier level code, to try tier multipliers without a member (a member's own tier otherwise).
    tier: Annotated[str, Field(max_length=32)] | None = None
    lines: Annotated[list[CartLineIn], Field(max_length=1000)] = []


class RuleOutcome(BaseModel):
    rule_id: int
    name: str
    kind: str
    points: int
    text: str
    lines: dict[str, int]
    inputs: dict[str, Any]


class DryRunRead(BaseModel):
    total: int
    paid_at: dt.datetime
    amount_fen: int
    expires_at: dt.datetime | None
    pending_until: dt.datetime | None
    rules: list[RuleOutcome]
    #: 成长值 the cart would add, by the growth rules.
    growth_total: int = 0
    growth_rules: list[RuleOutcome] = []
    #: The tier the tier multipliers saw.
    tier: str | None = None


class CancelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: Reason


class TierLevelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^\x00]+$")]
    rank: Annotated[int, Field(ge=0, le=100)]
    #: The metric value that reaches (and keeps) the level; the lowest level's must be 0.
    threshold: Annotated[int, Field(ge=0, le=10**13)]
    #: Read by other modules: discount_rate (e.g. 0.95), free_shipping, birthday_gift, priority_service …
    benefits: dict[Annotated[str, Field(max_length=64)], Any] = {}


class TierProgramIn(BaseModel):
    """The tier program: what qualifies (metric over period), how tiers are kept, and the levels.
    Levels are matched by code; a level left out is retired (kept for history, never reached)."""

    model_config = ConfigDict(extra="forbid")
    metric: Literal["growth", "spend", "orders", "score"] = "growth"
    period: Literal["rolling_12m", "calendar_year", "lifetime"] = "rolling_12m"
    downgrade: Literal["one_level", "recompute"] = "one_level"
    hold_days: Annotated[int, Field(ge=0, le=3660)] = 365
    #: metric "score" = growth × w + spend in yuan × w + orders × w (whole-number weights).
    weights: dict[Literal["growth", "spend_yuan", "orders"], Annotated[int, Field(ge=0, le=10**6)]] = {}
    levels: Annotated[list[TierLevelIn], Field(min_length=2, max_length=10)]


class TierLevelRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    name: str
    rank: int
    threshold: int
    benefits: dict[str, Any]


class TierProgramRead(BaseModel):
    metric: str
    period: str
    downgrade: str
    hold_days: int
    weights: dict[str, Any]
    levels: list[TierLevelRead]


class TierStandingRead(BaseModel):
    member_id: int
    level: TierLevelRead
    #: What other modules apply: an active override, else the level.
    effective_level: TierLevelRead
    since: dt.datetime | None
    keep_until: dt.datetime | None
    override_until: dt.datetime | None
    metric: str
    period: str
    value: int
    next_level: TierLevelRead | None
    #: How much more of the metric reaches the next level (within the period).
    next_needs: int | None
    #: How much more keeps this level at the next evaluation after keep_until.
    keep_needs: int
    #: calendar_year: when the period closes; rolling windows never close.
    period_ends: dt.datetime | None


class TierChangeRead(BaseModel):
    at: dt.datetime
    from_level: str | None
    to_level: str | None
    reason: str
    metric_value: int | None
    actor: str
    details: dict[str, Any]


class TierOverrideIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    level: Annotated[str, Field(min_length=1, max_length=32)]
    until: PlausibleDateTime
    reason: Reason


class EvaluationRead(BaseModel):
    members: int
    upgraded: int
    downgraded: int
    overrides_ended: int


class GrowthRead(BaseModel):
    member_id: int
    balance: int


class GrowthAdjustIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    amount: Annotated[int, Field(ge=-(10**12), le=10**12)]
    reason: Reason
    external_id: ExternalId
    source: Source = "api"


class LadderStep(BaseModel):
    model_config = ConfigDict(extra="forbid")
    points: Annotated[int, Field(ge=0, le=10**6)] = 0
    growth: Annotated[int, Field(ge=0, le=10**6)] = 0


class CheckinProgramIn(BaseModel):
    """Streak day n gets ladder[n-1]; past the end, `cycle` starts again at day 1 or keeps the last."""

    model_config = ConfigDict(extra="forbid")
    ladder: Annotated[list[LadderStep], Field(min_length=1, max_length=366)]
    cycle: bool = False
    makeup_per_month: Annotated[int, Field(ge=0, le=31)] = 0
    makeup_cost_points: Annotated[int, Field(ge=0, le=10**6)] = 0


class CheckinProgramRead(CheckinProgramIn):
    pass


class CheckinRead(BaseModel):
    day: dt.date
    kind: str
    streak: int
    points: int
    growth: int
    #: False: the day was already checked in; this is the first result.
    created: bool


class CheckinStatusRead(BaseModel):
    today: dt.date
    checked_in_today: bool
    streak: int
    next_reward: dict[str, int]
    makeups_left: int
    days_this_month: list[dt.date]


class MakeupIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    day: PlausibleDate


class TaskIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
    #: profile (name, gender, birthday, region all filled) · first_order · event (first `event`)
    kind: Literal["profile", "first_order", "event"]
    event: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")] | None = None
    points: Annotated[int, Field(ge=0, le=10**6)] = 0
    growth: Annotated[int, Field(ge=0, le=10**6)] = 0
    rank: Annotated[int, Field(ge=0, le=1000)] = 0


class TaskRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    name: str
    kind: str
    event: str | None
    points: int
    growth: int
    rank: int


class MemberTaskRead(TaskRead):
    done: bool
    completed_at: dt.datetime | None


class BenefitIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
    #: discount, free_shipping, birthday_gift, priority_service, priority_purchase, dedicated_service,
    #: event_access, or a custom kind of your own.
    kind: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[a-z0-9_]+$")]
    monetary: bool = False
    description: Annotated[str, Field(max_length=500)] = ""
    tier_codes: Annotated[list[Annotated[str, Field(max_length=32)]], Field(max_length=20)] = []
    #: A store's own benefit (store staff may only name their stores); none: an HQ benefit.
    store_code: Annotated[str, Field(max_length=64)] | None = None


class BenefitRead(BaseModel):
    id: int
    code: str
    name: str
    kind: str
    monetary: bool
    description: str
    tier_codes: list[str]
    store_code: str | None
    active: bool


class MemberBenefitsRead(BaseModel):
    member_id: int
    tier: str | None
    #: The tier level's own benefit data (discount_rate, free_shipping …).
    tier_benefits: dict[str, Any]
    benefits: list[BenefitRead]


class BenefitPolicyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    store_share_max_pct: Annotated[int, Field(ge=0, le=100)]


class CatalogItemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: Annotated[str, Field(min_length=1, max_length=32, pattern=r"^[A-Za-z0-9_-]+$")]
    name: Annotated[str, Field(min_length=1, max_length=100, pattern=r"^[^\x00]+$")]
    kind: Literal["gift", "service", "coupon"] = "gift"
    description: Annotated[str, Field(max_length=500)] = ""
    coupon_template_id: Annotated[int, Field(ge=1, le=2**62)] | None = None
    points_cost: Annotated[int, Field(ge=1, le=10**9)]
    #: Points + cash: the cash part, in fen, paid at the till.
    cash_fen: Annotated[int, Field(ge=0, le=10**11)] = 0
    #: None: unlimited.
    stock: Annotated[int, Field(ge=0, le=10**9)] | None = None
    per_member_limit: Annotated[int, Field(ge=1, le=10**6)] | None = None
    active: bool = True
    starts_at: PlausibleDateTime | None = None
    ends_at: PlausibleDateTime | None = None


class CatalogItemRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    code: str
    name: str
    kind: str
    description: str
    coupon_template_id: int | None
    points_cost: int
    cash_fen: int
    stock: int | None
    redeemed: int
    per_member_limit: int | None
    active: bool
    starts_at: dt.datetime | None
    ends_at: dt.datetime | None


class CatalogRedeemIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    quantity: Annotated[int, Field(ge=1, le=1000)] = 1
    external_id: ExternalId
    source: Source = "api"
    store_code: Annotated[str, Field(max_length=64)] | None = None


class CatalogRedemptionRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: int
    member_id: int
    quantity: int
    points: int
    cash_fen: int
    points_entry_id: int
    status: str
    source: str
    external_id: str
    created_at: dt.datetime
    cancelled_at: dt.datetime | None
    #: For a coupon item: the codes of the coupons it issued.
    coupon_codes: list[str] = []
