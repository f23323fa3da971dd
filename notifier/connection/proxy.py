"""The application's proxies: asking the application who a connecting client is (the connect proxy) and whether a
user may subscribe to a topic its grants do not cover (the subscribe proxy), over HTTP, bounded.

Each proxy is a JSON POST to a URL of the application (docs/protocol.md#proxies says what is sent and what
may come back). Every request is bounded: it waits for one of the proxy's NOTIFIER_*_PROXY_CONCURRENCY slots
and gets its answer within NOTIFIER_*_PROXY_TIMEOUT_S, the wait included, and an answer larger than
`MAX_ANSWER_BYTES` is not read further. The application's answer is checked as strictly as a token.

One `HttpPostClient` (notifier/connection/http_post.py, a keep-alive HTTP/1.1 client of our own: httpx could
not keep up with a connect storm) serves both proxies; `ApplicationProxies.start` makes it in the app's
lifespan and `ApplicationProxies.stop` closes it. It keeps no cookie and follows no redirect.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import orjson
import structlog

from notifier.connection.auth import Identity
from notifier.connection.http_post import AnswerTooLarge, HttpPostClient, HttpPostError
from notifier.formats.grants import Grants, validate_patterns, validate_user
from notifier.formats.topics import InvalidTopic
from notifier.settings import Settings
from notifier.stats import Stats

log = structlog.get_logger("notifier.proxy")

# An answer larger than this is not read further, and counts as a bad answer.
MAX_ANSWER_BYTES = 64 * 1024
# What every proxy request says besides its body. No compressed answers: the size bound is on the bytes as they
# come (the client asks for `identity` itself).
REQUEST_HEADERS = {"content-type": "application/json", "accept": "application/json"}
# HTTP statuses by which the application refuses (any body); every other status but 2xx is "unavailable".
REFUSING_STATUSES = frozenset({401, 403})


class ProxyRefused(Exception):
    """The application said no (401, 403, or an answer with `error`)."""


class ProxyUnavailable(Exception):
    """The application could not answer usefully: down, slow, a status other than 2xx, 401 and 403, or an
    answer that breaks the rules (not JSON, too large, a bad user id, pattern or lifetime)."""


@dataclass(frozen=True)
class ClientRequest:
    """What the proxies forward about a connection, taken from its WebSocket handshake: the allow-listed
    headers (lower-case names), its Origin and its address."""

    headers: tuple[tuple[str, str], ...]
    origin: str | None
    address: str | None

    @classmethod
    def from_handshake(
        cls, headers: Mapping[str, str] | list[tuple[str, str]], allowed: frozenset[str], address: str | None
    ) -> ClientRequest:
        pairs = headers.items() if isinstance(headers, Mapping) else headers
        kept: dict[str, str] = {}
        origin: str | None = None
        for name, value in pairs:
            lower = name.lower()
            if lower == "origin":
                origin = value
            if lower in allowed:
                separator = "; " if lower == "cookie" else ", "
                kept[lower] = f"{kept[lower]}{separator}{value}" if lower in kept else value
        return cls(tuple(kept.items()), origin, address)

    def body(self) -> dict[str, object]:
        return {"headers": dict(self.headers), "origin": self.origin, "address": self.address}


class _Bounded:
    """One proxy: its URL, its concurrency cap, its time bound, its counters."""

    def __init__(self, name: str, url: str, timeout_s: float, concurrency: int, stats: Stats) -> None:
        self.name = name
        self.url = url
        self.timeout_s = timeout_s
        self._slots = asyncio.Semaphore(concurrency)
        self._stats = stats
        self.in_flight = 0

    def count(self, result: str) -> None:
        self._stats.proxy_requests[self.name, result] += 1

    async def post(self, http: HttpPostClient, body: dict[str, object]) -> tuple[int, object]:
        """POST `body`; the status and the parsed JSON answer (None for a refusing status). Raises
        ProxyUnavailable for everything that is no usable answer."""
        try:
            async with asyncio.timeout(self.timeout_s), self._slots:
                self.in_flight += 1
                try:
                    status, answer = await http.post(
                        self.url,
                        orjson.dumps(body),
                        REQUEST_HEADERS,
                        timeout_s=self.timeout_s,
                        max_body=MAX_ANSWER_BYTES,
                    )
                finally:
                    self.in_flight -= 1
        except TimeoutError:
            raise ProxyUnavailable(f"no answer within {self.timeout_s:g} s") from None
        except AnswerTooLarge as error:
            if error.status in REFUSING_STATUSES:
                return error.status, None
            if not 200 <= error.status < 300:
                raise ProxyUnavailable(f"the application answered HTTP {error.status}") from None
            raise ProxyUnavailable(f"the answer is larger than {MAX_ANSWER_BYTES} bytes") from None
        except HttpPostError as error:
            raise ProxyUnavailable(f"{type(error).__name__}: {error}"[:300]) from None
        if status in REFUSING_STATUSES:
            return status, None
        if not 200 <= status < 300:
            raise ProxyUnavailable(f"the application answered HTTP {status}")
        try:
            return status, orjson.loads(answer)
        except orjson.JSONDecodeError:
            raise ProxyUnavailable("the answer is not JSON") from None


class ApplicationProxies:
    """The connect and subscribe proxies of one instance (each None when its URL is not set)."""

    def __init__(self, settings: Settings, stats: Stats) -> None:
        self._settings = settings
        self.forwarded_headers = frozenset(name.lower() for name in settings.connect_proxy_headers)
        self.connect = (
            _Bounded(
                "connect",
                settings.connect_proxy_url,
                settings.connect_proxy_timeout_s,
                settings.connect_proxy_concurrency,
                stats,
            )
            if settings.connect_proxy_url
            else None
        )
        self.subscribe = (
            _Bounded(
                "subscribe",
                settings.subscribe_proxy_url,
                settings.subscribe_proxy_timeout_s,
                settings.subscribe_proxy_concurrency,
                stats,
            )
            if settings.subscribe_proxy_url
            else None
        )
        self._http: HttpPostClient | None = None

    @property
    def configured(self) -> bool:
        return self.connect is not None or self.subscribe is not None

    async def start(self) -> None:
        """Make the HTTP client both proxies share (in the app's lifespan)."""
        if not self.configured or self._http is not None:
            return
        settings = self._settings
        connections = settings.connect_proxy_concurrency + settings.subscribe_proxy_concurrency
        # The concurrency caps are the bounds: the pool holds as many connections as both proxies may have
        # requests in flight. No proxy from the environment: the application is reached directly. No cookie
        # the application sets is kept: the client is shared by every user, and what one answer set must not
        # ride along with the next user's request.
        self._http = HttpPostClient(max_connections=connections)

    async def stop(self) -> None:
        if self._http is not None:
            http, self._http = self._http, None
            await http.aclose()

    def _client(self) -> HttpPostClient:
        if self._http is None:
            raise ProxyUnavailable("the service is not started")
        return self._http

    async def identify(self, request: ClientRequest) -> Identity:
        """Ask the connect proxy who the client of `request` is: its Identity, or ProxyRefused, or
        ProxyUnavailable (each counted)."""
        proxy = self.connect
        assert proxy is not None
        try:
            status, answer = await proxy.post(self._client(), request.body())
        except ProxyUnavailable:
            proxy.count("unavailable")
            raise
        if answer is None or (isinstance(answer, dict) and "error" in answer):
            proxy.count("refused")
            raise ProxyRefused(_refusal(status, answer))
        try:
            identity = self._identity(answer)
        except ProxyUnavailable:
            proxy.count("invalid")
            raise
        proxy.count("allowed")
        return identity

    def _identity(self, answer: object) -> Identity:
        if not isinstance(answer, dict):
            raise ProxyUnavailable("the answer is not a JSON object")
        try:
            user = validate_user(answer.get("user"))
        except InvalidTopic as error:
            raise ProxyUnavailable(f"user: {error}") from None
        try:
            patterns = validate_patterns(answer.get("topics", []), self._settings.max_token_patterns)
        except InvalidTopic as error:
            raise ProxyUnavailable(f"topics: {error}") from None
        limit = self._settings.jwt_max_lifetime_s
        lifetime = answer.get("expires_in", limit)
        if (
            isinstance(lifetime, bool)
            or not isinstance(lifetime, (int, float))
            or not math.isfinite(lifetime)
            or not 0 < lifetime <= limit
        ):
            raise ProxyUnavailable(f"expires_in must be a number of seconds over 0 and at most {limit:g}")
        return Identity(user=user, grants=Grants(user, patterns), expires_at=time.time() + float(lifetime))

    async def may_subscribe(self, user: str, topic: str, request: ClientRequest) -> bool:
        """Ask the subscribe proxy whether `user` may subscribe to `topic`: True or False, or ProxyUnavailable
        (each counted)."""
        proxy = self.subscribe
        assert proxy is not None
        try:
            _status, answer = await proxy.post(self._client(), {"user": user, "topic": topic, **request.body()})
        except ProxyUnavailable:
            proxy.count("unavailable")
            raise
        if answer is None or (isinstance(answer, dict) and ("error" in answer or answer.get("allow") is False)):
            proxy.count("refused")
            return False
        if not isinstance(answer, dict) or answer.get("allow") is not True:
            proxy.count("invalid")
            raise ProxyUnavailable('the answer must be {"allow": true} or {"allow": false}')
        proxy.count("allowed")
        return True


def _refusal(status: int, answer: object) -> str:
    if isinstance(answer, dict) and "error" in answer:
        return f"the application refused: {str(answer['error'])[:200]}"
    return f"the application refused with HTTP {status}"
