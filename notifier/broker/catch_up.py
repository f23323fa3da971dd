"""Knowing that every event routed to this instance before a moment has reached the hub.

A hand-over splits a session's events between two queues at the moment the new instance's bind was confirmed:
what was routed before it is only in the old instance's queue, what was routed after is in both. Either
instance may be seconds behind its queue when it is busy. So the holder waits until it has caught up before
it answers (an event still in its queue would reach a session it already let go of: lost), and the asker, which
merges at once, drops the events of the answer that reach it later, until it has caught up (they would be sent
again: doubled).

Catching up is a marker sent to the instance's own queue through the default exchange: a queue is first in,
first out, so once the marker is delivered, every event enqueued before it was too. Callers that arrive in the
same turn of the event loop share one marker.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from notifier.broker.base import BROKER_ERRORS, BrokerUnavailable

# Markers sent and not yet back; past this many the oldest is given up (its queue dropped it, say).
MAX_MARKERS_OUT = 256


class CatchUp:
    """Markers through this instance's queue, and the callers waiting for each to come back."""

    def __init__(self, send: Callable[[str], Awaitable[None]]) -> None:
        self._send_marker = send  # publishes a marker with this token to the instance's own queue
        self._next: asyncio.Future[None] | None = None  # the marker callers join until it is sent
        self._out: dict[str, asyncio.Future[None]] = {}  # token -> its callers' future, oldest first
        self._sending: set[asyncio.Task[None]] = set()

    async def wait(self, timeout_s: float) -> None:
        """Return once every event routed here before the call has been handed on; BrokerUnavailable if that
        is not known within `timeout_s`."""
        arrived = self._next
        if arrived is None:
            loop = asyncio.get_running_loop()
            arrived = self._next = loop.create_future()
            loop.call_soon(self._send_next)
        try:
            await asyncio.wait_for(asyncio.shield(arrived), timeout_s)
        except TimeoutError:
            raise BrokerUnavailable(f"this instance's queue did not catch up within {timeout_s} s") from None

    def seen(self, token: str | None) -> None:
        """A marker came back through the queue (one that names none of ours is ignored)."""
        arrived = self._out.pop(token, None) if token else None
        if arrived is not None and not arrived.done():
            arrived.set_result(None)

    def fail_all(self, reason: str) -> None:
        """No marker out will come back (consuming stopped, or the queue was replaced)."""
        pending = list(self._out.values())
        if self._next is not None:
            pending.append(self._next)
            self._next = None
        self._out.clear()
        for arrived in pending:
            _fail(arrived, reason)
        for sending in self._sending:
            sending.cancel()

    def _send_next(self) -> None:
        arrived, self._next = self._next, None
        if arrived is None:
            return
        token = uuid.uuid4().hex
        self._out[token] = arrived
        while len(self._out) > MAX_MARKERS_OUT:
            _fail(self._out.pop(next(iter(self._out))), "too many markers out")
        task = asyncio.create_task(self._send(token, arrived))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, token: str, arrived: asyncio.Future[None]) -> None:
        try:
            await self._send_marker(token)
        except (*BROKER_ERRORS, BrokerUnavailable) as error:
            self._out.pop(token, None)
            _fail(arrived, f"marker not sent: {error!r}")


def _fail(arrived: asyncio.Future[None], reason: str) -> None:
    if not arrived.done():
        arrived.set_exception(BrokerUnavailable(reason))
        arrived.exception()  # retrieved: callers that gave up must not cause a warning
