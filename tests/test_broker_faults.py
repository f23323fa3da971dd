"""Broker faults caused for real: connections closed by RabbitMQ, a cut network, a broker restart, a stop."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import httpx
import pytest
import websockets

from notifier.formats import closecodes
from tests.faults import CuttableProxy, close_connections_named
from tests.support import (
    API_KEY,
    ConnectClient,
    Publisher,
    RunningServer,
    StartServer,
    amqp_url_through,
    assert_nothing_before_sentinel,
    bindings_of,
    rabbitmqctl,
    wait_until,
)

OUTAGE_S = 30.0


async def readyz(running: RunningServer) -> int:
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        return (await http.get("/readyz")).status_code


async def test_connection_closed_by_rabbitmq_is_restored_with_its_bindings(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    alice = await connect(server, "alice", topics=["news.*"])
    await alice.subscribe("news.a")
    instance_id = server.node.broker.instance_id

    broker = server.node.broker
    assert await asyncio.to_thread(close_connections_named, instance_id) >= 1
    await wait_until(lambda: broker.reconnects == 1, 20)
    assert broker.ready
    assert await readyz(server) == 200

    assert await alice.request({"type": "ping", "id": "still-open"}) == {"type": "pong", "id": "still-open"}
    await publisher.publish("news.a", "after the drop")
    await publisher.publish("user.alice", "personal too")
    assert (await alice.expect_event("news.a"))["data"] == "after the drop"
    assert (await alice.expect_event("user.alice"))["data"] == "personal too"
    assert (await alice.subscribe("news.b"))["type"] == "subscribed"


async def test_instance_queue_deleted_under_a_running_instance_is_declared_bound_again_and_clients_told(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    alice = await connect(server, "alice", topics=["news.*"])
    await alice.subscribe("news.a")
    queue = server.node.broker.queue_name  # type: ignore[attr-defined]
    connection = await aio_pika.connect(server.settings.amqp_url)
    async with connection:
        await (await connection.channel()).queue_delete(queue)

    async def bound_again() -> bool:
        return (await asyncio.to_thread(bindings_of, exchange)).get(queue) == {"user.alice", "news.a"}

    # RabbitMQ cancels the consumer of a deleted queue; the instance declares it again and binds its topics again.
    await wait_until(bound_again, 20, interval=0.5)
    # Events routed while there was no queue are lost: the client is told, once its topics are routed again.
    assert await alice.receive() == {"type": "resync", "reason": "routing_lost"}
    assert server.node.broker.routing_gaps == 1
    await publisher.publish("news.a", "after the delete")
    await publisher.publish("user.alice", "personal too")
    assert (await alice.expect_event("news.a"))["data"] == "after the delete"
    assert (await alice.expect_event("user.alice"))["data"] == "personal too"


async def test_events_redelivered_after_a_lost_acknowledgement_reach_clients_once(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, proxy: CuttableProxy
) -> None:
    running = await start_server(amqp_url=amqp_url_through(proxy.port), broker_heartbeat_s=20)
    alice = await connect(running, "alice")
    broker = running.node.broker
    proxy.slow_down(3.0)  # what the instance sends RabbitMQ (its acknowledgements) is held on the way
    published = [f"held-{n}" for n in range(20)]
    for event_id in published:
        await publisher.publish("user.alice", {"id": event_id}, message_id=event_id)
    assert [(await alice.expect_event("user.alice"))["id"] for _ in published] == published
    proxy.cut()  # the acknowledgements are lost with the connection: RabbitMQ delivers the 20 again
    proxy.slow_down(0)
    proxy.restore()
    await wait_until(lambda: broker.reconnects == 1 and broker.ready, 20)
    # Each was handed to alice already: the redelivered copies (ahead of the sentinel in the queue) are dropped.
    await assert_nothing_before_sentinel(alice.receive, publisher.publish, "user.alice")
    assert broker.redeliveries_dropped == len(published)


@pytest.mark.slow  # a 30 s outage
async def test_no_event_is_lost_across_an_outage(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, proxy: CuttableProxy
) -> None:
    running = await start_server(
        amqp_url=amqp_url_through(proxy.port), queue_expires_s=OUTAGE_S * 2, broker_timeout_s=2
    )
    alice = await connect(running, "alice", topics=["orders.*"])
    await alice.subscribe("orders.eu")

    proxy.cut()
    await wait_until(lambda: not running.node.broker.ready, 5, interval=0.01)
    loop = asyncio.get_running_loop()
    outage_ends = loop.time() + OUTAGE_S
    assert await readyz(running) == 503
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        refused = await http.post(
            "/api/publish", json={"topic": "orders.eu", "data": 0}, headers={"Authorization": f"Bearer {API_KEY}"}
        )
    assert refused.status_code == 503  # never a 202 for an event that could be lost
    answer = await alice.request({"type": "subscribe", "topic": "orders.us", "id": "during"})
    assert (answer["type"], answer["code"]) == ("error", "unavailable")

    published = [f"order-{n}" for n in range(200)]
    for event_id in published:  # backends keep publishing to RabbitMQ while this instance is cut off
        await publisher.publish("orders.eu", {"id": event_id}, message_id=event_id)
    assert await alice.request({"type": "ping"}) == {"type": "pong", "id": None}  # the browser stays connected
    await asyncio.sleep(max(0.0, outage_ends - loop.time()))
    assert not running.node.broker.ready

    proxy.restore()
    received = [(await alice.expect_event("orders.eu", timeout=30))["id"] for _ in published]
    assert received == published
    assert await readyz(running) == 200


@pytest.mark.destructive
async def test_broker_restart_is_survived(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, rabbitmq: str, exchange: str
) -> None:
    alice = await connect(server, "alice", topics=["news.*"])
    await alice.subscribe("news.a")
    await asyncio.to_thread(rabbitmqctl, "stop_app")
    try:
        await wait_until(lambda: not server.node.broker.ready, 10)
        assert await readyz(server) == 503
    finally:
        await asyncio.to_thread(rabbitmqctl, "start_app")
        await asyncio.to_thread(rabbitmqctl, "await_startup")
    await wait_until(lambda: server.node.broker.ready, 60)
    assert await readyz(server) == 200
    assert await alice.request({"type": "ping"}) == {"type": "pong", "id": None}

    connection = await aio_pika.connect(rabbitmq)  # the test's own publisher lost its connection too
    async with connection:
        channel = await connection.channel()
        exchange_ = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        for topic in ("news.a", "user.alice"):
            await exchange_.publish(aio_pika.Message(b'"back"', content_type="application/json"), routing_key=topic)
        assert (await alice.expect_event("news.a", timeout=10))["data"] == "back"
        assert (await alice.expect_event("user.alice", timeout=10))["data"] == "back"


async def test_shutdown_loses_nothing_acknowledged(
    proxy: CuttableProxy, start_server: StartServer, connect: ConnectClient, publisher: Publisher, rabbitmq: str
) -> None:
    # Resume off: the drain stops consuming first, so what stays unconsumed stays in the queue. (With resume on,
    # the drain keeps consuming for the sessions being handed over: tests/test_resume.py.)
    running = await start_server(
        amqp_url=amqp_url_through(proxy.port), queue_expires_s=60, send_queue_size=10_000, resume_window_s=0
    )
    alice = await connect(running, "alice", topics=["burst"])
    await alice.subscribe("burst")
    queue_name = running.node.broker.queue_name  # type: ignore[attr-defined]
    published = [f"e{n}" for n in range(20_000)]
    # A backlog builds up in the instance's queue while its line to RabbitMQ is cut.
    proxy.cut()
    for start in range(0, len(published), 1000):
        chunk = published[start : start + 1000]
        await asyncio.gather(*(publisher.publish("burst", event_id, message_id=event_id) for event_id in chunk))
    proxy.restore()

    # Stop as soon as the instance is working through the backlog.
    received = [(await alice.expect_event("burst", timeout=30))["id"]]
    stopping = asyncio.create_task(running.stop())
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            received.append((await alice.expect_event("burst"))["id"])
    assert alice.ws.close_code == closecodes.SHUTDOWN.code
    await stopping

    left_in_queue: list[str] = []
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, passive=True)
        while (message := await queue.get(fail=False, no_ack=True)) is not None:
            assert message.message_id is not None
            left_in_queue.append(message.message_id)
        await queue.delete(if_unused=False, if_empty=False)
    # Every event is either delivered before the close or still in the instance's queue, none twice.
    assert sorted(received + left_in_queue) == sorted(published)
    assert received == published[: len(received)]
    print(f"shutdown: {len(received)} delivered before 1012, {len(left_in_queue)} left in the queue")


async def test_stop_during_an_outage_is_bounded(
    proxy: CuttableProxy, start_server: StartServer, connect: ConnectClient
) -> None:
    running = await start_server(amqp_url=amqp_url_through(proxy.port), broker_timeout_s=1)
    alice = await connect(running, "alice")
    proxy.cut()
    await wait_until(lambda: not running.node.broker.ready, 5, interval=0.01)
    started = asyncio.get_running_loop().time()
    stopping = asyncio.create_task(running.stop())
    await alice.expect_close(closecodes.SHUTDOWN.code)
    await stopping
    assert asyncio.get_running_loop().time() - started < running.settings.shutdown_timeout_s + 5


async def test_queue_overflow_dead_letters_the_oldest(
    proxy: CuttableProxy, start_server: StartServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    running = await start_server(amqp_url=amqp_url_through(proxy.port), queue_max_length=5)
    alice = await connect(running, "alice")
    proxy.cut()
    await wait_until(lambda: not running.node.broker.ready, 5, interval=0.01)
    for n in range(12):
        await publisher.publish("user.alice", n, message_id=f"m{n}")
    proxy.restore()
    received = [(await alice.expect_event("user.alice", timeout=20))["data"] for _ in range(5)]
    assert received == [7, 8, 9, 10, 11]  # the newest five, in order
    await assert_nothing_before_sentinel(alice.receive, publisher.publish, "user.alice")

    channel = await publisher.connection.channel()
    dead_queue = await channel.declare_queue(f"{exchange}.dead", passive=True)
    dead = []
    while (message := await dead_queue.get(fail=False, no_ack=True)) is not None:
        dead.append(message.message_id)
    assert dead == [f"m{n}" for n in range(7)]  # the oldest were dead-lettered, not dropped
