"""Frames on the wire, built once per event and written straight to each client's socket.

A server-to-client WebSocket text frame is unmasked, so the bytes of one event's frame are the same for every
receiver: the hub builds them once and each session's sender writes them (see notifier/connection/senders.py).
"""

from __future__ import annotations

import time

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
    """A server message as a WebSocket text frame: its JSON payload and its wire bytes, made once and shared by
    every receiver."""

    __slots__ = ("created", "event_id", "payload", "topic", "wire")

    def __init__(self, payload: bytes, topic: str | None = None, event_id: str | None = None) -> None:
        self.payload = payload
        self.wire = encode_text_frame(payload)
        self.created = time.monotonic()  # once per event, so a session's history needs no clock per receiver
        # An event frame's topic and event id (for a resume); None for the server's other messages.
        self.topic = topic
        self.event_id = event_id

    @property
    def text(self) -> str:
        """The payload as text, for an ASGI `websocket.send` (the fast path never needs it)."""
        return self.payload.decode()
