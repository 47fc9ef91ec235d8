"""The demo's calendar: how busy each day is (weekend lift, the 618 and 双11 shopping festivals),
turned into "busy time" so that purchase processes run faster on busy days.

A member buys as a Poisson process in busy time: gaps are exponential in units of an average day,
and `day_at` maps a busy-time position back to a calendar day (bisection on the cumulative weights).
"""

from __future__ import annotations

import datetime as dt
from bisect import bisect_right
from dataclasses import dataclass
from itertools import accumulate


@dataclass(frozen=True)
class Peak:
    """A shopping festival: `lead` extra demand on each of the `lead_days` before the day, `peak` on
    the day, `tail` on each of the `tail_days` after (multiples of a normal day, before scaling)."""

    name: str
    month: int
    day: int
    lead_days: int
    lead: float
    peak: float
    tail_days: int
    tail: float


PEAKS = (Peak("双11", 11, 11, 10, 1.3, 9.0, 2, 0.6), Peak("618", 6, 18, 17, 0.5, 4.0, 1, 0.4),
         Peak("双12", 12, 12, 2, 0.3, 1.5, 0, 0.0))


def promo(day: dt.date) -> float:
    """Extra demand on `day` from the festivals (0 on an ordinary day)."""
    extra = 0.0
    for p in PEAKS:
        offset = (day - dt.date(day.year, p.month, p.day)).days
        if offset == 0:
            extra += p.peak
        elif -p.lead_days <= offset < 0:
            extra += p.lead
        elif 0 < offset <= p.tail_days:
            extra += p.tail
    return extra


class Calendar:
    """Days `start` ≤ d < `end` with weights normalised to mean 1; `cum[i]` is the busy time before day i."""

    def __init__(self, start: dt.date, end: dt.date, *, weekend_lift: float, promo_strength: float) -> None:
        self.start = start
        self.days = (end - start).days
        raw = [(weekend_lift if d.weekday() >= 5 else 1.0) * (1 + promo_strength * promo(d))
               for d in (start + dt.timedelta(days=i) for i in range(self.days))]
        mean = sum(raw) / len(raw)
        self.weights = [w / mean for w in raw]
        self.cum = [0.0, *accumulate(self.weights)]

    @property
    def total(self) -> float:
        return self.cum[-1]

    def index(self, day: dt.date) -> int:
        return min(max((day - self.start).days, 0), self.days)

    def day_at(self, position: float) -> dt.date:
        i = min(bisect_right(self.cum, position) - 1, self.days - 1)
        return self.start + dt.timedelta(days=max(i, 0))
