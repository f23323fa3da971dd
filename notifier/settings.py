"""All configuration, read from `NOTIFIER_*` environment variables and an optional env file."""

from __future__ import annotations

from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]
# A shorter API key could be guessed; the message of a refused key says how to make one.
MIN_API_KEY_LENGTH = 16


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

    # Broker: "amqp://..." for RabbitMQ (a comma-separated list of the nodes of a cluster, tried in turn on every
    # (re)connect), "memory://" for the embedded in-process broker.
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    # The instance queue: "classic" (re-declared on a live node when its node is lost; clients are told of the
    # gap) or "quorum" (replicated across the cluster's nodes: a lost node loses nothing); "auto": quorum when
    # NOTIFIER_AMQP_URL lists several nodes, classic for one. docs/scaling.md has the measured trade-off.
    queue_type: Literal["auto", "classic", "quorum"] = "auto"
    exchange: str = Field(default="notifications", min_length=1, max_length=255)
    dead_letter_exchange: str = Field(default="notifications.dead", min_length=1, max_length=255)
    instance_id: str = Field(default="", max_length=100)
    queue_expires_s: float = Field(default=60.0, gt=0)
    queue_max_length: int = Field(default=100_000, ge=1)
    dead_letter_max_length: int = Field(default=100_000, ge=1)
    prefetch: int = Field(default=512, ge=1, le=65535)
    broker_timeout_s: float = Field(default=5.0, gt=0)
    broker_heartbeat_s: int = Field(default=3, ge=1, le=60)
    max_pending_publishes: int = Field(default=256, ge=1)
    # Binding topics at RabbitMQ: how long a connecting client waits its turn for its bind, how many binds may
    # wait at once (past that a client is refused with 1013 at once), and how long a topic no one holds any
    # more stays bound (a client that comes back within it needs no bind). From bind_cover_at waiting binds on
    # (a storm; 0: never), a namespace is bound whole (`user.#`) until its own binds are done, so clients need
    # not wait for theirs; at most bind_max_covers namespaces at once.
    bind_wait_s: float = Field(default=20.0, gt=0)
    bind_queue_size: int = Field(default=50_000, ge=1)
    bind_linger_s: float = Field(default=30.0, ge=0)
    bind_cover_at: int = Field(default=64, ge=0)
    bind_max_covers: int = Field(default=16, ge=0)

    # Tokens
    jwt_secret: str = ""
    jwt_public_key: str = ""
    jwt_jwks_url: str = ""
    jwt_algorithms: CommaList = ["HS256", "RS256", "ES256"]
    jwt_audience: str = ""
    jwt_issuer: str = ""
    jwt_leeway_s: float = Field(default=5.0, ge=0, le=300)
    jwt_max_lifetime_s: float = Field(default=24 * 3600.0, gt=0)
    max_token_patterns: int = Field(default=32, ge=0)

    # The application's proxies (docs/protocol.md#proxies): with connect_proxy_url set, a client may sign in
    # without a token and the application says who it is; with subscribe_proxy_url set, a subscribe its grants
    # do not cover asks the application. Both forward the allow-listed headers of the WebSocket handshake.
    connect_proxy_url: str = ""
    connect_proxy_headers: CommaList = ["Cookie", "Authorization"]
    connect_proxy_timeout_s: float = Field(default=5.0, gt=0, le=60)
    connect_proxy_concurrency: int = Field(default=64, ge=1, le=10_000)
    subscribe_proxy_url: str = ""
    subscribe_proxy_timeout_s: float = Field(default=5.0, gt=0, le=60)
    subscribe_proxy_concurrency: int = Field(default=64, ge=1, le=10_000)

    # HTTP server API (publish, disconnect, unsubscribe, presence)
    api_keys: CommaList = []
    max_publish_batch: int = Field(default=1000, ge=1, le=100_000)
    max_publish_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # An event id published by this instance within the window is not published again (per instance).
    publish_dedupe_window_s: float = Field(default=300.0, ge=0)
    publish_dedupe_max_ids: int = Field(default=100_000, ge=0)
    # Request bodies (publish and server API) read or parsed at once, and the bytes they hold: past either the
    # answer is 503 `busy` with Retry-After, before the body is read. A body must arrive within the timeout.
    max_concurrent_bodies: int = Field(default=64, ge=1)
    max_body_bytes_in_flight: int = Field(default=16 * 1024 * 1024, ge=1024)
    request_body_timeout_s: float = Field(default=10.0, gt=0)

    # Control plane between instances (exchange "<exchange>.control")
    control_reply_timeout_s: float = Field(default=0.5, gt=0, le=30)
    control_heartbeat_s: float = Field(default=2.0, gt=0)
    control_command_ttl_s: float = Field(default=30.0, gt=0)
    control_queue_max_length: int = Field(default=10_000, ge=1)
    control_max_pending: int = Field(default=1_000, ge=1)

    # Browser connections
    allowed_origins: CommaList = []
    auth_timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=10_000, ge=1)
    max_connections_per_user: int = Field(default=20, ge=1)
    max_connections_per_address: int = Field(default=200, ge=1)
    new_connections_per_s_per_address: float = Field(default=20.0, gt=0)
    new_connections_burst_per_address: int = Field(default=100, ge=1)
    max_unauthenticated_connections: int = Field(default=1000, ge=1)
    # Proxies (IPs or CIDRs; * for any) whose X-Forwarded-For names the client address. Empty: the peer is.
    forwarded_allow_ips: CommaList = []
    max_subscriptions: int = Field(default=100, ge=1)
    # Per user on one instance, across its connections: subscribes (and sign-ins) per second, and topics.
    user_subscribes_per_s: float = Field(default=20.0, gt=0)
    user_subscribes_burst: int = Field(default=200, ge=1)
    max_topics_per_user: int = Field(default=200, ge=1)
    max_frame_bytes: int = Field(default=64 * 1024, ge=256)
    max_event_bytes: int = Field(default=64 * 1024, ge=16)
    send_queue_size: int = Field(default=256, ge=1)
    # "auto": write frames straight to uvicorn's transport when served by it; "asgi": always ASGI sends.
    write_path: Literal["auto", "asgi"] = "auto"
    client_frames_per_s: float = Field(default=20.0, gt=0)
    client_frames_burst: int = Field(default=40, ge=1)
    # 20 s: a stopping instance's sessions must be handed over within it, and at 10,000 clients on a busy 2-core
    # machine 10 s was not enough. With the 5 s exit margin it fits Kubernetes' default grace period (30 s).
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    # Connections a graceful stop closes per second while another instance can take them, so that they arrive
    # there at a pace it can serve; raised as needed to close them all within 70 % of the shutdown timeout.
    # 0: all at once.
    drain_close_rate: int = Field(default=700, ge=0)
    handshake_timeout_s: float = Field(default=10.0, gt=0)
    # The kernel's queue of connections not yet accepted (the OS caps it at net.core.somaxconn): when it
    # overflows in a reconnect storm, a client's handshake is reset and it backs off for seconds.
    listen_backlog: int = Field(default=4096, ge=1, le=65535)
    write_stall_timeout_s: float = Field(default=10.0, gt=0)
    # The HTTP stream transport (`GET /sse`, for networks that block WebSockets): on or off, the period of the
    # heartbeat comment on a stream with no other output, and how long a command for a stream that another
    # instance holds waits for that instance's answer.
    sse_enabled: bool = True
    sse_heartbeat_s: int = Field(default=15, ge=1, le=3600)
    sse_command_timeout_s: float = Field(default=3.0, gt=0, le=30)

    # Session resume: how long a session whose connection dropped waits for its client, and what it keeps.
    resume_window_s: float = Field(default=60.0, ge=0, le=3600)
    resume_max_events: int = Field(default=500, ge=1, le=100_000)
    max_parked_sessions: int = Field(default=10_000, ge=0)
    # Parked sessions of one user; 0: NOTIFIER_MAX_CONNECTIONS_PER_USER. Past it the user's own oldest ends.
    max_parked_sessions_per_user: int = Field(default=0, ge=0)
    # How long an instance waits for another to hand a session over (each of its two requests).
    resume_timeout_s: float = Field(default=5.0, gt=0, le=30)

    # Processes: each worker is a full instance (own instance id, queue and bindings) on the same port.
    # Processes, each a full instance; "auto" is one per usable core (cgroup CPU quota or CPU affinity).
    workers: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] = 1

    # Operations
    # /metrics only on this port of NOTIFIER_HOST (worker i on this + i); 0: on NOTIFIER_PORT.
    metrics_port: int = Field(default=0, ge=0, le=65535)
    log_format: Literal["json", "console"] = "json"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    demo_page: bool = False

    @field_validator(
        "jwt_algorithms", "api_keys", "allowed_origins", "forwarded_allow_ips", "connect_proxy_headers", mode="before"
    )
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("amqp_url")
    @classmethod
    def _broker_addresses(cls, value: str) -> str:
        split_amqp_urls(value)  # raises with what is wrong with which address
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: list[str]) -> list[str]:
        allowed = {"HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384", "ES512"}
        unknown = [alg for alg in value if alg not in allowed]
        if unknown or not value:
            raise ValueError(f"must be a comma list of {sorted(allowed)}, got {value}")
        return value

    @field_validator("connect_proxy_url", "subscribe_proxy_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        value = value.strip()
        if value:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"must be an http:// or https:// URL with a host, got {value!r}")
        return value

    @field_validator("connect_proxy_headers")
    @classmethod
    def _header_names(cls, value: list[str]) -> list[str]:
        bad = [name for name in value if not name.replace("-", "").isalnum() or not name.isascii()]
        if bad:
            raise ValueError(f"must be a comma list of HTTP header names, got {bad}")
        return value

    @field_validator("allowed_origins")
    @classmethod
    def _origins_without_slash(cls, value: list[str]) -> list[str]:
        return [origin.rstrip("/") for origin in value]

    @field_validator("api_keys")
    @classmethod
    def _api_keys_long_enough(cls, value: list[str]) -> list[str]:
        short = [key for key in value if len(key) < MIN_API_KEY_LENGTH]
        if short:
            raise ValueError(
                f"each key must be at least {MIN_API_KEY_LENGTH} characters ({len(short)} shorter); "
                "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        return value

    @model_validator(mode="after")
    def _largest_body_fits_in_flight(self) -> Settings:
        largest = max(self.max_publish_body_bytes, self.max_event_bytes + 1024)  # an event and its envelope
        if self.max_body_bytes_in_flight < largest:
            raise ValueError(
                f"NOTIFIER_MAX_BODY_BYTES_IN_FLIGHT ({self.max_body_bytes_in_flight}) must be at least the largest "
                f"publish body ({largest}: NOTIFIER_MAX_PUBLISH_BODY_BYTES, or NOTIFIER_MAX_EVENT_BYTES + 1024)"
            )
        return self

    # A field validator, not a model one: a model validator runs only once every field is valid, so its error
    # would come a round after the others.
    @field_validator("jwt_secret")
    @classmethod
    def _secret_long_enough(cls, value: str) -> str:
        if value and len(value.encode()) < 32:
            raise ValueError("must be at least 32 bytes long")
        return value

    def require_token_key(self) -> None:
        """The server needs a way to verify tokens; the client commands do not."""
        if not (self.jwt_secret or self.jwt_public_key or self.jwt_jwks_url or self.connect_proxy_url):
            raise ConfigError(
                "no token key configured: set NOTIFIER_JWT_SECRET, NOTIFIER_JWT_PUBLIC_KEY or NOTIFIER_JWT_JWKS_URL"
                " (or NOTIFIER_CONNECT_PROXY_URL, to sign clients in through the application)"
            )

    @property
    def uses_memory_broker(self) -> bool:
        return self.amqp_url.startswith("memory://")

    @property
    def instance_queue_type(self) -> Literal["classic", "quorum"]:
        """The type the instance (and dead-letter) queues are declared with."""
        if self.queue_type == "auto":
            return "quorum" if len(self.amqp_urls) > 1 else "classic"
        return self.queue_type

    @property
    def amqp_urls(self) -> list[str]:
        """The RabbitMQ nodes to connect to, in the order they are tried."""
        return split_amqp_urls(self.amqp_url)


def split_amqp_urls(value: str) -> list[str]:
    """The URLs of a comma-separated NOTIFIER_AMQP_URL (a comma inside a password is written %2C), each checked:
    amqp:// or amqps://, a host, a valid port; `memory://` stands alone. Raises ValueError saying which one is
    wrong and why, without its password."""
    urls = [part.strip() for part in value.split(",")]
    if urls == ["memory://"]:
        return urls
    for index, url in enumerate(urls, start=1):
        where = f"address {index} of {len(urls)}" if len(urls) > 1 else "the address"
        if not url:
            raise ValueError(f"{where} is empty (a comma inside a password must be written %2C)")
        parts = urlsplit(url)
        if parts.scheme not in ("amqp", "amqps"):
            shown = url if "@" not in url else url.rsplit("@", 1)[1]
            raise ValueError(
                f"{where} ({shown!r}) must start with amqp:// or amqps:// (a list is whole URLs separated by "
                "commas, e.g. amqp://user:pass@node1:5672/,amqp://user:pass@node2:5672/; memory:// stands alone)"
            )
        try:
            port = parts.port
        except ValueError:
            port = -1
        if not parts.hostname or port == -1:
            raise ValueError(
                f"{where} ({parts.scheme}://...@{parts.netloc.rsplit('@', 1)[-1]}) needs a host and a valid port"
            )
        if len(parts.path) > 1 and "/" in unquote(parts.path[1:]).strip("/") and "%2F" not in parts.path:
            raise ValueError(f"{where}: the vhost {unquote(parts.path[1:])!r} has a '/'; write it as %2F")
    return urls
