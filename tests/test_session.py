"""The session's state machine against a fake socket, the in-memory broker and a real token verifier: no
network, milliseconds per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from notifier import closecodes
from notifier.admission import Admission
from notifier.auth import TokenVerifier, mint_token
from notifier.broker.memory import MemoryBroker
from notifier.hub import Hub
from notifier.senders import AsgiSender
from notifier.session import Session, SessionContext
from notifier.settings import Settings
from notifier.stats import Stats

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-that-is-long-enough!!"


class FakeSocket:
    """The ASGI side of one WebSocket: what the client sends in, what the server sent out."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.frame_arrived = asyncio.Event()
        self.paused = asyncio.Event()
        self.paused.set()  # cleared: the client stopped reading, sends block

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send(self, message: Any) -> None:
        await self.paused.wait()
        self.sent.append(message)
        self.frame_arrived.set()

    def client_sends(self, frame: dict[str, Any]) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": orjson.dumps(frame).decode()})

    def client_leaves(self) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": 1001})

    def frames(self) -> list[dict[str, Any]]:
        return [orjson.loads(message["text"]) for message in self.sent if message["type"] == "websocket.send"]

    def close_code(self) -> int | None:
        codes = [message["code"] for message in self.sent if message["type"] == "websocket.close"]
        return codes[-1] if codes else None

    async def next_frame(self, kind: str | None = None) -> dict[str, Any]:
        async with asyncio.timeout(2):
            while True:
                for frame in self.frames():
                    if kind is None or frame["type"] == kind:
                        self.sent.remove(next(m for m in self.sent if m.get("text") == orjson.dumps(frame).decode()))
                        return frame
                self.frame_arrived.clear()
                await self.frame_arrived.wait()

    async def closed_with(self) -> int:
        async with asyncio.timeout(2):
            while (code := self.close_code()) is None:
                self.frame_arrived.clear()
                await self.frame_arrived.wait()
        return code


class Instance:
    """What a node passes its sessions, built on the in-memory broker."""

    def __init__(self, **overrides: Any) -> None:
        values: dict[str, Any] = {"jwt_secret": SECRET, "amqp_url": "memory://"} | overrides
        self.settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        self.broker = MemoryBroker(max_event_bytes=self.settings.max_event_bytes)
        self.stats = Stats()
        self.hub = Hub(self.broker, self.stats)
        self.admission = Admission(
            max_connections=self.settings.max_connections,
            max_connections_per_user=self.settings.max_connections_per_user,
        )
        self.finished: list[Session] = []
        self.context = SessionContext(
            settings=self.settings,
            hub=self.hub,
            verifier=TokenVerifier(self.settings),
            admission=self.admission,
            stats=self.stats,
            on_finished=self.finished.append,
        )
        self.runs: list[asyncio.Task[None]] = []

    def connect(self, token_in_url: str | None = None) -> tuple[Session, FakeSocket]:
        socket = FakeSocket()
        holder: list[asyncio.Task[None]] = []
        sender = AsgiSender(socket.send, lambda: holder[0].cancel())
        session = Session(socket.receive, sender, self.context)
        task = asyncio.create_task(session.run(token_in_url))
        holder.append(task)
        self.runs.append(task)
        return session, socket

    async def publish(self, topic: str, data: Any) -> None:
        await self.broker.publish(topic, orjson.dumps(data), f"id-{topic}-{data}")


@pytest.fixture
async def instance() -> AsyncIterator[Instance]:
    node = Instance()
    await node.broker.connect(node.hub.deliver)
    yield node
    for task in node.runs:
        task.cancel()
    await asyncio.gather(*node.runs, return_exceptions=True)


def token(user: str, topics: list[str] | None = None, ttl_s: float = 60) -> str:
    return mint_token(SECRET, user, topics=topics, ttl_s=ttl_s)


async def signed_in(instance: Instance, user: str, topics: list[str] | None = None) -> tuple[Session, FakeSocket]:
    session, socket = instance.connect()
    socket.client_sends({"type": "auth", "token": token(user, topics)})
    welcome = await socket.next_frame("welcome")
    assert welcome["topics"] == [f"user.{user}"]
    return session, socket


async def test_auth_binds_the_personal_topic_and_events_follow(instance: Instance) -> None:
    _, socket = await signed_in(instance, "alice")
    assert instance.broker.bound_topics == {"user.alice"}
    await instance.publish("user.alice", "hello")
    event = await socket.next_frame("event")
    assert (event["topic"], event["data"]) == ("user.alice", "hello")


async def test_a_frame_before_auth_is_a_protocol_violation(instance: Instance) -> None:
    _, socket = instance.connect()
    socket.client_sends({"type": "subscribe", "topic": "news"})
    assert await socket.closed_with() == closecodes.PROTOCOL_VIOLATION.code


async def test_an_invalid_token_closes_with_4500(instance: Instance) -> None:
    _, socket = instance.connect()
    socket.client_sends({"type": "auth", "token": "not.a.jwt"})
    assert await socket.closed_with() == closecodes.INVALID_TOKEN.code


async def test_no_auth_in_time_closes_with_4000() -> None:
    node = Instance(auth_timeout_s=0.05)
    await node.broker.connect(node.hub.deliver)
    _, socket = node.connect()
    assert await socket.closed_with() == closecodes.AUTH_TIMEOUT.code
    assert node.stats.closes_by_code[closecodes.AUTH_TIMEOUT.code] == 1


async def test_subscribe_needs_a_grant(instance: Instance) -> None:
    _, socket = await signed_in(instance, "alice", topics=["news.*"])
    socket.client_sends({"type": "subscribe", "topic": "news.sport", "id": 1})
    assert (await socket.next_frame())["type"] == "subscribed"
    socket.client_sends({"type": "subscribe", "topic": "admin", "id": 2})
    answer = await socket.next_frame()
    assert (answer["type"], answer["code"], answer["id"]) == ("error", "forbidden", 2)
    assert instance.broker.bound_topics == {"user.alice", "news.sport"}


async def test_leaving_releases_topics_and_the_users_slot(instance: Instance) -> None:
    session, socket = await signed_in(instance, "alice", topics=["news"])
    socket.client_sends({"type": "subscribe", "topic": "news"})
    await socket.next_frame("subscribed")
    assert instance.admission.connections_of("alice") == 1
    socket.client_leaves()
    await asyncio.wait_for(instance.runs[0], 2)
    assert instance.broker.bound_topics == set()
    assert instance.admission.connections_of("alice") == 0
    assert instance.admission.connections == 0
    assert instance.finished == [session]


async def test_the_per_user_limit_closes_the_extra_connection_with_4502() -> None:
    node = Instance(max_connections_per_user=1)
    await node.broker.connect(node.hub.deliver)
    await signed_in(node, "alice")
    _, second = node.connect()
    second.client_sends({"type": "auth", "token": token("alice")})
    assert await second.closed_with() == closecodes.USER_CONNECTION_LIMIT.code


async def test_past_the_instance_limit_a_connection_is_closed_with_4003() -> None:
    node = Instance(max_connections=1)
    await node.broker.connect(node.hub.deliver)
    await signed_in(node, "alice")
    _, second = node.connect()
    assert await second.closed_with() == closecodes.SERVER_FULL.code


async def test_a_client_that_stops_reading_is_closed_as_slow_and_its_queue_dropped() -> None:
    node = Instance(send_queue_size=4)
    await node.broker.connect(node.hub.deliver)
    _, socket = await signed_in(node, "alice")
    socket.paused.clear()  # the client stops reading: every send blocks
    big = "x" * 20_000  # a few frames fill the ASGI path's socket-buffer allowance
    for n in range(12):
        await node.publish("user.alice", f"{n}{big}")
    assert node.stats.closes_by_code[closecodes.SLOW_CLIENT.code] == 1
    assert node.stats.frames_dropped > 0
    socket.paused.set()
    assert await socket.closed_with() == closecodes.SLOW_CLIENT.code


async def test_a_burst_larger_than_the_queue_reaches_a_reading_client_in_order() -> None:
    node = Instance(send_queue_size=256)
    await node.broker.connect(node.hub.deliver)
    _, socket = await signed_in(node, "alice")
    for n in range(500):  # delivered in one go, before the writer runs even once
        await node.publish("user.alice", n)
    async with asyncio.timeout(2):
        while len(socket.frames()) < 500:
            socket.frame_arrived.clear()
            await socket.frame_arrived.wait()
    assert [frame["data"] for frame in socket.frames()] == list(range(500))
    assert node.stats.closes_by_code[closecodes.SLOW_CLIENT.code] == 0


async def test_refresh_for_another_user_is_refused(instance: Instance) -> None:
    _, socket = await signed_in(instance, "alice")
    socket.client_sends({"type": "refresh", "token": token("mallory"), "id": "r"})
    answer = await socket.next_frame()
    assert (answer["type"], answer["code"]) == ("error", "forbidden")


async def test_a_narrowing_refresh_drops_what_it_no_longer_grants(instance: Instance) -> None:
    _, socket = await signed_in(instance, "alice", topics=["news", "sport"])
    for topic in ("news", "sport"):
        socket.client_sends({"type": "subscribe", "topic": topic})
        await socket.next_frame("subscribed")
    socket.client_sends({"type": "refresh", "token": token("alice", ["news"]), "id": "r"})
    refreshed = await socket.next_frame("refreshed")
    assert refreshed["dropped"] == ["sport"]
    assert instance.broker.bound_topics == {"user.alice", "news"}
