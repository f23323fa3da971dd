"""The application's proxies against a real application: a small ASGI app under uvicorn on loopback that knows
its users by a session cookie, as a Django or Express application does. Real notifier servers, real WebSocket
clients: signing in without a token (allowed, refused, the application down, slow or answering garbage), the
concurrency cap, the header allow-list, tokens beside it, the subscribe proxy's yes, no and unavailable, and the
re-check of a resumed session's topics."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
import pytest
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from notifier.formats import closecodes

from .support import Client, Publisher, RunningServer, StartServer, free_port, token_for, wait_until

Answer = tuple[int, bytes]


class Application:
    """The application: cookie `session=<user>` names a signed-in user; `follows[user]` are the topics the user
    may follow beyond its grants. `connect_answer` and `subscribe_answer` replace the answers when set, and
    `delay_s` slows every answer down. It counts the requests it serves at once."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.connect_answer: Callable[[dict[str, Any]], Answer] | None = None
        self.subscribe_answer: Callable[[dict[str, Any]], Answer] | None = None
        self.follows: dict[str, set[str]] = {}
        self.connect_bodies: list[dict[str, Any]] = []
        self.subscribe_bodies: list[dict[str, Any]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        body = orjson.loads(b"".join(chunks))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if scope["path"] == "/connect":
                self.connect_bodies.append(body)
                status, payload = (self.connect_answer or self._who)(body)
            else:
                self.subscribe_bodies.append(body)
                status, payload = (self.subscribe_answer or self._may_follow)(body)
        finally:
            self.in_flight -= 1
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})

    @staticmethod
    def _user(body: dict[str, Any]) -> str | None:
        cookie = body["headers"].get("cookie", "")
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session" and value:
                return str(value)
        return None

    def _who(self, body: dict[str, Any]) -> Answer:
        user = self._user(body)
        if user is None:
            return 401, b'{"error": "not signed in"}'
        return 200, orjson.dumps({"user": user, "topics": ["news.*"], "expires_in": 3600})

    def _may_follow(self, body: dict[str, Any]) -> Answer:
        allowed = body["topic"] in self.follows.get(body["user"], set())
        return 200, orjson.dumps({"allow": allowed})


@pytest.fixture
async def application() -> AsyncIterator[tuple[Application, str]]:
    """The application served by uvicorn on a loopback port; yields it and its base URL."""
    app = Application()
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


async def start_with_proxies(start_server: StartServer, base: str, **overrides: Any) -> RunningServer:
    overrides.setdefault("connect_proxy_url", f"{base}/connect")
    return await start_server(**overrides)


class Browser:
    """Opens WebSockets as a browser of the application would: with its cookie, and other headers."""

    def __init__(self) -> None:
        self.opened: list[ClientConnection] = []

    async def open(self, running: RunningServer, cookie: str | None = None, **headers: str) -> Client:
        extra = {name.replace("_", "-"): value for name, value in headers.items()}
        if cookie is not None:
            extra["Cookie"] = cookie
        connection = await websockets.connect(running.ws_url, additional_headers=extra, open_timeout=5)
        self.opened.append(connection)
        return Client(connection)

    async def sign_in(self, running: RunningServer, cookie: str | None, **auth: Any) -> tuple[Client, dict[str, Any]]:
        """Open and send `auth` (with no token unless given): the client and the first answer, which is
        `{"closed": <code>}` when the server closed instead."""
        client = await self.open(running, cookie)
        await client.send({"type": "auth", **auth})
        try:
            return client, await client.receive()
        except websockets.ConnectionClosed:
            return client, {"closed": client.ws.close_code}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    opened = Browser()
    yield opened
    for connection in opened.opened:
        with contextlib.suppress(Exception):
            await connection.close()


# Connect proxy.


async def test_a_browser_with_a_session_cookie_signs_in_without_a_token(
    start_server: StartServer, application: tuple[Application, str], browser: Browser, publisher: Publisher
) -> None:
    _, base = application
    running = await start_with_proxies(start_server, base)
    client, welcome = await browser.sign_in(running, "session=42")
    assert (welcome["type"], welcome["user"], welcome["topics"]) == ("welcome", "42", ["user.42"])
    assert abs(welcome["expires"] - (time.time() + 3600)) < 5
    # The answer's patterns are the grants, exactly as a token's `topics`.
    assert (await client.subscribe("news.sport"))["type"] == "subscribed"
    refused = await client.subscribe("sport.news")
    assert (refused["type"], refused["code"]) == ("error", "forbidden")
    await publisher.publish("user.42", "to 42")
    assert (await client.expect_event("user.42"))["data"] == "to 42"
    assert running.node.stats.proxy_requests["connect", "allowed"] == 1


async def test_only_the_allow_listed_headers_reach_the_application_with_origin_and_address(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    running = await start_with_proxies(
        start_server, base, connect_proxy_headers=["Cookie", "X-Tenant"], allowed_origins=["https://app.test"]
    )
    client = await browser.open(
        running,
        "session=7",
        X_Tenant="acme",
        X_Secret="not for the app",
        Authorization="Bearer x",
        Origin="https://app.test",
    )
    await client.send({"type": "auth"})
    assert (await client.receive())["user"] == "7"
    (body,) = app.connect_bodies
    assert body == {
        "headers": {"cookie": "session=7", "x-tenant": "acme"},
        "origin": "https://app.test",
        "address": "127.0.0.1",
    }


async def test_a_refusal_closes_with_4504_and_is_counted(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    running = await start_with_proxies(start_server, base)
    _, answer = await browser.sign_in(running, None)  # no cookie: the application answers 401
    assert answer == {"closed": closecodes.REFUSED_BY_APPLICATION.code}
    # A 2xx answer carrying `error` refuses too, and so does 403.
    app.connect_answer = lambda body: (200, b'{"error": "account locked"}')
    _, answer = await browser.sign_in(running, "session=9")
    assert answer == {"closed": closecodes.REFUSED_BY_APPLICATION.code}
    app.connect_answer = lambda body: (403, b"")
    _, answer = await browser.sign_in(running, "session=9")
    assert answer == {"closed": closecodes.REFUSED_BY_APPLICATION.code}
    stats = running.node.stats
    assert stats.proxy_requests["connect", "refused"] == 3
    assert stats.closes_by_code[closecodes.REFUSED_BY_APPLICATION.code] == 3
    assert not closecodes.REFUSED_BY_APPLICATION.reconnect


async def test_an_application_that_is_down_closes_with_4005(start_server: StartServer, browser: Browser) -> None:
    running = await start_with_proxies(start_server, f"http://127.0.0.1:{free_port()}")  # nobody listens
    client = await browser.open(running, "session=42")
    await client.send({"type": "auth"})
    await client.expect_close(closecodes.APPLICATION_UNAVAILABLE.code)
    assert running.node.stats.proxy_requests["connect", "unavailable"] == 1
    assert closecodes.APPLICATION_UNAVAILABLE.reconnect


async def test_a_slow_application_closes_with_4005_within_the_timeout(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    app.delay_s = 3.0
    running = await start_with_proxies(start_server, base, connect_proxy_timeout_s=0.3)
    client = await browser.open(running, "session=42")
    started = time.monotonic()
    await client.send({"type": "auth"})
    await client.expect_close(closecodes.APPLICATION_UNAVAILABLE.code)
    assert time.monotonic() - started < 2.0


BAD_ANSWERS: dict[str, Answer] = {
    "user-with-a-dot": (200, b'{"user": "42.admin", "topics": [], "expires_in": 60}'),
    "user-missing": (200, b'{"topics": ["news.*"], "expires_in": 60}'),
    "user-not-a-string": (200, b'{"user": 42, "expires_in": 60}'),
    "bad-pattern": (200, b'{"user": "42", "topics": ["news..sport"], "expires_in": 60}'),
    "topics-not-a-list": (200, b'{"user": "42", "topics": "news.*", "expires_in": 60}'),
    "absurd-lifetime": (200, b'{"user": "42", "expires_in": 1000000000}'),
    "negative-lifetime": (200, b'{"user": "42", "expires_in": -5}'),
    "lifetime-not-a-number": (200, b'{"user": "42", "expires_in": "3600"}'),
    "not-json": (200, b"<html>welcome back</html>"),
    "not-an-object": (200, b'["42"]'),
    "too-large": (200, b'{"user": "42", "pad": "' + b"x" * 100_000 + b'"}'),
    "server-error": (500, b'{"user": "42"}'),
    "not-found": (404, b"{}"),
}


@pytest.mark.parametrize("name", list(BAD_ANSWERS))
async def test_an_answer_that_breaks_the_rules_is_not_a_sign_in(
    start_server: StartServer, application: tuple[Application, str], browser: Browser, name: str
) -> None:
    app, base = application
    app.connect_answer = lambda body: BAD_ANSWERS[name]
    running = await start_with_proxies(start_server, base)
    client = await browser.open(running, "session=42")
    await client.send({"type": "auth"})
    await client.expect_close(closecodes.APPLICATION_UNAVAILABLE.code)
    assert running.node.sessions_of("42") == []
    results = running.node.stats.proxy_requests
    assert results["connect", "invalid"] + results["connect", "unavailable"] == 1


async def test_the_application_never_sees_more_requests_at_once_than_the_cap(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    app.delay_s = 0.2
    running = await start_with_proxies(start_server, base, connect_proxy_concurrency=3, connect_proxy_timeout_s=5)
    welcomes = await asyncio.gather(*(browser.sign_in(running, f"session=u{n}") for n in range(15)))
    assert sorted(welcome["user"] for _, welcome in welcomes) == sorted(f"u{n}" for n in range(15))
    assert app.max_in_flight == 3
    assert len(app.connect_bodies) == 15


async def test_waiting_for_a_slot_counts_in_the_timeout(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    app.delay_s = 0.6
    running = await start_with_proxies(start_server, base, connect_proxy_concurrency=1, connect_proxy_timeout_s=1.0)
    outcomes = await asyncio.gather(*(browser.sign_in(running, f"session=w{n}") for n in range(4)))
    answers = sorted(str(answer.get("type", answer.get("closed"))) for _, answer in outcomes)
    # The first is answered in 0.6 s; the second would be at 1.2 s, past the timeout, like the others behind it.
    assert answers == [str(closecodes.APPLICATION_UNAVAILABLE.code)] * 3 + ["welcome"], outcomes
    assert app.max_in_flight == 1


async def test_tokens_keep_working_beside_the_connect_proxy(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    running = await start_with_proxies(start_server, base)
    client, welcome = await browser.sign_in(running, "session=42", token=token_for("ada", ["sport.*"]))
    assert (welcome["type"], welcome["user"]) == ("welcome", "ada")
    assert (await client.subscribe("sport.news"))["type"] == "subscribed"
    _, answer = await browser.sign_in(running, "session=42", token="not-a-token")
    assert answer == {"closed": closecodes.INVALID_TOKEN.code}
    assert app.connect_bodies == []  # a token never asks the application


async def test_without_a_connect_proxy_an_auth_without_token_is_a_protocol_violation(
    start_server: StartServer, browser: Browser
) -> None:
    running = await start_server()
    client = await browser.open(running, "session=42")
    await client.send({"type": "auth"})
    await client.expect_close(closecodes.PROTOCOL_VIOLATION.code)


async def test_a_sign_in_past_its_expires_in_is_closed_with_4001_and_resumes_through_the_application(
    start_server: StartServer, application: tuple[Application, str], browser: Browser, publisher: Publisher
) -> None:
    app, base = application
    app.connect_answer = lambda body: (200, b'{"user": "42", "topics": ["news.*"], "expires_in": 1}')
    running = await start_with_proxies(start_server, base)
    client, welcome = await browser.sign_in(running, "session=42")
    assert (await client.subscribe("news.sport"))["type"] == "subscribed"
    await client.expect_close(closecodes.TOKEN_EXPIRED.code, timeout=4)
    await wait_until(lambda: running.node.directory.parked_count == 1, 5)
    await publisher.publish("news.sport", "while away")
    app.connect_answer = None
    again, resumed = await browser.sign_in(running, "session=42", resume={"session": welcome["session"], "received": 0})
    assert (resumed["recovered"], resumed["topics"]) == (True, ["user.42", "news.sport"])
    assert (await again.expect_event("news.sport"))["data"] == "while away"
    # Someone else's cookie cannot resume it.
    again.ws.transport.abort()
    await wait_until(lambda: running.node.directory.parked_count == 1, 5)
    _, other = await browser.sign_in(running, "session=mallory", resume={"session": resumed["session"], "received": 1})
    assert (other["user"], other["recovered"]) == ("mallory", False)


# Subscribe proxy.


async def test_the_subscribe_proxy_decides_topics_the_grants_do_not_cover(
    start_server: StartServer, application: tuple[Application, str], browser: Browser, publisher: Publisher
) -> None:
    app, base = application
    app.follows = {"42": {"doc.9381"}, "ada": {"doc.1"}}
    running = await start_with_proxies(start_server, base, subscribe_proxy_url=f"{base}/subscribe")
    client, _ = await browser.sign_in(running, "session=42")
    assert (await client.subscribe("doc.9381"))["type"] == "subscribed"
    no = await client.subscribe("doc.1")
    assert (no["type"], no["code"], no["topic"]) == ("error", "forbidden", "doc.1")
    # Granted topics never ask.
    assert (await client.subscribe("news.sport"))["type"] == "subscribed"
    assert [body["topic"] for body in app.subscribe_bodies] == ["doc.9381", "doc.1"]
    assert app.subscribe_bodies[0] == {
        "user": "42",
        "topic": "doc.9381",
        "headers": {"cookie": "session=42"},
        "origin": None,
        "address": "127.0.0.1",
    }
    await publisher.publish("doc.9381", "edited")
    assert (await client.expect_event("doc.9381"))["data"] == "edited"
    # A token's session asks too, with its connection's headers.
    ada, _ = await browser.sign_in(running, "session=ignored", token=token_for("ada"))
    assert (await ada.subscribe("doc.1"))["type"] == "subscribed"
    stats = running.node.stats
    assert (stats.proxy_requests["subscribe", "allowed"], stats.proxy_requests["subscribe", "refused"]) == (2, 1)


@pytest.mark.parametrize("failure", ["down", "slow", "server-error", "garbage"])
async def test_a_subscribe_the_application_cannot_answer_is_unavailable(
    start_server: StartServer, application: tuple[Application, str], browser: Browser, failure: str
) -> None:
    app, base = application
    subscribe_url = f"http://127.0.0.1:{free_port()}/subscribe" if failure == "down" else f"{base}/subscribe"
    running = await start_with_proxies(
        start_server, base, subscribe_proxy_url=subscribe_url, subscribe_proxy_timeout_s=0.3
    )
    client, _ = await browser.sign_in(running, "session=42")
    if failure == "slow":
        app.delay_s = 2.0
    elif failure == "server-error":
        app.subscribe_answer = lambda body: (502, b"bad gateway")
    elif failure == "garbage":
        app.subscribe_answer = lambda body: (200, b'{"allow": "yes"}')
    answer = await client.subscribe("doc.5")
    assert (answer["type"], answer["code"], answer["topic"]) == ("error", "unavailable", "doc.5")
    app.delay_s = 0.0
    assert (await client.request({"type": "ping", "id": 1}))["type"] == "pong"  # the connection stays open
    assert "doc.5" not in next(iter(running.node.sessions_of("42"))).topics


async def test_a_resumed_session_asks_again_for_the_topics_its_grants_do_not_cover(
    start_server: StartServer, application: tuple[Application, str], browser: Browser, publisher: Publisher
) -> None:
    app, base = application
    app.follows = {"42": {"doc.1", "doc.2"}}
    running = await start_with_proxies(start_server, base, subscribe_proxy_url=f"{base}/subscribe")
    client, welcome = await browser.sign_in(running, "session=42")
    for topic in ("doc.1", "doc.2", "news.sport"):
        assert (await client.subscribe(topic))["type"] == "subscribed"
    client.ws.transport.abort()
    await wait_until(lambda: running.node.directory.parked_count == 1, 5)
    app.follows["42"] = {"doc.1"}  # the user lost access to doc.2 meanwhile
    await publisher.publish("doc.2", "secret")
    await publisher.publish("doc.1", "kept")
    asked = len(app.subscribe_bodies)
    again, resumed = await browser.sign_in(running, "session=42", resume={"session": welcome["session"], "received": 0})
    assert resumed["recovered"] is True
    assert resumed["topics"] == ["user.42", "doc.1", "news.sport"]
    assert resumed["dropped"] == ["doc.2"]
    assert sorted(body["topic"] for body in app.subscribe_bodies[asked:]) == ["doc.1", "doc.2"]  # not news.sport
    assert (await again.expect_event("doc.1"))["data"] == "kept"
    await publisher.publish("doc.1", "live")
    assert (await again.expect_event("doc.1"))["data"] == "live"


async def test_a_refresh_asks_again_for_the_topics_its_grants_do_not_cover(
    start_server: StartServer, application: tuple[Application, str], browser: Browser
) -> None:
    app, base = application
    app.follows = {"ada": {"doc.1", "doc.2"}}
    running = await start_with_proxies(start_server, base, subscribe_proxy_url=f"{base}/subscribe")
    client, _ = await browser.sign_in(running, "session=ada", token=token_for("ada"))
    for topic in ("doc.1", "doc.2"):
        assert (await client.subscribe(topic))["type"] == "subscribed"
    app.follows["ada"] = {"doc.1"}
    answer = await client.request({"type": "refresh", "token": token_for("ada"), "id": "r"})
    assert (answer["type"], answer["dropped"]) == ("refreshed", ["doc.2"])
    assert next(iter(running.node.sessions_of("ada"))).topics == {"user.ada", "doc.1"}


# Pure parts.


def test_a_connect_proxy_stands_in_for_a_token_key_and_proxy_urls_must_be_http() -> None:
    from notifier.settings import ConfigError, Settings

    Settings(_env_file=None, connect_proxy_url="http://app.internal/notifier/connect").require_token_key()  # type: ignore[call-arg]
    with pytest.raises(ConfigError, match="NOTIFIER_CONNECT_PROXY_URL"):
        Settings(_env_file=None, subscribe_proxy_url="http://app.internal/sub").require_token_key()  # type: ignore[call-arg]
    for bad in ("ftp://app/connect", "app.internal/connect", "http:///connect"):
        with pytest.raises(ValueError, match="http"):
            Settings(_env_file=None, connect_proxy_url=bad)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="header names"):
        Settings(_env_file=None, connect_proxy_headers="Cookie, Bad Header")  # type: ignore[call-arg,arg-type]


def test_the_request_keeps_only_allow_listed_headers_and_joins_repeats() -> None:
    from notifier.connection.proxy import ClientRequest

    handshake = [
        ("host", "notifier.test"),
        ("cookie", "a=1"),
        ("Cookie", "b=2"),
        ("origin", "https://app.test"),
        ("x-tenant", "acme"),
        ("x-tenant", "beta"),
        ("x-secret", "no"),
    ]
    request = ClientRequest.from_handshake(handshake, frozenset({"cookie", "x-tenant"}), "203.0.113.7")
    assert request.body() == {
        "headers": {"cookie": "a=1; b=2", "x-tenant": "acme, beta"},
        "origin": "https://app.test",
        "address": "203.0.113.7",
    }


@pytest.mark.loopback  # the application is a raw HTTP/1.1 server on 127.0.0.1
async def test_a_cookie_the_application_sets_is_never_sent_for_another_user() -> None:
    from notifier.connection.proxy import ApplicationProxies, ClientRequest
    from notifier.settings import Settings
    from notifier.stats import Stats

    seen: list[bytes] = []

    async def application(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # An HTTP/1.1 application on a raw socket that sets a cookie on every answer, over one kept connection.
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await serve(reader, writer)

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n"):
            seen.append(head)
            length = int(next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:"))[15:])
            user = orjson.loads(await reader.readexactly(length))["headers"]["cookie"].removeprefix("session=")
            answer = orjson.dumps({"user": user})
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"set-cookie: session={user}; Path=/\r\ncontent-length: {len(answer)}\r\n\r\n".encode()
                + answer
            )
            await writer.drain()

    server = await asyncio.start_server(application, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    settings = Settings(_env_file=None, connect_proxy_url=f"http://127.0.0.1:{port}/connect")  # type: ignore[call-arg]
    proxies = ApplicationProxies(settings, Stats())
    await proxies.start()
    try:
        for user in ("alice", "bob"):
            identity = await proxies.identify(ClientRequest((("cookie", f"session={user}"),), None, None))
            assert identity.user == user
    finally:
        await proxies.stop()
        server.close()
    assert len(seen) == 2
    assert not any(b"cookie" in head.lower() for head in seen)
