"""Segment message → Orchard item: pure mapping rules, no database."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest

from orchard.errors import InvalidInput
from orchard.tracking import mapping
from orchard.tracking.mapping import Alias, Identify, Ignore, Ingest

NOW = dt.datetime(2026, 10, 1, 2, 0, tzinfo=dt.UTC)


def _map(message: dict, **kw) -> mapping.Mapped:
    return mapping.map_message(message, now=NOW, **kw)


def _track(event: str, properties: dict | None = None, **extra) -> dict:
    return {"type": "track", "messageId": "m-1", "userId": "u-1", "event": event,
            "timestamp": "2026-10-01T10:00:00+08:00", "properties": properties or {}, **extra}


@pytest.mark.parametrize(("value", "fen"), [
    ("19.9", 1990),
    (19.9, 1990),
    (0.1 + 0.2, 30),
    ("0.30", 30),
    (128, 12800),
    ("128.00", 12800),
    (" 5 ", 500),
    (Decimal("1.005"), 101),
    ("0.004", 0),
    (0, 0),
    (1e-7, 0),
    ("99999999999.99", 9999999999999),
])
def test_yuan_become_exact_integer_fen(value, fen):
    assert mapping.to_fen(value, "total") == fen


def test_amounts_in_yuan_add_up_exactly_in_fen():
    assert mapping.to_fen("0.1", "a") + mapping.to_fen("0.2", "b") == 30
    assert mapping.to_fen(0.1, "a") + mapping.to_fen(0.2, "b") == mapping.to_fen(0.3, "c") == 30


@pytest.mark.parametrize("value", ["abc", "", "1,000", "NaN", "Infinity", "-1", -0.01, True, None, [1], {"a": 1},
                                   "1e12", 10**12])
def test_what_is_not_an_amount_is_rejected_naming_the_field(value):
    with pytest.raises(InvalidInput) as exc:
        mapping.to_fen(value, "properties.total")
    assert exc.value.errors[0]["field"] == "properties.total"


@pytest.mark.parametrize(("segment", "orchard"), [
    ("Product Viewed", ("event", "product_viewed")),
    ("Product Added", ("event", "added_to_cart")),
    ("Signed Up", ("event", "sign_up")),
    ("Signed In", ("event", "login")),
    ("Coupon Applied", ("event", "coupon_used")),
    ("Product Reviewed", ("event", "reviewed")),
    ("Product Shared", ("event", "shared")),
    ("Order Completed", ("order", "order_completed")),
    ("order_completed", ("order", "order_completed")),
    ("Order Refunded", ("refund", "order_refunded")),
    ("product viewed", ("event", "product_viewed")),
    ("checkoutStarted", ("event", "checkout_started")),
    ("Checkout Step Viewed", ("event", "checkout_step_viewed")),
    ("HTTPRequest Sent", ("event", "http_request_sent")),
    ("store_visit", ("event", "store_visit")),
    ("领取 优惠券", ("event", "领取_优惠券")),
    ("加入会员", ("event", "加入会员")),
    ("Café Visited!", ("event", "cafe_visited")),
    ("404 Page", ("event", "e_404_page")),
    ("x" * 100, ("event", "x" * 64)),
])
def test_event_names_follow_the_spec_table_else_snake_case(segment, orchard):
    assert mapping.event_name(segment) == orchard


def test_an_event_name_without_letters_is_rejected():
    with pytest.raises(InvalidInput):
        mapping.event_name("!!! ???")


@pytest.mark.parametrize(("value", "gender"), [
    ("male", "male"), ("Male", "male"), ("M", "male"), ("m", "male"), ("男", "male"), (" 男性 ", "male"),
    ("female", "female"), ("FEMALE", "female"), ("f", "female"), ("女", "female"), ("女性", "female"),
    ("unknown", None), ("other", None), ("", None), (None, None), (1, None),
])
def test_gender_mapping(value, gender):
    assert mapping.gender(value) == gender


@pytest.mark.parametrize(("traits", "name"), [
    ({"name": "  Ada   Lovelace "}, "Ada Lovelace"),
    ({"firstName": "Ada", "lastName": "Lovelace"}, "Ada Lovelace"),
    ({"first_name": "Ada"}, "Ada"),
    ({"firstName": "娜", "lastName": "李"}, "李娜"),
    ({"firstName": "小明", "lastName": "王"}, "王小明"),
    ({"name": "张三", "firstName": "x"}, "张三"),
    ({}, None),
    ({"name": 42}, None),
])
def test_names_from_traits_chinese_names_have_no_space(traits, name):
    assert mapping.full_name(traits) == name


@pytest.mark.parametrize(("value", "day"), [
    ("1990-05-01", dt.date(1990, 5, 1)),
    ("1990-04-30T16:00:00.000Z", dt.date(1990, 5, 1)),  # midnight in Shanghai, sent as UTC
    ("1990-05-01T00:00:00", dt.date(1990, 5, 1)),
])
def test_birthdays_are_dates_in_the_tenant_zone(value, day):
    assert mapping.birthday(value) == day


@pytest.mark.parametrize("value", ["yesterday", "1800-01-01", "2999-01-01", 19900501])
def test_implausible_birthdays_are_refused(value):
    with pytest.raises(ValueError):
        mapping.birthday(value)


def test_identify_maps_identities_profile_and_other_traits():
    m = _map({"type": "identify", "messageId": "i-1", "userId": 42, "anonymousId": "anon-1",
              "timestamp": "2026-10-01T10:00:00+08:00",
              "traits": {"phone": "138 1234 1234", "email": "Li@Example.com", "lastName": "李", "firstName": "娜",
                         "gender": "女", "birthday": "1990-05-01", "address": {"city": "上海", "street": "x"},
                         "plan": "gold", "Favourite Tea": "龙井"}})
    assert isinstance(m.action, Identify)
    assert m.action.identities == {"external_id": "42", "phone": "+8613812341234", "email": "li@example.com"}
    assert m.action.anonymous_id == "anon-1"
    assert m.action.profile == {"name": "李娜", "gender": "female", "birthday": dt.date(1990, 5, 1),
                                "region": "上海"}
    assert m.action.attributes == {"plan": "gold", "favourite_tea": "龙井"}
    assert m.action.occurred_at == dt.datetime(2026, 10, 1, 2, 0, tzinfo=dt.UTC)
    assert m.warnings == []


def test_rudderstack_identify_traits_live_in_context_traits():
    m = _map({"type": "identify", "userId": "u-1", "context": {"traits": {"phone": "13812341234", "name": "王"}}})
    assert m.action.identities == {"external_id": "u-1", "phone": "+8613812341234"}
    assert m.action.profile == {"name": "王"}


def test_invalid_trait_values_are_dropped_with_a_warning_not_the_message():
    m = _map({"type": "identify", "userId": "u-1",
              "traits": {"phone": "12345", "email": "nope", "gender": "x", "birthday": "soon"}})
    assert m.action.identities == {"external_id": "u-1"}
    assert m.action.profile == {}
    assert len(m.warnings) == 4


def test_region_falls_back_from_city_to_state():
    m = _map({"type": "identify", "userId": "u-1", "traits": {"address": {"state": "浙江"}}})
    assert m.action.profile == {"region": "浙江"}


def test_order_completed_becomes_an_order_in_fen():
    m = _map(_track("Order Completed", {
        "order_id": "A-1", "total": "128.00", "revenue": 100, "currency": "cny", "store_code": "SH001",
        "coupon": "HELLO",
        "products": [{"sku": "TEA-1", "name": "龙井", "category": "茶叶", "price": 19.9, "quantity": 2},
                     {"product_id": 7, "price": "0.1"}]}, context={"traits": {"phone": "13812341234"}}))
    assert isinstance(m.action, Ingest) and m.action.kind == "order"
    order = m.action.data
    assert (order.source, order.external_id, order.amount_fen, order.store_code) == ("segment", "A-1", 12800, "SH001")
    assert order.paid_at == dt.datetime(2026, 10, 1, 2, 0, tzinfo=dt.UTC)
    assert [(ln.sku, ln.name, ln.category, ln.quantity, ln.unit_price_fen) for ln in order.lines] == [
        ("TEA-1", "龙井", "茶叶", 2, 1990), ("7", None, None, 1, 10)]
    assert order.member.identities == {"external_id": "u-1", "phone": "+8613812341234"}
    assert order.properties == {"order_id": "A-1", "total": "128.00", "revenue": 100, "currency": "cny",
                                "coupon": "HELLO"}


def test_revenue_is_the_amount_when_there_is_no_total_and_lines_alone_suffice():
    assert _map(_track("Order Completed", {"order_id": "A", "revenue": 19.9})).action.data.amount_fen == 1990
    lines_only = _map(_track("Order Completed", {"order_id": "A", "products": [{"sku": "S", "price": 1}]}))
    assert lines_only.action.data.amount_fen is None


@pytest.mark.parametrize(("properties", "field"), [
    ({"total": 1}, "properties.order_id"),
    ({"order_id": "A"}, None),
    ({"order_id": "A", "total": 1, "currency": "USD"}, "properties.currency"),
    ({"order_id": "A", "products": [{"sku": "S"}]}, "properties.products[0].price"),
    ({"order_id": "A", "products": [{"sku": "S", "price": 1, "quantity": 1.5}]}, "properties.products[0].quantity"),
    ({"order_id": "A", "products": "S"}, "properties.products"),
    ({"order_id": "A", "total": "lots"}, "properties.total"),
])
def test_an_order_that_cannot_be_mapped_is_rejected(properties, field):
    with pytest.raises(InvalidInput) as exc:
        _map(_track("Order Completed", properties))
    if field:
        assert exc.value.errors[0]["field"] == field


def test_order_refunded_by_products_amount_or_in_full():
    by_lines = _map(_track("Order Refunded", {"order_id": "A-1", "products": [{"sku": "TEA-1", "quantity": 1},
                                                                            {"product_id": "P2"}]}))
    refund = by_lines.action.data
    assert by_lines.action.kind == "refund"
    assert (refund.external_id, refund.order_external_id, refund.amount_fen) == ("m-1", "A-1", None)
    assert [(ln.sku, ln.quantity) for ln in refund.lines] == [("TEA-1", 1), ("P2", None)]
    assert _map(_track("Order Refunded", {"order_id": "A-1", "total": "9.9"})).action.data.amount_fen == 990
    full = _map(_track("Order Refunded", {"order_id": "A-1"})).action.data
    assert (full.amount_fen, full.lines) == (None, None)


def test_other_tracks_are_events_with_their_properties():
    m = _map(_track("Product Viewed", {"sku": "TEA-1", "price": 19.9, "Page Type": "pdp", "store_code": "SH001",
                                       "deep": {"a": {"b": {"c": 1}}}}))
    event = m.action.data
    assert (event.name, event.external_id, event.store_code) == ("product_viewed", "m-1", "SH001")
    assert event.properties == {"sku": "TEA-1", "price": 19.9, "page_type": "pdp", "deep": {"a": {"b": '{"c":1}'}}}


def test_an_anonymous_track_has_no_identities():
    m = _map({"type": "track", "event": "Product Viewed", "anonymousId": "anon-1", "messageId": "m"})
    assert m.action.data.member.identities == {} and m.action.data.member.anonymous_id == "anon-1"


def test_page_and_screen_become_viewed_events():
    page = _map({"type": "page", "userId": "u", "messageId": "p", "name": "首页", "properties": {"path": "/"}})
    assert (page.action.data.name, page.action.data.properties) == ("page_viewed", {"path": "/", "name": "首页"})
    screen = _map({"type": "screen", "userId": "u", "messageId": "s", "name": "Home", "category": "Main"})
    assert screen.action.data.name == "screen_viewed"
    assert screen.action.data.properties == {"name": "Home", "category": "Main"}


def test_alias_and_group():
    alias = _map({"type": "alias", "previousId": "anon-1", "userId": "u-1"})
    assert alias.action == Alias("u-1", "anon-1", alias.action.occurred_at)
    assert isinstance(_map({"type": "group", "userId": "u", "groupId": "g"}).action, Ignore)


def test_a_message_that_switches_orchard_off_is_ignored():
    m = _map({**_track("Product Viewed"), "integrations": {"All": True, "Orchard": False}})
    assert isinstance(m.action, Ignore)
    assert isinstance(_map({**_track("Product Viewed"), "integrations": {"All": False}}).action, Ignore)
    assert isinstance(_map({**_track("Product Viewed"), "integrations": {"All": True}}).action, Ingest)


def test_time_falls_back_from_timestamp_to_original_timestamp_to_received_at_to_the_clock():
    base = {"type": "track", "userId": "u", "event": "x", "messageId": "m"}
    assert _map({**base, "originalTimestamp": "2026-09-30T00:00:00Z"}).action.data.occurred_at == \
        dt.datetime(2026, 9, 30, tzinfo=dt.UTC)
    assert _map({**base, "receivedAt": "2026-09-29T00:00:00Z"}).action.data.occurred_at == \
        dt.datetime(2026, 9, 29, tzinfo=dt.UTC)
    clock = _map(base)
    assert clock.action.data.occurred_at == NOW and clock.action.clock_time


def test_a_message_without_message_id_gets_a_stable_derived_one():
    body = {"type": "track", "userId": "u", "event": "x", "timestamp": "2026-09-30T00:00:00Z"}
    first, again = _map(body), _map(dict(reversed(list(body.items()))))
    assert first.message_id.startswith("sha256:") and first.message_id == again.message_id


@pytest.mark.parametrize(("message", "field"), [
    ({"type": "nope"}, "type"),
    ({"type": "track", "event": "x"}, "userId"),
    ({"type": "track", "userId": "u"}, "event"),
    ({"type": "track", "userId": ["u"], "event": "x"}, "userId"),
    ({"type": "track", "userId": True, "event": "x"}, "userId"),
    ({"type": "track", "userId": "u", "event": "x", "timestamp": "yesterday"}, "timestamp"),
    ({"type": "track", "userId": "u", "event": "x", "timestamp": 1700000000}, "timestamp"),
    ({"type": "track", "userId": "u", "event": "x", "timestamp": "0001-01-01T00:00:00+05:00"}, "timestamp"),
    ({"type": "track", "userId": "u", "event": "x", "properties": []}, "properties"),
    ({"type": "track", "userId": "u", "event": "x", "properties": {"a": "\x00"}}, "message"),
    ({"type": "track", "userId": "u", "event": "x", "properties": {"a": "\ud800"}}, "message"),
    ({"type": "track", "userId": "u", "event": "x", "messageId": "m" * 129}, "messageId"),
    ({"type": "alias", "userId": "u"}, "previousId"),
    ({"type": "track", "userId": "u", "event": "x", "properties": {"big": "x" * 20000}}, "properties"),
])
def test_messages_that_cannot_be_mapped_name_the_segment_field(message, field):
    with pytest.raises(InvalidInput) as exc:
        _map(message)
    assert exc.value.errors[0]["field"] == field


def test_absurdly_nested_messages_are_rejected():
    deep: dict = {}
    node = deep
    for _ in range(40):
        node["a"] = {}
        node = node["a"]
    with pytest.raises(InvalidInput):
        _map({"type": "track", "userId": "u", "event": "x", "properties": deep})


def test_a_batch_context_applies_to_every_message_and_the_message_context_wins():
    shared = {"traits": {"phone": "13812341234"}, "ip": "10.0.0.1"}
    m = _map({"type": "identify", "userId": "u", "context": {"traits": {"email": "a@example.com"}}},
             context=shared)
    assert m.action.identities == {"external_id": "u", "email": "a@example.com"}
    m = _map({"type": "identify", "userId": "u"}, context=shared)
    assert m.action.identities == {"external_id": "u", "phone": "+8613812341234"}
