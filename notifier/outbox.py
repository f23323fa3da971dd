"""A connection's bounded queue of frames and the one task that writes them: the slow-client rule lives here."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from notifier.closecodes import CloseReason
from notifier.senders import Sender, SenderClosed
from notifier.wire import Frame


class Outbox:
    """Frames on their way to one client. `offer` never waits: a frame goes straight to the socket when nothing
    is queued and the socket takes it, else it is queued; a queue past its bound means the client reads too
    slowly, and `on_overflow` is called (the session closes it with 4002).

    The bound is NOTIFIER_SEND_QUEUE_SIZE frames, plus the sender's `buffer_bytes` for a sender without a
    socket buffer of its own, so both write paths take the same burst before calling a client slow."""

    __slots__ = ("_closing", "_done", "_idle", "_limit", "_on_overflow", "_queue", "_sender", "_wakeup")

    def __init__(self, sender: Sender, limit: int, on_overflow: Callable[[], None]) -> None:
        self._sender = sender
        self._limit = limit
        self._on_overflow = on_overflow
        self._queue: deque[Frame] = deque()
        self._wakeup = asyncio.Event()
        self._idle = False
        self._closing: CloseReason | None = None
        self._done = False  # the writer ended: the connection takes nothing more

    def __len__(self) -> int:
        return len(self._queue)

    def offer(self, frame: Frame) -> None:
        if self._done:
            return
        queue = self._queue
        if not queue and self._idle and self._sender.try_write(frame.wire):
            return  # nothing was queued before it, so the order is kept
        if len(queue) >= self._limit and self._over_buffer():
            self._on_overflow()
            return
        queue.append(frame)
        if self._idle:
            self._wakeup.set()

    def _over_buffer(self) -> bool:
        """Whether the frames past what a socket buffer would hold reach the limit (always, for a sender whose
        socket buffer is real)."""
        allowance = self._sender.buffer_bytes
        if not allowance:
            return True
        # Only reached with a full queue, so summing it is rare; the oldest frames stand in the "buffer".
        beyond_buffer = len(self._queue)
        for frame in self._queue:
            allowance -= len(frame.wire)
            if allowance < 0:
                break
            beyond_buffer -= 1
        return beyond_buffer >= self._limit

    def close_after_pending(self, reason: CloseReason) -> None:
        """Send what is queued, then the close frame with `reason`."""
        self._closing = reason
        self._wakeup.set()

    def drop_pending(self) -> int:
        """Forget every queued frame; return how many there were."""
        dropped = len(self._queue)
        self._queue.clear()
        return dropped

    def stop(self) -> None:
        """End the writer when it next wakes (the connection is gone)."""
        self._wakeup.set()

    async def run(self, connection_gone: Callable[[], bool]) -> None:
        """The writer: the only task that sends on the socket. Ends after the close frame, when the sender
        reports the connection gone, or when `connection_gone()` says so on waking."""
        queue = self._queue
        sender = self._sender
        try:
            while True:
                if queue:
                    await sender.send(queue)
                    continue
                if self._closing is not None:
                    await sender.close(self._closing)
                    return
                if connection_gone():
                    return
                self._wakeup.clear()
                self._idle = True
                try:
                    await self._wakeup.wait()
                finally:
                    self._idle = False
        except SenderClosed:
            return
        finally:
            self._done = True
            queue.clear()
