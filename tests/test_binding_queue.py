"""The binding queue's bookkeeping against a recording stand-in for an AMQP channel: what is sent, when, and
what cancels out. (The same code against the real RabbitMQ is in tests/test_bindings.py.)"""

from __future__ import annotations

import asyncio
import itertools
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

    async def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.sent.append(("bind", routing_key, False))
        await self.open.wait()

    async def queue_bind_nowait(self, queue: str, exchange: str, routing_keys: list[str]) -> None:
        self.sent.extend(("bind", key, True) for key in routing_keys)

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

    bindings.start([source], source, source)
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

    async def fails_once(queue: str, exchange: str, routing_key: str) -> None:
        await original(queue, exchange, routing_key)
        if failures:
            raise failures.pop()

    channel.queue_bind = fails_once  # type: ignore[method-assign]
    bindings = await make(channel)
    stop_after.append(bindings)
    await asyncio.wait_for(bindings.bind("user.a"), 3)
    assert channel.sent == [("bind", "user.a", False), ("bind", "user.a", False)]
    assert bindings.maybe_bound == {"user.a"}


async def make_with_cover(
    binds: RecordingChannel, others: RecordingChannel, cover_at: int, max_covers: int = 4, batch: int = 4
) -> Bindings:
    """Binds go on `binds`; unbinds and covers on `others`, so a test can hold up the binds alone."""
    bindings = Bindings(
        "q", "x", wait_s=5.0, max_waiting=100, linger_s=0.0, batch=batch, cover_at=cover_at, max_covers=max_covers
    )

    async def bind_source() -> Any:
        return binds

    async def other_source() -> Any:
        return others

    bindings.start([bind_source], other_source, other_source)
    return bindings


async def test_in_a_storm_a_cover_lets_clients_in_before_their_own_binds(stop_after: list[Bindings]) -> None:
    binds, others = RecordingChannel(), RecordingChannel()
    binds.open.clear()  # RabbitMQ is busy with binds
    bindings = await make_with_cover(binds, others, cover_at=3)
    stop_after.append(bindings)
    first = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(2)]
    await settle()
    # From the third waiting bind on, `user.#` is bound on its own channel and each client gets in at once.
    covered = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(2, 10)]
    await asyncio.wait_for(asyncio.gather(*covered), 2)
    assert others.sent == [("bind", "user.#", False)]
    assert bindings.covers == {"user"}
    assert not any(task.done() for task in first)  # below the threshold they wait for their own bind
    assert bindings.waiting == 10

    binds.open.set()
    await asyncio.wait_for(asyncio.gather(*first), 2)
    await settle()
    # Every bind it stood in for is confirmed: the cover is removed, the topics stay bound one by one.
    assert bindings.waiting == 0
    assert bindings.covers == frozenset()
    assert others.sent == [("bind", "user.#", False), ("unbind", "user.#", False)]
    assert bindings.maybe_bound == {f"user.{n}" for n in range(10)}
    assert sorted(topic for kind, topic, _ in binds.sent if kind == "bind") == sorted(f"user.{n}" for n in range(10))


async def test_a_cover_covers_only_its_namespace_and_their_number_is_bounded(stop_after: list[Bindings]) -> None:
    binds, others = RecordingChannel(), RecordingChannel()
    binds.open.clear()
    bindings = await make_with_cover(binds, others, cover_at=2, max_covers=1)
    stop_after.append(bindings)
    waiting = [asyncio.create_task(bindings.bind(topic)) for topic in ("user.a", "user.b", "user.c")]
    await settle()
    assert bindings.covers == {"user"}
    # Another namespace in the same storm would need a second cover: past NOTIFIER_BIND_MAX_COVERS it waits.
    room = asyncio.create_task(bindings.bind("room.1"))
    await settle()
    assert not room.done()
    assert others.sent == [("bind", "user.#", False)]
    binds.open.set()
    await asyncio.wait_for(asyncio.gather(room, *waiting), 2)


async def test_without_a_storm_there_is_no_cover(channel: RecordingChannel, stop_after: list[Bindings]) -> None:
    bindings = await make_with_cover(channel, channel, cover_at=3)
    stop_after.append(bindings)
    for n in range(10):
        await bindings.bind(f"user.{n}")  # one at a time: never three waiting
    assert [topic for _, topic, _ in channel.sent] == [f"user.{n}" for n in range(10)]
    assert bindings.covers_bound == 0


async def test_a_user_who_leaves_while_covered_is_unbound(stop_after: list[Bindings]) -> None:
    binds, others = RecordingChannel(), RecordingChannel()
    binds.open.clear()
    bindings = await make_with_cover(binds, others, cover_at=1)
    stop_after.append(bindings)
    await asyncio.wait_for(bindings.bind("user.gone"), 2)  # in through the cover
    bindings.unbind("user.gone")  # and gone before its own bind was confirmed
    binds.open.set()
    await asyncio.sleep(0.2)
    assert bindings.covers == frozenset()
    assert bindings.maybe_bound == frozenset()
    assert bindings.waiting == 0


async def test_binds_a_confirmed_cover_stands_in_for_go_out_on_one_channel(stop_after: list[Bindings]) -> None:
    first, second, others = RecordingChannel(), RecordingChannel(), RecordingChannel()
    for channel in (first, second):
        channel.open.clear()  # RabbitMQ is busy with binds
    bindings = Bindings("q", "x", wait_s=5.0, max_waiting=100, linger_s=0.0, batch=2, cover_at=3, max_covers=1)
    stop_after.append(bindings)

    def source(channel: RecordingChannel) -> Any:
        async def get() -> Any:
            return channel

        return get

    bindings.start([source(first), source(second)], source(others), source(others))
    waiting = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(2)]
    await settle()
    assert len(first.sent) == 2  # the first batch is out, unanswered
    # A storm: `user.#` is bound and every later user gets in through it.
    covered = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(2, 10)]
    await asyncio.wait_for(asyncio.gather(*covered), 2)
    assert bindings.covers == {"user"}
    second.open.set()  # it answers what the second channel took while the cover was not yet confirmed
    await asyncio.sleep(0.2)
    sent_before = len(second.sent)
    more = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(10, 20)]
    await asyncio.wait_for(asyncio.gather(*more), 2)
    await asyncio.sleep(0.2)
    # None of the waiting binds is urgent now: the second channel stays idle, the first sends them a batch at a
    # time (it is still waiting for RabbitMQ's answer to its first).
    assert len(second.sent) == sent_before

    # A bind no cover stands in for (past NOTIFIER_BIND_MAX_COVERS) is urgent again: every channel sends.
    urgent = asyncio.create_task(bindings.bind("room.1"))
    await asyncio.sleep(0.2)
    assert len(second.sent) > sent_before
    for channel in (first, second):
        channel.open.set()
    await asyncio.wait_for(asyncio.gather(urgent, *waiting), 2)
    await asyncio.sleep(0.2)
    assert bindings.waiting == 0
    assert bindings.covers == frozenset()
    sent = sorted(topic for channel in (first, second) for kind, topic, _ in channel.sent if kind == "bind")
    assert sent == sorted([*(f"user.{n}" for n in range(20)), "room.1"])


class SlowChannel(RecordingChannel):
    """RabbitMQ busy: every confirmed bind is answered `delay_s` after it was sent; records when each was sent."""

    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.delay_s = delay_s
        self.barriers: list[tuple[float, str]] = []

    async def queue_bind(self, queue: str, exchange: str, routing_key: str) -> None:
        self.barriers.append((asyncio.get_running_loop().time(), routing_key))
        self.sent.append(("bind", routing_key, False))
        await asyncio.sleep(self.delay_s)


async def test_binds_a_cover_stands_in_for_leave_the_broker_time_between_batches(stop_after: list[Bindings]) -> None:
    binds, others = SlowChannel(0.1), RecordingChannel()
    bindings = await make_with_cover(binds, others, cover_at=1, max_covers=1, batch=2)
    stop_after.append(bindings)
    users = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(8)]
    await asyncio.wait_for(asyncio.gather(*users), 2)  # all in through `user.#`
    assert bindings.covers == {"user"}
    while bindings.waiting:
        await asyncio.sleep(0.01)
    # Once every waiting bind was covered, each batch came twice its answer's time after the last one's answer.
    times = [sent_at for sent_at, _ in binds.barriers]
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[1:])]  # the first may be urgent
    assert gaps and min(gaps) >= 0.25, gaps
    await asyncio.sleep(0.05)
    assert bindings.covers == frozenset()  # every bind it stood in for is confirmed: the cover is gone


async def test_a_bind_no_cover_stands_in_for_is_not_held_back(stop_after: list[Bindings]) -> None:
    binds, others = SlowChannel(0.1), RecordingChannel()
    bindings = await make_with_cover(binds, others, cover_at=1, max_covers=1, batch=2)
    stop_after.append(bindings)
    users = [asyncio.create_task(bindings.bind(f"user.{n}")) for n in range(8)]
    await asyncio.wait_for(asyncio.gather(*users), 2)
    while len(binds.barriers) < 2:  # the covered batches are going out with rests between them
        await asyncio.sleep(0.01)
    # `room.1` needs a cover past NOTIFIER_BIND_MAX_COVERS, so it waits for its own bind: no more rests.
    started = asyncio.get_running_loop().time()
    await asyncio.wait_for(bindings.bind("room.1"), 2)
    waited = asyncio.get_running_loop().time() - started
    # Without rests: at most the batch in flight, then the older covered binds (3 batches), then room.1's own,
    # 0.1 s each; with a rest of 0.2 s before each it would take over a second.
    assert waited < 0.75, waited
    assert ("bind", "room.1", False) in binds.sent or ("bind", "room.1", True) in binds.sent
