"""uvicorn's connection protocols with the limits a hostile client must not get around; this module is every
reach into uvicorn's private parts (its `*_impl` protocol classes, the methods overridden here, and the
server's captured signals), and tests/test_library_internals.py fails, naming the attribute, when a uvicorn
release renames one. pyproject.toml bounds uvicorn to the releases tested.

- HTTP: a socket must complete its request head within NOTIFIER_HANDSHAKE_TIMEOUT_S (also between
  keep-alive requests), so sockets that send nothing, or send a header a byte at a time, are closed. The first
  request of each new socket takes its turn (notifier/limits/pacing.py), so a storm of handshakes cannot stall the
  event loop. Each request's scope carries its connection's abort and a `DirectSend`, for HTTP streams
  (notifier/connection/stream.py): they write without a task per message, as a WebSocket's transport path does.
- WebSocket (`websockets-sansio`, which `notifier serve` runs): small per connection, and backpressure. Its
  receive queue and writable flag are made without an empty asyncio.Queue and Event (four deques) per socket,
  and it lets go of the handshake's request and response once the handshake is done.
  Backpressure: While the socket's output is
  not draining, the connection stops reading, so a client that floods pings and never reads cannot make us
  queue pongs without end; if the output stays stuck for NOTIFIER_WRITE_STALL_TIMEOUT_S the connection is
  dropped. Pings count against the same frames-per-second budget as text frames (close 4004 past it).
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from typing import Any, Generic, TypeVar

import structlog
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from notifier.connection.stream import ABORT_CONNECTION_SCOPE_KEY, DIRECT_SEND_SCOPE_KEY
from notifier.formats import closecodes
from notifier.limits.pacing import TurnPacer
from notifier.limits.tokenbucket import FRAME_BUDGET_SCOPE_KEY, RateLimiter
from notifier.settings import Settings

log = structlog.get_logger("notifier.protocols")

# uvicorn and the websockets handshake log every WebSocket accepted and opened at INFO; ours
# (`connection_authenticated`, `connection_closing`) say the same with the connection id and user. At INFO a
# dropped line still costs a log record and a filter pass, a tenth of a storm's connect CPU: under this logger
# (WARNING and up) they cost one level check, and errors still reach uvicorn's handlers.
_WEBSOCKET_LOG = logging.getLogger("uvicorn.error.websocket")
_WEBSOCKET_LOG.setLevel(logging.WARNING)

# New sockets whose first request is handled per event loop iteration. A WebSocket's handshake, and its login in
# the next iteration, cost about a millisecond: 64 keep an iteration well under a tenth of a second.
FIRST_REQUESTS_PER_TURN = 64

T = TypeVar("T")


class LightFlag:
    """What uvicorn and our senders use of asyncio.Event (`is_set`, `set`, `clear`, `wait`), with the list of
    waiters made on the first wait: a connection whose output never stalls has nothing to wake."""

    __slots__ = ("_value", "_waiters")

    def __init__(self) -> None:
        self._value = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._value

    def set(self) -> None:
        if self._value:
            return
        self._value = True
        for waiter in self._waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._value = False

    async def wait(self) -> bool:
        if self._value:
            return True
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            self._waiters.remove(waiter)
        return True


class ReceiveQueue(Generic[T]):
    """What uvicorn uses of asyncio.Queue (`put_nowait`, `get`, `empty`), for the connection's one reader.
    It holds a message or two at most: uvicorn stops reading the socket while a message waits."""

    __slots__ = ("_getter", "_items")

    def __init__(self) -> None:
        self._items: list[T] = []
        self._getter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self._items.append(item)
        getter = self._getter
        if getter is not None and not getter.done():
            getter.set_result(None)

    async def get(self) -> T:
        items = self._items
        while not items:
            getter = self._getter = asyncio.get_running_loop().create_future()
            try:
                await getter
            finally:
                self._getter = None
        return items.pop(0)

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items)


class LimitedHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing sockets that do not complete a request head in time."""

    handshake_timeout_s: float = 10.0
    pacer: TurnPacer = TurnPacer(FIRST_REQUESTS_PER_TURN)  # one per server: see protocol_classes

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._handshake_timer: asyncio.TimerHandle | None = None
        self._had_turn = False
        self._held: list[bytes] | None = None  # what arrived while waiting for the first turn

    def data_received(self, data: bytes) -> None:
        if self._had_turn:
            super().data_received(data)
        elif self._held is not None:
            self._held.append(data)
        elif self.pacer.take():
            self._had_turn = True
            super().data_received(data)
        else:
            # Waiting for its turn is not the client being slow: no handshake deadline until the turn comes.
            self._held = [data]
            self._cancel_handshake_timer()
            self.transport.pause_reading()
            self.pacer.wait(self._take_turn)

    def _take_turn(self) -> None:
        held, self._held = self._held, None
        self._had_turn = True
        if held is None or self.transport.is_closing():
            return  # gone meanwhile
        self._arm_handshake_timer()
        self.transport.resume_reading()
        for chunk in held:
            protocol = self.transport.get_protocol()
            if protocol is self:
                super().data_received(chunk)
            else:  # upgraded by an earlier chunk: the rest is the WebSocket's
                protocol.data_received(chunk)  # type: ignore[attr-defined]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_handshake_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_handshake_timer()
        self._held = None
        super().connection_lost(exc)

    def on_headers_complete(self) -> None:
        self._cancel_handshake_timer()
        super().on_headers_complete()
        cycle = self.cycle
        # A GET to answer (an HTTP stream is one; not a WebSocket upgrade).
        if cycle is not None and cycle.scope is self.scope and self.scope["method"] == "GET":
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            # An HTTP stream that must be dropped (its client stopped reading) drops its connection through this.
            scope[ABORT_CONNECTION_SCOPE_KEY] = self.transport.abort
            scope[DIRECT_SEND_SCOPE_KEY] = DirectSend(cycle)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_handshake_timer()  # the next request on a kept-alive socket gets the same deadline

    def handle_websocket_upgrade(self) -> None:
        self._cancel_handshake_timer()
        super().handle_websocket_upgrade()

    def _arm_handshake_timer(self) -> None:
        self._cancel_handshake_timer()
        self._handshake_timer = self.loop.call_later(self.handshake_timeout_s, self._handshake_timed_out)

    def _cancel_handshake_timer(self) -> None:
        if self._handshake_timer is not None:
            self._handshake_timer.cancel()
            self._handshake_timer = None

    def _handshake_timed_out(self) -> None:
        self._handshake_timer = None
        if not self.transport.is_closing():
            log.info("handshake_timeout", client=self.client[0] if self.client else None)
            self.transport.close()


# What DirectSend reads of uvicorn's request cycle and of its flow control (tests/test_library_internals.py).
REQUEST_CYCLE_INTERNALS = ("flow", "disconnected", "send")
FLOW_CONTROL_INTERNALS = ("write_paused",)


class DirectSend:
    """One request's own ASGI `send`, run to its end at once when it would not wait: uvicorn's send awaits only
    while the connection's writes are paused. So an HTTP stream writes each message as it comes, in order with
    what its writer task sends, and uvicorn keeps track of its response as for any send."""

    __slots__ = ("_cycle", "_flow")

    def __init__(self, cycle: RequestResponseCycle) -> None:
        # Weakly: the cycle holds the scope that holds this (the request's task holds the cycle while it runs).
        self._cycle = weakref.ref(cycle)
        self._flow = cycle.flow

    @property
    def ready(self) -> bool:
        """The message would be written without waiting (and the client is still there)."""
        cycle = self._cycle()
        return cycle is not None and not self._flow.write_paused and not cycle.disconnected

    def __call__(self, message: Any) -> None:
        """Send `message` now; only when `ready`."""
        cycle = self._cycle()
        assert cycle is not None
        step = cycle.send(message)
        try:
            step.send(None)
        except StopIteration:
            return
        step.close()
        raise RuntimeError("uvicorn's send waited while the connection's writes were not paused")


class BackpressuredWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's websockets-sansio protocol, but it stops reading from a client whose output is not draining,
    drops it if that lasts, and counts pings in the connection's frame budget."""

    write_stall_timeout_s: float = 10.0
    frames_per_s: float = 20.0
    frames_burst: int = 40

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = self.conn.logger = _WEBSOCKET_LOG
        self.conn.debug = False
        self.queue = ReceiveQueue()  # type: ignore[assignment]
        self.writable = LightFlag()  # type: ignore[assignment]
        self.writable.set()
        self.frame_budget = RateLimiter(self.frames_per_s, self.frames_burst)
        # A frame too big (or not UTF-8) is failed by websockets with its own text as the close reason; ours is
        # closecodes' (the client's `reason` is then the same whichever layer refused the frame).
        library_fail = self.conn.fail

        def fail(code: int, reason: str = "") -> None:
            fault = closecodes.FRAME_FAULTS.get(int(code))
            library_fail(code, fault.reason if fault is not None else reason)

        self.conn.fail = fail  # type: ignore[method-assign]
        self.output_stalled = False
        self._stall_timer: asyncio.TimerHandle | None = None
        self._buffered_at_check = 0

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        scope = getattr(self, "scope", None)
        if scope is not None:
            scope[FRAME_BUDGET_SCOPE_KEY] = self.frame_budget

    async def send(self, message: Any) -> None:
        await super().send(message)
        if self.handshake_complete and getattr(self, "response", None) is not None:
            # Sent: the request and response of the handshake are never read again. The handshake parser's
            # suspended frame still holds the request for the connection's life, so its headers are emptied.
            self.request.headers.clear()
            self.request = self.response = None  # type: ignore[assignment]

    # Backpressure.

    def pause_writing(self) -> None:
        super().pause_writing()
        self.output_stalled = True
        # What the client sends next (pings above all) would only add to output it is not taking.
        self.transport.pause_reading()
        if self._stall_timer is None:
            self._buffered_at_check = self.transport.get_write_buffer_size()
            self._stall_timer = self.loop.call_later(self.write_stall_timeout_s, self._drop_stalled)

    def resume_writing(self) -> None:
        super().resume_writing()
        self.output_stalled = False
        self._cancel_stall_timer()
        if not self.read_paused and not self.transport.is_closing():
            self.transport.resume_reading()

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.read_paused and self.queue.empty():
            self.read_paused = False
            if not self.output_stalled:
                self.transport.resume_reading()
        return message

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_stall_timer()
        super().connection_lost(exc)

    def _cancel_stall_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _drop_stalled(self) -> None:
        """Drop the client if it took nothing for the whole timeout: a close frame would not reach it either."""
        self._stall_timer = None
        if self.transport.is_closing():
            return
        buffered = self.transport.get_write_buffer_size()
        if buffered < self._buffered_at_check:
            # It reads, slowly (while paused we add nothing but what is queued: its send queue rule applies).
            self._buffered_at_check = buffered
            self._stall_timer = self.loop.call_later(self.write_stall_timeout_s, self._drop_stalled)
            return
        log.info(
            "connection_dropped",
            client=self.client[0] if self.client else None,
            code=closecodes.SLOW_CLIENT.code,
            reason="output not draining",
            unsent_bytes=self.transport.get_write_buffer_size(),
        )
        self.transport.abort()

    # Client faults: answered, and logged as one short line (never the frame: it may hold a token).

    def send_receive_event_to_app(self) -> None:
        if self.curr_msg_data_type == "text" and not self.close_sent:
            data = self.frames[0] if len(self.frames) == 1 else b"".join(self.frames)
            try:
                data.decode()
            except UnicodeDecodeError as error:
                self.frames = []
                log.info(
                    "invalid_utf8",
                    client=self.client[0] if self.client else None,
                    frame_bytes=len(data),
                    position=error.start,
                    code=closecodes.INVALID_UTF8.code,
                )
                self.conn.send_close(closecodes.INVALID_UTF8.code, closecodes.INVALID_UTF8.reason)
                self.handle_parser_exception()
                return
        super().send_receive_event_to_app()

    def handle_parser_exception(self) -> None:
        """uvicorn's, with the disconnect marked as our close: the session ends (1007 and 1009 are terminal) and
        counts it, rather than parking as after a close the client sent."""
        assert self.conn.close_sent is not None
        code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
        disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason, closecodes.SERVER_CLOSE_KEY: True}
        self.queue.put_nowait(disconnect)  # type: ignore[arg-type]  # our key beside the ASGI ones
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.transport.close()

    # Control frames.

    def handle_ping(self) -> None:
        if self.close_sent:
            self.conn.data_to_send()  # closing: the pong is not owed any more
            return
        if not self.frame_budget.allow():
            self.conn.data_to_send()
            self._close_rate_limited()
            return
        super().handle_ping()

    def _close_rate_limited(self) -> None:
        reason = closecodes.RATE_LIMITED
        log.info("connection_closing", client=self.client[0] if self.client else None, code=reason.code, reason="pings")
        self.queue.put_nowait({"type": "websocket.disconnect", "code": reason.code, "reason": reason.reason})
        self.conn.send_close(reason.code, reason.reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self.close_timer = self.loop.call_later(self.close_timeout, self.transport.close)


def protocol_classes(settings: Settings) -> tuple[type[LimitedHttpProtocol], type[BackpressuredWebSocketProtocol]]:
    """The HTTP and WebSocket protocol classes for uvicorn, with this instance's limits."""
    http = type(
        "LimitedHttpProtocol",
        (LimitedHttpProtocol,),
        {"handshake_timeout_s": settings.handshake_timeout_s, "pacer": TurnPacer(FIRST_REQUESTS_PER_TURN)},
    )
    websocket = type(
        "BackpressuredWebSocketProtocol",
        (BackpressuredWebSocketProtocol,),
        {
            "write_stall_timeout_s": settings.write_stall_timeout_s,
            "frames_per_s": settings.client_frames_per_s,
            "frames_burst": settings.client_frames_burst,
        },
    )
    return http, websocket


def forget_captured_signals(server: uvicorn.Server) -> None:
    """After a drained stop, exit 0: uvicorn re-raises the signals it captured once it has stopped, which would
    end the process with -15/143. It keeps them in a private list with no public way to clear it."""
    server._captured_signals.clear()
