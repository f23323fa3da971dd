"""Acks and requeues reach RabbitMQ in the order they were made (notifier/broker/settlements.py): a `multiple` ack
overtaken by a later one is refused by RabbitMQ ("unknown delivery tag"), which closes the consume channel."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable

from notifier.broker.settlements import InOrderSettlements


class SlowChannel:
    """Records what is sent, after yielding a few times: a write waiting for room in a full write queue."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, int]] = []
        self.is_closed = False

    async def _write(self, what: tuple[str, int]) -> None:
        for _ in range(3):
            await asyncio.sleep(0)
        self.sent.append(what)

    def basic_ack(self, delivery_tag: int, multiple: bool = False, wait: bool = True) -> Awaitable[None]:
        return self._write(("ack" if multiple else "ack-one", delivery_tag))

    def basic_nack(
        self, delivery_tag: int, multiple: bool = False, requeue: bool = True, wait: bool = True
    ) -> Awaitable[None]:
        return self._write(("requeue", delivery_tag))


async def settle(request: Awaitable[None]) -> None:
    await request


async def finished(settlements: InOrderSettlements) -> None:
    if settlements.sender is not None:
        await settlements.sender


async def test_acks_made_while_one_is_in_flight_go_after_it_folded_into_the_newest() -> None:
    channel, settlements = SlowChannel(), InOrderSettlements(settle)
    settlements.ack_up_to(channel, 10)
    await asyncio.sleep(0)  # the first one is on its way
    for tag in (20, 30, 40):
        settlements.ack_up_to(channel, tag)
    await finished(settlements)
    assert channel.sent == [("ack", 10), ("ack", 40)]


async def test_a_requeue_keeps_its_place_between_acks() -> None:
    channel, settlements = SlowChannel(), InOrderSettlements(settle)
    settlements.ack_up_to(channel, 5)
    settlements.requeue(channel, 7)
    settlements.ack_up_to(channel, 8)
    settlements.ack_up_to(channel, 9)
    await finished(settlements)
    assert channel.sent == [("ack", 5), ("requeue", 7), ("ack", 9)]


async def test_nothing_is_sent_on_a_closed_channel_and_the_next_channel_gets_its_own() -> None:
    closed, reopened, settlements = SlowChannel(), SlowChannel(), InOrderSettlements(settle)
    closed.is_closed = True
    settlements.ack_up_to(closed, 100)
    settlements.ack_up_to(reopened, 3)  # tags start again on a reopened channel: never folded across channels
    await finished(settlements)
    assert (closed.sent, reopened.sent) == ([], [("ack", 3)])
