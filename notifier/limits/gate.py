"""Who may open a WebSocket, decided before the upgrade: per client address, a cap on open connections and
a budget of new connections per second, and a budget of connections that have not signed in yet, so no
single address, and no crowd of anonymous sockets, can take the slots of signed-in users.

The client address is the socket's peer, or, behind a proxy listed in NOTIFIER_FORWARDED_ALLOW_IPS, the
address that proxy puts in `X-Forwarded-For` (uvicorn resolves it before this runs).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from notifier.limits.tokenbucket import TokenBucket
from notifier.settings import Settings

log = structlog.get_logger("notifier.gate")

# Addresses with no open connection are remembered for their rate only; past this many they are forgotten
# (a forgotten address starts again with a full burst, which is the safe side of the bound on memory).
MAX_IDLE_ADDRESSES = 50_000


@dataclass(frozen=True)
class Refusal:
    """Why a new connection is refused, as its HTTP answer."""

    status: int
    error: str
    message: str


class _Address(TokenBucket):
    """One address: its bucket of new connections, and its open connections."""

    __slots__ = ("open",)

    def __init__(self, burst: float, now: float) -> None:
        super().__init__(burst, now)
        self.open = 0


class AddressLimits:
    """Open connections and new connections per second, per client address; pure bookkeeping."""

    def __init__(
        self, *, max_open: int, rate_per_s: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._max_open = max_open
        self._rate = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._addresses: dict[str, _Address] = {}

    def __len__(self) -> int:
        return len(self._addresses)

    def open(self, address: str) -> Refusal | None:
        """Count a new connection from `address`, or say why it is refused (then nothing is counted)."""
        now = self._clock()
        entry = self._addresses.get(address)
        if entry is None:
            if len(self._addresses) >= MAX_IDLE_ADDRESSES:
                self._forget_idle()
            entry = self._addresses[address] = _Address(self._burst, now)
        else:
            entry.refill(self._rate, self._burst, now)
        if entry.open >= self._max_open:
            return Refusal(429, "too_many_connections", f"at most {self._max_open} connections per client address")
        if not entry.take():
            return Refusal(429, "too_many_new_connections", f"at most {self._rate:g} new connections per second")
        entry.open += 1
        return None

    def close(self, address: str) -> None:
        """A connection counted by `open` has ended."""
        entry = self._addresses.get(address)
        if entry is not None and entry.open > 0:
            entry.open -= 1

    def _forget_idle(self) -> None:
        self._addresses = {address: entry for address, entry in self._addresses.items() if entry.open}


class AdmissionGate:
    """ASGI middleware in front of every WebSocket handshake: refuses with HTTP 429/503 and a JSON body
    before the upgrade, so a refused client costs neither a session nor a slot. HTTP streams pass the same gate
    (`admit` and `leave`), so a stream counts as a connection wherever a WebSocket does."""

    def __init__(self, app: ASGIApp, *, settings: Settings, authenticated: Callable[[], int]) -> None:
        self.app = app
        self._limits = AddressLimits(
            max_open=settings.max_connections_per_address,
            rate_per_s=settings.new_connections_per_s_per_address,
            burst=settings.new_connections_burst_per_address,
        )
        self._max_unauthenticated = settings.max_unauthenticated_connections
        self._authenticated = authenticated
        self.open = 0  # connections past this gate and not finished

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        address = client_address(scope)
        # A login that carries its token in the URL signs in at once: it takes no anonymous slot.
        refusal = self.admit(address, signs_in_at_once=b"token=" in scope.get("query_string", b""))
        if refusal is not None:
            await _refuse(scope, send, refusal)
            return
        try:
            await self.app(scope, receive, send)
        finally:
            self.leave(address)

    def admit(self, address: str, *, signs_in_at_once: bool, transport: str = "websocket") -> Refusal | None:
        """Count a new connection from `address`, or say why it is refused (then nothing is counted, and the
        refusal is logged). A connection that `signs_in_at_once` (its token came with the request) takes no
        slot of the connections not signed in yet. Each admitted connection is paired with one `leave`."""
        refusal = (None if signs_in_at_once else self._check_unauthenticated()) or self._limits.open(address)
        if refusal is not None:
            extra = {"transport": transport} if transport != "websocket" else {}
            log.info("connection_refused", client=address, status=refusal.status, error=refusal.error, **extra)
            return refusal
        self.open += 1
        return None

    def leave(self, address: str) -> None:
        """A connection `admit` let in has ended."""
        self.open -= 1
        self._limits.close(address)

    def _check_unauthenticated(self) -> Refusal | None:
        if self.open - self._authenticated() >= self._max_unauthenticated:
            return Refusal(
                503, "busy", f"{self._max_unauthenticated} connections are waiting to sign in; retry with backoff"
            )
        return None


def client_address(scope: Scope) -> str:
    """The client address the limits count: the socket's peer, or the forwarded address (see the docstring)."""
    client = scope.get("client")
    return client[0] if client else "unknown"


async def _refuse(scope: Scope, send: Send, refusal: Refusal) -> None:
    body = {"error": refusal.error, "message": refusal.message}
    if "websocket.http.response" in scope.get("extensions", {}):
        response = JSONResponse(body, status_code=refusal.status, headers={"Retry-After": "1"})
        await send(
            {"type": "websocket.http.response.start", "status": response.status_code, "headers": response.raw_headers}
        )
        await send({"type": "websocket.http.response.body", "body": response.body})
    else:
        await send({"type": "websocket.close", "code": 1013, "reason": refusal.error})
