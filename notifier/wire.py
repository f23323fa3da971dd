"""Frames on the wire, built once per event and written straight to each client's socket.

A server-to-client WebSocket text frame is unmasked, so the bytes of one event's frame are the same for every
receiver: the hub builds them once and each session writes them to its transport, without an ASGI message, a
task switch and a framing per receiver. That needs uvicorn's `websockets-sansio` connection (what
`notifier serve` runs); under any other ASGI server the session falls back to ordinary ASGI sends.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

RAW_SEND_SCOPE_KEY = "notifier.raw_send"
_TEXT_OPCODE_FIN = 0x81


def encode_text_frame(payload: bytes) -> bytes:
    """One unfragmented, unmasked text frame (RFC 6455 section 5.2)."""
    length = len(payload)
    if length < 126:
        header = bytes((_TEXT_OPCODE_FIN, length))
    elif length < 65536:
        header = bytes((_TEXT_OPCODE_FIN, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((_TEXT_OPCODE_FIN, 127)) + length.to_bytes(8, "big")
    return header + payload


class Frame:
    """A server frame: its JSON text and its wire bytes, made once and shared by every receiver."""

    __slots__ = ("text", "wire")

    def __init__(self, text: str) -> None:
        self.text = text
        self.wire = encode_text_frame(text.encode())


class DirectWriter:
    """Writes whole frames to one uvicorn `websockets-sansio` connection's transport."""

    __slots__ = ("_connection", "_protocol", "_transport", "writable")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._transport = protocol.transport
        self._connection = protocol.conn
        self.writable = protocol.writable  # an asyncio.Event uvicorn clears while the socket buffer is full

    @classmethod
    def attach(cls, scope: Scope) -> DirectWriter | None:
        """The writer for this connection, or None when it is not served by uvicorn's websockets-sansio."""
        send = scope.get(RAW_SEND_SCOPE_KEY)
        protocol = getattr(send, "__self__", None)
        if not isinstance(protocol, WebSocketsSansIOProtocol):
            return None
        if not all(hasattr(protocol, name) for name in ("transport", "conn", "writable", "close_sent")):
            return None
        return cls(protocol)

    def try_write(self, data: bytes) -> bool:
        """Write `data` now if the connection is open and its socket buffer is below uvicorn's high-water
        mark; say whether it did. (One call per delivery on the hot path, so the checks are inlined.)"""
        protocol = self._protocol
        transport = self._transport
        if (
            self.writable.is_set()
            and not protocol.close_sent
            and self._connection.state is State.OPEN
            and not transport.is_closing()
        ):
            transport.write(data)
            return True
        return False

    def is_open(self) -> bool:
        protocol = self._protocol
        return not protocol.close_sent and not self._transport.is_closing() and self._connection.state is State.OPEN

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def abort(self) -> None:
        self._transport.abort()


class CaptureRawSend:
    """ASGI middleware that keeps the server's own `send` of each WebSocket in the scope, before any wrapper,
    so a session can find the connection it writes to."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope[RAW_SEND_SCOPE_KEY] = send
        await self.app(scope, receive, send)
