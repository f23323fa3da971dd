"""Acknowledgements and requeues of consumed messages, sent to RabbitMQ in the order they were made.

aiormq writes every frame through one bounded queue per connection, and a writer that comes when the queue
has room goes ahead of writers already waiting for room. Under load (a reconnect storm's binds, hand-over
markers) a `multiple` ack could so overtake an earlier one, and RabbitMQ refuses the earlier one when it
arrives, its tag already acknowledged ("PRECONDITION_FAILED - unknown delivery tag"): it closes the channel,
the instance reconnects, and every message not yet acknowledged is delivered again. Here one settlement is in
flight at a time; `multiple` acks queued behind it meanwhile are folded into the newest.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Literal, Protocol

Kind = Literal["ack", "requeue"]


class SettlingChannel(Protocol):
    """What a settlement is sent on (an aiormq channel)."""

    @property
    def is_closed(self) -> bool: ...

    def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> Awaitable[None]: ...

    def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> Awaitable[None]: ...


class InOrderSettlements:
    """`ack_up_to` and `requeue` queue a settlement; one task sends them in order, each awaited (until written)
    before the next. `settle` runs each request and deals with its failure (a closed channel)."""

    def __init__(self, settle: Callable[[Awaitable[None]], Awaitable[None]]) -> None:
        self._settle = settle
        self._queued: deque[tuple[Kind, SettlingChannel, int]] = deque()
        self._sender: asyncio.Task[None] | None = None

    @property
    def sender(self) -> asyncio.Task[None] | None:
        """The task sending what is queued, if any: stopping waits for it."""
        return self._sender

    def ack_up_to(self, channel: SettlingChannel, tag: int) -> None:
        """Acknowledge every message delivered on `channel` up to `tag` (a `multiple` ack)."""
        self._queue("ack", channel, tag)

    def requeue(self, channel: SettlingChannel, tag: int) -> None:
        """Hand the message `tag` back to its queue for another consumer."""
        self._queue("requeue", channel, tag)

    def _queue(self, kind: Kind, channel: SettlingChannel, tag: int) -> None:
        self._queued.append((kind, channel, tag))
        if self._sender is None:
            self._sender = asyncio.ensure_future(self._send())

    async def _send(self) -> None:
        queued = self._queued
        try:
            while queued:
                kind, channel, tag = queued.popleft()
                if kind == "ack":
                    while queued and queued[0][0] == "ack" and queued[0][1] is channel:
                        tag = queued.popleft()[2]  # a later `multiple` ack covers this one
                if channel.is_closed:
                    continue  # its unacknowledged messages are redelivered on the reopened channel
                if kind == "ack":
                    await self._settle(channel.basic_ack(tag, multiple=True))
                else:
                    await self._settle(channel.basic_nack(tag, requeue=True))
        finally:
            self._sender = None
