"""The HTTP stream transport (`GET /sse`, docs/protocol.md "Browser side (HTTP stream)"): `Stream`, one stream's
connection, and `StreamRegistry`, this instance's streams by key with the one heartbeat loop that serves them all.

A stream is the response to one long GET. `Stream` is the session's `Sender` for it: it writes each frame as a
server-sent event (notifier/formats/sse.py), numbering the event frames with the count the client keeps. The
response head goes out with the first message, the welcome, so a session closed before its welcome (a refused
token, a full instance) is answered with an HTTP status and a JSON body instead, as a refused WebSocket
handshake would be. The session's client frames come as commands (`POST /sse/<key>`, `Session.feed`); the
request's own `receive` only says when the client is gone, so an idle stream holds one task, its request's,
as a WebSocket does.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, MutableMapping
from typing import TYPE_CHECKING, Any, Protocol

import orjson
import structlog
from starlette.types import Message, Receive, Scope, Send

from notifier.connection.senders import KEEP_ALIVE, TRANSPORT_BUFFER_BYTES, SenderClosed
from notifier.formats import closecodes, sse
from notifier.formats.closecodes import CloseReason
from notifier.formats.wire import Frame

if TYPE_CHECKING:
    from notifier.connection.session import Session

log = structlog.get_logger("notifier.stream")

# Where the server puts a callable that drops the request's connection at once (uvicorn's transport abort, put
# there by notifier/runtime/uvicorn_protocols.py). Without it a stream that must be dropped cancels its task.
ABORT_CONNECTION_SCOPE_KEY = "notifier.abort_connection"
# Where the server puts the request's send to run without waiting (a DirectSend, by the same module). Without it
# every message goes through the writer task, as a WebSocket's on the ASGI path.
DIRECT_SEND_SCOPE_KEY = "notifier.direct_send"


class DirectSend(Protocol):
    @property
    def ready(self) -> bool:
        """A message sent now would be written at once (the connection's writes are not paused)."""

    def __call__(self, message: Message) -> None:
        """Send `message` at once; only when `ready`."""


Headers = list[tuple[bytes, bytes]]

_STREAM_HEADERS: Headers = [
    (b"content-type", sse.CONTENT_TYPE.encode()),
    (b"cache-control", b"no-cache, no-transform"),
    # Proxies that buffer responses (nginx) pass this one on as it comes.
    (b"x-accel-buffering", b"no"),
]
_GONE: MutableMapping[str, Any] = {"type": "websocket.disconnect"}  # a stream's end carries no close code


async def send_json(send: Send, status: int, body: object, headers: Iterable[tuple[bytes, bytes]] = ()) -> None:
    """A whole JSON response: the answers of a refused stream."""
    content = orjson.dumps(body)
    head = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *headers,
    ]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": content, "more_body": False})


class Stream:
    """One HTTP stream: the response its session's frames are written to, one server-sent event each.

    `key` names it for commands; `session` is the session it carries (set once made, cleared when it ends)."""

    __slots__ = (
        "__weakref__",
        "_abort_connection",
        "_cancel",
        "_count",
        "_direct",
        "_headers",
        "_heartbeat_s",
        "_receive",
        "_registry",
        "_send",
        "_session_id",
        "_stall_timeout_s",
        "_started",
        "_welcome_next",
        "key",
        "last_output",
        "session",
    )
    name = "sse"
    transport = "sse"
    # An ASGI send hides the socket's buffer: the outbox may hold what that buffer would (as for AsgiSender).
    buffer_bytes = TRANSPORT_BUFFER_BYTES

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        key: str,
        registry: StreamRegistry,
        heartbeat_s: int,
        stall_timeout_s: float,
        headers: Headers,
        direct: bool = True,
    ) -> None:
        self.key = key
        self._receive = receive
        self._send = send
        self._registry = registry
        self._heartbeat_s = heartbeat_s
        self._stall_timeout_s = stall_timeout_s
        self._headers = headers  # the CORS headers of an allowed cross-origin page
        self._abort_connection: Callable[[], object] | None = scope.get(ABORT_CONNECTION_SCOPE_KEY)
        # `direct` False (NOTIFIER_WRITE_PATH=asgi): every message through the writer task, as for a WebSocket.
        self._direct: DirectSend | None = scope.get(DIRECT_SEND_SCOPE_KEY) if direct else None
        task = asyncio.current_task()
        assert task is not None
        self._cancel = task.cancel
        self._started = False  # the response head went out
        self._session_id: str | None = None
        self._count = 0  # events the client has: the number in the next event's id, less one
        self._welcome_next = False
        self.last_output = time.monotonic()
        self.session: Session | None = None

    # The session's receive: the request says only when the client is gone.

    async def receive(self) -> MutableMapping[str, Any]:
        """Wait until the client is gone (or the response has ended); a WebSocket disconnect with no code."""
        receive = self._receive
        while True:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return _GONE
            # `http.request`: the GET's (empty) body. Nothing else arrives on this request.

    # Sender.

    def try_write(self, frame: Frame) -> bool:
        direct = self._direct
        if direct is None or not direct.ready:
            return False  # an ASGI send that must be awaited: the writer task sends it
        if not self._started:
            if not self._welcome_next:
                return False  # only the welcome starts the stream (a close before it is a refusal)
            self._started = True
            direct(self._start_message())
            if not direct.ready:
                return False
        self.last_output = time.monotonic()
        self._registry.touched(self)
        direct({"type": "http.response.body", "body": self._encode(frame), "more_body": True})
        return True

    def session_opened(self, session_id: str, received: int) -> None:
        self._session_id = session_id
        self._count = received
        self._welcome_next = True
        self._registry.add(self)

    async def send(self, queue: deque[Frame]) -> None:
        body = b"".join([self._encode(frame) for frame in queue])
        queue.clear()
        self.last_output = time.monotonic()
        self._registry.touched(self)
        if not self._started:
            self._started = True
            await self._write(self._start_message())
        await self._write({"type": "http.response.body", "body": body, "more_body": True})

    def _start_message(self) -> Message:
        return {"type": "http.response.start", "status": 200, "headers": [*_STREAM_HEADERS, *self._headers]}

    def _encode(self, frame: Frame) -> bytes:
        if frame is KEEP_ALIVE:
            return sse.HEARTBEAT
        if frame.event_id is not None:
            assert self._session_id is not None  # events go out only once the session is open
            self._count += 1
            return sse.message(frame.payload, sse.event_id(self._session_id, self._count))
        if self._welcome_next:  # the first frame after the session opened
            self._welcome_next = False
            assert self._session_id is not None
            welcome = sse.welcome_for_stream(frame.payload, self.key, self._heartbeat_s)
            return sse.message(welcome, sse.event_id(self._session_id, self._count))
        return sse.message(frame.payload)

    async def close(self, reason: CloseReason) -> None:
        """End the stream with the `close` message; before the welcome, answer the request with the refusal
        (an HTTP status, a JSON body saying why, and `Retry-After` for what a client may retry)."""
        if self._started:
            await self._write({"type": "http.response.body", "body": sse.close(reason), "more_body": False})
            return
        self._started = True
        status, body, retry = sse.refusal(reason)
        headers = [*self._headers, (b"retry-after", str(sse.RETRY_AFTER_S).encode())] if retry else self._headers
        try:
            await send_json(self._send, status, body, headers)
        except (OSError, RuntimeError):
            raise SenderClosed from None

    async def _write(self, message: Message) -> None:
        """One ASGI send. A client that takes none of it for NOTIFIER_WRITE_STALL_TIMEOUT_S is dropped."""
        try:
            async with asyncio.timeout(self._stall_timeout_s):
                await self._send(message)
        except TimeoutError:
            log.info(
                "connection_dropped",
                transport="sse",
                code=closecodes.SLOW_CLIENT.code,
                reason="output not draining",
                stream=self.key,
            )
            self.abort()
            raise SenderClosed from None
        except (OSError, RuntimeError):  # the server's way of saying the response cannot be written to
            raise SenderClosed from None

    def abort(self) -> None:
        """Drop the connection now: the session's reader sees the client gone."""
        if self._abort_connection is not None:
            self._abort_connection()
        else:
            self._cancel()  # ends the request's task, and the server drops the connection with it

    def drop_unsent(self) -> None:
        pass  # nothing is buffered on our side of an ASGI send

    # The registry's side.

    def heartbeat(self) -> None:
        """The stream wrote nothing for the heartbeat period: write the heartbeat comment, unless output waits."""
        self.last_output = time.monotonic()
        self._registry.touched(self)
        if self.session is not None:
            self.session.keep_alive()


class StreamRegistry:
    """This instance's open streams by key, and their heartbeats: one loop for every stream, which wakes when the
    stream idle longest is due and writes only to the streams that wrote nothing for NOTIFIER_SSE_HEARTBEAT_S.

    The streams are kept in the order of their last output (each write moves its stream to the end), so the
    loop looks at the due ones only, however many streams there are."""

    def __init__(self, instance_id: str, heartbeat_s: int) -> None:
        self.heartbeat_s = heartbeat_s
        # A key names its instance, so any instance can tell which one to forward a command to: the instance id
        # in URL-safe base64 (whatever characters it has), then 128 random bits.
        self._prefix = _encode_instance(instance_id)
        self._streams: OrderedDict[str, Stream] = OrderedDict()
        self._beating: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._streams)

    def new_key(self) -> str:
        """An unguessable, URL-safe key for a new stream, naming this instance."""
        return f"{self._prefix}.{secrets.token_urlsafe(16)}"

    @staticmethod
    def holder_of(key: str) -> str | None:
        """The instance id a stream key names; None for a string that is not a key."""
        prefix, dot, token = key.partition(".")
        if not dot or not token:
            return None
        return _decode_instance(prefix)

    def find(self, key: str) -> Stream | None:
        return self._streams.get(key)

    def add(self, stream: Stream) -> None:
        self._streams[stream.key] = stream

    def discard(self, stream: Stream) -> None:
        if self._streams.get(stream.key) is stream:
            del self._streams[stream.key]

    def touched(self, stream: Stream) -> None:
        """`stream` just wrote: it is the last one due a heartbeat."""
        if stream.key in self._streams:
            self._streams.move_to_end(stream.key)

    def start(self) -> None:
        if self._beating is None:
            self._beating = asyncio.create_task(self._beat(), name="sse-heartbeats")

    async def stop(self) -> None:
        beating, self._beating = self._beating, None
        if beating is not None:
            beating.cancel()
            await asyncio.wait([beating])

    async def _beat(self) -> None:
        period = self.heartbeat_s
        # Streams that fall due close together are served by one wake-up.
        slack = min(1.0, period / 10)
        while True:
            due = time.monotonic() - period
            idle = []
            for stream in self._streams.values():
                if stream.last_output > due:
                    break
                idle.append(stream)
            for stream in idle:
                stream.heartbeat()
            oldest = next(iter(self._streams.values()), None)
            wake = (oldest.last_output if oldest is not None else time.monotonic()) + period + slack
            await asyncio.sleep(max(0.0, wake - time.monotonic()))


def _encode_instance(instance_id: str) -> str:
    return base64.urlsafe_b64encode(instance_id.encode()).rstrip(b"=").decode()


def _decode_instance(prefix: str) -> str | None:
    if not prefix or len(prefix) > 200:
        return None
    try:
        decoded = base64.b64decode(prefix + "=" * (-len(prefix) % 4), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeError, ValueError):
        return None
    return decoded or None
