"""Bindings under a slow RabbitMQ and under storms: a late bind costs only the connection that asked, a user who
comes straight back is never refused for its own old connection, and no binding is left behind."""

from __future__ import annotations

import asyncio

import aio_pika
import pytest
import websockets

from notifier.formats import closecodes
from tests.faults import CuttableProxy
from tests.support import (
    Client,
    ConnectClient,
    Publisher,
    RunningServer,
    StartServer,
    amqp_url_through,
    assert_nothing_before_sentinel,
    bindings_of,
    rabbitmqctl,
    token_for,
    wait_until,
)

pytestmark = pytest.mark.rabbitmq


async def open_authenticated(running: RunningServer, user: str) -> tuple[Client, dict[str, object]]:
    """Connect and authenticate `user`; return the client and its first answer (a welcome or a close)."""
    connection = await websockets.connect(running.ws_url, open_timeout=10)
    client = Client(connection)
    try:
        await client.send({"type": "auth", "token": token_for(user)})
        return client, await client.receive(timeout=30)
    except websockets.ConnectionClosed as closed:
        assert closed.rcvd is not None
        return client, {"type": "closed", "code": closed.rcvd.code}


async def test_a_bind_that_times_out_refuses_only_its_own_connection(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, proxy: CuttableProxy, exchange: str
) -> None:
    running = await start_server(amqp_url=amqp_url_through(proxy.port), bind_wait_s=1.0, bind_linger_s=0)
    proxy.slow_down(2.5)  # RabbitMQ answers every bind 2.5 s late, past NOTIFIER_BIND_WAIT_S
    late = await asyncio.gather(*(open_authenticated(running, f"late{n}") for n in range(6)))
    assert [answer for _, answer in late] == [{"type": "closed", "code": closecodes.TRY_AGAIN_LATER.code}] * 6

    proxy.slow_down(0)
    bindings = running.node.broker.bindings  # type: ignore[attr-defined]
    await wait_until(lambda: bindings.waiting == 0, 20)  # the late binds were answered at last
    # The late binds were never cancelled, so no channel was closed under the others: everyone after is welcome.
    clients = [await connect(running, f"prompt{n}") for n in range(12)]
    for n, client in enumerate(clients):
        await publisher.publish(f"user.prompt{n}", n)
        assert (await client.expect_event(f"user.prompt{n}"))["data"] == n
    again, answer = await open_authenticated(running, "late0")
    assert answer["type"] == "welcome"
    await again.close()

    # The late binds completed after their clients were refused, and were undone: only the prompt users stay.
    queue = running.node.broker.queue_name  # type: ignore[attr-defined]

    async def only_prompt_users_bound() -> bool:
        bound = (await asyncio.to_thread(bindings_of, exchange)).get(queue, set())
        return bound == {f"user.prompt{n}" for n in range(12)}

    await wait_until(only_prompt_users_bound, 20, interval=0.3)


async def test_users_who_drop_and_come_back_at_once_are_not_refused_for_their_old_connection(
    start_server: StartServer, proxy: CuttableProxy
) -> None:
    users = [f"back{n}" for n in range(30)]
    running = await start_server(
        amqp_url=amqp_url_through(proxy.port),
        max_connections=len(users),
        max_connections_per_user=1,
        bind_linger_s=0,
    )
    first = await asyncio.gather(*(open_authenticated(running, user) for user in users))
    assert all(answer["type"] == "welcome" for _, answer in first)

    proxy.slow_down(0.5)  # the broker is busy: every unbind and bind is late
    for client, _ in first:
        await client.ws.close()
    second = await asyncio.gather(*(open_authenticated(running, user) for user in users))
    refused = [answer for _, answer in second if answer["type"] != "welcome"]
    assert refused == []
    for client, _ in second:
        await client.close()


async def test_a_connect_and_leave_storm_leaves_no_binding(start_server: StartServer, exchange: str) -> None:
    running = await start_server(bind_linger_s=1.0)
    users = [f"storm{n}" for n in range(300)]
    for _round in range(2):  # connect at once, then all drop and come back at once
        opened = await asyncio.gather(*(open_authenticated(running, user) for user in users))
        assert all(answer["type"] == "welcome" for _, answer in opened)
        await asyncio.gather(*(client.ws.close() for client, _ in opened))

    async def nothing_bound() -> bool:
        return not await asyncio.to_thread(bindings_of, exchange)

    await wait_until(nothing_bound, 30, interval=0.5)
    assert running.node.hub.bound_topics == frozenset()


async def test_connections_wait_their_turn_for_the_broker_up_to_the_bind_queue_size(
    start_server: StartServer, proxy: CuttableProxy
) -> None:
    running = await start_server(amqp_url=amqp_url_through(proxy.port), bind_queue_size=3, bind_wait_s=15)
    proxy.slow_down(1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()

    async def timed(user: str) -> tuple[dict[str, object], float]:
        client, answer = await open_authenticated(running, user)
        await client.close()
        return answer, loop.time() - started

    answers = await asyncio.gather(*(timed(f"queued{n}") for n in range(8)))
    welcomed = [seconds for answer, seconds in answers if answer["type"] == "welcome"]
    refused = [seconds for answer, seconds in answers if answer.get("code") == closecodes.TRY_AGAIN_LATER.code]
    # Three wait for the slow broker and get in; the rest are told at once, not after a timeout.
    assert len(welcomed) == 3 and len(refused) == 5, answers
    assert max(refused) < 1.0 <= min(welcomed)


async def test_a_namespace_cover_routes_each_event_to_the_queue_once(rabbitmq: str, exchange: str) -> None:
    """What a storm's cover relies on: `user.#` matches `user` and every `user.<...>`, and a message that matches
    both the cover and a topic's own binding reaches the queue once."""
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(declared, "user.#")
        await queue.bind(declared, "user.a")
        for topic in ("user.a", "user", "user.b.c", "room.1", "users.a"):
            await declared.publish(aio_pika.Message(topic.encode()), routing_key=topic)
        received = []
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            received.append(message.body.decode())
        assert sorted(received) == ["user", "user.a", "user.b.c"]


async def test_in_a_storm_clients_get_in_under_a_cover_and_each_event_arrives_once(
    start_server: StartServer, publisher: Publisher, proxy: CuttableProxy, exchange: str
) -> None:
    users = [f"covered{n}" for n in range(60)]
    running = await start_server(amqp_url=amqp_url_through(proxy.port), bind_cover_at=5, bind_linger_s=0)
    proxy.slow_down(0.3)  # RabbitMQ is busy: binds pile up
    bindings = running.node.broker.bindings  # type: ignore[attr-defined]

    async def arrive(user: str) -> list[dict[str, object]]:
        client, answer = await open_authenticated(running, user)
        assert answer["type"] == "welcome", answer
        await publisher.publish(f"user.{user}", user)  # right after the welcome, maybe before its own bind
        await publisher.publish("user.nobody-here", user)  # routed here by the cover, held by no one
        frames = [await client.expect_event(f"user.{user}")]
        await assert_nothing_before_sentinel(client.receive, publisher.publish, f"user.{user}")  # and only once
        await client.close()
        return frames

    delivered = await asyncio.gather(*(arrive(user) for user in users))
    assert [frames[0]["data"] for frames in delivered] == users
    assert bindings.covers_bound >= 1
    proxy.slow_down(0)
    queue = running.node.broker.queue_name  # type: ignore[attr-defined]

    async def cover_removed_and_nothing_left() -> bool:
        return not (await asyncio.to_thread(bindings_of, exchange)).get(queue)

    await wait_until(cover_removed_and_nothing_left, 30, interval=0.5)
    assert bindings.covers == frozenset()


async def test_a_lone_instance_stops_at_once_and_takes_its_queue_and_every_binding_with_it(
    start_server: StartServer, exchange: str
) -> None:
    running = await start_server(bind_linger_s=60, shutdown_timeout_s=20)  # resume on (the default)
    users = [f"stopping{n}" for n in range(100)]
    opened = await asyncio.gather(*(open_authenticated(running, user) for user in users))
    assert all(answer["type"] == "welcome" for _, answer in opened)
    queue = running.node.broker.queue_name  # type: ignore[attr-defined]
    assert len((await asyncio.to_thread(bindings_of, exchange))[queue]) == len(users)

    loop = asyncio.get_running_loop()
    stopping = loop.time()
    await running.stop()  # every binding would still be lingering: no unbind has been sent
    # No other instance to hand the sessions to: the stop does not wait for one.
    assert loop.time() - stopping < running.settings.shutdown_timeout_s / 2

    # The delete was sent without waiting for RabbitMQ to finish it: it goes on after the stop.
    async def queue_and_bindings_gone() -> bool:
        queues = await asyncio.to_thread(rabbitmqctl, "list_queues", "name")
        return queue not in queues and await asyncio.to_thread(bindings_of, exchange) == {}

    await wait_until(queue_and_bindings_gone, 10, interval=0.2)
