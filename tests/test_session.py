"""The session's state machine in a real Node (the in-memory broker, a real token verifier), its connections
served by `Node.serve` on fake sockets: no network, milliseconds per test."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import partial
from typing import Any, Protocol
from urllib.parse import urlencode

import orjson
import pytest
from starlette.websockets import WebSocket

from notifier.broker.memory import MemoryBroker
from notifier.cluster import handover
from notifier.cluster.handover import HAND_OVER, HAND_OVER_BATCH
from notifier.connection.auth import mint_token
from notifier.connection.session import Session
from notifier.formats import closecodes
from notifier.instance.node import Node
from notifier.settings import Settings
from tests.support import Publish, assert_nothing_before_sentinel, wait_until

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-that-is-long-enough!!"


class FakeSocket:
    """The ASGI side of one WebSocket: what the client sends in, what the server sent out."""

    def __init__(self) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.incoming.put_nowait({"type": "websocket.connect"})
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

    def client_leaves(self, code: int = 1000) -> None:
        self.incoming.put_nowait({"type": "websocket.disconnect", "code": code})

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

    async def accepted(self) -> None:
        async with asyncio.timeout(2):
            while not any(message["type"] == "websocket.accept" for message in self.sent):
                self.frame_arrived.clear()
                await self.frame_arrived.wait()

    async def closed_with(self) -> int:
        async with asyncio.timeout(2):
            while (code := self.close_code()) is None:
                self.frame_arrived.clear()
                await self.frame_arrived.wait()
        return code


class FakeControlPlane:
    """Instances in one process asking each other directly: the hand-over logic without a broker."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, Any]] = {}
        self.asked: list[tuple[str, str]] = []
        self.without: set[str] = set()
        """Kinds the instances are taken not to announce, as an earlier release would not."""
        self.before_answer: Callable[[str], Awaitable[None]] | None = None
        """Runs before each request of that kind is handed to its instance."""

    def for_instance(self, instance_id: str) -> Any:
        plane = self
        handlers = self.handlers.setdefault(instance_id, {})

        class View:
            def on(self, kind: str, handler: Any) -> None:
                handlers[kind] = handler

            def live_instances(self) -> set[str] | None:
                return None  # it cannot tell who is alive: every holder is asked, and may not answer

            def runs(self, target: str, kind: str) -> bool:
                return kind in plane.handlers.get(target, {}) and kind not in plane.without

            async def ask(self, target: str, kind: str, args: dict[str, Any], *, timeout: float) -> Any:
                plane.asked.append((target, kind))
                handler = plane.handlers.get(target, {}).get(kind)
                if handler is None:
                    return None  # no such instance: no answer within the bound
                if plane.before_answer is not None:
                    await plane.before_answer(kind)
                return await asyncio.wait_for(handler(args), timeout)

        return View()


class Instance:
    """One instance's Node on the in-memory broker, its connections served by `Node.serve` on fake sockets: the
    service's own wiring, without a server or a network."""

    def __init__(self, instance_id: str = "one", control: FakeControlPlane | None = None, **overrides: Any) -> None:
        values: dict[str, Any] = {
            "jwt_secret": SECRET,
            "amqp_url": "memory://",
            "resume_timeout_s": 1.0,
            "shutdown_timeout_s": 0.2,  # the clean-up's drain: parked sessions are not waited for long
            # Tests subscribe at machine speed: the per-user budgets are tested on their own (test_budgets).
            "user_subscribes_per_s": 1000.0,
            "user_subscribes_burst": 1000,
            "max_topics_per_user": 1000,
        } | overrides
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        self.broker = MemoryBroker(max_event_bytes=settings.max_event_bytes)
        self.broker.instance_id = instance_id  # session ids name their instance
        self.node = Node(settings, self.broker)
        if control is not None:
            self.node.attach_control(control.for_instance(instance_id))
        self.hub, self.stats, self.admission, self.directory = (
            self.node.hub,
            self.node.stats,
            self.node.admission,
            self.node.directory,
        )
        self.runs: list[asyncio.Task[None]] = []

    async def connect(self, token_in_url: str | None = None) -> tuple[Session, FakeSocket]:
        """A new connection, as the ASGI server hands it to the node; its session, once accepted."""
        socket = FakeSocket()
        scope = {
            "type": "websocket",
            "path": "/ws",
            "headers": [],
            "query_string": urlencode({"token": token_in_url}).encode() if token_in_url else b"",
            "client": ("127.0.0.1", 50000),
        }
        before = set(self.node.sessions)
        self.runs.append(asyncio.create_task(self.node.serve(WebSocket(scope, socket.receive, socket.send))))
        await socket.accepted()  # the session is made as the connection is accepted
        (session,) = self.node.sessions - before
        return session, socket

    async def publish(self, topic: str, data: Any) -> None:
        # The same id on every instance for the same event, as RabbitMQ's message_id would be.
        await self.broker.publish(
            topic, orjson.dumps(data), "e-" + hashlib.sha1(orjson.dumps([topic, data])).hexdigest()
        )

    async def stop(self) -> None:
        for task in self.runs:
            task.cancel()
        await asyncio.gather(*self.runs, return_exceptions=True)
        await self.node.stop()


class StartInstance(Protocol):
    async def __call__(
        self, instance_id: str = "one", control: FakeControlPlane | None = None, **overrides: Any
    ) -> Instance: ...


@pytest.fixture
async def start_instance() -> AsyncIterator[StartInstance]:
    """Start instances (`Node.start`: its broker connected); each is stopped when the test is over."""
    started: list[Instance] = []

    async def start(instance_id: str = "one", control: FakeControlPlane | None = None, **overrides: Any) -> Instance:
        instance = Instance(instance_id, control, **overrides)
        await instance.node.start()
        started.append(instance)
        return instance

    yield start
    for instance in started:
        await instance.stop()


@pytest.fixture
async def instance(start_instance: StartInstance) -> Instance:
    return await start_instance()


def token(user: str, topics: list[str] | None = None, ttl_s: float = 60) -> str:
    return mint_token(SECRET, user, topics=topics, ttl_s=ttl_s)


async def signed_in(instance: Instance, user: str, topics: list[str] | None = None) -> tuple[Session, FakeSocket]:
    session, socket = await instance.connect()
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
    _, socket = await instance.connect()
    socket.client_sends({"type": "subscribe", "topic": "news"})
    assert await socket.closed_with() == closecodes.PROTOCOL_VIOLATION.code


async def test_an_invalid_token_closes_with_4500(instance: Instance) -> None:
    _, socket = await instance.connect()
    socket.client_sends({"type": "auth", "token": "not.a.jwt"})
    assert await socket.closed_with() == closecodes.INVALID_TOKEN.code


async def test_no_auth_in_time_closes_with_4000(start_instance: StartInstance) -> None:
    node = await start_instance(auth_timeout_s=0.05)
    _, socket = await node.connect()
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
    assert session not in instance.node.sessions


async def test_the_per_user_limit_closes_the_extra_connection_with_4502(start_instance: StartInstance) -> None:
    node = await start_instance(max_connections_per_user=1)
    await signed_in(node, "alice")
    _, second = await node.connect()
    second.client_sends({"type": "auth", "token": token("alice")})
    assert await second.closed_with() == closecodes.USER_CONNECTION_LIMIT.code


async def test_past_the_instance_limit_a_connection_is_closed_with_4003(start_instance: StartInstance) -> None:
    node = await start_instance(max_connections=1)
    await signed_in(node, "alice")
    _, second = await node.connect()
    assert await second.closed_with() == closecodes.SERVER_FULL.code


async def test_a_client_that_stops_reading_is_closed_as_slow_and_its_queue_dropped(
    start_instance: StartInstance,
) -> None:
    node = await start_instance(send_queue_size=4)
    _, socket = await signed_in(node, "alice")
    socket.paused.clear()  # the client stops reading: every send blocks
    big = "x" * 20_000  # a few frames fill the ASGI path's socket-buffer allowance
    for n in range(12):
        await node.publish("user.alice", f"{n}{big}")
    assert node.stats.closes_by_code[closecodes.SLOW_CLIENT.code] == 1
    assert node.stats.frames_dropped > 0
    socket.paused.set()
    assert await socket.closed_with() == closecodes.SLOW_CLIENT.code


async def test_a_burst_larger_than_the_queue_reaches_a_reading_client_in_order(start_instance: StartInstance) -> None:
    node = await start_instance(send_queue_size=256)
    _, socket = await signed_in(node, "alice")
    for n in range(500):  # delivered in one go, before the writer runs even once
        await node.publish("user.alice", n)
    async with asyncio.timeout(2):
        while len(socket.frames()) < 500:
            socket.frame_arrived.clear()
            await socket.frame_arrived.wait()
    assert [frame["data"] for frame in socket.frames()] == list(range(500))
    assert node.stats.closes_by_code[closecodes.SLOW_CLIENT.code] == 0


async def test_a_client_that_paused_reading_gets_later_frames_in_order_once_it_reads_again(instance: Instance) -> None:
    _, socket = await signed_in(instance, "alice")
    socket.paused.clear()
    for n in range(3):
        await instance.publish("user.alice", n)
    socket.paused.set()
    assert await received_events(socket, 3) == [0, 1, 2]
    socket.paused.clear()  # stalls again, after its writer had nothing left to send
    await instance.publish("user.alice", 3)
    socket.paused.set()
    await instance.publish("user.alice", 4)
    assert await received_events(socket, 5) == [0, 1, 2, 3, 4]


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


# Session resume: the same instance.


async def received_events(socket: FakeSocket, n: int) -> list[Any]:
    async with asyncio.timeout(2):
        while len([f for f in socket.frames() if f["type"] == "event"]) < n:
            socket.frame_arrived.clear()
            await socket.frame_arrived.wait()
    return [frame["data"] for frame in socket.frames() if frame["type"] == "event"]


async def resumed(
    node: Instance, user: str, session: str, received: int, topics: list[str] | None = None
) -> tuple[Session, FakeSocket, dict[str, Any]]:
    new, socket = await node.connect()
    resume = {"session": session, "received": received}
    socket.client_sends({"type": "auth", "token": token(user, topics), "resume": resume})
    return new, socket, await socket.next_frame("welcome")


async def all_resumed(
    node: Instance, users: list[str], dropped: list[tuple[str, int]]
) -> list[tuple[FakeSocket, dict[str, Any]]]:
    """Every user's client reconnects (one after the other), then all send their resume at once."""
    sockets = [(await node.connect())[1] for _ in users]
    for socket, user, (session, received) in zip(sockets, users, dropped, strict=True):
        socket.client_sends(
            {"type": "auth", "token": token(user), "resume": {"session": session, "received": received}}
        )
    welcomes = await asyncio.gather(*(socket.next_frame("welcome") for socket in sockets))
    return list(zip(sockets, welcomes, strict=True))


async def dropped_after(node: Instance, user: str, events: int, topics: list[str] | None = None) -> tuple[str, int]:
    """A signed-in client that got `events` events, then lost its connection; returns its session and count."""
    session, socket = await signed_in(node, user, topics)
    for n in range(events):
        await node.publish(f"user.{user}", n)
    await received_events(socket, events)
    socket.client_leaves(1006)
    await asyncio.wait_for(node.runs[-1], 2)
    assert session.session_id is not None
    return session.session_id, events


async def test_a_dropped_session_is_resumed_with_what_it_missed_then_live(instance: Instance) -> None:
    session_id, received = await dropped_after(instance, "alice", 3)
    assert instance.directory.parked_count == 1
    assert instance.broker.bound_topics == {"user.alice"}  # parked: still bound, still collecting
    for n in range(3, 6):
        await instance.publish("user.alice", n)
    _, socket, welcome = await resumed(instance, "alice", session_id, received)
    assert welcome["recovered"] is True and welcome["session"] != session_id
    assert welcome["topics"] == ["user.alice"]
    assert await received_events(socket, 3) == [3, 4, 5]
    await instance.publish("user.alice", 6)
    assert await received_events(socket, 4) == [3, 4, 5, 6]
    assert instance.directory.parked_count == 0


async def test_a_client_that_received_nothing_yet_is_recovered(instance: Instance) -> None:
    session_id, _ = await dropped_after(instance, "alice", 0)
    await instance.publish("user.alice", "while away")
    _, socket, welcome = await resumed(instance, "alice", session_id, 0)
    assert welcome["recovered"] is True
    assert await received_events(socket, 1) == ["while away"]


async def test_events_the_client_did_not_get_before_the_drop_are_replayed(instance: Instance) -> None:
    session_id, _ = await dropped_after(instance, "alice", 5)
    _, socket, welcome = await resumed(instance, "alice", session_id, 3)  # its last two were lost in flight
    assert welcome["recovered"] is True
    assert await received_events(socket, 2) == [3, 4]
    await socket_stays_quiet(socket, 2, instance.publish, "user.alice")


async def socket_stays_quiet(socket: FakeSocket, events: int, publish: Publish, topic: str) -> None:
    """No event beyond the first `events`: a sentinel published now to `topic` is the next event it gets."""

    async def next_event() -> dict[str, Any]:
        await received_events(socket, events + 1)
        frame: dict[str, Any] = [frame for frame in socket.frames() if frame["type"] == "event"][events]
        return frame

    await assert_nothing_before_sentinel(next_event, publish, topic)


async def test_resumed_subscriptions_come_back_and_are_checked_against_the_new_token(instance: Instance) -> None:
    session, socket = await signed_in(instance, "alice", topics=["news", "sport"])
    for topic in ("news", "sport"):
        socket.client_sends({"type": "subscribe", "topic": topic})
        await socket.next_frame("subscribed")
    socket.client_leaves(1006)
    await asyncio.wait_for(instance.runs[-1], 2)
    await instance.publish("news", "n1")
    await instance.publish("sport", "s1")
    assert session.session_id is not None
    _, new_socket, welcome = await resumed(instance, "alice", session.session_id, 0, topics=["news"])
    assert (welcome["recovered"], welcome["topics"], welcome["dropped"]) == (True, ["user.alice", "news"], ["sport"])
    assert await received_events(new_socket, 1) == ["n1"]  # never an event of a topic no longer granted
    await asyncio.sleep(0.05)
    assert instance.broker.bound_topics == {"user.alice", "news"}


async def test_a_goodbye_ends_the_session(instance: Instance) -> None:
    session, socket = await signed_in(instance, "alice")
    socket.client_leaves(1000)
    await asyncio.wait_for(instance.runs[-1], 2)
    assert instance.directory.parked_count == 0
    assert instance.broker.bound_topics == set()
    assert session.session_id is not None
    _, _, welcome = await resumed(instance, "alice", session.session_id, 0)
    assert welcome["recovered"] is False


async def test_someone_elses_session_is_never_resumed(instance: Instance) -> None:
    session_id, _ = await dropped_after(instance, "alice", 0)
    await instance.publish("user.alice", "for alice only")
    _, socket, welcome = await resumed(instance, "mallory", session_id, 0)
    assert (welcome["recovered"], welcome["user"], welcome["topics"]) == (False, "mallory", ["user.mallory"])
    await socket_stays_quiet(socket, 0, instance.publish, "user.mallory")
    _, alice, welcome = await resumed(instance, "alice", session_id, 0)  # still there for its owner
    assert welcome["recovered"] is True
    assert await received_events(alice, 1) == ["for alice only"]


async def test_past_the_window_the_session_is_gone_and_released(start_instance: StartInstance) -> None:
    node = await start_instance(resume_window_s=0.1)
    session_id, _ = await dropped_after(node, "alice", 1)
    # Once its window (0.1 s) is over, the parked session is ended and its topics released.
    await wait_until(lambda: node.directory.parked_count == 0 and node.broker.bound_topics == set(), 2)
    _, _, welcome = await resumed(node, "alice", session_id, 1)
    assert welcome["recovered"] is False


async def test_a_parked_session_that_overflows_is_ended_at_once(start_instance: StartInstance) -> None:
    node = await start_instance(resume_max_events=3)
    session_id, _ = await dropped_after(node, "alice", 0)
    for n in range(4):
        await node.publish("user.alice", n)
    await asyncio.sleep(0)
    assert node.directory.parked_count == 0
    assert node.broker.bound_topics == set()
    _, socket, welcome = await resumed(node, "alice", session_id, 0)
    assert welcome["recovered"] is False
    await socket_stays_quiet(socket, 0, node.publish, "user.alice")


async def test_a_count_the_session_never_reached_is_not_recovered(instance: Instance) -> None:
    session_id, _ = await dropped_after(instance, "alice", 2)
    _, _, welcome = await resumed(instance, "alice", session_id, 5)
    assert welcome["recovered"] is False


async def test_a_half_open_connection_is_handed_over_and_dropped(instance: Instance) -> None:
    old, old_socket = await signed_in(instance, "alice")
    await instance.publish("user.alice", 0)
    await received_events(old_socket, 1)
    assert old.session_id is not None
    _, socket, welcome = await resumed(instance, "alice", old.session_id, 1)
    assert welcome["recovered"] is True
    await asyncio.wait_for(asyncio.gather(instance.runs[0], return_exceptions=True), 2)  # the old one is dropped
    await instance.publish("user.alice", 1)
    assert await received_events(socket, 1) == [1]
    assert instance.broker.bound_topics == {"user.alice"}
    assert instance.admission.connections_of("alice") == 1


async def test_a_parked_session_does_not_hold_a_users_connection_slot(start_instance: StartInstance) -> None:
    node = await start_instance(max_connections_per_user=1)
    session_id, _ = await dropped_after(node, "alice", 0)
    _, _, welcome = await resumed(node, "alice", session_id, 0)
    assert welcome["recovered"] is True


async def test_a_resume_refused_with_4502_leaves_the_session_parked_for_a_later_resume(
    start_instance: StartInstance,
) -> None:
    node = await start_instance(max_connections_per_user=1)
    session_id, _ = await dropped_after(node, "alice", 1)
    await node.publish("user.alice", "missed")
    _, holder = await signed_in(node, "alice")  # the user's one slot is taken
    _, refused = await node.connect()
    refused.client_sends({"type": "auth", "token": token("alice"), "resume": {"session": session_id, "received": 1}})
    assert await refused.closed_with() == closecodes.USER_CONNECTION_LIMIT.code
    assert node.directory.parked_count == 1
    holder.client_leaves(1000)
    await wait_until(lambda: node.admission.connections_of("alice") == 0, 2)
    _, socket, welcome = await resumed(node, "alice", session_id, 1)
    assert welcome["recovered"] is True
    assert await received_events(socket, 1) == ["missed"]


async def test_with_resume_off_a_session_keeps_nothing_and_is_never_recovered(start_instance: StartInstance) -> None:
    node = await start_instance(resume_window_s=0)
    old, old_socket = await signed_in(node, "alice")
    await node.publish("user.alice", 0)
    assert await received_events(old_socket, 1) == [0]
    assert len(old.history) == 0
    assert old.session_id is not None
    _, socket, welcome = await resumed(node, "alice", old.session_id, 0)
    assert welcome["recovered"] is False
    await node.publish("user.alice", 1)
    assert await received_events(socket, 1) == [1]
    old_socket.client_leaves(1006)
    await asyncio.wait_for(node.runs[0], 2)
    assert node.directory.parked_count == 0


async def test_a_bad_resume_field_before_auth_is_a_protocol_violation(instance: Instance) -> None:
    _, socket = await instance.connect()
    socket.client_sends({"type": "auth", "token": token("alice"), "resume": {"session": 7, "received": -1}})
    assert await socket.closed_with() == closecodes.PROTOCOL_VIOLATION.code


# Session resume: from another instance, over a control plane.


@pytest.fixture
def control() -> FakeControlPlane:
    return FakeControlPlane()


@pytest.fixture
async def pair(start_instance: StartInstance, control: FakeControlPlane) -> tuple[Instance, Instance]:
    """Two instances on one in-memory "exchange": an event published reaches both if both bind its topic."""
    return await start_instance("first", control), await start_instance("second", control)


async def publish_to_both(pair: tuple[Instance, Instance], topic: str, data: Any) -> None:
    for node in pair:
        await node.publish(topic, data)


async def test_a_session_is_resumed_on_another_instance_with_what_it_missed(pair: tuple[Instance, Instance]) -> None:
    first, second = pair
    session, socket = await signed_in(first, "alice", topics=["news"])
    socket.client_sends({"type": "subscribe", "topic": "news"})
    await socket.next_frame("subscribed")
    await publish_to_both(pair, "news", 0)
    await received_events(socket, 1)
    socket.client_leaves(1006)
    await asyncio.wait_for(first.runs[-1], 2)
    for n in (1, 2):
        await publish_to_both(pair, "news", n)
    assert session.session_id is not None
    _, new_socket, welcome = await resumed(second, "alice", session.session_id, 1, topics=["news"])
    assert (welcome["recovered"], welcome["topics"]) == (True, ["user.alice", "news"])
    assert await received_events(new_socket, 2) == [1, 2]
    await publish_to_both(pair, "news", 3)
    assert await received_events(new_socket, 3) == [1, 2, 3]
    await asyncio.sleep(0.05)
    assert first.broker.bound_topics == set()  # the holder let go of it
    assert first.directory.parked_count == 0
    assert second.broker.bound_topics == {"user.alice", "news"}


async def test_events_during_the_hand_over_come_once_each(
    pair: tuple[Instance, Instance], control: FakeControlPlane
) -> None:
    first, second = pair
    session_id, received = await dropped_after(first, "bob", 2)

    async def events_arrive(kind: str) -> None:
        if kind in (HAND_OVER, HAND_OVER_BATCH):
            # Between the new instance's binds and the hand-over, events reach both instances.
            await publish_to_both(pair, "user.bob", 2)
            await publish_to_both(pair, "user.bob", 3)

    control.before_answer = events_arrive
    _, socket, welcome = await resumed(second, "bob", session_id, received)
    assert welcome["recovered"] is True
    assert await received_events(socket, 2) == [2, 3]
    await socket_stays_quiet(socket, 2, partial(publish_to_both, pair), "user.bob")


async def test_a_holder_that_does_not_answer_gives_recovered_false(pair: tuple[Instance, Instance]) -> None:
    first, second = pair
    session_id, _ = await dropped_after(first, "carol", 1)
    _, socket, welcome = await resumed(second, "carol", session_id.replace("first.", "gone."), 1)
    assert (welcome["recovered"], welcome["topics"]) == (False, ["user.carol"])
    await socket_stays_quiet(socket, 0, partial(publish_to_both, pair), "user.carol")


async def test_another_users_token_cannot_take_a_session_from_another_instance(
    pair: tuple[Instance, Instance],
) -> None:
    first, second = pair
    session_id, _ = await dropped_after(first, "dave", 0)
    await publish_to_both(pair, "user.dave", "private")
    _, socket, welcome = await resumed(second, "mallory", session_id, 0)
    assert (welcome["recovered"], welcome["user"]) == (False, "mallory")
    await socket_stays_quiet(socket, 0, partial(publish_to_both, pair), "user.mallory")
    assert first.directory.parked_count == 1  # still there for dave


# A rolling deploy: many sessions move at once.


async def test_sessions_resumed_at_once_are_handed_over_in_batches(
    pair: tuple[Instance, Instance], control: FakeControlPlane
) -> None:
    first, second = pair
    dropped = [await dropped_after(first, f"u{n}", 1) for n in range(30)]
    for n in range(30):
        await publish_to_both(pair, f"user.u{n}", f"missed {n}")
    control.asked.clear()
    answers = await all_resumed(second, [f"u{n}" for n in range(30)], dropped)
    assert all(welcome["recovered"] for _, welcome in answers)
    for n, (socket, _) in enumerate(answers):
        assert await received_events(socket, 1) == [f"missed {n}"]
    kinds = [kind for _, kind in control.asked]
    assert set(kinds) == {handover.DESCRIBE_BATCH, handover.HAND_OVER_BATCH}
    assert len(kinds) <= 2 * handover.BATCHES_IN_FLIGHT, kinds  # not two requests per session
    assert first.node.directory.parked_count == 0


async def test_a_holder_of_an_earlier_release_is_asked_one_session_at_a_time(
    pair: tuple[Instance, Instance], control: FakeControlPlane
) -> None:
    first, second = pair
    control.without = {handover.DESCRIBE_BATCH, handover.HAND_OVER_BATCH}
    session_id, received = await dropped_after(first, "erin", 1)
    await publish_to_both(pair, "user.erin", "missed")
    control.asked.clear()
    _, socket, welcome = await resumed(second, "erin", session_id, received)
    assert welcome["recovered"] is True
    assert await received_events(socket, 1) == ["missed"]
    assert [kind for _, kind in control.asked] == [handover.DESCRIBE, handover.HAND_OVER]


async def test_hand_overs_past_one_replys_size_bound_are_deferred_and_asked_again(
    pair: tuple[Instance, Instance], control: FakeControlPlane, monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    dropped = [await dropped_after(first, f"v{n}", 0) for n in range(3)]
    for n in range(3):
        await publish_to_both(pair, f"user.v{n}", "x" * 100)
    control.asked.clear()
    # Room for about one session's events per reply: the others are deferred, kept by the holder, asked again.
    monkeypatch.setattr(handover, "MAX_HANDOVER_BYTES", 300)
    answers = await all_resumed(second, [f"v{n}" for n in range(3)], dropped)
    assert [welcome["recovered"] for _, welcome in answers] == [True, True, True]
    for socket, _ in answers:
        assert await received_events(socket, 1) == ["x" * 100]
    assert [kind for _, kind in control.asked].count(handover.HAND_OVER_BATCH) >= 2


async def test_resumes_waiting_on_a_silent_holder_end_within_the_resume_timeout(
    start_instance: StartInstance, control: FakeControlPlane
) -> None:
    """Every wait on the resume path is bounded: a holder that takes the batch and never answers leaves each
    waiting client with `recovered: false` after NOTIFIER_RESUME_TIMEOUT_S, however many wait."""
    first = await start_instance("first", control, resume_timeout_s=0.3)
    second = await start_instance("second", control, resume_timeout_s=0.3)
    dropped = [await dropped_after(first, f"w{n}", 0) for n in range(handover.MAX_BATCH + 5)]

    async def never_answers(args: dict[str, Any]) -> Any:
        await asyncio.Event().wait()

    control.handlers["first"][handover.DESCRIBE_BATCH] = never_answers
    started = asyncio.get_running_loop().time()
    answers = await all_resumed(second, [f"w{n}" for n in range(len(dropped))], dropped)
    assert all(welcome["recovered"] is False for _, welcome in answers)
    assert asyncio.get_running_loop().time() - started < 3


async def test_an_event_the_client_had_that_reaches_the_new_instance_late_is_not_sent_again(
    pair: tuple[Instance, Instance], control: FakeControlPlane
) -> None:
    """The double of a rolling deploy: the old instance delivered an event before its client left; the new one,
    already routing the user's topic (another tab, a cover) but behind on its queue, takes the same event only
    after the resumed session registered. It must not go out a second time."""
    first, second = pair
    session_id, received = await dropped_after(first, "fay", 1)  # event 0 reached the client through the first

    async def arrives_late(kind: str) -> None:
        if kind in (HAND_OVER, HAND_OVER_BATCH):
            await second.publish("user.fay", 0)  # the same event, reaching the busy second instance only now

    control.before_answer = arrives_late
    _, socket, welcome = await resumed(second, "fay", session_id, received)
    assert welcome["recovered"] is True
    await socket_stays_quiet(socket, 0, partial(publish_to_both, pair), "user.fay")
