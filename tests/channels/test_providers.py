"""The provider factory, the log provider (secrets and full recipients never logged) and the WeCom guide task."""

import logging

import pytest

from orchard.channels.base import Channel, OutboundMessage, Provider
from orchard.channels.log import LogProvider
from orchard.channels.providers import ProviderConfigError, build_providers, get_provider, parse_choices
from orchard.channels.tencent import TencentSmsProvider
from orchard.channels.wecom import WeComGuideTaskProvider
from orchard.config import Settings

SECRET = "super-secret-value-42"


def _settings(**kw):
    return Settings(_env_file=None, **kw)


def test_nothing_configured_means_no_providers_unless_log_fallback():
    assert list(build_providers(_settings())) == [Channel.log]
    all_log = build_providers(_settings(channels_log_fallback=True))
    assert set(all_log) == set(Channel) and all(isinstance(p, LogProvider) for p in all_log.values())


def test_configured_providers_are_built_and_choice_is_honoured():
    s = _settings(sms_aliyun_access_key_id="id", sms_aliyun_access_key_secret=SECRET,
                  sms_tencent_secret_id="sid", sms_tencent_secret_key=SECRET, sms_tencent_sdk_app_id="1400",
                  email_smtp_host="smtp.example", email_from_address="a@orchard.example",
                  webhook_secret="whsec_" + "QUFBQUFBQUFBQUFBQUFBQQ==", wechat_oa_appid="wx1", wechat_oa_secret=SECRET,
                  push_jpush_app_key="k", push_jpush_master_secret=SECRET)
    ps = build_providers(s)
    assert {c: p.name for c, p in ps.items()} == {
        Channel.sms: "aliyun_sms", Channel.wechat_oa: "wechat_template", Channel.app_push: "jpush",
        Channel.email: "smtp", Channel.webhook: "webhook", Channel.log: "log"}
    assert all(isinstance(p, Provider) for p in ps.values())
    s2 = s.model_copy(update={"channels": "sms=tencent, email=log"})
    ps2 = build_providers(s2)
    assert isinstance(ps2[Channel.sms], TencentSmsProvider) and isinstance(ps2[Channel.email], LogProvider)
    for p in ps.values():
        assert SECRET not in repr(p)
    assert SECRET not in repr(s)


def test_misconfiguration_is_an_error():
    with pytest.raises(ProviderConfigError):
        build_providers(_settings(channels="sms=tencent"))
    with pytest.raises(ProviderConfigError):
        parse_choices("fax=log")
    with pytest.raises(ProviderConfigError):
        parse_choices("sms")


def test_wecom_needs_the_task_sink():
    tasks = []
    p = get_provider("wecom", _settings(), guide_task_sink=tasks.append)
    assert isinstance(p, WeComGuideTaskProvider)
    msg = OutboundMessage(message_id="msg-wc-1", channel="wecom", recipient="wmEXTERNAL01",
                          body="${name}您好，您的会员券下周到期", variables={"name": "李雷"},
                          extra={"guide_userid": "zhangsan"})
    res = p.send(msg)
    assert res.accepted and res.provider_message_id == "wecom-task:msg-wc-1"
    (t,) = tasks
    assert (t.task_id, t.guide_userid, t.external_userid, t.text) == (
        "msg-wc-1", "zhangsan", "wmEXTERNAL01", "李雷您好，您的会员券下周到期")
    no_guide = p.send(OutboundMessage(message_id="m2", channel="wecom", recipient="wm2", body="x"))
    assert no_guide.permanent and len(tasks) == 1


def test_log_provider_masks_the_recipient(caplog):
    p = LogProvider(Channel.sms)
    msg = OutboundMessage(message_id="msg-log-1", channel="sms", recipient="+8613800138000", sign_name="果园会员",
                          body="${name}您好，积分+${points}", variables={"name": "李雷", "points": "120"})
    with caplog.at_level(logging.INFO, logger="orchard.channels.log"):
        assert p.send(msg).accepted
    text = caplog.text
    assert "【果园会员】李雷您好，积分+120" in text and "+86****8000" in text and "13800138000" not in text
    assert list(p.sent) == [msg]


def test_message_validation():
    with pytest.raises(ValueError):
        OutboundMessage(message_id="", channel="sms", recipient="+8613800138000")
    with pytest.raises(ValueError):
        OutboundMessage(message_id="has space", channel="sms", recipient="+8613800138000")
    with pytest.raises(ValueError):
        OutboundMessage(message_id="ok", channel="fax", recipient="x")
