"""Frames on the wire, built once per event and written straight to each client's socket.

A server-to-client WebSocket text frame is unmasked, so the bytes of one event's frame are the same for every
receiver: the hub builds them once and each session's sender writes them (see notifier/senders.py).
"""

from __future__ import annotations

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
