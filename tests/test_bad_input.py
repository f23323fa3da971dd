"""Every bad input gets its documented answer, and never touches other clients."""

from __future__ import annotations

import asyncio
import statistics
import time

import jwt
import pytest
import websockets

from notifier.formats import closecodes
from tests.support import SECRET, Client, ConnectClient, Publisher, RunningServer, StartServer, token_for, wait_until

# The slow-client tests run over both write paths (the `write_path` fixture): uvicorn's transport and plain ASGI.


@pytest.fixture
async def bystander(server: RunningServer, connect: ConnectClient) -> Client:
    """A well-behaved client on the same instance; each test checks it still gets its events."""
    return await connect(server, "bystander")


async def assert_bystander_served(bystander: Client, publisher: Publisher) -> None:
    await publisher.publish("user.bystander", {"still": "served"})
    assert (await bystander.expect_event("user.bystander"))["data"] == {"still": "served"}


@pytest.mark.parametrize(
    ("raw", "code", "message_part"),
    [
        ("not json", "bad_request", "not valid JSON"),
        ("[1, 2]", "bad_request", "JSON object"),
        ('{"topic": "x"}', "bad_request", "'type'"),
        ('{"type": "launch"}', "unknown_type", "launch"),
        ('{"type": "subscribe"}', "bad_request", "'topic'"),
        ('{"type": "subscribe", "topic": 5}', "bad_request", "'topic'"),
        ('{"type": "ping", "id": {"a": 1}}', "bad_request", "id"),
        ('{"type": "ping", "id": "' + "x" * 65 + '"}', "bad_request", "id"),
        ('{"type": "auth", "token": "again"}', "bad_request", "already authenticated"),
    ],
)
async def test_bad_frames_after_auth_get_error_frames(
    server: RunningServer,
    connect: ConnectClient,
    publisher: Publisher,
    bystander: Client,
    raw: str,
    code: str,
    message_part: str,
) -> None:
    client = await connect(server, "alice")
    await client.ws.send(raw)
    answer = await client.receive()
    assert answer["type"] == "error"
    assert answer["code"] == code
    assert message_part in answer["message"]
    # The connection stays usable.
    assert await client.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    await assert_bystander_served(bystander, publisher)


async def test_binary_frame_gets_bad_request(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server, "alice")
    await client.ws.send(b'{"type": "ping"}')
    answer = await client.receive()
    assert (answer["type"], answer["code"]) == ("error", "bad_request")
    assert "binary" in answer["message"]


@pytest.mark.parametrize("topic", ["", "a..b", "news.*", "news.#", "spaces here", "x" * 256, "ümlaut", ".lead"])
async def test_invalid_topic_gets_invalid_topic(server: RunningServer, connect: ConnectClient, topic: str) -> None:
    client = await connect(server, "alice", topics=["#"])
    answer = await client.request({"type": "subscribe", "topic": topic, "id": "s"})
    assert (answer["type"], answer["code"], answer["id"]) == ("error", "invalid_topic", "s")


async def test_oversized_frame_closes_with_1009(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, bystander: Client
) -> None:
    client = await connect(server, "alice")
    await client.ws.send('{"type": "ping", "pad": "' + "x" * server.settings.max_frame_bytes + '"}')
    await client.expect_close(closecodes.MESSAGE_TOO_BIG.code)
    await assert_bystander_served(bystander, publisher)


async def test_missing_auth_closes_with_auth_timeout(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(auth_timeout_s=0.3)
    client = await connect(running)
    await client.expect_close(closecodes.AUTH_TIMEOUT.code)


async def test_frame_before_auth_is_protocol_violation(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server)
    await client.send({"type": "subscribe", "topic": "user.alice"})
    await client.expect_close(closecodes.PROTOCOL_VIOLATION.code)


async def test_garbage_before_auth_is_protocol_violation(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server)
    await client.ws.send("hello?")
    await client.expect_close(closecodes.PROTOCOL_VIOLATION.code)


def forge(claims: dict[str, object], key: object = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "token",
    [
        "not-a-jwt",
        forge({"sub": "alice", "exp": time.time() + 3600}, key="another-secret-that-is-long-enough-too!!"),
        forge({"sub": "alice"}),  # no exp
        forge({"exp": time.time() + 3600}),  # no sub
        forge({"sub": "alice.bob", "exp": time.time() + 3600}),  # sub would reach into user.alice.*
        forge({"sub": "alice", "exp": time.time() + 3600, "topics": "news.#"}),
        forge({"sub": "alice", "exp": time.time() + 3600, "topics": ["news..x"]}),
        forge({"sub": "alice", "exp": time.time() + 86400, "nbf": time.time() + 43200}),
        jwt.encode({"sub": "alice", "exp": time.time() + 3600}, None, algorithm="none"),  # type: ignore[arg-type]
        forge({"sub": "alice", "exp": time.time() + 3600, "aud": "some-other-service"}),  # none configured here
        forge({"sub": "a" * 300, "exp": time.time() + 3600}),  # personal topic over 255 bytes
        forge({"sub": "alice", "exp": 1e300}),
        forge({"sub": "alice", "exp": time.time() + 90 * 86400}),  # over NOTIFIER_JWT_MAX_LIFETIME_S
    ],
    ids=[
        "garbage",
        "wrong-key",
        "no-exp",
        "no-sub",
        "dotted-sub",
        "topics-not-list",
        "bad-pattern",
        "nbf",
        "none",
        "foreign-aud",
        "long-sub",
        "exp-1e300",
        "lifetime",
    ],
)
async def test_invalid_token_closes_with_4500(
    server: RunningServer, connect: ConnectClient, publisher: Publisher, bystander: Client, token: str
) -> None:
    client = await connect(server)
    await client.send({"type": "auth", "token": token})
    await client.expect_close(closecodes.INVALID_TOKEN.code)
    await assert_bystander_served(bystander, publisher)


async def test_expired_token_closes_with_4001(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server)
    await client.send({"type": "auth", "token": forge({"sub": "alice", "exp": time.time() - 10})})
    await client.expect_close(closecodes.TOKEN_EXPIRED.code)


async def test_token_in_url_authenticates(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server, query=f"?token={token_for('alice')}")
    welcome = await client.receive()
    assert (welcome["type"], welcome["user"]) == ("welcome", "alice")


async def test_bad_token_in_url_closes_with_4500(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server, query="?token=nonsense")
    await client.expect_close(closecodes.INVALID_TOKEN.code)


async def test_connection_closes_when_token_expires(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server, token=forge({"sub": "alice", "exp": int(time.time()) + 2}))
    started = time.monotonic()
    await client.expect_close(closecodes.TOKEN_EXPIRED.code, timeout=5)
    assert time.monotonic() - started < 4


async def test_refresh_extends_the_connection(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server, token=forge({"sub": "alice", "exp": int(time.time()) + 2}))
    new_exp = int(time.time()) + 3600
    answer = await client.request({"type": "refresh", "token": forge({"sub": "alice", "exp": new_exp}), "id": "r"})
    assert answer == {"type": "refreshed", "id": "r", "expires": new_exp, "dropped": []}
    await asyncio.sleep(2.5)  # past the first token's expiry
    assert await client.request({"type": "ping"}) == {"type": "pong", "id": None}


async def test_refresh_that_narrows_grants_drops_subscriptions(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    client = await connect(server, "alice", topics=["news.*", "sport.*"])
    await client.subscribe("news.a")
    await client.subscribe("sport.b")
    narrower = token_for("alice", topics=["sport.*"])
    answer = await client.request({"type": "refresh", "token": narrower, "id": 1})
    assert answer["type"] == "refreshed"
    assert answer["dropped"] == ["news.a"]
    await publisher.publish("news.a", "dropped")
    await publisher.publish("sport.b", "kept")
    assert (await client.expect_event())["data"] == "kept"
    assert (await client.request({"type": "subscribe", "topic": "news.a"}))["code"] == "forbidden"


async def test_refresh_for_another_user_is_forbidden(server: RunningServer, connect: ConnectClient) -> None:
    client = await connect(server, "alice")
    answer = await client.request({"type": "refresh", "token": token_for("mallory"), "id": 2})
    assert (answer["type"], answer["code"], answer["id"]) == ("error", "forbidden", 2)
    answer = await client.request({"type": "refresh", "token": "junk", "id": 3})
    assert (answer["code"], answer["id"]) == ("invalid_token", 3)


async def test_subscription_limit(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(max_subscriptions=3)
    client = await connect(running, "alice", topics=["t.*"])  # the personal topic is the first
    assert (await client.subscribe("t.1"))["type"] == "subscribed"
    assert (await client.subscribe("t.2"))["type"] == "subscribed"
    answer = await client.subscribe("t.3")
    assert (answer["type"], answer["code"]) == ("error", "too_many_subscriptions")
    assert (await client.subscribe("t.1"))["type"] == "subscribed"  # re-subscribing is not a new one


async def test_per_user_connection_limit(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(max_connections_per_user=2)
    await connect(running, "alice")
    await connect(running, "alice")
    third = await connect(running)
    await third.send({"type": "auth", "token": token_for("alice")})
    await third.expect_close(closecodes.USER_CONNECTION_LIMIT.code)
    await connect(running, "bob")  # others are not affected


async def test_instance_connection_limit(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(max_connections=2)
    await connect(running, "a")
    await connect(running, "b")
    third = await connect(running)
    await third.expect_close(closecodes.SERVER_FULL.code)


async def test_frame_flood_closes_with_4004(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(client_frames_per_s=5, client_frames_burst=10)
    client = await connect(running, "alice")
    for i in range(30):
        await client.send({"type": "ping", "id": i})
    await client.expect_close(closecodes.RATE_LIMITED.code)


async def test_foreign_origin_is_refused_with_403(start_server: StartServer) -> None:
    running = await start_server(allowed_origins=["https://app.example.com"])
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(running.ws_url, origin="https://evil.example.net")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    assert b"origin_not_allowed" in refused.value.response.body
    allowed = await websockets.connect(running.ws_url, origin="https://app.example.com")  # type: ignore[arg-type]
    await allowed.send('{"type": "auth", "token": "' + token_for("alice") + '"}')
    assert "welcome" in str(await allowed.recv())
    await allowed.close()


async def test_same_origin_page_is_allowed_without_a_list(start_server: StartServer) -> None:
    running = await start_server(allowed_origins=[])
    port = running.settings.port
    own = await websockets.connect(running.ws_url, origin=f"http://127.0.0.1:{port}")  # type: ignore[arg-type]
    await own.send('{"type": "auth", "token": "' + token_for("alice") + '"}')
    assert "welcome" in str(await own.recv())
    await own.close()
    for foreign in (f"http://127.0.0.1:{port + 1}", f"http://localhost:{port}", "https://evil.example.net", "null"):
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(running.ws_url, origin=foreign)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403, foreign


async def test_slow_client_is_closed_and_others_keep_receiving(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, write_path: str
) -> None:
    running = await start_server(send_queue_size=8)
    fast = await connect(running, "fast", topics=["firehose"])
    await fast.subscribe("firehose")
    slow = await connect(running, "slow", topics=["firehose"])
    await slow.subscribe("firehose")
    payload = {"pad": "x" * 60_000}

    async def round_trip(n: int) -> float:
        """Publish one event and time it to the fast client."""
        started = time.perf_counter()
        await publisher.publish("firehose", {**payload, "n": n})
        assert (await fast.expect_event("firehose"))["data"]["n"] == n
        return time.perf_counter() - started

    # Baseline: both clients read.
    before = [await round_trip(n) for n in range(40)]
    for _ in range(40):
        await slow.expect_event("firehose")
    # The slow client stops reading: its TCP window fills, then its send queue, and it is closed.
    slow.ws.transport.pause_reading()
    during = []
    for n in range(40, 1040):  # at most ~60 MB, far above any loopback socket buffer
        during.append(await round_trip(n))
        if running.node.stats.closes_by_code[closecodes.SLOW_CLIENT.code]:
            break
    assert running.node.stats.closes_by_code[closecodes.SLOW_CLIENT.code] == 1
    assert len(during) > 8  # the queue (8 frames) filled only after the socket buffers did
    slow.ws.transport.resume_reading()
    await slow.expect_close(closecodes.SLOW_CLIENT.code, timeout=10)
    # The stalled client does not hold the others back: the fast client's latency stays where it was.
    median_before, median_during = statistics.median(before), statistics.median(during)
    print(f"fast client median round trip: {median_before * 1000:.1f} ms before, {median_during * 1000:.1f} ms during")
    assert median_during < 3 * median_before + 0.010


async def test_shutdown_closes_clients_with_1012(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server()
    client = await connect(running, "alice")
    stop = asyncio.create_task(running.stop())
    await client.expect_close(closecodes.SHUTDOWN.code)
    await stop


@pytest.mark.parametrize(
    ("payload", "masked", "code"),
    [(b"\xff\xfe\xfd", True, 1007), (b'{"type": "ping"}', False, 1002)],
    ids=["invalid-utf8", "unmasked"],
)
async def test_frames_the_websocket_layer_refuses_close_with_its_code(
    server: RunningServer, publisher: Publisher, bystander: Client, payload: bytes, masked: bool, code: int
) -> None:
    """Built by hand: a well-behaved client library refuses to send such frames."""
    import base64
    import os
    import struct

    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101")
    if masked:
        mask = os.urandom(4)
        body = bytes(byte ^ mask[index % 4] for index, byte in enumerate(payload))
        writer.write(bytes((0x81, 0x80 | len(payload))) + mask + body)
    else:
        writer.write(bytes((0x81, len(payload))) + payload)
    header = await asyncio.wait_for(reader.readexactly(2), 5)
    assert header[0] & 0x0F == 0x8  # a close frame
    close = await reader.readexactly(header[1] & 0x7F)
    assert struct.unpack("!H", close[:2])[0] == code
    writer.close()
    await assert_bystander_served(bystander, publisher)


async def test_a_client_that_never_reads_again_is_dropped_after_its_close(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, write_path: str
) -> None:
    running = await start_server(send_queue_size=4)
    stalled = await connect(running, "stalled", topics=["firehose"])
    await stalled.subscribe("firehose")
    stalled.ws.transport.pause_reading()  # and never resumes
    n = 0
    while not running.node.stats.closes_by_code[closecodes.SLOW_CLIENT.code]:
        await publisher.publish("firehose", {"pad": "x" * 60_000, "n": n})
        n += 1
        assert n < 1000
        await asyncio.sleep(0.005)
    # It cannot take even the close frame; the session lets go of it after the grace period. On the transport
    # path the socket is dropped too; over plain ASGI, closing the socket is the server's business.
    connections = running.server.server_state.connections
    if write_path == "transport":
        await wait_until(lambda: not running.node.sessions and not connections, 15)
    else:
        await wait_until(lambda: not running.node.sessions, 15)


async def send_invalid_utf8(client: Client) -> None:
    """A text frame that is not UTF-8: the client library refuses to build one, so it is put on the wire by hand."""
    async with client.ws.send_context():
        client.ws.protocol.send_text(b'{"type": "ping", "x": "\xff\xfe"}')


@pytest.mark.parametrize("fault", [closecodes.MESSAGE_TOO_BIG, closecodes.INVALID_UTF8], ids=["too-big", "not-utf8"])
async def test_a_frame_the_websocket_layer_refuses_ends_the_session_with_our_reason_and_is_counted(
    start_server: StartServer, connect: ConnectClient, fault: closecodes.CloseReason
) -> None:
    running = await start_server()
    client = await connect(running)
    await client.send({"type": "auth", "token": token_for("alice")})
    welcome = await client.receive()
    assert welcome["type"] == "welcome"
    if fault is closecodes.MESSAGE_TOO_BIG:
        await client.ws.send('{"type": "ping", "pad": "' + "x" * 70 * 1024 + '"}')
    else:
        await send_invalid_utf8(client)
    await client.expect_close(fault.code)
    assert client.ws.close_reason == fault.reason
    await wait_until(lambda: running.node.stats.closes_by_code[fault.code] == 1, 5)
    # Terminal: the session is not parked, and a resume of it starts afresh.
    await asyncio.sleep(0.2)
    assert running.node.directory.parked_count == 0
    again = await connect(running)
    await again.send(
        {"type": "auth", "token": token_for("alice"), "resume": {"session": welcome["session"], "received": 0}}
    )
    resumed = await again.receive()
    assert (resumed["type"], resumed["recovered"]) == ("welcome", False), resumed
