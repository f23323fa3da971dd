"""The publish dedupe of `EventPublisher`, against a broker stand-in that can hold or refuse a publish."""

from __future__ import annotations

import asyncio

import pytest

from notifier.broker import BrokerUnavailable
from notifier.http.publisher import EventPublisher, OutgoingEvent
from notifier.settings import Settings

pytestmark = pytest.mark.unit

SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


class HeldBroker:
    """Publishes when released; refuses while `refuse` is set."""

    def __init__(self) -> None:
        self.published: list[str] = []
        self.release = asyncio.Event()
        self.refuse = False

    async def publish(self, topic: str, data: bytes, event_id: str) -> None:
        await self.release.wait()
        if self.refuse:
            raise BrokerUnavailable("refused")
        self.published.append(event_id)


def event(event_id: str) -> OutgoingEvent:
    return OutgoingEvent("a", b"1", event_id)


async def test_a_repeat_during_the_first_publish_waits_for_it_and_is_not_published() -> None:
    broker = HeldBroker()
    publisher = EventPublisher(broker, SETTINGS)  # type: ignore[arg-type]
    first = asyncio.create_task(publisher.publish([event("x")]))
    second = asyncio.create_task(publisher.publish([event("x")]))
    await asyncio.sleep(0)
    broker.release.set()
    await asyncio.gather(first, second)
    await publisher.publish([event("x")])
    assert broker.published == ["x"]
    assert publisher.repeats_skipped == 2


async def test_a_failed_publish_is_not_remembered_and_its_waiters_are_told() -> None:
    broker = HeldBroker()
    publisher = EventPublisher(broker, SETTINGS)  # type: ignore[arg-type]
    broker.refuse = True
    first = asyncio.create_task(publisher.publish([event("x")]))
    second = asyncio.create_task(publisher.publish([event("x")]))
    await asyncio.sleep(0)
    broker.release.set()
    for attempt in (first, second):
        with pytest.raises(BrokerUnavailable):
            await attempt
    broker.refuse = False
    await publisher.publish([event("x")])  # the retry publishes it
    assert broker.published == ["x"]


async def test_a_cancelled_request_leaves_nothing_waiting() -> None:
    broker = HeldBroker()
    publisher = EventPublisher(broker, SETTINGS)  # type: ignore[arg-type]
    first = asyncio.create_task(publisher.publish([event("x"), event("y")]))
    await asyncio.sleep(0)
    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    broker.release.set()
    await asyncio.wait_for(publisher.publish([event("x"), event("y")]), 1)
    assert sorted(broker.published) == ["x", "y"]
