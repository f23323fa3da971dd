"""An HTTP stream's commands (`POST /sse/<key>`, `DELETE /sse/<key>`), run where the stream is: on this instance
when it holds the stream, else forwarded over the control plane to the instance the key names, which answers
with what became of the command. No sticky sessions are needed in front of the instances.

The control plane's kind is `stream.command`: args `{"stream": key, "frame": <the client frame, base64>}` or
`{"stream": key, "goodbye": true}`, reply `{"result": ...}` (the results below).
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING, Literal, cast, get_args

from notifier.broker import BrokerUnavailable
from notifier.cluster.codec import BadControlMessage, CommandArgs, CommandResult
from notifier.cluster.control import ControlPlane
from notifier.connection.stream import StreamRegistry

if TYPE_CHECKING:
    from notifier.instance.node import Node

STREAM_COMMAND = "stream.command"

Result = Literal["accepted", "too_big", "rate_limited", "unknown_stream", "unavailable"]
"""What became of a command: taken by the stream (`accepted`; for a goodbye, the stream ended), its frame over
NOTIFIER_MAX_FRAME_BYTES, over the stream's frame rate (the stream is closed with 4004), no such open stream,
or the instance holding it did not answer in time."""
_RESULTS = frozenset(get_args(Result))
MAX_KEY_LENGTH = 300


class StreamCommands:
    """Runs a stream's commands here or on the instance holding the stream, and counts each by result in
    `notifier_stream_commands_total` (a forwarded one as `forwarded` here, by its result on the holder)."""

    def __init__(self, node: Node, control: ControlPlane) -> None:
        self._node = node
        self._control = control
        self._timeout_s = node.settings.sse_command_timeout_s
        control.on(STREAM_COMMAND, self._run_for_another_instance)

    async def send_frame(self, key: str, frame: bytes) -> Result:
        """Give one client frame to the stream `key`."""
        if self._node.streams.find(key) is not None:
            return self._count(self._run_here(key, frame=frame))
        return await self._forward(key, {"stream": key, "frame": base64.b64encode(frame).decode()})

    async def say_goodbye(self, key: str) -> Result:
        """End the stream `key` as its client's goodbye (a close 1000): the session ends, not parked."""
        if self._node.streams.find(key) is not None:
            return self._count(self._run_here(key, goodbye=True))
        return await self._forward(key, {"stream": key, "goodbye": True})

    def _run_here(self, key: str, *, frame: bytes | None = None, goodbye: bool = False) -> Result:
        node = self._node
        if goodbye:
            return "accepted" if node.end_stream(key) else "unknown_stream"
        assert frame is not None
        result = node.command_stream(key, frame)
        return cast(Result, result) if result in _RESULTS else "unknown_stream"

    async def _forward(self, key: str, args: CommandArgs) -> Result:
        holder = StreamRegistry.holder_of(key)
        live = self._control.live_instances()
        if holder is None or holder == self._control.instance_id or (live is not None and holder not in live):
            return self._count("unknown_stream")  # ended with its instance, or never was
        try:
            reply = await self._control.ask(holder, STREAM_COMMAND, args, timeout=self._timeout_s)
        except BrokerUnavailable:
            reply = None
        result = reply.get("result") if reply is not None else None
        if result not in _RESULTS:
            return self._count("unavailable")
        self._node.stats.stream_commands["forwarded"] += 1
        return cast(Result, result)

    async def _run_for_another_instance(self, args: CommandArgs) -> CommandResult:
        key = args.get("stream")
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY_LENGTH:
            raise BadControlMessage("'stream' must be a stream key")
        if args.get("goodbye") is True:
            return {"result": self._count(self._run_here(key, goodbye=True))}
        encoded = args.get("frame")
        if not isinstance(encoded, str):
            raise BadControlMessage("'frame' must be a base64 string")
        try:
            frame = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise BadControlMessage("'frame' is not base64") from None
        return {"result": self._count(self._run_here(key, frame=frame))}

    def _count(self, result: Result) -> Result:
        self._node.stats.stream_commands[result] += 1
        return result
