"""Process settings, read from the environment (prefix ``DISPATCHER_``) when a process starts.

Nothing here runs at import time: entry points call :func:`get_settings` and pass the
result down (``create_app(settings)``, ``create_celery(settings)``).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_POLICY_PATH = Path(__file__).parent / "policy" / "default.yaml"


class Settings(BaseSettings):
    """Everything a dispatcher process needs to know about its surroundings."""

    model_config = SettingsConfigDict(env_prefix="DISPATCHER_", extra="ignore")

    redis_url: str = "redis://127.0.0.1:6379/0"
    database_url: str = "sqlite:///dispatcher-ledger.db"
    policy: Path = Field(default=DEFAULT_POLICY_PATH, description="path of the policy file")
    sim_url: str | None = Field(
        default=None,
        description="rehearsal mode: point every provider of the policy at this simulator",
    )
    max_body_bytes: int = Field(default=256 * 1024, gt=0)
    coalesce_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description="workers: after the first token, publish a turn's events at most once "
        "per this many ms (tokens in between merge into one event); 0 publishes each at once",
    )
    admin_token: SecretStr | None = None
    log_level: str = "INFO"


def get_settings() -> Settings:
    """Read the settings from the environment now (never cached at import)."""
    return Settings()
