"""The demo generator without a database: deterministic files, valid people, a realistic purchase
distribution, every industry preset, flat memory."""

import csv
import datetime as dt
import statistics
import tracemalloc
from collections import Counter

import pytest

from orchard.demo import generate, people
from orchard.demo.presets import PRESETS, Industry
from orchard.demo.season import Calendar, promo
from orchard.identity.normalize import InvalidIdentity, normalize


def _dir(tmp_path, name):
    (tmp_path / name).mkdir()
    return tmp_path / name


def _rows(files, kind):
    with files.paths[kind].open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _clean_lines(files):
    return [r for r in _rows(files, "orders") if not r["order_id"].endswith("-X")]


def _clean_orders(files):
    """One row per order: the first of its line rows (the order's columns repeat on each)."""
    return list({r["order_id"]: r for r in reversed(_clean_lines(files))}.values())[::-1]


def test_the_same_seed_writes_identical_files_and_another_seed_other_people(tmp_path):
    # given / when
    a = generate.write_csvs(_dir(tmp_path, "a"), members=300, seed=5)
    b = generate.write_csvs(_dir(tmp_path, "b"), members=300, seed=5)
    c = generate.write_csvs(_dir(tmp_path, "c"), members=300, seed=6)
    # then
    for kind in generate.KINDS:
        assert a.paths[kind].read_bytes() == b.paths[kind].read_bytes(), kind
        assert a.rows[kind] > 0
    phones_a = {r["phone"] for r in _rows(a, "members")}
    phones_c = {r["phone"] for r in _rows(c, "members")}
    assert len(phones_a & phones_c) < 5
    assert a.paths["orders"].read_bytes() != c.paths["orders"].read_bytes()


def test_a_larger_run_with_the_same_seed_starts_with_the_smaller_one(tmp_path):
    small = generate.write_csvs(_dir(tmp_path, "small"), members=100, seed=5)
    large = generate.write_csvs(_dir(tmp_path, "large"), members=200, seed=5)
    for kind in generate.KINDS:
        assert large.paths[kind].read_bytes().startswith(small.paths[kind].read_bytes()), kind


def test_members_have_valid_unique_phones_names_birthdays_and_cards(tmp_path):
    files = generate.write_csvs(tmp_path, members=1000, seed=1)
    rows = _rows(files, "members")
    real = [r for r in rows if r["card_no"]]  # members and their second enrolments; junk rows have no card
    phones = [normalize("phone", r["phone"])[1] for r in real]
    plus86 = [r for r in real if r["phone"].startswith("+86 ")]
    assert len(set(phones)) == len(phones) - len(plus86)  # only the "+86 …" rewrites repeat a number
    assert len({r["card_no"] for r in real}) == len(real) - len(plus86)
    today = generate.ANCHOR
    for r in real:
        age = (today - dt.date.fromisoformat(r["birthday"])).days / 365.25
        assert 18 <= age <= 65
        assert 2 <= len(r["name"]) <= 4 and r["gender"] in ("男", "女", "")
    assert Counter(r["name"][0] for r in real).most_common(1)[0][0] in "王李张刘陈"
    assert 0.3 < sum(bool(r["wechat_unionid"]) for r in real) / len(real) < 0.6


def test_dirty_rows_are_written_on_purpose(tmp_path):
    files = generate.write_csvs(tmp_path, members=60, seed=2)
    rows = _rows(files, "members")
    junk = [r for r in rows if not r["card_no"]]

    def invalid_phone(raw):
        try:
            normalize("phone", raw)
        except InvalidIdentity:
            return True
        return False

    assert any(invalid_phone(r["phone"]) for r in junk)
    assert any(r["birthday"] in generate.BAD_BIRTHDAYS for r in junk)
    assert any(r["store_code"] in generate.BAD_STORES for r in junk)
    assert any(r["phone"].startswith("+86 ") for r in rows)
    same_person = Counter((r["name"], r["birthday"]) for r in rows if r["card_no"] and not r["phone"].startswith("+"))
    assert max(same_person.values()) >= 2  # a second enrolment with another phone


def test_purchases_look_like_a_real_customer_base(tmp_path):
    # given
    n = 2000
    files = generate.write_csvs(tmp_path, members=n, seed=7)
    orders = _clean_orders(files)
    # when
    per_member = Counter(r["order_id"].rsplit("-", 1)[0] for r in orders)
    by_count = Counter(per_member.values())
    by_month = Counter(r["paid_at"][:7] for r in orders)
    top = sorted(per_member.values(), reverse=True)[: len(per_member) // 10]
    # then
    assert (n - len(per_member)) / n > 0.3  # many members never bought in the window
    assert by_count[1] == max(by_count.values())  # one order is the commonest among buyers
    assert sum(top) / len(orders) > 0.3  # the best tenth of buyers bring a third of the orders
    assert len(by_month) == 12
    assert by_month["2025-11"] > statistics.mean(by_month.values())  # 双11
    assert by_month["2026-06"] > statistics.mean(by_month.values())  # 618
    assert all(int(r["amount_fen"]) > 0 for r in orders)
    refunds = _rows(files, "refunds")
    assert 0.03 < len(refunds) / len(orders) < 0.07
    assert {"full", "amount", "line"} == {"line" if r["sku"] else "amount" if r["amount_fen"] else "full"
                                          for r in refunds}


def test_baskets_have_several_lines_written_as_a_pos_exports_them(tmp_path):
    files = generate.write_csvs(tmp_path, members=1000, seed=9)
    lines = _clean_lines(files)
    by_order: dict[str, list[dict]] = {}
    for r in lines:
        by_order.setdefault(r["order_id"], []).append(r)
    sizes = Counter(len(rows) for rows in by_order.values())
    # retail's mix is 60 / 27 / 10 / 3 % of 1–4 lines (a SKU drawn twice merges into one line)
    assert 0.5 < sizes[1] / len(by_order) < 0.75 and sizes[2] > sizes[3] > sizes[4] > 0
    ids = [r["order_id"] for r in lines]
    assert sum(a != b for a, b in zip(ids, ids[1:], strict=False)) == len(by_order) - 1  # rows of an order: together
    for rows in by_order.values():
        assert len({(r["paid_at"], r["amount_fen"], r["member_phone"], r["store_code"]) for r in rows}) == 1
        assert len({r["sku"] for r in rows}) == len(rows)
        assert all(int(r["line_amount_fen"]) == int(r["unit_price_fen"]) * int(r["quantity"]) for r in rows)
        assert 0 < int(rows[0]["amount_fen"]) <= sum(int(r["line_amount_fen"]) for r in rows)
    discounted = sum(int(rows[0]["amount_fen"]) < sum(int(r["line_amount_fen"]) for r in rows)
                     for rows in by_order.values())
    assert 0.05 < discounted / len(by_order) < 0.5  # 满减 in the festivals, 95折 member prices


def test_weekends_sell_more_than_weekdays(tmp_path):
    files = generate.write_csvs(tmp_path, members=2000, seed=8)
    days = Counter(dt.date.fromisoformat(r["paid_at"][:10]).weekday() for r in _clean_orders(files))
    assert min(days[5], days[6]) > max(days[d] for d in (1, 2, 3))


@pytest.mark.parametrize("industry, event", [("retail", "product_viewed"), ("ecommerce", "added_to_cart"),
                                             ("restaurant", "store_visit"), ("gym", "checked_in"),
                                             ("education", "class_attended"), ("hotel", "hotel_stay")])
def test_every_industry_sells_its_own_catalogue(tmp_path, industry, event):
    files = generate.write_csvs(tmp_path, members=300, seed=4, months=6, industry=industry)
    categories = {category for category, _, _ in PRESETS[Industry(industry)].catalog}
    orders = _clean_orders(files)
    assert orders and {r["category"] for r in orders} <= categories
    start, end = generate.window(6)
    assert all(start.isoformat() <= r["paid_at"][:10] < end.isoformat() for r in orders)
    assert event in {r["name"] for r in _rows(files, "events")}


def test_the_calendar_peaks_on_the_shopping_festivals():
    cal = Calendar(dt.date(2025, 11, 1), dt.date(2026, 11, 1), weekend_lift=1.3, promo_strength=1.0)
    assert promo(dt.date(2025, 11, 11)) > promo(dt.date(2025, 11, 5)) > promo(dt.date(2025, 11, 20)) == 0
    assert promo(dt.date(2026, 6, 18)) > 0
    assert statistics.mean(cal.weights) == pytest.approx(1.0)
    assert cal.day_at(cal.cum[cal.index(dt.date(2026, 3, 4))] + 0.01) == dt.date(2026, 3, 4)


def test_phone_numbers_never_repeat_across_members():
    import random

    rng = random.Random(0)
    book = people.PhoneBook(rng)
    numbers = {book.number(rng, i)[3:] for i in range(200_000)}
    assert len(numbers) == 200_000


def test_memory_stays_flat_as_members_grow(tmp_path):
    def peak(n):
        directory = _dir(tmp_path, str(n))
        tracemalloc.start()
        generate.write_csvs(directory, members=n, seed=1)
        _, top = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        return top

    small, large = peak(300), peak(3000)
    assert large < small * 1.5 + 256 * 1024
