"""Build the configured providers from settings, by channel name.

A provider is configured when its credentials are set (see the channel block of `orchard.config.Settings` and
docs/channels.md). `ORCHARD_CHANNELS="sms=tencent"` picks one where a channel has two; `ORCHARD_CHANNELS_LOG_FALLBACK`
gives every channel without a configured provider the log provider (the demo).
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings, get_settings
from .aliyun import AliyunSmsProvider
from .base import Channel, Provider
from .jpush import JPushProvider
from .log import LogProvider
from .smtp import SmtpProvider
from .tencent import TencentSmsProvider
from .webhook import WebhookProvider
from .wechat import WeChatSubscribeProvider, WeChatTemplateProvider
from .wecom import GuideTask, WeComGuideTaskProvider


class ProviderConfigError(ValueError):
    pass


def _candidates(s: Settings, guide_task_sink: Callable[[GuideTask], None] | None) -> dict[tuple[Channel, str],
                                                                                          Callable[[], Provider]]:
    """(channel, provider name) → constructor, for every provider whose credentials are set."""
    t = s.channels_http_timeout
    out: dict[tuple[Channel, str], Callable[[], Provider]] = {}
    if s.sms_aliyun_access_key_id and s.sms_aliyun_access_key_secret.get_secret_value():
        out[(Channel.sms, "aliyun")] = lambda: AliyunSmsProvider(
            s.sms_aliyun_access_key_id, s.sms_aliyun_access_key_secret.get_secret_value(),
            endpoint=s.sms_aliyun_endpoint, region_id=s.sms_aliyun_region_id,
            sign_name=s.sms_aliyun_sign_name or None, timeout=t)
    if s.sms_tencent_secret_id and s.sms_tencent_secret_key.get_secret_value() and s.sms_tencent_sdk_app_id:
        out[(Channel.sms, "tencent")] = lambda: TencentSmsProvider(
            s.sms_tencent_secret_id, s.sms_tencent_secret_key.get_secret_value(), s.sms_tencent_sdk_app_id,
            endpoint=s.sms_tencent_endpoint, region=s.sms_tencent_region,
            sign_name=s.sms_tencent_sign_name or None, timeout=t)
    if s.wechat_oa_appid and s.wechat_oa_secret.get_secret_value():
        out[(Channel.wechat_oa, "wechat")] = lambda: WeChatTemplateProvider(
            s.wechat_oa_appid, s.wechat_oa_secret.get_secret_value(), endpoint=s.wechat_endpoint,
            callback_token=s.wechat_oa_callback_token.get_secret_value() or None, timeout=t)
    if s.wechat_mp_appid and s.wechat_mp_secret.get_secret_value():
        out[(Channel.wechat_mp, "wechat")] = lambda: WeChatSubscribeProvider(
            s.wechat_mp_appid, s.wechat_mp_secret.get_secret_value(), endpoint=s.wechat_endpoint,
            callback_token=s.wechat_mp_callback_token.get_secret_value() or None,
            miniprogram_state=s.wechat_mp_state, timeout=t)
    if s.push_jpush_app_key and s.push_jpush_master_secret.get_secret_value():
        out[(Channel.app_push, "jpush")] = lambda: JPushProvider(
            s.push_jpush_app_key, s.push_jpush_master_secret.get_secret_value(), endpoint=s.push_jpush_endpoint,
            apns_production=s.push_jpush_apns_production, timeout=t)
    if s.email_smtp_host and s.email_from_address:
        out[(Channel.email, "smtp")] = lambda: SmtpProvider(
            s.email_smtp_host, s.email_smtp_port, from_address=s.email_from_address,
            from_name=s.email_from_name or None, security=s.email_smtp_security,
            username=s.email_smtp_username or None, password=s.email_smtp_password.get_secret_value() or None,
            unsubscribe_mailto=s.email_unsubscribe_mailto or None, timeout=t)
    if s.webhook_secret.get_secret_value():
        out[(Channel.webhook, "webhook")] = lambda: WebhookProvider(
            s.webhook_secret.get_secret_value(), default_url=s.webhook_default_url or None, timeout=t)
    if guide_task_sink is not None:
        out[(Channel.wecom, "wecom")] = lambda: WeComGuideTaskProvider(guide_task_sink)
    return out


def parse_choices(value: str) -> dict[Channel, str]:
    """"sms=tencent, email=smtp" → {Channel.sms: "tencent", Channel.email: "smtp"}."""
    out: dict[Channel, str] = {}
    for part in filter(None, (p.strip() for p in value.split(","))):
        name, sep, provider = part.partition("=")
        if not sep or not provider.strip():
            raise ProviderConfigError(f"ORCHARD_CHANNELS: expected channel=provider, got {part!r}")
        try:
            out[Channel(name.strip())] = provider.strip()
        except ValueError as exc:
            raise ProviderConfigError(f"ORCHARD_CHANNELS: unknown channel {name.strip()!r}") from exc
    return out


def build_providers(settings: Settings | None = None, *,
                    guide_task_sink: Callable[[GuideTask], None] | None = None) -> dict[Channel, Provider]:
    """One provider per channel that has one. A channel named in ORCHARD_CHANNELS must get the provider named
    there (ProviderConfigError if it is not configured); otherwise, with two configured (Aliyun and Tencent SMS),
    the first configured wins: Aliyun."""
    s = settings or get_settings()
    cands = _candidates(s, guide_task_sink)
    choices = parse_choices(s.channels)
    out: dict[Channel, Provider] = {}
    for channel in Channel:
        wanted = choices.get(channel)
        if wanted == "log" or channel is Channel.log:
            out[channel] = LogProvider(channel)
            continue
        if wanted is not None:
            if (channel, wanted) not in cands:
                raise ProviderConfigError(f"ORCHARD_CHANNELS names {channel}={wanted}, which is not configured")
            out[channel] = cands[(channel, wanted)]()
            continue
        ctor = next((c for (ch, _), c in cands.items() if ch is channel), None)
        if ctor is not None:
            out[channel] = ctor()
        elif s.channels_log_fallback:
            out[channel] = LogProvider(channel)
    return out


def get_provider(channel: Channel | str, settings: Settings | None = None, **kw) -> Provider | None:
    return build_providers(settings, **kw).get(Channel(channel))


#: The name in a status-callback URL (`/api/v1/channels/{name}/callbacks`) → the adapter that answers it. One name
#: per vendor account: the two WeChat accounts sign their pushes with different tokens.
CALLBACK_PROVIDERS: dict[str, tuple[Channel, str]] = {
    "aliyun": (Channel.sms, "aliyun"),
    "tencent": (Channel.sms, "tencent"),
    "wechat_oa": (Channel.wechat_oa, "wechat"),
    "wechat_mp": (Channel.wechat_mp, "wechat"),
    "jpush": (Channel.app_push, "jpush"),
    "webhook": (Channel.webhook, "webhook"),
}
_callback_cache: dict[str, tuple[Settings, Provider]] = {}


def callback_provider(name: str, settings: Settings | None = None) -> Provider | None:
    """The configured adapter that parses `name`'s callbacks, or None (unknown name, or not configured: a
    callback for an account Orchard has no credentials for cannot be verified). Built once per settings object,
    not per callback, since an adapter holds an HTTP client."""
    if name not in CALLBACK_PROVIDERS:
        return None
    s = settings or get_settings()
    cached = _callback_cache.get(name)
    if cached is not None and cached[0] is s:
        return cached[1]
    ctor = _candidates(s, None).get(CALLBACK_PROVIDERS[name])
    if ctor is None:
        return None
    provider = ctor()
    _callback_cache[name] = (s, provider)
    return provider
