"""Shared fixtures: a real RabbitMQ, real uvicorn servers on loopback, real WebSocket clients."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aio_pika
import orjson
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from notifier.auth import mint_token
from notifier.node import Node
from notifier.server import NotifierServer
from notifier.settings import Settings

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/"
SECRET = "test-secret-that-is-long-enough-for-hs256!"
API_KEY = "test-api-key-0123456789"
RECEIVE_TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def rabbitmq() -> str:
    """The real broker. Not reachable is a failure: these tests exist to prove the RabbitMQ path."""

    async def probe() -> None:
        connection = await aio_pika.connect(AMQP_URL, timeout=5)
        await connection.close()

    try:
        asyncio.run(probe())
    except Exception as error:  # noqa: BLE001 - any reason it is unreachable is reported
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL}: {error!r} (start it: rabbitmq-server -detached)")
    return AMQP_URL


@pytest.fixture
async def exchange(rabbitmq: str) -> AsyncIterator[str]:
    """A fresh exchange name per test, so tests never see each other's events; removed afterwards."""
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    connection = await aio_pika.connect(rabbitmq)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)
        await channel.exchange_delete(f"{name}.dead")
        await channel.queue_delete(f"{name}.dead")


def make_settings(**overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "host": "127.0.0.1",
        "port": free_port(),
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


@pytest.fixture
async def start_server(exchange: str) -> AsyncIterator[StartServer]:
    """Start real uvicorn servers (our drain-on-shutdown subclass) in this test's event loop."""
    running: list[RunningServer] = []

    async def start(**overrides: Any) -> RunningServer:
        overrides.setdefault("exchange", exchange)
        overrides.setdefault("dead_letter_exchange", f"{exchange}.dead")
        settings = make_settings(**overrides)
        from notifier.server import build_server

        server = build_server(settings)
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
                raise RuntimeError("server stopped during start-up")
            await asyncio.sleep(0.01)
        node: Node = server.config.app.state.node  # type: ignore[union-attr]
        instance = RunningServer(settings, node, server, task)
        running.append(instance)
        return instance

    yield start
    for instance in running:
        if not instance.task.done():
            await instance.stop()


@pytest.fixture
async def server(start_server: StartServer) -> RunningServer:
    """One instance on RabbitMQ with default settings."""
    return await start_server()


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

    async def expect_silence(self, seconds: float = 0.5) -> None:
        with contextlib.suppress(TimeoutError):
            frame = await self.receive(seconds)
            raise AssertionError(f"expected no frame, got {frame}")

    async def expect_close(self, code: int, timeout: float = RECEIVE_TIMEOUT_S) -> None:
        """Read until the server closes; assert its close code."""
        with contextlib.suppress(websockets.ConnectionClosed):
            async with asyncio.timeout(timeout):
                while True:
                    await self.ws.recv()
        assert self.ws.close_code == code, (self.ws.close_code, self.ws.close_reason)

    async def close(self) -> None:
        await self.ws.close()


def token_for(user: str, topics: list[str] | None = None, ttl_s: float = 3600) -> str:
    return mint_token(SECRET, user, topics=topics, ttl_s=ttl_s)


ConnectClient = Callable[..., Awaitable[Client]]


@pytest.fixture
async def connect() -> AsyncIterator[ConnectClient]:
    """Open clients; with a `user`, authenticate and check the welcome."""
    opened: list[Client] = []

    async def open_client(
        running: RunningServer,
        user: str | None = None,
        *,
        topics: list[str] | None = None,
        token: str | None = None,
        origin: str | None = None,
        query: str = "",
    ) -> Client:
        connection = await websockets.connect(
            running.ws_url + query,
            origin=origin,
            max_size=None,
            open_timeout=5,  # type: ignore[arg-type]
        )
        client = Client(connection)
        opened.append(client)
        if user is not None or token is not None:
            await client.send({"type": "auth", "token": token or token_for(user or "", topics)})
            welcome = await client.receive()
            assert welcome["type"] == "welcome", welcome
        return client

    yield open_client
    for client in opened:
        with contextlib.suppress(Exception):
            await client.close()


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


@pytest.fixture
async def publisher(rabbitmq: str, exchange: str) -> AsyncIterator[Publisher]:
    connection = await aio_pika.connect(rabbitmq)
    channel = await connection.channel(publisher_confirms=True)
    declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    yield Publisher(connection, declared)
    await connection.close()
