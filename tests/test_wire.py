"""Frames written straight to the socket are exactly what the websockets library would write."""

from __future__ import annotations

import pytest
from websockets.frames import Frame as WebSocketFrame
from websockets.frames import Opcode

from notifier.formats.wire import Frame, encode_text_frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70_000])
def test_text_frame_bytes_match_the_reference_encoder(length: int) -> None:
    payload = b"x" * length
    expected = WebSocketFrame(Opcode.TEXT, payload).serialize(mask=False)
    assert encode_text_frame(payload) == expected


def test_frame_wire_is_built_once() -> None:
    frame = Frame(b'{"type":"pong","id":null}')
    assert isinstance(frame.wire, bytes)
    assert frame.wire.endswith(frame.text.encode())
