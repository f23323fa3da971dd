"""The whole path as users meet it: RabbitMQ in, authenticated WebSockets out."""

from __future__ import annotations

import asyncio

import aio_pika
import httpx
import orjson
import pytest
import websockets

from tests.processes import StartNotifier, notifier_env
from tests.support import (
    API_KEY,
    ConnectClient,
    Publisher,
    RunningServer,
    StartServer,
    assert_nothing_before_sentinel,
    bindings_of,
    free_port,
    receive_json,
    token_for,
)

# The core socket tests run over both write paths: uvicorn's transport and plain ASGI sends.
OVER_BOTH_WRITE_PATHS = pytest.mark.usefixtures("write_path")


@OVER_BOTH_WRITE_PATHS
async def test_welcome_subscribes_personal_topic(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server)
    await client.send({"type": "auth", "token": token_for("alice")})
    welcome = await client.receive()
    assert welcome["type"] == "welcome"
    assert welcome["user"] == "alice"
    assert welcome["topics"] == ["user.alice"]
    assert isinstance(welcome["expires"], int)


@OVER_BOTH_WRITE_PATHS
async def test_events_from_an_aio_pika_publisher_reach_subscribers(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    alice = await connect(server, "alice", topics=["news.#"])
    assert await alice.subscribe("news.sport") == {"type": "subscribed", "topic": "news.sport", "id": "news.sport"}

    await publisher.publish("user.alice", {"text": "hi alice"}, message_id="evt-1")
    event = await alice.expect_event("user.alice")
    assert event["id"] == "evt-1"
    assert event["data"] == {"text": "hi alice"}
    assert isinstance(event["ts"], int)

    await publisher.publish("news.sport", [1, 2, 3])
    event = await alice.expect_event("news.sport")
    assert event["data"] == [1, 2, 3]
    assert len(event["id"]) == 32  # assigned by the service when the publisher leaves message_id out


@OVER_BOTH_WRITE_PATHS
async def test_events_published_over_http_reach_subscribers(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.post(
            "/api/publish",
            json={"topic": "user.alice", "data": {"n": 1}, "id": "my-id"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
    assert response.status_code == 202
    assert response.json() == {"id": "my-id", "topic": "user.alice"}
    event = await alice.expect_event("user.alice")
    assert (event["id"], event["data"]) == ("my-id", {"n": 1})


@OVER_BOTH_WRITE_PATHS
async def test_nothing_arrives_for_topics_not_subscribed(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    alice = await connect(server, "alice", topics=["news.#"])
    bob = await connect(server, "bob", topics=["news.#"])
    assert (await bob.subscribe("news.sport"))["type"] == "subscribed"

    await publisher.publish("user.bob", {"for": "bob"})
    await publisher.publish("news.sport", {"for": "subscribers"})
    await publisher.publish("news.weather", {"for": "nobody"})

    assert (await bob.expect_event("user.bob"))["data"] == {"for": "bob"}
    assert (await bob.expect_event("news.sport"))["data"] == {"for": "subscribers"}
    await assert_nothing_before_sentinel(bob.receive, publisher.publish, "user.bob")
    await assert_nothing_before_sentinel(alice.receive, publisher.publish, "user.alice")


@OVER_BOTH_WRITE_PATHS
async def test_unsubscribe_stops_delivery(server: RunningServer, connect: ConnectClient, publisher: Publisher) -> None:
    alice = await connect(server, "alice", topics=["news.*"])
    await alice.subscribe("news.sport")
    answer = await alice.request({"type": "unsubscribe", "topic": "news.sport", "id": 9})
    assert answer == {"type": "unsubscribed", "topic": "news.sport", "id": 9}
    await publisher.publish("news.sport", {"late": True})
    await publisher.publish("user.alice", {"marker": True})
    assert (await alice.expect_event())["topic"] == "user.alice"


@OVER_BOTH_WRITE_PATHS
async def test_forbidden_topic_gets_forbidden_error(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice", topics=["news.*"])
    for topic in ("user.bob", "user.alicex", "news.sport.live", "orders.1"):
        answer = await alice.request({"type": "subscribe", "topic": topic, "id": 7})
        assert answer["type"] == "error", answer
        assert (answer["code"], answer["id"], answer["topic"]) == ("forbidden", 7, topic)
    assert (await alice.subscribe("user.alice.inbox"))["type"] == "subscribed"


async def test_pattern_grant_allows_other_users_topic(server: RunningServer, connect: ConnectClient) -> None:
    support = await connect(server, "agent", topics=["user.*.tickets"])
    assert (await support.subscribe("user.bob.tickets"))["type"] == "subscribed"
    assert (await support.subscribe("user.bob"))["code"] == "forbidden"


async def test_poisoned_message_is_dead_lettered_and_next_event_still_delivered(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    alice = await connect(server, "alice")
    await publisher.publish("user.alice", body=b"{not json", message_id="poison")
    await publisher.publish("user.alice", body=b"x" * (server.settings.max_event_bytes + 1), message_id="huge")
    await publisher.publish("user.alice", {"ok": True}, message_id="good")

    event = await alice.expect_event("user.alice")
    assert event["id"] == "good"

    channel = await publisher.connection.channel()
    dead_queue = await channel.declare_queue(f"{exchange}.dead", passive=True)
    reasons = {}
    for _ in range(2):
        message = await dead_queue.get(timeout=5)
        assert message is not None
        assert message.routing_key == "user.alice"
        reasons[message.message_id] = message.headers["x-notifier-error"]
        await message.ack()
    assert reasons.keys() == {"huge", "poison"}
    assert str(reasons["poison"]).startswith("body is not JSON")
    assert str(reasons["huge"]) == f"body is {server.settings.max_event_bytes + 1} bytes, over the limit of " + str(
        server.settings.max_event_bytes
    )
    assert await dead_queue.get(fail=False) is None, "each unusable message is dead-lettered once"


async def test_two_instances_bind_only_their_clients_topics_and_deliver_only_to_them(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    first = await start_server(bind_linger_s=0.5)
    second = await start_server(bind_linger_s=0.5)
    alice = await connect(first, "alice", topics=["rooms.*"])
    bob = await connect(second, "bob", topics=["rooms.*"])
    await alice.subscribe("rooms.red")
    await bob.subscribe("rooms.blue")

    first_queue = first.node.broker.queue_name  # type: ignore[attr-defined]
    second_queue = second.node.broker.queue_name  # type: ignore[attr-defined]
    bindings = await asyncio.to_thread(bindings_of, exchange)
    assert bindings == {first_queue: {"user.alice", "rooms.red"}, second_queue: {"user.bob", "rooms.blue"}}

    await publisher.publish("rooms.red", "red")
    await publisher.publish("rooms.blue", "blue")
    await publisher.publish("user.bob", "to bob")
    assert (await alice.expect_event("rooms.red"))["data"] == "red"
    assert (await bob.expect_event("rooms.blue"))["data"] == "blue"
    assert (await bob.expect_event("user.bob"))["data"] == "to bob"
    await assert_nothing_before_sentinel(alice.receive, publisher.publish, "user.alice")
    assert first.node.stats.events_in == 2  # RabbitMQ routed only alice's events (hers and the sentinel) here

    # The last subscriber leaving unbinds the topic at the broker, once it lingered NOTIFIER_BIND_LINGER_S.
    await alice.request({"type": "unsubscribe", "topic": "rooms.red"})
    await alice.close()
    await bob.close()
    for _ in range(100):
        bindings = await asyncio.to_thread(bindings_of, exchange)
        if not bindings:
            break
        await asyncio.sleep(0.1)
    assert bindings == {}


@OVER_BOTH_WRITE_PATHS
async def test_many_subscribers_of_one_topic_share_one_binding(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    clients = [await connect(server, f"u{i}", topics=["broadcast"]) for i in range(20)]
    for client in clients:
        assert (await client.subscribe("broadcast"))["type"] == "subscribed"
    assert server.node.hub.subscriber_count("broadcast") == 20
    await publisher.publish("broadcast", {"all": True})
    for client in clients:
        assert (await client.expect_event("broadcast"))["data"] == {"all": True}
    assert server.node.stats.events_in == 1


@OVER_BOTH_WRITE_PATHS
async def test_event_data_passes_through_unchanged(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    alice = await connect(server, "alice")
    values = ['text with "quotes" and ünïcödé', 3.5, None, True, {"nested": {"list": [1, {"a": []}]}}]
    for value in values:
        await publisher.publish("user.alice", body=orjson.dumps(value))
    received = [(await alice.expect_event("user.alice"))["data"] for _ in values]
    assert received == values


@OVER_BOTH_WRITE_PATHS
async def test_subscribed_is_sent_only_after_the_binding_exists(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    alice = await connect(server, "alice", topics=["flash.*"])
    for round_ in range(10):
        topic = f"flash.t{round_}"
        assert (await alice.subscribe(topic))["type"] == "subscribed"
        await publisher.publish(topic, round_)  # published right after `subscribed`: must arrive
        assert (await alice.expect_event(topic))["data"] == round_


async def test_readyz_and_healthz(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json() == {"status": "ready"}


@OVER_BOTH_WRITE_PATHS
async def test_amqp_timestamp_becomes_event_ts(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    import datetime

    alice = await connect(server, "alice")
    stamp = datetime.datetime(2030, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    message = aio_pika.Message(b"1", content_type="application/json", timestamp=stamp)
    await publisher.exchange.publish(message, routing_key="user.alice")
    assert (await alice.expect_event())["ts"] == int(stamp.timestamp() * 1000)


async def test_existing_dead_letter_queue_with_other_limits_is_kept(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, exchange: str
) -> None:
    channel = await publisher.connection.channel()
    await channel.declare_queue(f"{exchange}.dead", durable=True, arguments={"x-max-length": 7})
    running = await start_server(dead_letter_max_length=1000)
    assert running.node.broker.ready
    alice = await connect(running, "alice")
    await publisher.publish("user.alice", body=b"not json")
    await publisher.publish("user.alice", "fine")
    assert (await alice.expect_event())["data"] == "fine"


async def test_restart_after_a_crash_with_a_fixed_instance_id_leaves_no_stale_bindings(
    start_server: StartServer, connect: ConnectClient, exchange: str, start_notifier: StartNotifier
) -> None:
    port = free_port()
    env = notifier_env(port, exchange, NOTIFIER_INSTANCE_ID="fixed", NOTIFIER_QUEUE_EXPIRES_S="60")
    process = await start_notifier("serve", env=env, port=port)
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token_for('alice', ['news.*'])}")
    assert (await receive_json(ws))["type"] == "welcome"
    await ws.send('{"type": "subscribe", "topic": "news.old"}')
    assert (await receive_json(ws))["type"] == "subscribed"
    process.kill()  # a crash: no drain, no unbinding
    await process.wait()
    second = await start_server(instance_id="fixed", queue_expires_s=60)
    await connect(second, "bob")
    queue = second.node.broker.queue_name  # type: ignore[attr-defined]
    assert await asyncio.to_thread(bindings_of, exchange) == {queue: {"user.bob"}}
    await second.stop()
    connection = await aio_pika.connect(second.settings.amqp_url)
    async with connection:
        await (await connection.channel()).queue_delete(queue)
