"""Settings from environment variables prefixed `ORCHARD_`.

The defaults make `orchard serve` work on a fresh machine: a SQLite file in the working directory,
Asia/Shanghai as the tenant zone, zh-CN as the language.
"""

from functools import lru_cache

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


@lru_cache
def get_settings() -> Settings:
    return Settings()
