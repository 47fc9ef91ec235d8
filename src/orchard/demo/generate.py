"""Write the demo data set as import files (UTF-8 CSV): members, orders, refunds, events.

Streaming: one member at a time — their profile row, orders, refunds and events — straight to four
open CSV writers, so memory stays flat at any size. Deterministic: every draw comes, in a fixed
order, from one `random.Random(seed)`; "today" is the fixed ANCHOR, never the clock.

Purchases follow a BG/NBD-like process: each member buys at a gamma-distributed rate (most rarely,
a few often) in the calendar's busy time (weekends, 618, 双11), and may drop out after each order.
A basket has 1–4 lines (the preset's mix), written as a POS exports it: one row per line (sku, name,
category, quantity, unit price, line amount), the order's columns repeated on each row, and the
order's amount — what the member paid, below the lines' sum after a 满减 or member price — on every
row of the order.
A small share of rows is dirty on purpose (see DIRTY) so the import's error report and the
duplicate scan have something to show.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import random
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from orchard.demo import people
from orchard.demo.org import STORES
from orchard.demo.presets import HOURS, PRESETS, FollowUp, Industry, Preset, Product
from orchard.demo.season import Calendar, promo

#: The demo's "today" (local date): the data ends the day before. It must not lie ahead of the real
#: date (the import refuses times more than a day in the future).
ANCHOR = dt.date(2026, 11, 1)
KINDS = ("members", "orders", "refunds", "events")
COLUMNS = {
    "members": ("phone", "card_no", "wechat_unionid", "name", "gender", "birthday", "region", "store_code",
                "joined_at", "source_channel", "consent_sms", "consent_wechat", "consent_email"),
    "orders": ("order_id", "member_phone", "member_card_no", "paid_at", "amount_fen", "store_code", "channel", "sku",
               "product_name", "category", "quantity", "unit_price_fen", "line_amount_fen"),
    "refunds": ("refund_id", "order_id", "refunded_at", "amount_fen", "sku", "quantity", "reason"),
    "events": ("event_id", "name", "member_phone", "member_card_no", "occurred_at", "store_code", "category", "sku",
               "product_name", "properties"),
}
#: Dirty rows: (kind, share of members, a member index that always gets one so small demos show it).
#: twin: the same person enrolled again with another phone (same name + birthday → merge candidate);
#: plus86: the member's row again with the phone written "+86 138 …" (resolves to the same member);
#: bad_phone / bad_birthday / bad_store: a junk row the import must reject (and one bad order row).
DIRTY = (("twin", 0.005, 3), ("plus86", 0.004, 5), ("bad_phone", 0.002, 7), ("bad_birthday", 0.002, 11),
         ("bad_store", 0.002, 13))
_DIRTY_CUM = tuple(accumulate(share for _, share, _ in DIRTY))
_FORCED = {index: kind for kind, _, index in DIRTY}
BAD_PHONES = ("1381234567", "12012345678", "138-1234-567", "00000000000")
BAD_BIRTHDAYS = ("1800-01-01", "2199-01-01", "1990-02-30")
BAD_STORES = ("SH999", "XX001")
REFUND_SHARE = 0.05
GAMMA_SHAPE = 0.45  # heterogeneity of purchase rates: below 1, most members buy rarely
CHURN_A = 0.8  # drop-out probabilities are Beta(CHURN_A, ·) with the preset's mean: loyal buyers stay
HISTORY_YEARS = 3  # members joined up to this long before the window; they bought (unwritten) since
PRE_WINDOW_SHARE = 0.72
MAX_ORDERS = 300
MAX_BROWSE = 200
DAY = 30.44  # days per month
#: Member i's phone and card come from index i; its second enrolment's from TWIN_BASE + i and a junk
#: row's from JUNK_BASE + i. Independent of the member count, so a larger run with the same seed
#: writes the smaller run's rows first and re-running it only adds.
MAX_MEMBERS = 20_000_000
TWIN_BASE, JUNK_BASE = 40_000_000, 80_000_000
_OFFLINE_EVENTS = {"store_visit", "checked_in", "class_attended", "hotel_stay"}
_PRODUCT_EVENTS = {"product_viewed", "added_to_cart"}


@dataclass
class Files:
    directory: Path
    paths: dict[str, Path] = field(default_factory=dict)
    rows: dict[str, int] = field(default_factory=dict)


def window(months: int) -> tuple[dt.date, dt.date]:
    """[first day, ANCHOR): `months` whole calendar months ending the day before ANCHOR."""
    y, m = divmod(ANCHOR.year * 12 + ANCHOR.month - 1 - months, 12)
    return dt.date(y, m + 1, 1), ANCHOR


def write_csvs(directory: Path, *, members: int, seed: int, months: int = 12, industry: str = "retail",
               progress: Callable[[int], None] | None = None) -> Files:
    if not 0 <= members <= MAX_MEMBERS or months < 1:
        raise ValueError(f"members must be 0 … {MAX_MEMBERS:,} and months ≥ 1")
    files = Files(directory)
    handles = {}
    try:
        writers = {}
        for kind in KINDS:
            files.paths[kind] = directory / f"{kind}.csv"
            handles[kind] = files.paths[kind].open("w", encoding="utf-8", newline="")
            writers[kind] = csv.writer(handles[kind])
            writers[kind].writerow(COLUMNS[kind])
            files.rows[kind] = 0
        gen = _Generator(random.Random(seed), seed, PRESETS[Industry(industry)], months, writers, files.rows)
        for i in range(members):
            gen.member(i)
            if progress and (i + 1) % 1000 == 0:
                progress(1000)
        if progress and members % 1000:
            progress(members % 1000)
    finally:
        for fh in handles.values():
            fh.close()
    return files


def _stamp(at: dt.datetime) -> str:
    """A naive local time (Asia/Shanghai, no DST) in ISO 8601 with its offset."""
    return at.isoformat(timespec="seconds") + "+08:00"


def _midnight(day: dt.date) -> dt.datetime:
    return dt.datetime.combine(day, dt.time())


@dataclass
class _Member:
    index: int
    phone: str
    card: str
    store: str | None
    joined: dt.datetime
    rate: float  # purchase-rate multiplier, mean 1
    twin: tuple[str, dt.datetime] | None = None  # (phone, joined) of a second enrolment
    plus86: bool = False
    events: int = 0


class _Generator:
    def __init__(self, rng: random.Random, seed: int, preset: Preset, months: int, writers, counts) -> None:
        self.rng, self.seed, self.p = rng, seed, preset
        self.out, self.counts = writers, counts
        self.start, self.end = window(months)
        self.first, self.last = _midnight(self.start), _midnight(self.end)
        history = self.start.replace(year=self.start.year - HISTORY_YEARS)
        self.cal = Calendar(history, self.end, weekend_lift=preset.weekend_lift, promo_strength=preset.promo_strength)
        self.opening = self.cal.cum[self.cal.index(self.start)]  # busy time when the window opens
        self.churn_b = CHURN_A * (1 - preset.churn) / preset.churn
        self.book = people.PhoneBook(rng)
        self.products, weights = preset.products()
        self.product_cum = tuple(accumulate(weights))
        self.store_codes = tuple(s[0] for s in STORES)
        self.store_cum = tuple(accumulate(s[3] for s in STORES))
        self.city = {s[0]: s[2] for s in STORES}
        self.hour_cum = tuple(accumulate(HOURS[preset.hours]))
        self.channel_cum = tuple(accumulate(c[1] for c in preset.channels))
        self.sources = tuple(s for s, _ in preset.sources)
        self.source_cum = tuple(accumulate(w for _, w in preset.sources))
        self.basket_sizes, self.basket_cum = range(1, len(preset.basket) + 1), tuple(accumulate(preset.basket))
        self.quantities, self.quantity_cum = range(1, len(preset.quantity) + 1), tuple(accumulate(preset.quantity))
        self.browse = tuple(name for name, _ in preset.browse)
        self.browse_cum = tuple(accumulate(w for _, w in preset.browse))

    # -- helpers -------------------------------------------------------------------------------
    def _write(self, kind: str, row: list) -> None:
        self.out[kind].writerow(row)
        self.counts[kind] += 1

    def _pick(self, items, cum):
        return self.rng.choices(items, cum_weights=cum)[0]

    def _store(self) -> str:
        return self._pick(self.store_codes, self.store_cum)

    def _at(self, day: dt.date) -> dt.datetime:
        """A time on `day` drawn from the industry's busy hours."""
        hour = self._pick(range(24), self.hour_cum)
        return _midnight(day) + dt.timedelta(seconds=hour * 3600 + self.rng.randrange(3600))

    def _in_window(self) -> dt.datetime:
        return self._at(self.cal.day_at(self.rng.uniform(self.opening, self.cal.total)))

    def _position(self, at: dt.datetime) -> float:
        """Busy time at `at` (a day's share of it grows evenly over the day)."""
        i = self.cal.index(at.date())
        if i >= self.cal.days:
            return self.cal.total
        return self.cal.cum[i] + self.cal.weights[i] * (at - _midnight(at.date())).seconds / 86400

    def _region(self, store: str | None) -> str:
        r = self.rng.random()
        if r < 0.1:
            return ""
        return self.city[store if store and r < 0.9 else self._store()]

    def _product(self) -> Product:
        return self._pick(self.products, self.product_cum)

    # -- members -------------------------------------------------------------------------------
    def member(self, i: int) -> None:
        rng, p = self.rng, self.p
        roll = rng.random()
        dirty = _FORCED.get(i) or next((DIRTY[k][0] for k, c in enumerate(_DIRTY_CUM) if roll < c), None)
        g = rng.random()
        gender = "unknown" if g < 0.03 else "female" if g < 0.03 + 0.97 * p.female_share else "male"
        born = people.birthday(rng, ANCHOR)
        name = people.full_name(rng, gender, born)
        store = self._store() if rng.random() < p.in_store_share else None
        if rng.random() < PRE_WINDOW_SHARE:  # sign-ups follow the same busy days as sales
            joined = self._at(self.cal.day_at(rng.uniform(0, self.opening)))
        else:
            joined = self._in_window()
        m = _Member(i, self.book.number(rng, i), _card(self.seed, i), store, joined,
                    rng.gammavariate(GAMMA_SHAPE, 1 / GAMMA_SHAPE))
        unionid = people.unionid(rng) if rng.random() < p.unionid_share else ""
        row = [m.phone, m.card, unionid, name, _GENDER_CELL[gender], born.isoformat(), self._region(store),
               store or "", _stamp(joined), self._pick(self.sources, self.source_cum),
               *_consents(self.seed, i, unionid)]
        self._write("members", row)
        if joined >= self.first:  # enrolments inside the window also appear as sign_up events
            self._write("events", [f"DM{self.seed}-{i:06d}-SU", "sign_up", m.phone, "", _stamp(joined), store or "",
                                   "", "", "", ""])
        if dirty == "twin":
            m.twin = (self.book.number(rng, TWIN_BASE + i), self._between(max(joined, self.first), self.last))
            twin_store = self._store() if store else None
            self._write("members", [m.twin[0], _card(self.seed, TWIN_BASE + i), "", name, row[4], row[5],
                                    self._region(twin_store), twin_store or "", _stamp(m.twin[1]), row[9], "", "", ""])
        elif dirty == "plus86":
            m.plus86 = True
            self._write("members", [people.spaced_e164(m.phone), *row[1:]])
        elif dirty is not None:
            self._junk_member(dirty, i)
        self._orders(m)
        if dirty in ("bad_phone", "bad_store"):
            self._junk_order(dirty, m)
        self._browse(m)

    def _between(self, a: dt.datetime, b: dt.datetime) -> dt.datetime:
        return a + (b - a) * self.rng.uniform(0.2, 0.9)

    def _junk_member(self, kind: str, i: int) -> None:
        rng = self.rng
        born = people.birthday(rng, ANCHOR)
        gender = rng.choice(("male", "female"))
        phone, birthday, store = self.book.number(rng, JUNK_BASE + i), born.isoformat(), self._store()
        if kind == "bad_phone":
            phone = rng.choice(BAD_PHONES)
        elif kind == "bad_birthday":
            birthday = rng.choice(BAD_BIRTHDAYS)
        else:
            store = rng.choice(BAD_STORES)
        self._write("members", [phone, "", "", people.full_name(rng, gender, born), _GENDER_CELL[gender], birthday,
                                self.city[self._store()], store, _stamp(self._in_window()), "store", "", "", ""])

    def _junk_order(self, kind: str, m: _Member) -> None:
        rng = self.rng
        phone = rng.choice(BAD_PHONES) if kind == "bad_phone" else m.phone
        store = rng.choice(BAD_STORES) if kind == "bad_store" else m.store or self._store()
        product = self._product()
        self._write("orders", [f"DM{self.seed}-{m.index:06d}-X", phone, "", _stamp(self._in_window()),
                               product.price_fen, store, self.p.channels[0][0], product.sku, product.name,
                               product.category, 1, product.price_fen, product.price_fen])

    # -- orders and refunds --------------------------------------------------------------------
    def _orders(self, m: _Member) -> None:
        """Purchases from the join date on, in busy time; those before the window are history the
        data set does not hold, but they decide who has dropped out by the time it opens."""
        rng = self.rng
        lam = self.p.monthly_rate / DAY * m.rate
        churn = rng.betavariate(CHURN_A, self.churn_b)
        pos, k = self._position(m.joined), 0
        while lam > 0 and k < MAX_ORDERS:
            pos += rng.expovariate(lam)
            if pos >= self.cal.total:
                break
            if pos >= self.opening:
                self._order(m, k, max(self._at(self.cal.day_at(pos)), m.joined))
                k += 1
            if rng.random() < churn:
                break

    def _order(self, m: _Member, k: int, paid: dt.datetime) -> None:
        rng, p = self.rng, self.p
        lines: dict[str, list] = {}
        for _ in range(self._pick(self.basket_sizes, self.basket_cum)):
            product = self._product()
            lines.setdefault(product.sku, [product, 0])[1] += self._pick(self.quantities, self.quantity_cum)
        total = sum(prod.price_fen * q for prod, q in lines.values())
        if promo(paid.date()) > 0 and rng.random() < 0.5:
            total -= total // 30000 * 4000  # 满300减40
        elif rng.random() < 0.1:
            total = total * 95 // 100  # member price, 95折
        main, quantity = max(lines.values(), key=lambda pq: pq[0].price_fen * pq[1])
        channel, _, offline = self._pick(p.channels, self.channel_cum)
        store = (m.store if m.store and rng.random() < 0.85 else self._store()) if offline else ""
        phone = m.phone
        if m.twin and paid >= m.twin[1] and rng.random() < 0.4:
            phone = m.twin[0]
        elif m.plus86 and rng.random() < 0.3:
            phone = people.spaced_e164(m.phone)
        by_card = offline and rng.random() < 0.1
        order_id = f"DM{self.seed}-{m.index:06d}-{k:03d}"
        head = [order_id, "" if by_card else phone, m.card if by_card else "", _stamp(paid), total, store, channel]
        for product, units in lines.values():
            self._write("orders", [*head, product.sku, product.name, product.category, units, product.price_fen,
                                   product.price_fen * units])
        if rng.random() < REFUND_SHARE:
            self._refund(order_id, paid, total, main, quantity)
        categories = {prod.category for prod, _ in lines.values()}
        for rule in p.follow_ups:
            if (rule.category is None or rule.category in categories) and rng.random() < rule.probability:
                line = next((pq for pq in lines.values() if pq[0].category == rule.category), (main, quantity))
                self._follow_up(m, rule, paid, store, line, order_id)

    def _refund(self, order_id: str, paid: dt.datetime, total: int, main: Product, quantity: int) -> None:
        rng = self.rng
        at = min(paid + dt.timedelta(seconds=rng.randrange(600, 10 * 86400)), self.last - dt.timedelta(seconds=1))
        mode = rng.random()
        amount, sku, units = "", "", ""
        if mode < 0.2 and quantity >= 2:
            sku, units = main.sku, rng.randint(1, quantity - 1)  # some units of the line come back
        elif mode < 0.45:
            amount = max(1, int(total * rng.uniform(0.1, 0.6)))  # a partial refund by amount
        self._write("refunds", [f"{order_id}-R", order_id, _stamp(max(at, paid)), amount, sku, units,
                                rng.choice(self.p.refund_reasons)])

    # -- behaviour events ----------------------------------------------------------------------
    def _event(self, m: _Member, name: str, at: dt.datetime, store: str, product: Product | None,
               props: dict) -> None:
        by_card = name in _OFFLINE_EVENTS and self.rng.random() < 0.3
        self._write("events", [f"DM{self.seed}-{m.index:06d}-E{m.events:04d}", name, "" if by_card else m.phone,
                               m.card if by_card else "", _stamp(at), store, product.category if product else "",
                               product.sku if product else "", product.name if product else "",
                               json.dumps(props, ensure_ascii=False, sort_keys=True) if props else ""])
        m.events += 1

    def _props(self, name: str, product: Product | None, quantity: int = 1) -> dict:
        rng = self.rng
        if name in _CHOICES:
            key, values = _CHOICES[name]
            return {key: rng.choice(values)}
        if name == "product_viewed":
            return {"duration_s": rng.randint(5, 240)}
        if name == "reviewed":
            return {"rating": rng.choices((5, 4, 3, 2, 1), cum_weights=(60, 85, 93, 97, 100))[0]}
        if name == "live_attended":
            return {"minutes": rng.randint(2, 90)}
        if name == "checked_in":
            return {"kind": "workout", "minutes": rng.randint(30, 120)}
        if name == "class_attended":
            return {"course": product.name if product else "", "lesson_no": rng.randint(1, 48)}
        if name == "hotel_stay":
            return {"nights": quantity, "room_type": product.name if product else ""}
        return {}

    def _follow_up(self, m: _Member, rule: FollowUp, paid: dt.datetime, store: str, line: tuple[Product, int],
                   order_id: str) -> None:
        product, quantity = line
        for _ in range(self.rng.randint(*rule.count)):
            at = paid + dt.timedelta(days=self.rng.uniform(*rule.days))
            if not max(m.joined, self.first) <= at < self.last:
                continue
            props = self._props(rule.event, product, quantity)
            if rule.event == "reviewed":
                props["order_id"] = order_id
            where = (store or m.store or "") if rule.event in _OFFLINE_EVENTS else ""
            self._event(m, rule.event, at, where, None if rule.event == "checked_in" else product, props)

    def _browse(self, m: _Member) -> None:
        """Visits, views, carts, shares … not tied to an order (also by members who never buy)."""
        rng = self.rng
        lam = self.p.browse_rate / DAY * (m.rate + rng.expovariate(1.0)) / 2
        pos = max(self._position(m.joined), self.opening)
        for _ in range(MAX_BROWSE):
            pos += rng.expovariate(lam) if lam > 0 else self.cal.total
            if pos >= self.cal.total:
                break
            name = self._pick(self.browse, self.browse_cum)
            product = self._product() if name in _PRODUCT_EVENTS else None
            store = (m.store or self._store()) if name in _OFFLINE_EVENTS else ""
            self._event(m, name, max(self._at(self.cal.day_at(pos)), m.joined), store, product,
                        self._props(name, product))


#: Marketing consent as brands record it: most members answered the SMS question at enrolment (a few
#: said no), WeChat followers mostly agreed to official-account messages, few gave an e-mail consent.
CONSENT_SHARES = {"sms": (0.55, 0.08), "wechat": (0.7, 0.05), "email": (0.1, 0.02)}


def _consents(seed: int, index: int, unionid: str) -> list[str]:
    """是 / 否 / blank per channel, from a hash of (seed, member), so the main random stream — and with
    it every other row of the demo — does not depend on them."""
    out = []
    for channel, (yes, no) in CONSENT_SHARES.items():
        u = zlib.crc32(f"{seed}:{index}:{channel}".encode()) / 2**32
        if channel == "wechat" and not unionid:
            out.append("")
        else:
            out.append("是" if u < yes else "否" if u < yes + no else "")
    return out


def _card(seed: int, index: int) -> str:
    return f"88{seed:04d}{index:08d}"


_GENDER_CELL = {"male": "男", "female": "女", "unknown": ""}
_CHOICES = {"login": ("platform", ("iOS", "Android", "小程序")),
            "shared": ("target", ("微信好友", "朋友圈", "微信群")),
            "campaign_joined": ("campaign", ("会员日", "双11预热", "618预售", "新品试用")),
            "service_contacted": ("topic", ("会员权益咨询", "订单查询", "发票", "投诉建议")),
            "store_visit": ("purpose", ("逛店", "到店自提", "导购邀约"))}
