"""Helpers shared by the test modules: the broker under test, free ports, rabbitmqctl, servers and clients.

Fixtures live in conftest.py; this module holds plain functions, so no test module imports another.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import aio_pika
import httpx
import orjson
import websockets
from websockets.asyncio.client import ClientConnection

from notifier.connection.auth import mint_token
from notifier.instance.node import Node
from notifier.runtime.server import NotifierServer
from notifier.settings import Settings

# The one switch for the broker every test uses, credentials and vhost included. Point it at a vhost of your
# own to run the suite beside other users of the same RabbitMQ.
AMQP_URL = os.environ.get("NOTIFIER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
SECRET = "test-secret-that-is-long-enough-for-hs256!"
API_KEY = "test-api-key-0123456789"
RECEIVE_TIMEOUT_S = 5.0
ROOT = Path(__file__).resolve().parent.parent


def amqp_vhost(url: str = AMQP_URL) -> str:
    """The vhost an AMQP URL names: its path without the leading slash, percent-decoded; "/" when empty."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def amqp_port(url: str = AMQP_URL) -> int:
    return urlsplit(url).port or 5672


def amqp_host(url: str = AMQP_URL) -> str:
    return urlsplit(url).hostname or "127.0.0.1"


def amqp_url_through(port: int, url: str = AMQP_URL) -> str:
    """The broker URL with its host and port replaced by 127.0.0.1:`port` (a proxy), same login and vhost."""
    parts = urlsplit(url)
    login = parts.netloc.rpartition("@")[0]
    netloc = f"{login}@127.0.0.1:{port}" if login else f"127.0.0.1:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def free_port() -> int:
    """A loopback TCP port nobody listens on right now (bind to port 0 and let the kernel pick)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# rabbitmqctl commands that take a vhost; the others (close_connection, stop_app...) are node-wide.
_VHOST_COMMANDS = {"list_bindings", "list_queues", "list_exchanges", "list_connections", "list_consumers"}


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    """Run `rabbitmqctl -q ...` on the local node; `list_*` commands look only at the vhost under test."""
    vhost = ["-p", amqp_vhost()] if args and args[0] in _VHOST_COMMANDS else []
    command = ["rabbitmqctl", "-q", *vhost, *args]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}: {result.stderr.strip()}")
    return result.stdout


def rabbitmqctl_rows(*args: str, timeout: float = 60) -> list[list[str]]:
    """Rows of a `rabbitmqctl list_*` command in the vhost under test, as tab-separated columns."""
    output = rabbitmqctl(*args, "--no-table-headers", timeout=timeout)
    return [line.split("\t") for line in output.splitlines() if line.strip()]


def bindings_of(exchange: str) -> dict[str, set[str]]:
    """Queue name -> routing keys bound from `exchange`, as RabbitMQ itself reports them."""
    found: dict[str, set[str]] = {}
    for row in rabbitmqctl_rows("list_bindings", "source_name", "destination_name", "routing_key", timeout=30):
        if len(row) == 3 and row[0] == exchange:
            found.setdefault(row[1], set()).add(row[2])
    return found


async def wait_until(
    predicate: Callable[[], object | Awaitable[object]], timeout: float, interval: float = 0.05
) -> None:
    """Poll a condition the test cannot await directly (another process's state)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


Publish = Callable[[str, Any], Awaitable[object]]
"""Publishes `data` to a topic: `Publisher.publish`, or any other way a test sends events."""


async def assert_nothing_before_sentinel(
    receive: Callable[[], Awaitable[dict[str, Any]]], publish: Publish, topic: str
) -> None:
    """Assert that nothing more arrives: publish a sentinel event to `topic` (one the receiver holds, on the path
    of what must not arrive) and check that the next frame `receive` gives is that sentinel alone.

    Whatever was still on its way is ahead of the sentinel, so this waits no fixed time and cannot pass because
    delivery was merely slow: it fails on a frame that arrives, and times out if the sentinel does not.
    """
    sentinel = {"sentinel": uuid.uuid4().hex}
    await publish(topic, sentinel)
    frame = await receive()
    received = (frame.get("type"), frame.get("topic"), frame.get("data"))
    assert received == ("event", topic, sentinel), f"expected nothing before the sentinel on {topic}, got {frame}"


async def receive_json(ws: Any, timeout: float = 5) -> dict[str, Any]:
    """The next frame of a raw websockets connection, parsed."""
    frame: dict[str, Any] = orjson.loads(await asyncio.wait_for(ws.recv(), timeout))
    return frame


def reference_match(pattern: list[str], words: list[str]) -> bool:
    """RabbitMQ's topic semantics, stated as directly as possible (the reference the matcher is checked against)."""
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(reference_match(rest, words[skip:]) for skip in range(len(words) + 1))
    if not words:
        return False
    return head in ("*", words[0]) and reference_match(rest, words[1:])


def token_for(user: str, topics: list[str] | None = None, ttl_s: float = 3600) -> str:
    """A token signed with the tests' secret."""
    return mint_token(SECRET, user, topics=topics, ttl_s=ttl_s)


def make_settings(**overrides: Any) -> Settings:
    """Settings of a test instance: loopback, the broker under test, short expiries. The port is 0 (none): the
    `start_server` fixture picks a free one when it serves."""
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": 0,
        "amqp_url": AMQP_URL,
        "jwt_secret": SECRET,
        "api_keys": [API_KEY],
        "queue_expires_s": 5.0,
        "shutdown_timeout_s": 3.0,
        "log_format": "console",
        # Every test client comes from 127.0.0.1: the per-address limits are tested on their own (test_abuse).
        "max_connections_per_address": 100_000,
        "new_connections_per_s_per_address": 100_000.0,
        "new_connections_burst_per_address": 100_000,
        # Tests reuse a few user names at machine speed: the per-user budgets are tested on their own.
        "user_subscribes_per_s": 100_000.0,
        "user_subscribes_burst": 100_000,
    }
    values.update(overrides)
    return Settings(_env_file=None, **values)  # type: ignore[call-arg]


@dataclass
class RunningServer:
    """A real uvicorn server started in the test's event loop (see the `start_server` fixture)."""

    settings: Settings
    node: Node
    server: NotifierServer
    task: asyncio.Task[None]

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.settings.port}/ws"

    async def stop(self) -> None:
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)


StartServer = Callable[..., Awaitable[RunningServer]]


def publish_over_http(running: RunningServer) -> Publish:
    """Publishes through `running`'s HTTP API (POST /api/publish), as a backend without aio-pika does."""

    async def publish(topic: str, data: Any) -> None:
        async with httpx.AsyncClient(base_url=running.http_url, timeout=5) as http:
            response = await http.post(
                "/api/publish", json={"topic": topic, "data": data}, headers={"Authorization": f"Bearer {API_KEY}"}
            )
        assert response.status_code == 202, response.text

    return publish


class Client:
    """A browser-like WebSocket client that speaks the protocol in JSON."""

    def __init__(self, connection: ClientConnection) -> None:
        self.ws = connection

    async def send(self, frame: dict[str, Any]) -> None:
        await self.ws.send(orjson.dumps(frame).decode())

    async def receive(self, timeout: float = RECEIVE_TIMEOUT_S) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.ws.recv(), timeout)
        frame: dict[str, Any] = orjson.loads(raw)
        return frame

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame and return the next frame that is not an event."""
        await self.send(frame)
        while True:
            answer = await self.receive()
            if answer["type"] != "event":
                return answer

    async def subscribe(self, topic: str) -> dict[str, Any]:
        return await self.request({"type": "subscribe", "topic": topic, "id": topic})

    async def expect_event(self, topic: str | None = None, timeout: float = RECEIVE_TIMEOUT_S) -> dict[str, Any]:
        frame = await self.receive(timeout)
        assert frame["type"] == "event", frame
        if topic is not None:
            assert frame["topic"] == topic, frame
        return frame

    async def expect_close(self, code: int, timeout: float = RECEIVE_TIMEOUT_S) -> None:
        """Read until the server closes; assert its close code."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        assert self.ws.close_code == code, (self.ws.close_code, self.ws.close_reason)

    async def close(self) -> None:
        await self.ws.close()


ConnectClient = Callable[..., Awaitable[Client]]


class Publisher:
    """An independent backend publishing to the exchange with aio-pika, as a real service would."""

    def __init__(self, connection: aio_pika.abc.AbstractConnection, exchange: aio_pika.abc.AbstractExchange):
        self.connection = connection
        self.exchange = exchange

    async def publish(
        self, topic: str, data: Any = None, *, body: bytes | None = None, message_id: str | None = None
    ) -> None:
        message = aio_pika.Message(
            body if body is not None else orjson.dumps(data),
            content_type="application/json",
            message_id=message_id,
        )
        await self.exchange.publish(message, routing_key=topic)
