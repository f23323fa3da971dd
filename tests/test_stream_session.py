"""HTTP streams in a real Node (the in-memory broker, a real token verifier), served by `Node.serve_stream` on fake
ASGI requests: the paths a real server does not take under `notifier serve` (plain ASGI sends, the drain's refusal,
a write that stalls), and what an idle stream costs. No network, milliseconds per test."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, MutableMapping
from typing import Any

import orjson
import pytest

from notifier.broker.memory import MemoryBroker
from notifier.connection.auth import mint_token
from notifier.connection.session import State
from notifier.connection.stream import ABORT_CONNECTION_SCOPE_KEY
from notifier.instance.node import Node
from notifier.settings import Settings

pytestmark = pytest.mark.unit

SECRET = "unit-test-secret-that-is-long-enough!!"


class FakeRequest:
    """The ASGI side of one `GET /sse`: what the server sent, and a client that can leave or stop reading."""

    def __init__(self, *, abortable: bool = False) -> None:
        self.sent: list[MutableMapping[str, Any]] = []
        self.gone = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()  # cleared: the client stopped reading, sends block
        self.arrived = asyncio.Event()
        self.aborted = False
        self._requested = False
        self.scope: dict[str, Any] = {
            "type": "http",
            "method": "GET",
            "path": "/sse",
            "headers": [],
            "query_string": b"",
            "client": ("127.0.0.1", 50000),
        }
        if abortable:
            self.scope[ABORT_CONNECTION_SCOPE_KEY] = self.abort

    def abort(self) -> None:
        self.aborted = True
        self.gone.set()

    async def receive(self) -> dict[str, Any]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self.gone.wait()
        return {"type": "http.disconnect"}

    async def send(self, message: MutableMapping[str, Any]) -> None:
        await self.reading.wait()
        self.sent.append(message)
        self.arrived.set()
        if message["type"] == "http.response.body" and not message.get("more_body"):
            self.gone.set()  # the response is complete: a receive says so

    @property
    def status(self) -> int | None:
        starts = [message["status"] for message in self.sent if message["type"] == "http.response.start"]
        return starts[0] if starts else None

    def body(self) -> bytes:
        return b"".join(message.get("body", b"") for message in self.sent if message["type"] == "http.response.body")

    def messages(self) -> list[tuple[str | None, dict[str, Any]]]:
        found = []
        for block in self.body().split(b"\n\n"):
            lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
            if b"data" in lines:
                event_id = lines[b"id"].decode() if b"id" in lines else None
                found.append((event_id, orjson.loads(lines[b"data"])))
        return found

    async def wait_for(self, count: int) -> list[tuple[str | None, dict[str, Any]]]:
        async with asyncio.timeout(2):
            while len(self.messages()) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.messages()


class Instance:
    def __init__(self, **overrides: Any) -> None:
        values: dict[str, Any] = {"jwt_secret": SECRET, "amqp_url": "memory://", "shutdown_timeout_s": 0.2} | overrides
        settings = Settings(_env_file=None, **values)  # type: ignore[call-arg]
        self.broker = MemoryBroker(max_event_bytes=settings.max_event_bytes)
        self.node = Node(settings, self.broker)
        self.serving: list[asyncio.Task[None]] = []

    def open(self, request: FakeRequest, token: str | None) -> asyncio.Task[None]:
        task = asyncio.create_task(
            self.node.serve_stream(request.scope, request.receive, request.send, token=token, resume=None, headers=[])
        )
        self.serving.append(task)
        return task

    async def stop(self) -> None:
        for task in self.serving:
            task.cancel()
        await asyncio.gather(*self.serving, return_exceptions=True)
        await self.node.stop()


@pytest.fixture
async def instance() -> AsyncIterator[Instance]:
    started = Instance(write_stall_timeout_s=0.2)
    await started.node.start()
    yield started
    await started.stop()


def token(user: str) -> str:
    return mint_token(SECRET, user, ttl_s=600)


async def test_over_plain_asgi_sends_the_stream_is_the_same(instance: Instance) -> None:
    """Under a server without a DirectSend every message goes through the writer task."""
    request = FakeRequest()
    instance.open(request, token("alice"))
    ((welcome_id, welcome),) = await request.wait_for(1)
    assert request.status == 200
    assert welcome_id == f"{welcome['session']}:0" and welcome["type"] == "welcome"
    await instance.broker.publish("user.alice", b'{"n": 1}', "e1")
    await instance.broker.publish("user.alice", b'{"n": 2}', "e2")
    messages = await request.wait_for(3)
    assert [event_id for event_id, _ in messages[1:]] == [f"{welcome['session']}:1", f"{welcome['session']}:2"]
    assert instance.node.end_stream(welcome["stream"]) is True
    (_, close) = (await request.wait_for(4))[-1]
    assert close == {"type": "close", "code": 1000, "reason": "closed by the client"}
    await asyncio.wait_for(asyncio.gather(*instance.serving), 2)
    assert instance.node.directory.parked_count == 0  # a goodbye: ended, not parked
    assert instance.node.streams.find(welcome["stream"]) is None


async def test_a_draining_instance_refuses_new_streams_with_503_restarting(instance: Instance) -> None:
    await instance.node.drain()
    request = FakeRequest()
    await asyncio.wait_for(instance.open(request, token("alice")), 2)
    assert request.status == 503
    headers = dict(request.sent[0]["headers"])
    assert headers[b"retry-after"] == b"1"
    assert orjson.loads(request.body()) | {"message": ""} == {"error": "restarting", "code": 1012, "message": ""}


async def test_a_stream_that_takes_nothing_for_the_write_stall_timeout_is_dropped(instance: Instance) -> None:
    request = FakeRequest(abortable=True)
    instance.open(request, token("alice"))
    await request.wait_for(1)
    request.reading.clear()  # the client stops reading: the next send waits
    await instance.broker.publish("user.alice", b"1", "e1")
    await asyncio.wait_for(request.gone.wait(), 2)
    assert request.aborted
    await asyncio.wait_for(asyncio.gather(*instance.serving), 2)
    (session,) = instance.node.parked_sessions_of("alice")  # dropped without a goodbye: resumable
    assert session.state is State.PARKED


async def test_without_a_way_to_drop_the_connection_a_stalled_stream_ends_its_request(instance: Instance) -> None:
    request = FakeRequest()
    task = instance.open(request, token("alice"))
    await request.wait_for(1)
    request.reading.clear()
    await instance.broker.publish("user.alice", b"1", "e1")
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 2)
    assert len(instance.node.parked_sessions_of("alice")) == 1


async def test_an_idle_stream_holds_no_task_but_its_request_and_one_loop_beats_for_all(instance: Instance) -> None:
    before = asyncio.all_tasks()
    requests = [FakeRequest() for _ in range(20)]
    for number, request in enumerate(requests):
        instance.open(request, token(f"user{number}"))
    for request in requests:
        await request.wait_for(1)
    await asyncio.sleep(0)  # writer tasks that sent the welcome are done
    added = asyncio.all_tasks() - before
    assert added == set(instance.serving)
    beating = [task for task in asyncio.all_tasks() if task.get_name() == "sse-heartbeats"]
    assert len(beating) == 1
    assert len(instance.node.streams) == 20
