"""Settings from environment variables prefixed `ORCHARD_`.

The defaults make `orchard serve` work on a fresh machine: a SQLite file in the working directory,
Asia/Shanghai as the tenant zone, zh-CN as the language.
"""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
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


@lru_cache
def get_settings() -> Settings:
    return Settings()
