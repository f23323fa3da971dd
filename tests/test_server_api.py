"""The server API over two live instances on the real RabbitMQ: each command sent to one instance reaches the
user's connections on the other, presence counts over both, batches are all or nothing, ids are not
published twice, and bad input gets a specific JSON error."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aio_pika
import httpx
import pytest

from notifier.formats import closecodes
from tests.faults import close_connections_named
from tests.support import (
    API_KEY,
    ConnectClient,
    RunningServer,
    StartServer,
    assert_nothing_before_sentinel,
    publish_over_http,
    token_for,
    wait_until,
)

pytestmark = pytest.mark.rabbitmq

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def pair(start_server: StartServer) -> tuple[RunningServer, RunningServer]:
    """Two instances on one exchange, each knowing of the other (heartbeats seen)."""
    first = await start_server(instance_id=f"a{time.monotonic_ns() % 10**8}")
    second = await start_server(instance_id=f"b{time.monotonic_ns() % 10**8}")
    await wait_until(lambda: len(control_of(first).live_instances()) == 2, 5)
    await wait_until(lambda: len(control_of(second).live_instances()) == 2, 5)
    return first, second


def control_of(running: RunningServer) -> Any:
    return running.server.config.app.state.control  # type: ignore[union-attr]


async def api(
    running: RunningServer, method: str, path: str, headers: dict[str, str] | None = None, **kwargs: Any
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=running.http_url, timeout=5) as http:
        return await http.request(method, path, headers={**AUTH, **(headers or {})}, **kwargs)


async def test_disconnect_closes_every_connection_of_the_user_on_the_other_instance(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice_here = await connect(first, "alice")
    alice_there = await connect(second, "alice")
    bob = await connect(second, "bob")
    started = time.monotonic()
    response = await api(first, "POST", "/api/disconnect", json={"user": "alice"})
    assert response.status_code == 202, response.text
    assert response.json()["user"] == "alice"
    await asyncio.gather(
        alice_here.expect_close(closecodes.DISCONNECTED.code, timeout=2),
        alice_there.expect_close(closecodes.DISCONNECTED.code, timeout=2),
    )
    assert time.monotonic() - started < 2
    assert alice_there.ws.close_reason == "disconnected by the server"
    assert (await bob.request({"type": "ping", "id": 1}))["type"] == "pong"  # another user is untouched


async def test_disconnect_reason_is_sent_as_the_close_reason(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice = await connect(second, "alice")
    response = await api(first, "POST", "/api/disconnect", json={"user": "alice", "reason": "session revoked"})
    assert response.status_code == 202
    await alice.expect_close(4503, timeout=2)
    assert alice.ws.close_reason == "session revoked"


async def test_unsubscribe_takes_the_topic_from_the_user_on_the_other_instance(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice = await connect(second, "alice", topics=["news.*"])
    carol = await connect(second, "carol", topics=["news.*"])
    for client in (alice, carol):
        assert (await client.subscribe("news.sport"))["type"] == "subscribed"
    assert (await alice.subscribe("news.alice-only"))["type"] == "subscribed"
    assert "news.alice-only" in second.node.hub.bound_topics

    response = await api(first, "POST", "/api/unsubscribe", json={"user": "alice", "topic": "news.sport"})
    assert response.status_code == 202, response.text
    assert await alice.receive(2) == {"type": "unsubscribed", "topic": "news.sport", "id": None, "reason": "server"}
    response = await api(first, "POST", "/api/unsubscribe", json={"user": "alice", "topic": "news.alice-only"})
    assert await alice.receive(2) == {
        "type": "unsubscribed",
        "topic": "news.alice-only",
        "id": None,
        "reason": "server",
    }
    # The last local subscriber left: the binding is released as usual.
    await wait_until(lambda: "news.alice-only" not in second.node.hub.bound_topics, 2)

    for topic in ("news.sport", "news.alice-only"):
        assert (await api(first, "POST", "/api/publish", json={"topic": topic, "data": topic})).status_code == 202
    assert (await carol.expect_event("news.sport"))["data"] == "news.sport"
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(first), "user.alice")
    assert (await alice.request({"type": "ping", "id": 2}))["type"] == "pong"  # the connection stays open


async def test_presence_counts_connections_over_every_instance(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    for running in (first, first, second):
        await connect(running, "alice")
    started = time.monotonic()
    response = await api(first, "GET", "/api/presence", params={"user": "alice"})
    assert time.monotonic() - started < 1
    assert response.status_code == 200
    assert response.json() == {"user": "alice", "online": True, "connections": 3, "instances": 2}
    response = await api(second, "GET", "/api/presence", params={"user": "nobody"})
    assert response.json() == {"user": "nobody", "online": False, "connections": 0, "instances": 2}


async def test_batch_publish_is_all_or_nothing(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice = await connect(second, "alice")
    good = [{"topic": "user.alice", "data": n} for n in range(3)]
    response = await api(first, "POST", "/api/publish", json={"events": good})
    assert response.status_code == 202, response.text
    ids = response.json()["ids"]
    assert len(ids) == 3
    received = [await alice.expect_event("user.alice") for _ in range(3)]
    assert [frame["data"] for frame in received] == [0, 1, 2]
    assert [frame["id"] for frame in received] == ids

    bad = [*good[:2], {"topic": "user..alice", "data": 2}, *good]
    response = await api(first, "POST", "/api/publish", json={"events": bad})
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_topic"
    assert body["index"] == 2
    assert body["message"].startswith("events[2]:")
    # Not even the valid events before it.
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(first), "user.alice")


async def test_a_thousand_events_in_one_batch(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice = await connect(second, "alice")
    events = [{"topic": "user.alice", "data": n} for n in range(1000)]
    response = await api(first, "POST", "/api/publish", json={"events": events})
    assert response.status_code == 202
    assert len(set(response.json()["ids"])) == 1000
    received = {(await alice.expect_event())["data"] for _ in range(1000)}
    assert received == set(range(1000))


async def test_batch_over_the_limit_is_refused(start_server: StartServer) -> None:
    running = await start_server(max_publish_batch=3)
    events = [{"topic": "a", "data": n} for n in range(4)]
    response = await api(running, "POST", "/api/publish", json={"events": events})
    assert response.status_code == 422
    assert response.json()["error"] == "too_many_events"


async def test_a_repeated_id_is_published_once(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice = await connect(second, "alice")
    event = {"topic": "user.alice", "data": "once", "id": "order-1-shipped"}
    for _ in range(2):
        response = await api(first, "POST", "/api/publish", json=event)
        assert response.status_code == 202
        assert response.json()["id"] == "order-1-shipped"
    # In a batch too: the repeat is skipped, the new event is published.
    batch = {"events": [event, {"topic": "user.alice", "data": "new", "id": "order-2-shipped"}]}
    response = await api(first, "POST", "/api/publish", json=batch)
    assert response.json()["ids"] == ["order-1-shipped", "order-2-shipped"]
    assert (await alice.expect_event())["data"] == "once"
    assert (await alice.expect_event())["data"] == "new"
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(first), "user.alice")


async def test_concurrent_requests_with_one_id_publish_it_once(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    first, second = pair
    alice = await connect(second, "alice")
    event = {"topic": "user.alice", "data": "x", "id": "same-id"}
    responses = await asyncio.gather(*(api(first, "POST", "/api/publish", json=event) for _ in range(5)))
    assert {response.status_code for response in responses} == {202}
    await alice.expect_event("user.alice")
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(first), "user.alice")


async def test_dedupe_window_is_a_setting(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(publish_dedupe_window_s=0)
    alice = await connect(running, "alice")
    event = {"topic": "user.alice", "data": "x", "id": "same-id"}
    for _ in range(2):
        assert (await api(running, "POST", "/api/publish", json=event)).status_code == 202
    await alice.expect_event()
    await alice.expect_event()


BAD_REQUESTS = [
    # (method, path, body or params, status, error code)
    ("POST", "/api/disconnect", b"not json", 422, "bad_request"),
    ("POST", "/api/disconnect", b"[]", 422, "bad_request"),
    ("POST", "/api/disconnect", {}, 422, "invalid_user"),
    ("POST", "/api/disconnect", {"user": "a.b"}, 422, "invalid_user"),
    ("POST", "/api/disconnect", {"user": 7}, 422, "invalid_user"),
    ("POST", "/api/disconnect", {"user": "a", "reason": "x" * 101}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a", "reason": 5}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a", "reason": "revoked\r\nX-Injected: 1"}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a", "reason": "nul\u0000byte"}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a", "reason": "c1\u0085next line"}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a", "extra": 1}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a", "id": "has space"}, 422, "bad_request"),
    ("POST", "/api/disconnect", {"user": "a" * 5000}, 413, "too_large"),
    ("POST", "/api/unsubscribe", {"user": "a"}, 422, "invalid_topic"),
    ("POST", "/api/unsubscribe", {"user": "a", "topic": "news.#"}, 422, "invalid_topic"),
    ("POST", "/api/unsubscribe", {"topic": "news"}, 422, "invalid_user"),
    ("POST", "/api/unsubscribe", {"user": "a", "topic": "b", "more": 1}, 422, "bad_request"),
    ("GET", "/api/presence", {}, 422, "invalid_user"),
    ("GET", "/api/presence", {"user": ""}, 422, "invalid_user"),
    ("GET", "/api/presence", {"user": "a.b"}, 422, "invalid_user"),
    ("GET", "/api/presence", {"user": "a", "other": "b"}, 422, "bad_request"),
    ("POST", "/api/publish", {"events": []}, 422, "bad_request"),
    ("POST", "/api/publish", {"events": "x"}, 422, "bad_request"),
    ("POST", "/api/publish", {"events": [{"topic": "a", "data": 1}], "topic": "a"}, 422, "bad_request"),
    ("POST", "/api/publish", {"events": [{"topic": "a", "data": 1}, 5]}, 422, "bad_request"),
    ("POST", "/api/publish", {"events": [{"topic": "a"}]}, 422, "bad_request"),
    ("POST", "/api/publish", {"events": [{"topic": "a", "data": 1, "id": "x"}] * 2}, 422, "duplicate_id"),
    ("POST", "/api/publish", {"events": [{"topic": "a", "data": "x" * 70_000}]}, 422, "too_large"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "code"), BAD_REQUESTS)
async def test_bad_input_gets_a_specific_error(
    server: RunningServer, method: str, path: str, body: Any, status: int, code: str
) -> None:
    if method == "GET":
        response = await api(server, method, path, params=body)
    elif isinstance(body, bytes):
        response = await api(server, method, path, content=body, headers={"Content-Type": "application/json"})
    else:
        response = await api(server, method, path, json=body)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code
    assert response.json()["message"]
    names_an_event = path == "/api/publish" and body.get("events") and isinstance(body["events"], list)
    if names_an_event and "topic" not in body:  # a bad event in a batch: the answer says which
        assert isinstance(response.json()["index"], int)


@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/api/disconnect"), ("POST", "/api/unsubscribe"), ("GET", "/api/presence")]
)
@pytest.mark.parametrize(
    ("headers", "status", "code"),
    [({}, 401, "unauthorized"), ({"Authorization": "Bearer wrong"}, 403, "forbidden")],
)
async def test_server_api_needs_a_known_api_key(
    server: RunningServer, method: str, path: str, headers: dict[str, str], status: int, code: str
) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        response = await http.request(method, path, headers=headers, params={"user": "a"})
    assert response.status_code == status
    assert response.json()["error"] == code


async def test_server_api_answers_503_while_the_broker_is_down(start_server: StartServer) -> None:
    from tests.support import amqp_url_through, free_port

    running = await start_server(amqp_url=amqp_url_through(free_port()), broker_timeout_s=1)
    for method, path, kwargs in [
        ("POST", "/api/disconnect", {"json": {"user": "a"}}),
        ("POST", "/api/unsubscribe", {"json": {"user": "a", "topic": "b"}}),
        ("GET", "/api/presence", {"params": {"user": "a"}}),
    ]:
        response = await api(running, method, path, **kwargs)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable"


async def test_garbage_on_the_control_exchange_is_dropped_and_commands_go_on(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient, rabbitmq: str, exchange: str
) -> None:
    first, second = pair
    alice = await connect(second, "alice")
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel()
        control = await channel.get_exchange(f"{exchange}.control")
        for message in [
            aio_pika.Message(b"not json", type="command", message_id="g1"),
            aio_pika.Message(b'{"kind": 5}', type="command", message_id="g2"),
            aio_pika.Message(b'{"kind": "disconnect", "args": {"user": "a.b"}}', type="command", message_id="g3"),
            aio_pika.Message(b'{"kind": "nope"}', type="command", message_id="g4"),
            aio_pika.Message(b'{"kind": "disconnect"}', type="command"),  # no id
            aio_pika.Message(b"x", type="surprise", message_id="g5"),
        ]:
            await control.publish(message, routing_key="all")
    await wait_until(lambda: control_of(second).dropped >= 3, 3)
    response = await api(first, "POST", "/api/disconnect", json={"user": "alice"})
    assert response.status_code == 202
    await alice.expect_close(4503, timeout=2)


async def test_commands_reach_an_instance_after_its_broker_connection_was_closed(
    pair: tuple[RunningServer, RunningServer], connect: ConnectClient
) -> None:
    """RabbitMQ closes the second instance's connection (only that one, by its name); the control plane
    comes back with it."""
    first, second = pair
    alice = await connect(second, "alice")
    reconnects = second.node.broker.reconnects
    assert await asyncio.to_thread(close_connections_named, f"notifier {second.settings.instance_id}") == 1
    await wait_until(lambda: second.node.broker.reconnects > reconnects, 15)

    async def presence_sees_alice() -> bool:
        response = await api(first, "GET", "/api/presence", params={"user": "alice"})
        return bool(response.json()["connections"] == 1)

    await wait_until(presence_sees_alice, 10, interval=0.2)
    response = await api(first, "POST", "/api/disconnect", json={"user": "alice"})
    assert response.status_code == 202
    await alice.expect_close(4503, timeout=2)


async def test_server_api_works_on_the_memory_broker(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(amqp_url="memory://")
    alice = await connect(running, "alice", topics=["news.*"])
    assert (await alice.subscribe("news.sport"))["type"] == "subscribed"
    response = await api(running, "GET", "/api/presence", params={"user": "alice"})
    assert response.json() == {"user": "alice", "online": True, "connections": 1, "instances": 1}
    assert (await api(running, "POST", "/api/unsubscribe", json={"user": "alice", "topic": "news.sport"})).is_success
    assert (await alice.receive(2))["reason"] == "server"
    assert (await api(running, "POST", "/api/disconnect", json={"user": "alice"})).status_code == 202
    await alice.expect_close(4503, timeout=2)


async def test_openapi_describes_the_server_api_and_the_docs_page_is_served_locally(server: RunningServer) -> None:
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        schema = (await http.get("/openapi.json")).json()
        for path, method in [
            ("/api/publish", "post"),
            ("/api/disconnect", "post"),
            ("/api/unsubscribe", "post"),
            ("/api/presence", "get"),
        ]:
            operation = schema["paths"][path][method]
            assert operation["security"] == [{"apiKey": []}]
            assert "422" in operation["responses"]
        publish_body = schema["paths"]["/api/publish"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert {tuple(sorted(option["properties"])) for option in publish_body["oneOf"]} == {
            ("data", "id", "topic"),
            ("events",),
        }
        assert schema["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
        assert API_KEY not in str(schema)
        page = await http.get("/docs")
        assert page.status_code == 200
        assert "http://" not in page.text and "https://" not in page.text  # nothing from a CDN
        for asset in ("swagger-ui-bundle.js", "swagger-ui.css"):
            assert f"/docs/assets/{asset}" in page.text
            assert (await http.get(f"/docs/assets/{asset}")).status_code == 200


async def test_disconnect_ends_a_parked_session_so_it_cannot_be_resumed(
    server: RunningServer, connect: ConnectClient
) -> None:
    first = await connect(server)
    await first.send({"type": "auth", "token": token_for("alice")})
    welcome = await first.receive()
    first.ws.transport.abort()  # the connection dies without a close: the session is parked for a resume
    await wait_until(lambda: server.node.directory.parked_count == 1, 5)

    response = await api(server, "POST", "/api/disconnect", json={"user": "alice"})
    assert response.status_code == 202
    await wait_until(lambda: server.node.directory.parked_count == 0, 2)
    second = await connect(server)
    await second.send(
        {"type": "auth", "token": token_for("alice"), "resume": {"session": welcome["session"], "received": 0}}
    )
    assert (await second.receive())["recovered"] is False
