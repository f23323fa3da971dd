"""One contract, two brokers: the in-memory broker of `notifier dev` must behave as RabbitMQ does for
everything the hub relies on. Every test here runs against both."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from notifier.broker import Broker, BrokerUnavailable, create_broker
from notifier.formats.events import Event, new_event_id
from notifier.settings import Settings
from tests.support import SECRET, assert_nothing_before_sentinel, bindings_of, make_settings, wait_until

pytestmark = pytest.mark.asyncio


class Received:
    """The handler a broker delivers to, with a way to await what arrives."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._arrived = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._arrived.set()

    async def count(self, n: int, timeout: float = 5.0) -> list[Event]:
        async with asyncio.timeout(timeout):
            while len(self.events) < n:
                self._arrived.clear()
                await self._arrived.wait()
        return self.events

    async def nothing_more(self, beyond: int, broker: Broker, topic: str) -> None:
        """Nothing arrives past the first `beyond` events: a sentinel published now to `topic` (bound) is the next
        event the handler gets."""

        async def next_event() -> dict[str, Any]:
            event = (await self.count(beyond + 1))[beyond]
            return {"type": "event", "topic": event.topic, "data": orjson.loads(event.data)}

        async def publish(topic: str, data: Any) -> None:
            await broker.publish(topic, orjson.dumps(data), new_event_id())

        await assert_nothing_before_sentinel(next_event, publish, topic)


@pytest.fixture(
    params=[pytest.param("memory", marks=pytest.mark.unit), pytest.param("amqp", marks=pytest.mark.rabbitmq)]
)
def broker_settings(request: pytest.FixtureRequest) -> Settings:
    if request.param == "memory":
        return Settings(_env_file=None, amqp_url="memory://", jwt_secret=SECRET)  # type: ignore[call-arg]
    request.getfixturevalue("rabbitmq")  # outside the test's event loop: it probes with its own
    exchange = request.getfixturevalue("exchange")
    # No linger: an unbind goes out as soon as it is asked for (the hub never relies on the linger).
    return make_settings(exchange=exchange, dead_letter_exchange=f"{exchange}.dead", port=0, bind_linger_s=0)


@pytest.fixture
async def broker(broker_settings: Settings) -> AsyncIterator[Broker]:
    broker = create_broker(broker_settings)
    yield broker
    await broker.close()


@pytest.fixture
def received() -> Received:
    return Received()


async def test_an_event_on_a_bound_topic_arrives_whole(broker: Broker, received: Received) -> None:
    await broker.connect(received)
    await broker.bind("news.sport")
    await broker.publish("news.sport", orjson.dumps({"score": [1, 2]}), "event-1")
    (event,) = await received.count(1)
    assert (event.topic, event.id, orjson.loads(event.data)) == ("news.sport", "event-1", {"score": [1, 2]})


async def test_events_of_one_topic_arrive_in_publish_order(broker: Broker, received: Received) -> None:
    await broker.connect(received)
    await broker.bind("feed")
    for n in range(50):
        await broker.publish("feed", orjson.dumps(n), f"id-{n}")
    events = await received.count(50)
    assert [orjson.loads(event.data) for event in events] == list(range(50))


async def test_only_bound_topics_are_routed_here(broker: Broker, received: Received) -> None:
    await broker.connect(received)
    await broker.bind("mine")
    await broker.publish("other", b"1", "a")
    await broker.publish("mine.deeper", b"2", "b")  # a topic is not a prefix
    await broker.publish("mine", b"3", "c")
    assert [event.id for event in await received.count(1)] == ["c"]
    await received.nothing_more(1, broker, "mine")


async def test_after_unbind_nothing_arrives(broker: Broker, broker_settings: Settings, received: Received) -> None:
    await broker.connect(received)
    await broker.bind("still-bound")
    await broker.bind("t")
    await broker.unbind("t")
    await broker.unbind("t")  # unbinding twice is harmless
    if not broker_settings.uses_memory_broker:  # RabbitMQ's unbinds go out in the background: wait for it

        def t_unbound() -> bool:
            return all("t" not in keys for keys in bindings_of(broker_settings.exchange).values())

        await wait_until(t_unbound, 10)
    await broker.publish("t", b"1", "a")
    await received.nothing_more(0, broker, "still-bound")


async def test_binding_twice_delivers_once(broker: Broker, received: Received) -> None:
    await broker.connect(received)
    await broker.bind("t")
    await broker.bind("t")
    await broker.publish("t", b"1", "a")
    await received.count(1)
    await received.nothing_more(1, broker, "t")


async def test_after_stop_consuming_nothing_reaches_the_handler(broker: Broker, received: Received) -> None:
    await broker.connect(received)
    await broker.bind("t")
    await broker.stop_consuming()
    await broker.publish("t", b"1", "a")
    # No sentinel can show that nothing arrives once nothing is consumed: a bounded wait is all there is (and
    # RabbitMQ delivers to a consumer within milliseconds of a publish, so it would show up in this time).
    await asyncio.sleep(0.3)
    assert received.events == []


async def test_an_unusable_message_is_dead_lettered_and_the_next_still_arrives(
    broker: Broker, received: Received
) -> None:
    await broker.connect(received)
    await broker.bind("t")
    await broker.publish("t", b"{not json", "bad")
    await broker.publish("t", b"true", "good")
    assert [event.id for event in await received.count(1)] == ["good"]
    assert broker.dead_lettered == 1


async def test_a_closed_broker_refuses_bind_and_publish(broker: Broker, received: Received) -> None:
    await broker.connect(received)
    await broker.close()
    assert not broker.ready
    with pytest.raises(BrokerUnavailable):
        await broker.bind("t")
    with pytest.raises(BrokerUnavailable):
        await broker.publish("t", b"1", "a")
