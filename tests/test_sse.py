"""The HTTP stream transport (`GET /sse`, docs/protocol.md "Browser side (HTTP stream)") against real `notifier
serve` processes on the real RabbitMQ, read by a raw socket client (tests/support_sse.py) and by curl: the stream,
its commands, every refusal, heartbeats, expiry, slow clients, resume on one instance and across two, between the
two transports, and the drain on SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tests.processes import NotifierProcess, StartNotifier, notifier_env
from tests.support import Client, Publisher, assert_nothing_before_sentinel, free_port, token_for, wait_until
from tests.support_sse import (
    SseStream,
    StreamClient,
    StreamRefused,
    command,
    goodbye,
    metric,
)

pytestmark = pytest.mark.rabbitmq

Serve = Callable[..., Awaitable[NotifierProcess]]
KEY = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]{22,}")


@pytest.fixture
async def serve(start_notifier: StartNotifier, exchange: str) -> Serve:
    """Start `notifier serve` on a free port with the tests' broker and keys; keyword arguments are settings
    (`sse_heartbeat_s=1` is NOTIFIER_SSE_HEARTBEAT_S=1)."""

    async def start(*, ready: bool = True, **settings: object) -> NotifierProcess:
        port = free_port()
        limits = {
            # Every test client comes from 127.0.0.1: the per-address limits have a test of their own.
            "NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS": "100000",
            "NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS": "100000",
            "NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS": "100000",
            "NOTIFIER_LOG_FORMAT": "json",
        }
        chosen = {f"NOTIFIER_{name.upper()}": str(value) for name, value in settings.items()}
        env = notifier_env(port, exchange, **(limits | chosen))
        return await start_notifier("serve", env=env, port=port, ready=ready)

    return start


def publish_to(publisher: Publisher) -> Callable[[str, Any], Awaitable[None]]:
    async def publish(topic: str, data: Any) -> None:
        await publisher.publish(topic, data)

    return publish


async def stream_receive(stream: SseStream) -> Callable[[], Awaitable[dict[str, Any]]]:
    async def receive() -> dict[str, Any]:
        message = await stream.next_message()
        assert message.data is not None
        return message.data

    return receive


async def wait_metric(process: NotifierProcess, name: str, expected: float, timeout: float = 10, **labels: str) -> None:
    async def reached() -> bool:
        return await metric(process.http_url, name, **labels) == expected

    await wait_until(reached, timeout, interval=0.1)


# The stream.


@pytest.mark.parametrize("path", ["auto", "asgi"])
async def test_a_stream_gets_its_welcome_then_events_numbered_for_resume(
    serve: Serve, publisher: Publisher, path: str
) -> None:
    """NOTIFIER_WRITE_PATH: written at once while the connection takes it (auto), or by the writer task (asgi)."""
    server = await serve(write_path=path)
    stream = await SseStream.open(server.http_url, token=token_for("alice"))
    assert stream.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert stream.headers["cache-control"] == "no-cache, no-transform"
    assert stream.headers["x-accel-buffering"] == "no"
    welcome = await stream.expect("welcome")
    assert welcome.data is not None
    session = welcome.data["session"]
    assert welcome.id == f"{session}:0"
    assert (welcome.data["user"], welcome.data["topics"], welcome.data["recovered"]) == ("alice", ["user.alice"], False)
    assert KEY.fullmatch(welcome.data["stream"]), welcome.data["stream"]
    assert welcome.data["heartbeat"] == 15
    for n in range(2):
        await publisher.publish("user.alice", {"n": n})
    first, second = await stream.expect("event"), await stream.expect("event")
    assert (first.id, second.id) == (f"{session}:1", f"{session}:2")
    assert [first.data["data"], second.data["data"]] == [{"n": 0}, {"n": 1}]  # type: ignore[index]
    # Each message is exactly `id:` and one `data:` line of compact JSON, then a blank line.
    text = stream.raw.decode()
    assert f'id: {session}:1\ndata: {{"type":"event","topic":"user.alice","id":' in text
    assert re.fullmatch(r"(id: [^\n]+\ndata: \{[^\n]+\}\n\n)+", text), text
    assert await metric(server.http_url, "notifier_connections", transport="sse") == 1
    assert await metric(server.http_url, "notifier_connections", transport="websocket") == 0
    authenticated = [line for line in server.log_records() if line["event"] == "connection_authenticated"]
    assert authenticated and all(line.get("transport") == "sse" for line in authenticated), authenticated


async def test_an_event_published_with_line_breaks_arrives_on_one_data_line(serve: Serve, publisher: Publisher) -> None:
    server = await serve()
    stream = await SseStream.open(server.http_url, token=token_for("alice"))
    await stream.expect("welcome")
    await publisher.publish("user.alice", body=b'{\r\n  "text": "two\\nlines",\n  "n": [1,\n2]\n}')
    event = await stream.expect("event")
    assert event.data is not None and event.data["data"] == {"text": "two\nlines", "n": [1, 2]}


async def test_commands_are_answered_on_the_stream_matched_by_id(serve: Serve, publisher: Publisher) -> None:
    server = await serve()
    stream = await SseStream.open(server.http_url, token=token_for("alice", ["news.*"]))
    key = (await stream.expect("welcome")).data["stream"]  # type: ignore[index]

    async def ask(frame: dict[str, Any], answer: str) -> dict[str, Any]:
        response = await command(server.http_url, key, frame)
        assert (response.status_code, response.json()) == (202, {"accepted": True})
        message = await stream.expect(answer)
        assert message.id is None, "only the welcome and events carry an id"
        assert message.data is not None
        return message.data

    subscribed = await ask({"type": "subscribe", "topic": "news.sport", "id": 1}, "subscribed")
    assert subscribed == {"type": "subscribed", "topic": "news.sport", "id": 1}
    await publisher.publish("news.sport", "goal")
    assert (await stream.expect("event")).data["data"] == "goal"  # type: ignore[index]
    assert await ask({"type": "ping", "id": "p"}, "pong") == {"type": "pong", "id": "p"}
    forbidden = await ask({"type": "subscribe", "topic": "user.bob", "id": 2}, "error")
    assert (forbidden["code"], forbidden["id"]) == ("forbidden", 2)
    refreshed = await ask({"type": "refresh", "token": token_for("alice", ["news.*"]), "id": 3}, "refreshed")
    assert (refreshed["id"], refreshed["dropped"]) == (3, [])
    unsubscribed = await ask({"type": "unsubscribe", "topic": "news.sport", "id": 4}, "unsubscribed")
    assert unsubscribed == {"type": "unsubscribed", "topic": "news.sport", "id": 4}
    await publisher.publish("news.sport", "not for alice any more")
    await assert_nothing_before_sentinel(await stream_receive(stream), publish_to(publisher), "user.alice")
    assert await metric(server.http_url, "notifier_stream_commands_total", result="accepted") == 5


async def test_bad_commands_get_their_answer_and_the_stream_lives_on(serve: Serve, publisher: Publisher) -> None:
    server = await serve(max_frame_bytes=1024)
    stream = await SseStream.open(server.http_url, token=token_for("alice"))
    key = (await stream.expect("welcome")).data["stream"]  # type: ignore[index]
    for body, code, request_id in [
        (b"not json", "bad_request", None),
        (b"[1, 2]", "bad_request", None),
        (b"", "bad_request", None),
        (b"\xff\xfe{}", "bad_request", None),
        (b'{"type": "dance", "id": 5}', "unknown_type", 5),
        (b'{"type": "subscribe", "topic": 7, "id": 6}', "bad_request", 6),
        (b'{"type": "subscribe", "topic": "a..b", "id": 7}', "invalid_topic", 7),
        (orjson.dumps({"type": "auth", "token": token_for("alice"), "id": 8}), "bad_request", 8),
    ]:
        response = await command(server.http_url, key, body)
        assert response.status_code == 202, (body, response.text)
        error = await stream.expect("error")
        assert error.data is not None and (error.data["code"], error.data["id"]) == (code, request_id), (body, error)
    too_big = await command(server.http_url, key, b'{"type": "ping", "pad": "' + b"x" * 1024 + b'"}')
    assert too_big.status_code == 413
    assert too_big.json()["error"] == "frame_too_big"
    for unknown in (key[:-1] + ("A" if key[-1] != "A" else "B"), "nothing", "a.b"):
        missing = await command(server.http_url, unknown, {"type": "ping"})
        assert (missing.status_code, missing.json()["error"]) == (404, "unknown_stream")
    # The stream is still there, and answers in order.
    assert (await command(server.http_url, key, {"type": "ping", "id": "alive"})).status_code == 202
    assert (await stream.expect("pong")).data == {"type": "pong", "id": "alive"}
    await publisher.publish("user.alice", "still here")
    assert (await stream.expect("event")).data["data"] == "still here"  # type: ignore[index]
    assert await metric(server.http_url, "notifier_stream_commands_total", result="too_big") == 1
    assert await metric(server.http_url, "notifier_stream_commands_total", result="unknown_stream") == 3


async def test_commands_past_the_frame_rate_get_429_and_close_the_stream_with_4004(serve: Serve) -> None:
    server = await serve(client_frames_per_s=0.001, client_frames_burst=3)
    stream = await SseStream.open(server.http_url, token=token_for("alice"))
    key = (await stream.expect("welcome")).data["stream"]  # type: ignore[index]
    for n in range(3):
        assert (await command(server.http_url, key, {"type": "ping", "id": n})).status_code == 202
    refused = await command(server.http_url, key, {"type": "ping", "id": 3})
    assert (refused.status_code, refused.json()["error"]) == (429, "rate_limited")
    before, close = await stream.until("close")
    assert [message.data["id"] for message in before] == [0, 1, 2]  # type: ignore[index]
    assert close.data == {"type": "close", "code": 4004, "reason": "too many frames"}
    assert await stream.read_to_end() == [] and stream.ended
    assert (await command(server.http_url, key, {"type": "ping"})).status_code == 404


async def test_delete_ends_the_session_so_it_cannot_be_resumed(serve: Serve) -> None:
    server = await serve()
    alice = StreamClient(server.http_url, "alice", token_for("alice"))
    await alice.connect()
    assert alice.key is not None and alice.stream is not None
    response = await goodbye(server.http_url, alice.key)
    assert response.status_code == 204
    _, close = await alice.stream.until("close")
    assert close.data == {"type": "close", "code": 1000, "reason": "closed by the client"}
    assert await alice.stream.read_to_end() == [] and alice.stream.ended
    assert (await goodbye(server.http_url, alice.key)).status_code == 404
    await wait_metric(server, "notifier_connections", 0, transport="sse")
    assert await metric(server.http_url, "notifier_sessions_parked") == 0
    assert (await alice.connect())["recovered"] is False


async def test_an_idle_stream_gets_heartbeats_and_a_busy_one_none(serve: Serve, publisher: Publisher) -> None:
    server = await serve(sse_heartbeat_s=1)
    stream = await SseStream.open(server.http_url, token=token_for("alice"))
    welcome = await stream.expect("welcome")
    assert welcome.data is not None and welcome.data["heartbeat"] == 1
    opened = time.monotonic()
    beats = []
    for _ in range(3):
        message = await stream.next_message(timeout=3, comments=True)
        assert message.comment == "heartbeat", message
        beats.append(time.monotonic() - opened)
    gaps = [later - earlier for earlier, later in zip([0.0, *beats], beats, strict=False)]
    assert all(0.8 < gap < 2.0 for gap in gaps), gaps
    assert b": heartbeat\n\n" in stream.raw
    # Output more often than the period: no heartbeat comes between the events.
    for n in range(8):
        await publisher.publish("user.alice", n)
        message = await stream.next_message(timeout=3, comments=True)
        assert message.data is not None and message.data["data"] == n, message
        await asyncio.sleep(0.3)


async def test_a_token_that_expires_closes_the_stream_with_4001_and_it_resumes(
    serve: Serve, publisher: Publisher
) -> None:
    server = await serve()
    alice = StreamClient(server.http_url, "alice", token_for("alice", ttl_s=2))
    await alice.connect()
    assert alice.stream is not None
    _, close = await alice.stream.until("close", timeout=5)
    assert close.data == {"type": "close", "code": 4001, "reason": "token expired"}
    assert await alice.stream.read_to_end() == [] and alice.stream.ended
    await wait_metric(server, "notifier_sessions_parked", 1)
    await publisher.publish("user.alice", "while expired")
    await wait_metric(server, "notifier_events_consumed_total", 1)
    alice.token = token_for("alice")
    assert (await alice.connect())["recovered"] is True
    assert await alice.next_event() == "while expired"
    labels = {"code": "4001", "reason": "token expired", "transport": "sse"}
    assert await metric(server.http_url, "notifier_connections_closed_total", **labels) == 1


async def test_a_slow_stream_is_closed_with_4002_and_gets_its_dropped_queue_back_on_resume(
    serve: Serve, publisher: Publisher
) -> None:
    server = await serve(send_queue_size=4)
    carol = StreamClient(server.http_url, "carol", token_for("carol"))
    await carol.connect()
    assert carol.stream is not None
    transport = carol.stream.writer.transport
    assert isinstance(transport, asyncio.Transport)
    transport.pause_reading()
    labels = {"code": "4002", "reason": "slow client", "transport": "sse"}
    n = 0
    while not await metric(server.http_url, "notifier_connections_closed_total", **labels):
        for _ in range(10):
            await publisher.publish("user.carol", {"n": n, "pad": "x" * 60_000})
            n += 1
        assert n < 2000
    transport.resume_reading()
    with contextlib.suppress(AssertionError, EOFError, ConnectionError, asyncio.IncompleteReadError):
        while True:
            await carol.next_event()
    # The last message, when the line took it in time, is the close; either way the session parked.
    await wait_metric(server, "notifier_sessions_parked", 1)
    await publisher.publish("user.carol", {"n": n, "pad": ""})
    await wait_metric(server, "notifier_events_consumed_total", n + 1)
    assert (await carol.connect())["recovered"] is True
    while len(carol.data) < n + 1:
        await carol.next_event()
    assert [item["n"] for item in carol.data] == list(range(n + 1))


# Refusals: an HTTP status and a JSON body instead of a stream.


def refusal(refused: StreamRefused) -> tuple[int, str, int | None, str | None]:
    body = refused.json()
    assert set(body) <= {"error", "code", "message"} and body["message"], body
    return refused.status, body["error"], body.get("code"), refused.headers.get("retry-after")


async def refused(base_url: str, **open_args: Any) -> StreamRefused:
    with pytest.raises(StreamRefused) as raised:
        await SseStream.open(base_url, **open_args)
    return raised.value


async def test_sign_in_refusals_answer_with_status_json_and_retry_after(serve: Serve) -> None:
    app = "http://app.example"
    server = await serve(allowed_origins=app)
    url = server.http_url
    assert refusal(await refused(url)) == (401, "token_missing", 4501, None)
    assert refusal(await refused(url, token="junk")) == (401, "invalid_token", 4500, None)
    assert refusal(await refused(url, token="junk", token_in_query=True)) == (401, "invalid_token", 4500, None)
    expired = token_for("alice", ttl_s=-60)
    assert refusal(await refused(url, token=expired)) == (401, "token_expired", 4001, "1")
    token = token_for("alice")
    for bad in ("", "no-colon", "s:", ":5", "s:-1", "s:1.5", "s:9007199254740992", "s: 5", "a b:1", "s:٣"):
        answer = refusal(await refused(url, token=token, last_event_id=bad))
        assert answer == (400, "bad_request", 4501, None), bad
    answer = refusal(await refused(url, token=token, query="last_event_id=nonsense"))
    assert answer == (400, "bad_request", 4501, None)
    # Origin: another site's page is refused without CORS headers; an allowed one can read every answer.
    evil = await refused(url, token=token, headers={"Origin": "https://evil.example"})
    assert (evil.status, evil.json()["error"], "code" in evil.json()) == (403, "origin_not_allowed", False)
    assert "access-control-allow-origin" not in evil.headers
    cross = await refused(url, token="junk", headers={"Origin": app})
    assert refusal(cross) == (401, "invalid_token", 4500, None)
    assert cross.headers["access-control-allow-origin"] == app
    assert cross.headers["access-control-allow-credentials"] == "true"
    assert cross.headers["vary"] == "Origin"
    stream = await SseStream.open(url, token=token, headers={"Origin": app})
    assert stream.headers["access-control-allow-origin"] == app
    await stream.expect("welcome")
    own_page = await SseStream.open(url, token=token_for("bob"), headers={"Origin": url})
    await own_page.expect("welcome")
    labels = {"code": "4500", "reason": "invalid token", "transport": "sse"}
    assert await metric(url, "notifier_connections_closed_total", **labels) == 3


async def test_preflights_allow_the_page_origins_only(serve: Serve) -> None:
    app = "http://app.example"
    server = await serve(allowed_origins=app)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        preflight = await http.options(
            "/sse/some-key", headers={"Origin": app, "Access-Control-Request-Method": "POST"}
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-methods"] == "POST, DELETE"
        assert preflight.headers["access-control-allow-headers"] == "Content-Type, Authorization"
        assert preflight.headers["access-control-allow-origin"] == app
        assert preflight.headers["access-control-allow-credentials"] == "true"
        stream = await http.options("/sse", headers={"Origin": app, "Access-Control-Request-Method": "GET"})
        assert stream.status_code == 204
        assert stream.headers["access-control-allow-methods"] == "GET"
        assert "Last-Event-ID" in stream.headers["access-control-allow-headers"]
        evil = await http.options("/sse/some-key", headers={"Origin": "https://evil.example"})
        assert (evil.status_code, evil.json()["error"]) == (403, "origin_not_allowed")
        assert "access-control-allow-origin" not in evil.headers
        posted = await http.post("/sse/x", content=b"{}", headers={"Origin": "https://evil.example"})
        assert posted.status_code == 403
        unknown = await http.post("/sse/x", content=b"{}", headers={"Origin": app})
        assert (unknown.status_code, unknown.headers["access-control-allow-origin"]) == (404, app)


async def test_connection_limits_refuse_streams_as_they_refuse_websockets(serve: Serve) -> None:
    server = await serve(
        max_connections_per_user=1, max_connections=2, user_subscribes_per_s=0.001, user_subscribes_burst=2
    )
    url = server.http_url
    first = await SseStream.open(url, token=token_for("alice"))
    await first.expect("welcome")
    assert refusal(await refused(url, token=token_for("alice"))) == (429, "too_many_user_connections", 4502, None)
    bob = await SseStream.open(url, token=token_for("bob"))
    await bob.expect("welcome")
    assert refusal(await refused(url, token=token_for("carol"))) == (503, "instance_full", 4003, "1")
    # Each sign-in spends from the user's budget: alice's third is past its burst of 2.
    await bob.close()
    await wait_metric(server, "notifier_connections", 1, transport="sse")
    assert refusal(await refused(url, token=token_for("alice"))) == (429, "rate_limited", 4004, "1")


async def test_the_per_address_gate_counts_streams_with_websockets(serve: Serve) -> None:
    server = await serve(
        max_connections_per_address=2,
        new_connections_per_s_per_address=0.001,
        new_connections_burst_per_address=3,
        max_unauthenticated_connections=1,
    )
    url = server.http_url
    anonymous = await websockets.connect(server.ws_url)  # open, not signed in: takes the one anonymous slot
    busy = await refused(url)  # no token: it would not be signed in at once
    assert refusal(busy) == (503, "busy", None, "1")
    stream = await SseStream.open(url, token=token_for("alice"))  # a token: exempt from that budget
    await stream.expect("welcome")
    full = await refused(url, token=token_for("bob"))  # one WebSocket and one stream: the address's two
    assert refusal(full) == (429, "too_many_connections", None, "1")
    with pytest.raises(websockets.InvalidStatus):
        await websockets.connect(server.ws_url)
    await anonymous.close()
    await wait_metric(server, "notifier_connections", 0, transport="websocket")
    again = await SseStream.open(url, token=token_for("bob"))  # the third new connection of its burst
    await again.expect("welcome")
    await again.close()
    await wait_metric(server, "notifier_connections", 1, transport="sse")
    assert refusal(await refused(url, token=token_for("bob"))) == (429, "too_many_new_connections", None, "1")


class CookieApplication:
    """The application behind the connect proxy: cookie `session=<user>` is that user, `session=broken` gets a
    500, no cookie a 401."""

    def __init__(self) -> None:
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> CookieApplication:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                length = int(re.search(r"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                cookie = orjson.loads(await reader.readexactly(length))["headers"].get("cookie", "")
                user = cookie.removeprefix("session=")
                if not user:
                    status, body = 401, b'{"error": "not signed in"}'
                elif user == "broken":
                    status, body = 500, b"oops"
                else:
                    status, body = 200, orjson.dumps({"user": user})
                head = f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
                writer.write(head.encode() + b"\r\n" + body)


async def test_a_cookie_signs_a_stream_in_through_the_application(serve: Serve) -> None:
    async with CookieApplication() as application:
        server = await serve(connect_proxy_url=f"http://127.0.0.1:{application.port}/auth")
        url = server.http_url
        stream = await SseStream.open(url, headers={"Cookie": "session=alice"})
        welcome = await stream.expect("welcome")
        assert welcome.data is not None and welcome.data["user"] == "alice"
        assert refusal(await refused(url)) == (403, "refused_by_application", 4504, None)
        broken = await refused(url, headers={"Cookie": "session=broken"})
        assert refusal(broken) == (503, "application_unavailable", 4005, "1")
        token = await SseStream.open(url, token=token_for("bob"))  # tokens still work beside it
        assert (await token.expect("welcome")).data["user"] == "bob"  # type: ignore[index]


async def test_without_rabbitmq_a_stream_is_refused_with_503_unavailable(serve: Serve) -> None:
    nobody = free_port()
    server = await serve(ready=False, amqp_url=f"amqp://guest:guest@127.0.0.1:{nobody}/", bind_wait_s=0.5)

    async def serving() -> bool:
        with contextlib.suppress(httpx.TransportError):
            async with httpx.AsyncClient(base_url=server.http_url) as http:
                return (await http.get("/healthz")).status_code == 200
        return False

    await wait_until(serving, 15, interval=0.1)
    assert refusal(await refused(server.http_url, token=token_for("alice"))) == (503, "unavailable", 1013, "1")


async def test_sse_off_means_404(serve: Serve) -> None:
    server = await serve(sse_enabled="false")
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        for method, path in [("GET", "/sse"), ("POST", "/sse/key"), ("DELETE", "/sse/key"), ("OPTIONS", "/sse")]:
            answer = await http.request(method, path, headers={"Authorization": f"Bearer {token_for('alice')}"})
            assert (answer.status_code, answer.json()["error"]) == (404, "not_found"), (method, path)


# Resume.


async def test_a_stream_whose_connection_died_resumes_with_what_it_missed(serve: Serve, publisher: Publisher) -> None:
    server = await serve()
    alice = StreamClient(server.http_url, "alice", token_for("alice", ["news"]))
    first = await alice.connect()
    assert alice.stream is not None and alice.key is not None
    assert (
        await command(server.http_url, alice.key, {"type": "subscribe", "topic": "news", "id": 1})
    ).status_code == 202
    await alice.stream.expect("subscribed")
    for n in range(2):
        await publisher.publish("news", n)
        assert await alice.next_event() == n
    alice.stream.abort()
    await wait_metric(server, "notifier_sessions_parked", 1)
    for n in range(2, 5):
        await publisher.publish("news", n)
    await wait_metric(server, "notifier_events_consumed_total", 5)
    welcome = await alice.connect()  # Last-Event-ID: <session>:2
    assert (welcome["recovered"], welcome["topics"]) == (True, ["user.alice", "news"])
    assert welcome["session"] != first["session"]
    assert alice.last_id == f"{welcome['session']}:2"
    assert [await alice.next_event() for _ in range(3)] == [2, 3, 4]
    await publisher.publish("news", 5)
    assert await alice.next_event() == 5
    # The same through the URL, as a page that cannot set headers gives it.
    assert alice.stream is not None
    alice.stream.abort()
    await wait_metric(server, "notifier_sessions_parked", 1)
    await publisher.publish("news", 6)
    await wait_metric(server, "notifier_events_consumed_total", 7)
    point, alice.last_id = alice.last_id, None
    welcome = await alice.connect(query=f"last_event_id={point}")
    assert welcome["recovered"] is True
    assert alice.received == 6  # the welcome's id: the new session, and the count the resume point gave
    assert await alice.next_event() == 6
    assert alice.data == list(range(7))
    assert alice.stream is not None
    await assert_nothing_before_sentinel(await stream_receive(alice.stream), publish_to(publisher), "news")


async def test_a_stream_resumes_on_another_instance_and_commands_reach_it_through_either(
    serve: Serve, publisher: Publisher
) -> None:
    first, second = await serve(), await serve()
    alice = StreamClient(first.http_url, "alice", token_for("alice", ["news"]))
    await alice.connect()
    assert alice.stream is not None and alice.key is not None
    # A command that reaches the other instance is forwarded to the one holding the stream.
    posted = await command(second.http_url, alice.key, {"type": "subscribe", "topic": "news", "id": "via-second"})
    assert posted.status_code == 202
    assert (await alice.stream.expect("subscribed")).data["id"] == "via-second"  # type: ignore[index]
    await publisher.publish("news", 0)
    assert await alice.next_event() == 0
    alice.stream.abort()
    await wait_metric(first, "notifier_sessions_parked", 1)
    for n in (1, 2):
        await publisher.publish("news", n)
    await wait_metric(first, "notifier_events_consumed_total", 3)
    welcome = await alice.connect(second.http_url)
    assert (welcome["recovered"], welcome["topics"]) == (True, ["user.alice", "news"])
    assert [await alice.next_event() for _ in range(2)] == [1, 2]
    await publisher.publish("news", 3)
    assert await alice.next_event() == 3
    # Now held by the second instance: commands through the first are forwarded to it, a goodbye too.
    assert (await command(first.http_url, alice.key, {"type": "ping", "id": "via-first"})).status_code == 202
    assert (await alice.stream.expect("pong")).data["id"] == "via-first"  # type: ignore[index]
    assert (await goodbye(first.http_url, alice.key)).status_code == 204
    _, close = await alice.stream.until("close")
    assert close.data is not None and close.data["code"] == 1000
    assert (await command(first.http_url, alice.key, {"type": "ping"})).status_code == 404
    # Counted where they arrived (forwarded) and where they ran (the stream is new on every connection).
    assert await metric(first.http_url, "notifier_stream_commands_total", result="forwarded") == 3
    assert await metric(second.http_url, "notifier_stream_commands_total", result="forwarded") == 1
    assert await metric(second.http_url, "notifier_stream_commands_total", result="unknown_stream") == 1


async def test_a_command_whose_holder_does_not_answer_gets_503_within_the_bound(serve: Serve) -> None:
    holder, other = await serve(), await serve(sse_command_timeout_s=1)
    stream = await SseStream.open(holder.http_url, token=token_for("alice"))
    key = (await stream.expect("welcome")).data["stream"]  # type: ignore[index]
    assert (await command(other.http_url, key, {"type": "ping", "id": 1})).status_code == 202
    await stream.expect("pong")
    holder.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = await command(other.http_url, key, {"type": "ping", "id": 2})
        took = time.monotonic() - started
    finally:
        holder.send_signal(signal.SIGCONT)
    assert (answer.status_code, answer.json()["error"], answer.headers["retry-after"]) == (503, "unavailable", "1")
    assert 0.9 < took < 2.5, took
    assert await metric(other.http_url, "notifier_stream_commands_total", result="unavailable") == 1


async def test_a_session_moves_between_websocket_and_stream_with_nothing_missing_or_doubled(
    serve: Serve, publisher: Publisher
) -> None:
    first, second = await serve(), await serve()
    received: list[Any] = []
    next_n = 0

    async def publish_some(count: int, process: NotifierProcess, consumed: int) -> None:
        nonlocal next_n
        for _ in range(count):
            await publisher.publish("user.dora", next_n)
            next_n += 1
        await wait_metric(process, "notifier_events_consumed_total", consumed)

    # A WebSocket on the first instance.
    ws = Client(await websockets.connect(first.ws_url))
    await ws.send({"type": "auth", "token": token_for("dora")})
    welcome = await ws.receive()
    await publish_some(2, first, 2)
    received += [(await ws.expect_event())["data"] for _ in range(2)]
    ws.ws.transport.abort()
    await wait_metric(first, "notifier_sessions_parked", 1)
    await publish_some(2, first, 4)
    # It comes back as an HTTP stream: the Last-Event-ID is the WebSocket's session and count.
    dora = StreamClient(first.http_url, "dora", token_for("dora"), last_id=f"{welcome['session']}:{len(received)}")
    back = await dora.connect()
    assert back["recovered"] is True
    received += [await dora.next_event() for _ in range(2)]
    await publish_some(1, first, 5)
    received.append(await dora.next_event())
    assert dora.stream is not None
    dora.stream.abort()
    await wait_metric(first, "notifier_sessions_parked", 1)
    await publish_some(2, first, 7)
    # And back to a WebSocket, on the other instance, with the stream's session and count.
    again = Client(await websockets.connect(second.ws_url))
    resume = {"session": dora.session, "received": dora.received}
    await again.send({"type": "auth", "token": token_for("dora"), "resume": resume})
    welcome = await again.receive()
    assert welcome["recovered"] is True, welcome
    received += [(await again.expect_event())["data"] for _ in range(2)]
    await publisher.publish("user.dora", next_n)
    received.append((await again.expect_event())["data"])
    assert received == list(range(next_n + 1))
    await assert_nothing_before_sentinel(again.receive, publish_to(publisher), "user.dora")


async def test_sigterm_closes_streams_with_1012_and_they_resume_elsewhere(serve: Serve, publisher: Publisher) -> None:
    leaving, staying = await serve(), await serve()
    erin = StreamClient(leaving.http_url, "erin", token_for("erin"))
    await erin.connect()
    await publisher.publish("user.erin", "before")
    assert await erin.next_event() == "before"
    assert erin.stream is not None
    leaving.send_signal(signal.SIGTERM)
    _, close = await erin.stream.until("close")
    assert close.data == {"type": "close", "code": 1012, "reason": "server restarting"}
    assert await erin.stream.read_to_end() == [] and erin.stream.ended
    await publisher.publish("user.erin", "while away")
    assert await leaving.wait() == 0
    welcome = await erin.connect(staying.http_url)
    assert welcome["recovered"] is True
    assert await erin.next_event() == "while away"
    assert erin.data == ["before", "while away"]


async def test_curl_reads_the_stream(serve: Serve, publisher: Publisher) -> None:
    server = await serve()
    curl = await asyncio.create_subprocess_exec(
        "curl",
        "-sN",
        "-H",
        f"Authorization: Bearer {token_for('alice')}",
        f"{server.http_url}/sse",
        stdout=asyncio.subprocess.PIPE,
    )
    assert curl.stdout is not None
    try:
        lines = await read_lines_until(curl.stdout, b'data: {"type":"welcome"')
        assert lines[-2].startswith(b"id: ") and lines[-2].endswith(b":0\n"), lines
        await publisher.publish("user.alice", {"via": "curl"})
        lines = await read_lines_until(curl.stdout, b'data: {"type":"event"')
        assert b'"data":{"via":"curl"}' in lines[-1] and lines[-2].endswith(b":1\n"), lines
    finally:
        curl.terminate()
        await curl.wait()


async def read_lines_until(stdout: asyncio.StreamReader, prefix: bytes) -> list[bytes]:
    lines: list[bytes] = []
    async with asyncio.timeout(5):
        while not (lines and lines[-1].startswith(prefix)):
            lines.append(await stdout.readline())
    return lines
