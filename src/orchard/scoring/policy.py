"""The scoring policy: lifecycle thresholds, RFM scoring and value-tier shares (SPEC S2, S3).

One row (`scoring_policy`, id 1); when it is absent every pass uses the retail preset. A section left
out of a PUT takes the chosen industry preset's defaults, so "switch to the restaurant preset" is
`{"preset": "restaurant"}`. The thresholds differ by industry because buying rhythms do: a
restaurant regular comes back within weeks, a hotel guest within a year.

All day counts are tenant-zone calendar days (see `lifecycle` and `rfm`): an order on local date D is
"N days ago" on local date D + N, whatever the hour.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlalchemy.orm import Session

from orchard.audit import service as audit
from orchard.demo.presets import Industry
from orchard.kit.clock import utcnow
from orchard.scoring.models import ScoringPolicy


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LifecyclePolicy(_Strict):
    """Stages by days since the first / last counted order (tenant-zone days).

    registered: no order; new: first order fewer than `new_days` ago; active: last order fewer than
    `active_days` ago; declining: active, but orders in the last `active_days` are fewer than
    `declining_ratio` × those of the `active_days` before (also: no order for `active_days` but not yet
    `dormant_days`, when the two differ); dormant: last order `dormant_days` … `lost_days` − 1 ago;
    lost: `lost_days` or more.
    """

    new_days: int = Field(30, ge=1, le=3650)
    active_days: int = Field(90, ge=1, le=3650)
    dormant_days: int = Field(90, ge=1, le=3650)
    lost_days: int = Field(180, ge=2, le=7300)
    declining_ratio: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self) -> LifecyclePolicy:
        if not self.new_days <= self.active_days:
            raise ValueError("new_days must not exceed active_days (a new customer is an active one)")
        if not self.active_days <= self.dormant_days < self.lost_days:
            raise ValueError("need active_days <= dormant_days < lost_days")
        return self


def _ascending(values: list[int], name: str) -> list[int]:
    if any(b <= a for a, b in zip(values, values[1:], strict=False)):
        raise ValueError(f"{name}: the 4 cut points must be strictly ascending")
    return values


class RfmCuts(_Strict):
    """Four ascending cut points per dimension, giving scores 1–5.

    r (days since the last order): ≤ r[0] → 5, ≤ r[1] → 4, ≤ r[2] → 3, ≤ r[3] → 2, else 1.
    f (orders) and m (fen): < x[0] → 1, < x[1] → 2, < x[2] → 3, < x[3] → 4, else 5.
    """

    r: list[int] = Field(min_length=4, max_length=4)
    f: list[int] = Field(min_length=4, max_length=4)
    m: list[int] = Field(min_length=4, max_length=4)

    @model_validator(mode="after")
    def _check(self) -> RfmCuts:
        for name in ("r", "f", "m"):
            values = getattr(self, name)
            if any(v < 0 for v in values):
                raise ValueError(f"{name}: cut points must not be negative")
            _ascending(values, name)
        return self


class RfmPolicy(_Strict):
    """`window_days`: orders of the last N tenant-zone days count (null: the whole history, read from
    the member aggregates). `scoring`: "quintile" (ntile(5) over the scored members, ties in member-id
    order) or "cuts" (the fixed `cuts`). Classes compare raw R, F, M with their means, not the scores."""

    window_days: int | None = Field(365, ge=1, le=3650)
    scoring: Literal["quintile", "cuts"] = "quintile"
    cuts: RfmCuts | None = None

    @model_validator(mode="after")
    def _cuts_given(self) -> RfmPolicy:
        if self.scoring == "cuts" and self.cuts is None:
            raise ValueError("scoring 'cuts' needs cuts for r, f and m")
        return self


class ValuePolicy(_Strict):
    """Value tiers by share of spend in the RFM window (Pareto): members ranked by spend, the top ones
    that together make `high_pct` % of all spend are high, the next ones up to a further `medium_pct` %
    are medium, the rest low. A member is high when the spend of everyone ranked above them is still
    below `high_pct` % (so the member who crosses the line is high too)."""

    high_pct: int = Field(80, ge=1, le=99)
    medium_pct: int = Field(15, ge=0, le=98)

    @model_validator(mode="after")
    def _sum(self) -> ValuePolicy:
        if self.high_pct + self.medium_pct >= 100:
            raise ValueError("high_pct + medium_pct must be below 100 (someone has to be low)")
        return self


_LC = LifecyclePolicy
PRESET_DEFAULTS: dict[Industry, tuple[LifecyclePolicy, RfmPolicy]] = {
    Industry.retail: (_LC(), RfmPolicy()),
    Industry.ecommerce: (_LC(), RfmPolicy()),
    Industry.restaurant: (_LC(new_days=14, active_days=30, dormant_days=30, lost_days=90), RfmPolicy(window_days=180)),
    Industry.gym: (_LC(new_days=30, active_days=30, dormant_days=30, lost_days=90), RfmPolicy()),
    Industry.education: (_LC(new_days=60, active_days=180, dormant_days=180, lost_days=365),
                         RfmPolicy(window_days=730)),
    Industry.hotel: (_LC(new_days=90, active_days=365, dormant_days=365, lost_days=730), RfmPolicy(window_days=730)),
}


class PolicyIn(_Strict):
    preset: Industry = Industry.retail
    lifecycle: LifecyclePolicy | None = None
    rfm: RfmPolicy | None = None
    value: ValuePolicy | None = None


class Policy(_Strict):
    preset: Industry
    lifecycle: LifecyclePolicy
    rfm: RfmPolicy
    value: ValuePolicy
    updated_by: str | None = None
    updated_at: dt.datetime | None = None


def defaults(preset: Industry = Industry.retail) -> Policy:
    lc, rfm = PRESET_DEFAULTS[preset]
    return Policy(preset=preset, lifecycle=lc, rfm=rfm, value=ValuePolicy())


def get_policy(session: Session) -> Policy:
    """The policy in force: the stored row, or the retail defaults when none was set."""
    row = session.get(ScoringPolicy, 1)
    if row is None:
        return defaults()
    return Policy(preset=Industry(row.preset), lifecycle=LifecyclePolicy.model_validate(row.lifecycle),
                  rfm=RfmPolicy.model_validate(row.rfm), value=ValuePolicy.model_validate(row.value),
                  updated_by=row.updated_by, updated_at=row.updated_at)


def _dump(p: Policy) -> dict[str, Any]:
    return p.model_dump(mode="json", include={"preset", "lifecycle", "rfm", "value"})


def set_policy(session: Session, body: PolicyIn, *, actor: str, now: dt.datetime | None = None) -> Policy:
    """Replace the policy (sections left out take the preset's defaults); audited with before/after.
    Takes effect at the next scoring pass."""
    now = now or utcnow()
    base = defaults(body.preset)
    new = Policy(preset=body.preset, lifecycle=body.lifecycle or base.lifecycle, rfm=body.rfm or base.rfm,
                 value=body.value or base.value, updated_by=actor, updated_at=now)
    row = session.get(ScoringPolicy, 1, with_for_update=True)
    before = _dump(get_policy(session)) if row is not None else None
    if row is None:
        row = ScoringPolicy(id=1)
        session.add(row)
    after = _dump(new)
    row.preset, row.lifecycle, row.rfm, row.value = after["preset"], after["lifecycle"], after["rfm"], after["value"]
    row.updated_by, row.updated_at = actor, now
    audit.record(session, actor=actor, action="scoring.policy_set", entity="scoring_policy", entity_id=1,
                 data={"before": before, "after": after})
    session.flush()
    return new
