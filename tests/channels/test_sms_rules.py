"""The SMS template registration check and the inbound-reply opt-out parser (shared by both SMS adapters)."""

import pytest

from orchard.channels.base import Purpose
from orchard.channels.sms import (
    check_sms_template,
    is_opt_out_reply,
    positional_params,
    render_template,
    split_e164,
    template_variables,
)


@pytest.mark.parametrize("content", [
    "【果园会员】${name}您好，本周会员日全场8折，详情见小程序。拒收请回复R",
    "【果园会员】{1}您好，积分翻倍活动今日开启。回T退订",
    "【果园会员】新品到店，退订回T",
    "【果园会员】会员专享券已到账，回复TD退订",
    "【果园会员】会员专享券已到账 回Ｔ退订",  # full-width T
])
def test_marketing_template_with_signature_and_opt_out_passes(content):
    check = check_sms_template(content, Purpose.marketing)
    assert check.ok, check.reasons
    assert check.signature == "果园会员"


def test_marketing_template_without_opt_out_is_refused_with_a_reason():
    check = check_sms_template("【果园会员】${name}您好，本周会员日全场8折", Purpose.marketing)
    assert not check.ok
    assert any("拒收请回复R" in r and "opt-out" in r for r in check.reasons)


def test_marketing_template_without_signature_is_refused():
    check = check_sms_template("${name}您好，本周会员日全场8折。拒收请回复R", "marketing")
    assert not check.ok
    assert any("签名" in r for r in check.reasons)
    assert len(check.reasons) == 1


def test_opt_out_line_must_really_be_one():
    # "T" without 退订/拒收 is not an opt-out instruction, nor is 退订 alone
    for content in ["【果园会员】回T参加活动", "【果园会员】可随时退订", "【果园会员】退订回TX"]:
        assert not check_sms_template(content, Purpose.marketing).ok, content


def test_service_template_needs_no_opt_out_line():
    assert check_sms_template("您的积分已到账 ${points} 分", Purpose.service).ok


def test_template_checks_that_apply_to_every_purpose():
    assert not check_sms_template("   ", Purpose.service).ok
    adj = check_sms_template("您好${name}${points}", Purpose.service)
    assert not adj.ok and any("相邻" in r for r in adj.reasons)
    assert not check_sms_template("【A】短签名", Purpose.service).ok  # 1 character
    two = check_sms_template("【果园】【果园会员】积分到账", Purpose.service)
    assert not two.ok
    mismatch = check_sms_template("【果园会员】活动。拒收请回复R", Purpose.marketing, sign_name="别家")
    assert not mismatch.ok and any("不一致" in r for r in mismatch.reasons)


def test_template_variables_in_order():
    assert template_variables("${b}x${a}y${b}") == ["b", "a"]
    assert template_variables("{1}和{2}") == ["1", "2"]


@pytest.mark.parametrize("reply", ["T", "t", "TD", "td", " R ", "N", "退订", "取消", "ＴＤ", "Ｒ", "退订。", "T!",
                                   "\u3000退订\u3000", "Td\n"])
def test_opt_out_replies(reply):
    assert is_opt_out_reply(reply)


@pytest.mark.parametrize("reply", ["", "Thanks", "TDD", "退订了吗怎么还发", "好的", "Y", "ok", "NT"])
def test_not_opt_out_replies(reply):
    assert not is_opt_out_reply(reply)


def test_positional_params_for_tencent():
    assert positional_params({"2": "b", "1": "a", "10": "j", **{str(i): str(i) for i in range(3, 10)}})[:3] == [
        "a", "b", "3"]
    assert positional_params({"2": "b", "1": "a", "10": "j", **{str(i): str(i) for i in range(3, 10)}})[-1] == "j"
    with pytest.raises(ValueError):
        positional_params({"1": "a", "3": "c"})
    with pytest.raises(ValueError):
        positional_params({"name": "x"})


def test_render_and_e164():
    assert render_template("${name}有{1}分", {"name": "李", "1": "5"}) == "李有5分"
    with pytest.raises(KeyError):
        render_template("${name}", {})
    assert split_e164("+8613800138000") == ("86", "13800138000")
    assert split_e164("+85261234567") == ("852", "61234567")
    with pytest.raises(ValueError):
        split_e164("13800138000")
