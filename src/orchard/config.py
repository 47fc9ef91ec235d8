"""Settings from environment variables prefixed `ORCHARD_`.

The defaults make `orchard serve` work on a fresh machine: a SQLite file in the working directory,
Asia/Shanghai as the tenant zone, zh-CN as the language.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ORCHARD_", extra="ignore")

    database_url: str = "sqlite:///orchard.db"
    timezone: str = "Asia/Shanghai"
    language: str = "zh-CN"
    default_phone_region: str = "CN"
    #: Staff access tokens are short-lived; integrations use API keys instead.
    token_ttl_seconds: int = 30 * 60
    #: Idempotency-Key records are kept at least this long (IETF draft suggests >= 24 h).
    idempotency_ttl_seconds: int = 48 * 3600
    #: Items per ingestion batch call.
    batch_max_items: int = 1000
    db_echo: bool = False
    #: Files the server keeps: uploaded imports and their error reports (imports/<token>/), and
    #: request bodies spooled by the Idempotency-Key middleware (tmp/). A relative path is read
    #: from the working directory, like the default SQLite file.
    data_dir: Path = Path("orchard-data")
    #: Largest file `POST /api/v1/imports` accepts (bytes); larger uploads are a 413.
    upload_max_bytes: int = 2 * 1024**3
    #: Run queued HTTP imports in this server process (one worker thread, one job at a time).
    import_worker: bool = True
    #: Where members reach this server: tracked short links in messages are `{public_base_url}/t/{code}`.
    public_base_url: str = "http://127.0.0.1:8000"
    #: Run the periodic jobs (segment sweeps and refreshes, nightly scores, expiry, tiers) in this
    #: process. `orchard serve` turns it on unless given --no-scheduler; off for embedded apps and tests.
    scheduler: bool = False
    #: When earned points expire, in the tenant's zone (loyalty.policy): "never", "days:365",
    #: "month_end" (end of the month earned) or "year_end:1" (31 Dec of the next year, 年底清零).
    points_expiry: str = "year_end:1"
    #: A refund reversing points already spent: "debt" (the balance goes negative and the next
    #: earning repays it) or "cap" (take back what is left, record the shortfall, forgive the rest).
    points_refund_policy: Literal["debt", "cap"] = "debt"
    #: Points earned by an order are pending (not spendable) for this many days after payment, e.g.
    #: the return window; 0: usable at once.
    points_order_pending_days: int = Field(0, ge=0, le=365)
    #: Points an order earns stay pending until this event arrives for the order (an event whose
    #: properties name it: {"order_id": external id[, "order_source": …]}), e.g. "order_delivered"
    #: or "return_window_closed"; empty: no such wait.
    points_order_pending_event: str = Field("", max_length=64)
    #: Seconds a worker's claim on the messages it is sending holds (messaging.outbox). A worker that dies
    #: mid-batch leaves its messages `sending`; once the claim lapses another worker queues them again and the
    #: provider gets the same idempotency id. Keep it well above the slowest provider call
    #: (`channels_http_timeout`); tests shorten it so a crash test need not wait five minutes.
    outbox_claim_seconds: int = Field(300, ge=1, le=24 * 3600)
    #: On PostgreSQL, `POST …/points/spend` takes the one-round-trip path (loyalty.spend_pg: an async route on
    #: its own connection pool calling a PL/pgSQL function); off: every spend goes through the service path,
    #: as on SQLite (the reference the thin path is tested against).
    points_spend_fast_path: bool = True
    #: Connections of that path's pool, per server process. The function holds the member's account lock
    #: for well under a millisecond, so a few connections per core keep the database busy.
    points_spend_pool_size: int = Field(10, ge=1, le=200)
    #: Seconds a spend waits for a free connection before it is a 503 (server.busy, Retry-After), as the
    #: service path's pool does.
    points_spend_pool_timeout: float = Field(30.0, gt=0, le=600)
    #: On PostgreSQL, `POST /api/v1/events` and `POST /api/v1/ingest` batches of behaviour events take the
    #: one-round-trip path (events.ingest_pg: an ASGI middleware on its own pool calling a PL/pgSQL function);
    #: off: every request goes through the FastAPI route, as on SQLite (the reference it is tested against).
    ingest_fast_path: bool = True
    #: Connections of that path's pool, per server process.
    ingest_pool_size: int = Field(10, ge=1, le=200)
    #: Seconds a request waits for a free connection before it is a 503 (server.busy, Retry-After).
    ingest_pool_timeout: float = Field(30.0, gt=0, le=600)

    # ---- Channel providers (orchard.channels.providers builds those that are configured) -----------------------
    #: Channel name → provider, e.g. "sms=aliyun,email=smtp"; a channel not listed uses its only configured
    #: provider, or the log provider when `channels_log_fallback` is on. Providers: sms: aliyun|tencent|log;
    #: wechat_oa, wechat_mp: wechat|log; app_push: jpush|log; email: smtp|log; webhook: webhook|log; wecom: log.
    channels: str = ""
    #: Channels with no configured provider write to the log instead (the demo); off: they have no provider.
    channels_log_fallback: bool = False
    #: Sends per second per outbox channel and per worker process, e.g. "sms=50,email=10" (the provider's own
    #: QPS limit divided by the number of workers); a channel not listed is not throttled.
    channels_rate_limits: str = ""
    #: Aliyun SMS (Dysmsapi SendSms, POP v1 HMAC-SHA1): RAM AccessKey id / secret, default sign name.
    sms_aliyun_access_key_id: str = ""
    sms_aliyun_access_key_secret: SecretStr = SecretStr("")
    sms_aliyun_sign_name: str = ""
    sms_aliyun_region_id: str = "cn-hangzhou"
    sms_aliyun_endpoint: str = "https://dysmsapi.aliyuncs.com"
    #: Tencent Cloud SMS (SendSms 2021-01-11, TC3-HMAC-SHA256): SecretId / SecretKey, SmsSdkAppId, sign name.
    sms_tencent_secret_id: str = ""
    sms_tencent_secret_key: SecretStr = SecretStr("")
    sms_tencent_sdk_app_id: str = ""
    sms_tencent_sign_name: str = ""
    sms_tencent_region: str = "ap-guangzhou"
    sms_tencent_endpoint: str = "https://sms.tencentcloudapi.com"
    #: WeChat official account (template messages): appid / appsecret, and the server-URL token that signs pushed
    #: events (TEMPLATESENDJOBFINISH).
    wechat_oa_appid: str = ""
    wechat_oa_secret: SecretStr = SecretStr("")
    wechat_oa_callback_token: SecretStr = SecretStr("")
    #: WeChat mini-program (subscribe messages): appid / appsecret, push token, and which version a tap opens
    #: (formal | trial | developer).
    wechat_mp_appid: str = ""
    wechat_mp_secret: SecretStr = SecretStr("")
    wechat_mp_callback_token: SecretStr = SecretStr("")
    wechat_mp_state: Literal["formal", "trial", "developer"] = "formal"
    #: WeChat API base URL (both accounts).
    wechat_endpoint: str = "https://api.weixin.qq.com"
    #: JPush REST v3: appKey / masterSecret; APNs production (false for development builds).
    push_jpush_app_key: str = ""
    push_jpush_master_secret: SecretStr = SecretStr("")
    push_jpush_apns_production: bool = True
    push_jpush_endpoint: str = "https://api.jpush.cn"
    #: SMTP: host, port, security (starttls | ssl | none), login, sender, and the mailbox that takes mailto:
    #: unsubscribe requests (List-Unsubscribe).
    email_smtp_host: str = ""
    email_smtp_port: int = 587
    email_smtp_security: Literal["starttls", "ssl", "none"] = "starttls"
    email_smtp_username: str = ""
    email_smtp_password: SecretStr = SecretStr("")
    email_from_address: str = ""
    email_from_name: str = ""
    email_unsubscribe_mailto: str = ""
    #: Generic webhook: Standard Webhooks secret (whsec_<base64>) and the URL used for recipient "default".
    webhook_secret: SecretStr = SecretStr("")
    webhook_default_url: str = ""
    #: Seconds an HTTP provider call may take before it counts as a (transient) timeout.
    channels_http_timeout: float = Field(10.0, gt=0, le=120)


@lru_cache
def get_settings() -> Settings:
    return Settings()
