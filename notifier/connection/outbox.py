"""A connection's bounded queue of frames, and the writer task that drains it while it holds any: the
slow-client rule lives here."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from notifier.connection.senders import Sender, SenderClosed
from notifier.formats.closecodes import CloseReason
from notifier.formats.wire import Frame


class Outbox:
    """Frames on their way to one client. `offer` never waits: a frame goes straight to the socket when nothing
    is queued and the socket takes it, else it is queued; a queue past its bound means the client reads too
    slowly, and `on_overflow` is called (the session closes it with 4002).

    A writer task runs only while frames (or the close frame) wait, so an idle connection holds no task, and
    the queue itself is made with the first frame that has to wait.

    The bound is NOTIFIER_SEND_QUEUE_SIZE frames, plus the sender's `buffer_bytes` for a sender without a
    socket buffer of its own, so both write paths take the same burst before calling a client slow."""

    __slots__ = ("_closing", "_direct", "_done", "_limit", "_on_overflow", "_queue", "_sender", "_writer")

    def __init__(self, sender: Sender, limit: int, on_overflow: Callable[[], None]) -> None:
        self._sender = sender
        self._limit = limit
        self._on_overflow = on_overflow
        self._queue: deque[Frame] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._closing: CloseReason | None = None
        self._done = False  # the close frame went out or the connection is gone: it takes nothing more
        # No writer, no close under way, not done: a frame may go straight to the socket (one check per delivery).
        self._direct = True

    def __len__(self) -> int:
        return len(self._queue) if self._queue else 0

    def offer(self, frame: Frame) -> None:
        queue = self._queue
        if not queue and self._direct and self._sender.try_write(frame):
            return  # nothing was queued before it, so the order is kept
        if self._done:
            return
        if queue is None:
            queue = self._queue = deque()
        elif len(queue) >= self._limit and self._over_buffer(queue):
            self._on_overflow()
            return
        queue.append(frame)
        self._start_writer()

    def _over_buffer(self, queue: deque[Frame]) -> bool:
        """Whether the frames past what a socket buffer would hold reach the limit (always, for a sender whose
        socket buffer is real)."""
        allowance = self._sender.buffer_bytes
        if not allowance:
            return True
        # Only reached with a full queue, so summing it is rare; the oldest frames stand in the "buffer".
        beyond_buffer = len(queue)
        for frame in queue:
            allowance -= len(frame.wire)
            if allowance < 0:
                break
            beyond_buffer -= 1
        return beyond_buffer >= self._limit

    def close_after_pending(self, reason: CloseReason) -> None:
        """Send what is queued, then the close frame with `reason`."""
        if self._done:
            return
        self._closing = reason
        self._direct = False
        self._start_writer()

    def drop_pending(self) -> int:
        """Forget every queued frame; return how many there were."""
        queue = self._queue
        if not queue:
            return 0
        dropped = len(queue)
        queue.clear()
        return dropped

    async def stop(self) -> None:
        """The connection is over: stop a writer still waiting on the socket, and discard what the sender still
        buffers for it (nothing it holds can reach the client any more)."""
        writer = self._writer
        if writer is not None:
            writer.cancel()
            await asyncio.wait([writer])
        elif self._done:
            return  # the close frame went out, or the sender found the connection gone
        self._done = True
        self._direct = False
        self._sender.drop_unsent()
        if self._queue:
            self._queue.clear()

    def _start_writer(self) -> None:
        if self._writer is None:
            self._direct = False
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def _write(self) -> None:
        """The writer: the only task that sends on the socket. Ends when the queue is empty, after the close
        frame, or when the sender reports the connection gone."""
        sender = self._sender
        try:
            while self._queue:
                await sender.send(self._queue)
            if self._closing is not None:
                await sender.close(self._closing)
                self._done = True
        except SenderClosed:
            self._done = True
        finally:
            self._writer = None
            self._direct = not self._done and self._closing is None
            if self._done and self._queue:
                self._queue.clear()
