"""Churn soak, bounded in time: thousands of connect / subscribe / disconnect cycles, then the instance is
back where it started (memory, tasks, sessions) and RabbitMQ holds no stale bindings.

`NOTIFIER_SOAK_CYCLES` makes it longer (the default keeps CI fast)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random

import orjson
import pytest
import websockets

from tests.support import ConnectClient, Publisher, StartServer, bindings_of, token_for, wait_until

CYCLES = int(os.environ.get("NOTIFIER_SOAK_CYCLES", "3000"))
CONCURRENCY = 40
TOPICS = [f"room.{n}" for n in range(100)]


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def one_cycle(url: str, rng: random.Random, user: str) -> None:
    async with websockets.connect(f"{url}?token={token_for(user, ['room.*'])}") as ws:
        assert orjson.loads(await ws.recv())["type"] == "welcome"
        for topic in rng.sample(TOPICS, rng.randrange(1, 4)):
            await ws.send(orjson.dumps({"type": "subscribe", "topic": topic}).decode())
            while orjson.loads(await ws.recv())["type"] != "subscribed":
                pass
        if rng.random() < 0.3:
            ws.transport.abort()  # some leave without a close handshake


async def churn(url: str, cycles: int, seed: int) -> None:
    rng = random.Random(seed)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(cycles):
        queue.put_nowait(n)

    async def worker() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            with contextlib.suppress(websockets.ConnectionClosed):  # the aborted ones
                await one_cycle(url, rng, f"u{n % 500}")

    await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))


@pytest.mark.slow  # a soak: thousands of connect / subscribe / disconnect cycles
async def test_churn_leaves_nothing_behind(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    # Aborted connections park their sessions for the resume window; a short one lets the soak see them end.
    running = await start_server(max_connections_per_user=CONCURRENCY, resume_window_s=0.5, bind_linger_s=0)
    node = running.node
    await churn(running.ws_url, 300, seed=0)  # warm-up: imports, caches, allocator pools
    await wait_until(lambda: not node.sessions and not node.directory.parked_count, 10)
    gc.collect()
    rss_before, tasks_before = rss_bytes(), len(asyncio.all_tasks())

    await churn(running.ws_url, CYCLES, seed=1)
    await wait_until(lambda: not node.sessions and not node.directory.parked_count, 15)
    gc.collect()
    rss_after, tasks_after = rss_bytes(), len(asyncio.all_tasks())

    assert node.hub.bound_topics == frozenset()
    assert not node.hub._subscribers and not node.hub._guards
    assert node.admission.users == 0 and node.admission.connections == 0
    # A settle or release task of the last cycles may still be finishing: it must end, not stay.
    await wait_until(lambda: len(asyncio.all_tasks()) <= tasks_before, 5)
    assert rss_after - rss_before < 20 * 2**20, (rss_before, rss_after)

    async def no_binding_left() -> bool:  # unbinds go out in the background, one after the other
        return await asyncio.to_thread(bindings_of, exchange) == {}

    await wait_until(no_binding_left, 60, interval=0.5)

    # And it still serves.
    alice = await connect(running, "alice")
    await publisher.publish("user.alice", "after the soak")
    assert (await alice.expect_event())["data"] == "after the soak"
    print(
        f"soak: {CYCLES} cycles, rss {rss_before / 2**20:.1f} -> {rss_after / 2**20:.1f} MiB, "
        f"tasks {tasks_before} -> {tasks_after}"
    )
