"""Three instances on one RabbitMQ, as separate processes: RabbitMQ routes each event only to the instances
whose clients hold its topic, and stopping one instance moves nothing else."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from functools import partial
from typing import Any

import orjson
import websockets

from tests.processes import StartNotifier, notifier_env
from tests.support import (
    Publisher,
    assert_nothing_before_sentinel,
    bindings_of,
    free_port,
    receive_json,
    token_for,
    wait_until,
)
from tests.support_workers import instance_queues

QUEUE_EXPIRES_S = 3


async def test_three_instances_route_by_topic_and_survive_one_stopping(
    exchange: str, publisher: Publisher, start_notifier: StartNotifier
) -> None:
    ports = [free_port() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        processes = []
        for n, port in enumerate(ports):
            env = notifier_env(
                port, exchange, NOTIFIER_QUEUE_EXPIRES_S=str(QUEUE_EXPIRES_S), NOTIFIER_INSTANCE_ID=f"i{n}"
            )
            processes.append(await start_notifier("serve", env=env, port=port))

        async def client(port: int, user: str, topics: list[str]) -> Any:
            ws = await stack.enter_async_context(
                websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token_for(user, ['shared.*', 'only.*'])}")
            )
            assert (await receive_json(ws))["type"] == "welcome"
            for topic in topics:
                await ws.send(orjson.dumps({"type": "subscribe", "topic": topic}).decode())
                assert (await receive_json(ws))["type"] == "subscribed"
            return ws

        # Clients spread over the instances; "shared.all" is held on every instance, "only.one" on the first.
        a = await client(ports[0], "a", ["shared.all", "only.one"])
        b = await client(ports[1], "b", ["shared.all"])
        c = await client(ports[2], "c", ["shared.all"])
        queues = [f"{exchange}.instance.i{n}" for n in range(3)]
        bindings = await asyncio.to_thread(bindings_of, exchange)
        assert bindings == {
            queues[0]: {"user.a", "shared.all", "only.one"},
            queues[1]: {"user.b", "shared.all"},
            queues[2]: {"user.c", "shared.all"},
        }

        await publisher.publish("only.one", "for a")
        await publisher.publish("shared.all", "for all")
        await publisher.publish("user.b", "for b")
        assert [(await receive_json(a))["data"] for _ in range(2)] == ["for a", "for all"]
        assert [(await receive_json(b))["data"] for _ in range(2)] == ["for all", "for b"]
        assert (await receive_json(c))["data"] == "for all"
        for user, ws in (("a", a), ("b", b), ("c", c)):
            await assert_nothing_before_sentinel(partial(receive_json, ws), publisher.publish, f"user.{user}")

        # Stop the second instance: its client is told to reconnect, the others keep delivering.
        processes[1].send_signal(signal.SIGTERM)
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(b.recv(), 10)
        assert b.close_code == 1012
        assert await processes[1].wait(15) == 0
        await publisher.publish("shared.all", "after the stop")
        assert (await receive_json(a))["data"] == "after the stop"
        assert (await receive_json(c))["data"] == "after the stop"

        # Its queue is gone from RabbitMQ within the configured expiry.
        await wait_until(lambda: queues[1] not in instance_queues(exchange), QUEUE_EXPIRES_S + 10, interval=0.5)
        assert instance_queues(exchange) == {queues[0], queues[2]}
