"""Coupon kinds: what each needs on its template and what it takes off an order. Pure functions.

A new kind is one class here (or in its own file) and one line in `KINDS`. Discounts are whole fen
and never exceed the eligible amount. Percent off rounds down to the fen (33% of ¥9.99 is 329 fen,
not 330): the member never gets more than the stated percentage, and the cap applies after rounding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from orchard.errors import InvalidInput


@dataclass(frozen=True)
class Terms:
    """A template's terms as plain values (what the rules read)."""

    kind: str
    threshold_fen: int = 0
    off_fen: int | None = None
    percent: int | None = None
    max_off_fen: int | None = None
    benefit: dict[str, Any] = field(default_factory=dict)


def _yuan(fen: int) -> str:
    return f"{fen // 100}" if fen % 100 == 0 else f"{fen / 100:.2f}"


class Kind(Protocol):
    def check(self, terms: Terms) -> None:
        """Raise InvalidInput naming the field when the template's terms do not fit the kind."""

    def discount(self, terms: Terms, eligible_fen: int) -> int: ...

    def describe(self, terms: Terms) -> str:
        """The zh-CN label shown in wallets: 满100减20, 8折 最高减50, 赠品 试用装."""


def _forbid(terms: Terms, *names: str) -> None:
    for name in names:
        if getattr(terms, name) is not None:
            raise InvalidInput.field(name, f"not used by a {terms.kind} coupon")


class AmountOff:
    def check(self, terms: Terms) -> None:
        if terms.off_fen is None:
            raise InvalidInput.field("off_fen", "required for an amount_off coupon")
        _forbid(terms, "percent", "max_off_fen")
        if terms.threshold_fen and terms.off_fen > terms.threshold_fen:
            raise InvalidInput.field("off_fen", "more than the threshold: the order could be paid with the coupon")

    def discount(self, terms: Terms, eligible_fen: int) -> int:
        return min(terms.off_fen or 0, eligible_fen)

    def describe(self, terms: Terms) -> str:
        off = _yuan(terms.off_fen or 0)
        return f"满{_yuan(terms.threshold_fen)}减{off}" if terms.threshold_fen else f"无门槛减{off}"


class PercentOff:
    def check(self, terms: Terms) -> None:
        if terms.percent is None:
            raise InvalidInput.field("percent", "required for a percent_off coupon (1–99: the part taken off)")
        _forbid(terms, "off_fen")

    def discount(self, terms: Terms, eligible_fen: int) -> int:
        off = eligible_fen * (terms.percent or 0) // 100
        return min(off, terms.max_off_fen) if terms.max_off_fen is not None else off

    def describe(self, terms: Terms) -> str:
        pay = 100 - (terms.percent or 0)
        label = f"{pay // 10}折" if pay % 10 == 0 else f"{pay / 10:g}折"
        if terms.threshold_fen:
            label = f"满{_yuan(terms.threshold_fen)} {label}"
        return f"{label} 最高减{_yuan(terms.max_off_fen)}" if terms.max_off_fen else label


class Benefit:
    """Gift / trial item or service voucher: nothing comes off the order, the benefit is handed over."""

    def __init__(self, kind: str, required: tuple[str, ...], label: str) -> None:
        self.kind, self.required, self.label = kind, required, label

    def check(self, terms: Terms) -> None:
        _forbid(terms, "off_fen", "percent", "max_off_fen")
        for key in self.required:
            if not str(terms.benefit.get(key) or "").strip():
                raise InvalidInput.field(f"benefit.{key}", f"required for a {self.kind} coupon")

    def discount(self, terms: Terms, eligible_fen: int) -> int:
        return 0

    def describe(self, terms: Terms) -> str:
        what = terms.benefit.get("name") or terms.benefit.get("description") or ""
        return f"{self.label} {what}".strip()


KINDS: dict[str, Kind] = {
    "amount_off": AmountOff(),
    "percent_off": PercentOff(),
    "gift": Benefit("gift", ("name",), "赠品"),
    "service": Benefit("service", ("description",), "服务券"),
}
