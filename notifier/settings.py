"""All configuration, read from `NOTIFIER_*` environment variables and an optional env file."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class ConfigError(Exception):
    """A setting that cannot work; the message names it and says what to do."""


class Settings(BaseSettings):
    """Every setting of the service; each is `NOTIFIER_<NAME>` in the environment."""

    model_config = SettingsConfigDict(
        env_prefix="NOTIFIER_",
        env_file=None,
        extra="ignore",
        validate_default=True,
    )

    # Network
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)

    # Broker: "amqp://..." for RabbitMQ, "memory://" for the embedded in-process broker.
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    exchange: str = Field(default="notifications", min_length=1, max_length=255)
    dead_letter_exchange: str = Field(default="notifications.dead", min_length=1, max_length=255)
    instance_id: str = Field(default="", max_length=100)
    queue_expires_s: float = Field(default=60.0, gt=0)
    queue_max_length: int = Field(default=100_000, ge=1)
    dead_letter_max_length: int = Field(default=100_000, ge=1)
    prefetch: int = Field(default=512, ge=1, le=65535)
    broker_timeout_s: float = Field(default=5.0, gt=0)
    # Binding topics at RabbitMQ: how long a connecting client waits its turn for its bind, how many binds may
    # wait at once (past that a client is refused with 1013 at once), and how long a topic no one holds any
    # more stays bound (a client that comes back within it needs no bind).
    bind_wait_s: float = Field(default=20.0, gt=0)
    bind_queue_size: int = Field(default=10_000, ge=1)
    bind_linger_s: float = Field(default=30.0, ge=0)

    # Tokens
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_jwks_url: str = ""
    jwt_algorithms: CommaList = ["HS256", "RS256", "ES256"]
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway_s: float = Field(default=0.0, ge=0)
    max_token_patterns: int = Field(default=32, ge=0)

    # HTTP publish API
    api_keys: CommaList = []

    # Browser connections
    allowed_origins: CommaList = []
    auth_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_user: int = Field(default=20, ge=1)
    max_subscriptions: int = Field(default=100, ge=1)
    max_frame_bytes: int = Field(default=64 * 1024, ge=256)
    max_event_bytes: int = Field(default=64 * 1024, ge=16)
    send_queue_size: int = Field(default=256, ge=1)
    client_frames_per_s: float = Field(default=20.0, gt=0)
    client_frames_burst: int = Field(default=40, ge=1)
    shutdown_timeout_s: float = Field(default=10.0, gt=0)

    # Processes: each worker is a full instance (own instance id, queue and bindings) on the same port.
    # Processes, each a full instance; "auto" is one per usable core (cgroup CPU quota or CPU affinity).
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1

    # Operations
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    demo_page: bool = False

    @field_validator("jwt_algorithms", "api_keys", "allowed_origins", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
        unknown = [alg for alg in value if alg not in allowed]
        if unknown or not value:
            raise ValueError(f"must be a comma list of {sorted(allowed)}, got {value}")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_without_slash(cls, value: list[str]) -> list[str]:
        return [origin.rstrip("/") for origin in value]

    @model_validator(mode="after")
    def _secret_long_enough(self) -> Settings:
        if self.jwt_secret and len(self.jwt_secret.encode()) < 32:
            raise ValueError("NOTIFIER_JWT_SECRET must be at least 32 bytes long")
        return self

    def require_token_key(self) -> None:
        """The server needs a way to verify tokens; the client commands do not."""
        if not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url):
            raise ConfigError(
                "no token key configured: set NOTIFIER_JWT_SECRET, NOTIFIER_JWT_PUBLIC_KEY or NOTIFIER_JWT_JWKS_URL"
            )

    @property
    def uses_memory_broker(self) -> bool:
        return self.amqp_url.startswith("memory://")
