"""The binding queue's bookkeeping against a recording stand-in for an AMQP channel: what is sent, when, and
what cancels out. (The same code against the real RabbitMQ is in tests/test_bindings.py.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from notifier.broker.base import BrokerUnavailable
from notifier.broker.bindings import Bindings

pytestmark = pytest.mark.unit


class RecordingChannel:
    """Answers each confirmed request once `open` is set; records every request in order."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str, bool]] = []
        self.open = asyncio.Event()
        self.open.set()

    async def queue_bind(self, queue: str, exchange: str, routing_key: str, nowait: bool = False) -> None:
        self.sent.append(("bind", routing_key, nowait))
        if not nowait:
            await self.open.wait()

    async def queue_unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.sent.append(("unbind", routing_key, False))
        await self.open.wait()


@pytest.fixture
def channel() -> RecordingChannel:
    return RecordingChannel()


async def make(channel: RecordingChannel, **overrides: Any) -> Bindings:
    options: dict[str, Any] = {"wait_s": 5.0, "max_waiting": 100, "linger_s": 0.0, "batch": 4}
    options.update(overrides)
    bindings = Bindings("q", "x", **options)

    async def source() -> Any:
        return channel

    bindings.start([source], source)
    return bindings


@pytest.fixture
async def stop_after() -> AsyncIterator[list[Bindings]]:
    started: list[Bindings] = []
    yield started
    for bindings in started:
        await bindings.stop()


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


async def test_binds_go_in_pipelined_batches_with_one_confirmed_bind_each(
    channel: RecordingChannel, stop_after: list[Bindings]
) -> None:
    channel.open.clear()
    bindings = await make(channel, batch=4)
    stop_after.append(bindings)
    first = asyncio.create_task(bindings.bind("t0"))  # goes alone: nothing else is waiting yet
    await settle()
    rest = [asyncio.create_task(bindings.bind(f"t{n}")) for n in range(1, 9)]
    await settle()
    channel.open.set()
    await asyncio.gather(first, *rest)
    assert channel.sent == [
        ("bind", "t0", False),
        ("bind", "t1", True),
        ("bind", "t2", True),
        ("bind", "t3", True),
        ("bind", "t4", False),
        ("bind", "t5", True),
        ("bind", "t6", True),
        ("bind", "t7", True),
        ("bind", "t8", False),
    ]


async def test_a_topic_back_within_the_linger_needs_no_request(
    channel: RecordingChannel, stop_after: list[Bindings]
) -> None:
    bindings = await make(channel, linger_s=0.3)
    stop_after.append(bindings)
    await bindings.bind("user.a")
    bindings.unbind("user.a")
    await asyncio.sleep(0.1)
    await bindings.bind("user.a")  # returns at once: still bound
    assert channel.sent == [("bind", "user.a", False)]
    bindings.unbind("user.a")
    await asyncio.sleep(0.6)
    assert channel.sent == [("bind", "user.a", False), ("unbind", "user.a", False)]
    assert bindings.maybe_bound == frozenset()


async def test_a_bind_given_up_before_it_was_sent_is_never_sent(
    channel: RecordingChannel, stop_after: list[Bindings]
) -> None:
    channel.open.clear()
    bindings = await make(channel, wait_s=0.2, batch=1)
    stop_after.append(bindings)
    blocker = asyncio.create_task(bindings.bind("first"))  # holds the only sender
    await settle()
    with pytest.raises(BrokerUnavailable, match="not confirmed"):
        await bindings.bind("late")
    channel.open.set()
    with pytest.raises(BrokerUnavailable):
        await blocker  # it waited 0.2 s too
    await asyncio.sleep(0.1)
    # "first" was in flight: it lands, and no one wants it any more, so it is unbound; "late" never went out.
    assert channel.sent == [("bind", "first", False), ("unbind", "first", False)]
    assert bindings.maybe_bound == frozenset()


async def test_past_the_bind_queue_size_a_bind_is_refused_at_once(
    channel: RecordingChannel, stop_after: list[Bindings]
) -> None:
    channel.open.clear()
    bindings = await make(channel, max_waiting=2)
    stop_after.append(bindings)
    waiting = [asyncio.create_task(bindings.bind(f"t{n}")) for n in range(2)]
    await settle()
    with pytest.raises(BrokerUnavailable, match="2 binds already waiting"):
        await bindings.bind("t2")
    channel.open.set()
    await asyncio.gather(*waiting)
    assert bindings.waiting == 0


async def test_a_failed_request_is_sent_again_and_its_waiter_still_gets_in(
    channel: RecordingChannel, stop_after: list[Bindings]
) -> None:
    failures = [ConnectionError("connection lost")]
    original = channel.queue_bind

    async def fails_once(queue: str, exchange: str, routing_key: str, nowait: bool = False) -> None:
        await original(queue, exchange, routing_key, nowait)
        if failures:
            raise failures.pop()

    channel.queue_bind = fails_once  # type: ignore[method-assign]
    bindings = await make(channel)
    stop_after.append(bindings)
    await asyncio.wait_for(bindings.bind("user.a"), 3)
    assert channel.sent == [("bind", "user.a", False), ("bind", "user.a", False)]
    assert bindings.maybe_bound == {"user.a"}
