"""How a session's frames reach its client: one small interface, `Sender`. A WebSocket has two implementations,
chosen once per connection:

- `TransportSender` writes each frame's prebuilt bytes straight to uvicorn's websockets-sansio transport (what
  `notifier serve` runs): no ASGI message, task switch or framing per receiver.
- `AsgiSender` goes through ordinary ASGI `websocket.send` messages, for any other ASGI server.

The HTTP stream's sender is notifier/connection/stream.py's `Stream`.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Literal, Protocol

import structlog
from starlette.types import Scope, Send
from starlette.websockets import WebSocketDisconnect
from websockets.protocol import State as ConnectionState

from notifier.formats.closecodes import CloseReason
from notifier.formats.wire import Frame

log = structlog.get_logger("notifier.senders")

RAW_SEND_SCOPE_KEY = "notifier.raw_send"

# What asyncio's transports hold before they pause writing (their default high-water mark). The ASGI path
# has no transport buffer it can see, so its outbox may hold this much more than the fast path's.
TRANSPORT_BUFFER_BYTES = 64 * 1024

WritePath = Literal["auto", "asgi"]

# What `send` raises once the connection is gone (Starlette's WebSocket wraps the server's errors).
_SEND_ERRORS = (WebSocketDisconnect, RuntimeError, OSError)


class SenderClosed(Exception):
    """The connection is gone: nothing more can be written to it."""


# A frame a sender writes as its transport's keep-alive (the HTTP stream's heartbeat comment). Only a transport
# without keep-alives of its own is given it: a WebSocket has pings.
KEEP_ALIVE = Frame(b"")


class Sender(Protocol):
    name: str
    """"transport" or "asgi" (a WebSocket's two write paths), "sse" (the HTTP stream), for logs and tests."""
    transport: str
    """"websocket" or "sse": the metrics' and logs' `transport`."""
    buffer_bytes: int
    """Bytes the outbox may hold beyond its frame limit, standing in for a socket buffer the sender lacks."""

    def try_write(self, frame: Frame) -> bool:
        """Write one frame now if the socket takes it without waiting; say whether it did."""

    async def send(self, queue: deque[Frame]) -> None:
        """Send every frame in `queue`, taking each off as it goes, waiting for the socket as needed.
        Raises SenderClosed once the connection is gone."""

    async def close(self, reason: CloseReason) -> None:
        """Send the close frame."""

    def abort(self) -> None:
        """Drop the connection now, with whatever was not sent yet."""

    def drop_unsent(self) -> None:
        """The session is over: discard bytes still buffered for the socket rather than keep them until TCP
        gives up."""

    def session_opened(self, session_id: str, received: int) -> None:
        """The session went live as `session_id`, its client having `received` events so far (the welcome is the
        next frame). A WebSocket needs nothing of it; the HTTP stream names its messages by it."""


class _AsgiClose:
    """The close frame goes through ASGI on both paths, so the server tracks its own close handshake."""

    _asgi_send: Send
    transport = "websocket"

    def session_opened(self, session_id: str, received: int) -> None:
        pass  # a WebSocket client counts its events itself

    async def close(self, reason: CloseReason) -> None:
        try:
            await self._asgi_send({"type": "websocket.close", "code": reason.code, "reason": reason.reason})
        except _SEND_ERRORS:
            raise SenderClosed from None


class TransportSender(_AsgiClose):
    """Writes whole frames to one uvicorn websockets-sansio connection's transport."""

    __slots__ = ("_asgi_send", "_connection", "_protocol", "_transport", "writable")
    name = "transport"
    buffer_bytes = 0  # the transport's own buffer plays that part

    def __init__(self, protocol: Any, asgi_send: Send) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._connection = protocol.conn
        self._asgi_send = asgi_send
        self.writable = protocol.writable  # an asyncio.Event uvicorn clears while the socket buffer is full

    def try_write(self, frame: Frame) -> bool:
        # One call per delivery on the hot path, so the checks are inlined.
        protocol = self._protocol
        transport = self._transport
        if (
            self.writable.is_set()
            and not protocol.close_sent
            and self._connection.state is ConnectionState.OPEN
            and not transport.is_closing()
        ):
            transport.write(frame.wire)
            return True
        return False

    async def send(self, queue: deque[Frame]) -> None:
        if not self.writable.is_set():
            await self.writable.wait()  # the client reads slowly; the queue fills meanwhile
        if not self._is_open():
            raise SenderClosed
        # Everything waiting goes out in one write: fewer system calls under load.
        batch = b"".join([frame.wire for frame in queue])
        queue.clear()
        self._transport.write(batch)

    def abort(self) -> None:
        self._transport.abort()

    drop_unsent = abort

    def _is_open(self) -> bool:
        protocol = self._protocol
        return (
            not protocol.close_sent
            and not self._transport.is_closing()
            and self._connection.state is ConnectionState.OPEN
        )


class AsgiSender(_AsgiClose):
    """Sends each frame as an ASGI `websocket.send` message; works under any ASGI server."""

    __slots__ = ("_asgi_send", "_cancel_connection")
    name = "asgi"
    buffer_bytes = TRANSPORT_BUFFER_BYTES

    def __init__(self, asgi_send: Send, cancel_connection: Callable[[], object]) -> None:
        self._asgi_send = asgi_send
        self._cancel_connection = cancel_connection

    def try_write(self, frame: Frame) -> bool:
        return False  # an ASGI send must be awaited

    async def send(self, queue: deque[Frame]) -> None:
        send = self._asgi_send
        try:
            while queue:
                await send({"type": "websocket.send", "text": queue.popleft().text})
        except _SEND_ERRORS:
            raise SenderClosed from None

    def abort(self) -> None:
        self._cancel_connection()  # ends the ASGI app's task, and the server drops the socket with it

    def drop_unsent(self) -> None:
        pass  # nothing is buffered on our side of an ASGI send


def _uvicorn_sansio_protocol_class() -> type | None:
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return None
    return WebSocketsSansIOProtocol


def choose_sender(scope: Scope, asgi_send: Send, cancel_connection: Callable[[], object], path: WritePath) -> Sender:
    """The fast path when the connection is served by uvicorn's websockets-sansio and `path` allows it,
    else the ASGI path."""
    if path == "auto":
        protocol = getattr(scope.get(RAW_SEND_SCOPE_KEY), "__self__", None)
        protocol_class = _uvicorn_sansio_protocol_class()
        if protocol_class is not None and isinstance(protocol, protocol_class):
            return TransportSender(protocol, asgi_send)
    return AsgiSender(asgi_send, cancel_connection)


class FastPathReport:
    """Logs once per process why connections use the ASGI path, so a slow deployment says why it is slow."""

    def __init__(self) -> None:
        self._reported = False

    def note(self, sender: Sender, scope: Scope, path: WritePath) -> None:
        if self._reported or sender.name == "transport":
            return
        self._reported = True
        if path == "asgi":
            reason = "NOTIFIER_WRITE_PATH=asgi"
        else:
            server = type(getattr(scope.get(RAW_SEND_SCOPE_KEY), "__self__", None)).__name__
            reason = f"the connection is served by {server}, not uvicorn's websockets-sansio"
        log.info("fast_write_path_off", reason=reason)
