"""notifier.js in Node (tests/js/drive-client.mjs, with Node's own fetch and WebSocket) against `notifier serve`
and RabbitMQ over the HTTP stream: events in order, the stream resumed after a cut line and after a silence,
the fallback from refused WebSockets and the move back to one, each without losing or doubling an event, and a
terminal refusal that stops the client whatever its transport."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import websockets

from tests.faults import CuttableProxy
from tests.processes import NotifierProcess, StartNotifier, notifier_env
from tests.support import Publisher, free_port, token_for
from tests.upgrade_blocker import UpgradeBlocker

pytestmark = pytest.mark.timeout(90)

DRIVER = Path(__file__).resolve().parent / "js" / "drive-client.mjs"
WAIT_S = 20.0
HEARTBEAT_S = 1

Record = dict[str, Any]


class NodeClient:
    """One NotifierClient in a Node process: what it reports, as records, and commands sent to it."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.records: list[Record] = []
        self._changed = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, **options: Any) -> NodeClient:
        node = shutil.which("node")
        assert node, "node is needed to run notifier.js (the JavaScript client tests need it too)"
        process = await asyncio.create_subprocess_exec(
            node,
            "--experimental-websocket",  # Node 20's WebSocket; a global one from Node 22 on
            "--no-warnings",
            str(DRIVER),
            json.dumps(options),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.records.append(json.loads(line))
            self._changed.set()

    def of(self, kind: str) -> list[Record]:
        return [record for record in self.records if record["kind"] == kind]

    async def until(self, condition: Callable[[], object], timeout: float = WAIT_S) -> None:
        """Wait until `condition()` holds over the records (checked at each new record)."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                if self._reader.done():
                    raise AssertionError(f"the client process ended: {await self.stderr()}\n{self.records}")
                await self._changed.wait()

    async def until_state(self, state: str, **detail: Any) -> Record:
        """The first state record after the current ones that is `state` with `detail`."""
        start = len(self.records)

        def found() -> Record | None:
            for record in self.records[start:]:
                wanted = record["kind"] == "state" and record["state"] == state
                if wanted and all(record.get(key) == value for key, value in detail.items()):
                    return record
            return None

        try:
            await self.until(found)
        except TimeoutError:
            raise AssertionError(f"no state {state} {detail} within {WAIT_S} s: {self.records[start:]}") from None
        return found() or {}

    def send(self, **command: Any) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(orjson.dumps(command) + b"\n")

    async def subscribe(self, topic: str) -> None:
        self.send(subscribe=topic)
        await self.until(lambda: self.answers_to(topic))
        assert self.answers_to(topic)[0]["kind"] == "subscribe_done", self.records

    def answers_to(self, topic: str) -> list[Record]:
        """How the client's `subscribe(topic)` settled."""
        answers = ("subscribe_done", "subscribe_failed")
        return [record for record in self.records if record["kind"] in answers and record["topic"] == topic]

    def event_ids(self, topic: str) -> list[str]:
        return [record["id"] for record in self.of("event") if record["topic"] == topic]

    async def stderr(self) -> str:
        if self.process.stderr is None:
            return ""
        with contextlib.suppress(TimeoutError):
            return (await asyncio.wait_for(self.process.stderr.read(), 2)).decode(errors="replace")
        return ""

    async def end(self) -> None:
        """Close stdin: the client closes (DELETE on the stream) and the process ends."""
        if self.process.returncode is None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        await self._reader


@pytest.fixture
async def node_clients() -> AsyncIterator[Callable[..., Awaitable[NodeClient]]]:
    started: list[NodeClient] = []

    async def start(**options: Any) -> NodeClient:
        client = await NodeClient.start(**options)
        started.append(client)
        return client

    yield start
    for client in started:
        await client.end()


@pytest.fixture
async def service(exchange: str, start_notifier: StartNotifier) -> NotifierProcess:
    """`notifier serve` with the HTTP stream on and a short heartbeat."""
    port = free_port()
    env = notifier_env(port, exchange, NOTIFIER_SSE_ENABLED="true", NOTIFIER_SSE_HEARTBEAT_S=str(HEARTBEAT_S))
    return await start_notifier("serve", env=env, port=port)


@pytest.fixture
async def line(service: NotifierProcess) -> AsyncIterator[CuttableProxy]:
    """A line to the service that the test can cut or stall."""
    proxy = CuttableProxy(target=("127.0.0.1", service.port))
    await proxy.start()
    yield proxy
    await proxy.stop()


async def publish_numbered(publisher: Publisher, topic: str, numbers: range) -> list[str]:
    """Publish one event per number, each with its own id; the ids in publishing order."""
    ids = []
    for n in numbers:
        event_id = f"{n:04d}-{uuid.uuid4().hex[:8]}"
        await publisher.publish(topic, {"n": n}, message_id=event_id)
        ids.append(event_id)
    return ids


async def resume_answer(service: NotifierProcess, session: str, received: int) -> bool:
    """Whether the service can still resume `session` (a raw WebSocket asks with the same token's user)."""
    async with websockets.connect(service.ws_url) as ws:
        auth = {"type": "auth", "token": token_for("alice"), "resume": {"session": session, "received": received}}
        await ws.send(json.dumps(auth))
        welcome = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert welcome["type"] == "welcome", welcome
        return bool(welcome["recovered"])


async def test_node_client_on_the_http_stream_gets_every_event_in_order_and_close_ends_its_session(
    service: NotifierProcess, publisher: Publisher, node_clients: Callable[..., Awaitable[NodeClient]]
) -> None:
    client = await node_clients(url=service.ws_url, token=token_for("alice", ["news.#"]), transports=["sse"])
    opened = await client.until_state("open")
    assert opened["transport"] == "sse"
    await client.subscribe("news.sport")  # a command POSTed to the stream, answered on it
    await client.subscribe("news.tech")

    sport = await publish_numbered(publisher, "news.sport", range(30))
    tech = await publish_numbered(publisher, "news.tech", range(5))
    await client.until(lambda: len(client.of("event")) >= 35)
    assert client.event_ids("news.sport") == sport
    assert client.event_ids("news.tech") == tech
    assert client.of("resync") == [] and client.of("error") == []

    session = client.of("welcome")[-1]["session"]
    client.send(close=True)
    await client.until_state("closed")
    await client.end()  # the DELETE is answered before the process can end
    assert not await resume_answer(service, session, 35), "close() ended the session (DELETE), it did not park it"


async def test_node_client_resumes_the_stream_after_the_line_is_cut(
    line: CuttableProxy, publisher: Publisher, node_clients: Callable[..., Awaitable[NodeClient]]
) -> None:
    url = f"ws://127.0.0.1:{line.port}/ws"
    client = await node_clients(url=url, token=token_for("alice", ["news.#"]), transports=["sse"])
    await client.until_state("open")
    await client.subscribe("news.sport")
    before = await publish_numbered(publisher, "news.sport", range(5))
    await client.until(lambda: len(client.event_ids("news.sport")) == 5)

    line.cut()
    await client.until_state("reconnecting")
    missed = await publish_numbered(publisher, "news.sport", range(5, 15))
    line.restore()
    reopened = await client.until_state("open")
    assert reopened["recovered"] is True, client.records
    after = await publish_numbered(publisher, "news.sport", range(15, 20))
    await client.until(lambda: len(client.event_ids("news.sport")) >= 20)
    assert client.event_ids("news.sport") == before + missed + after, "each once, in order"
    assert client.of("resync") == []


async def test_node_client_drops_a_silent_stream_by_its_heartbeat_and_resumes(
    line: CuttableProxy, publisher: Publisher, node_clients: Callable[..., Awaitable[NodeClient]]
) -> None:
    url = f"ws://127.0.0.1:{line.port}/ws"
    # A request sent into the stalled line is never answered: connectTimeout ends it once the line is back.
    options = {"transports": ["sse"], "connectTimeout": 3000}
    client = await node_clients(url=url, token=token_for("alice", ["news.#"]), **options)
    await client.until_state("open")
    await client.subscribe("news.sport")
    before = await publish_numbered(publisher, "news.sport", range(3))
    await client.until(lambda: len(client.event_ids("news.sport")) == 3)

    line.stall()  # the line stays up but nothing gets through: only the missing heartbeats tell
    dropped = await client.until_state("reconnecting")
    assert "silent" in dropped["reason"], dropped
    missed = await publish_numbered(publisher, "news.sport", range(3, 8))
    line.restore()
    reopened = await client.until_state("open")
    assert reopened["recovered"] is True, client.records
    await client.until(lambda: len(client.event_ids("news.sport")) >= 8)
    assert client.event_ids("news.sport") == before + missed


async def test_node_client_falls_back_from_refused_websockets_and_moves_back_without_losing_an_event(
    service: NotifierProcess, publisher: Publisher, node_clients: Callable[..., Awaitable[NodeClient]]
) -> None:
    blocker = UpgradeBlocker(("127.0.0.1", service.port), blocking=True)
    await blocker.start()
    try:
        client = await node_clients(
            url=f"ws://127.0.0.1:{blocker.port}/ws", token=token_for("alice", ["news.#"]), upgradeAfter=1500
        )
        opened = await client.until_state("open")
        assert opened["transport"] == "sse", client.records
        assert blocker.refused >= 2
        await client.subscribe("news.sport")
        published = await publish_numbered(publisher, "news.sport", range(5))
        await client.until(lambda: len(client.event_ids("news.sport")) == 5)

        # WebSockets get through again: within upgradeAfter the session moves to one, while events keep coming.
        blocker.blocking = False
        feeding = asyncio.create_task(publish_steadily(publisher, start=5))
        upgraded = await client.until_state("open", transport="websocket")
        assert upgraded["recovered"] is True, client.records
        published += await feeding

        # Blocked again and the line cut: back to the stream, resuming the WebSocket's session.
        blocker.blocking = True
        blocker.cut()
        published += await publish_numbered(publisher, "news.sport", range(100, 105))
        fell_back = await client.until_state("open", transport="sse")
        assert fell_back["recovered"] is True, client.records
        published += await publish_numbered(publisher, "news.sport", range(200, 205))
        await client.until(lambda: len(client.event_ids("news.sport")) >= len(published))
        assert client.event_ids("news.sport") == published, "each once, in order, across both switches"
        assert client.of("resync") == []
        assert [r["code"] for r in client.of("error")] == []
    finally:
        await blocker.stop()


async def publish_steadily(publisher: Publisher, start: int) -> list[str]:
    """Publish an event every 50 ms for 3 s (past the move to the WebSocket)."""
    ids: list[str] = []
    for n in range(start, start + 60):
        ids += await publish_numbered(publisher, "news.sport", range(n, n + 1))
        await asyncio.sleep(0.05)  # a steady feed across the switch, not a burst before it
    return ids


async def test_a_terminal_refusal_of_the_stream_after_a_fallback_stops_the_client(
    service: NotifierProcess, node_clients: Callable[..., Awaitable[NodeClient]]
) -> None:
    blocker = UpgradeBlocker(("127.0.0.1", service.port), blocking=True)
    await blocker.start()
    try:
        client = await node_clients(url=f"ws://127.0.0.1:{blocker.port}/ws", token="not-a-jwt")
        stopped = await client.until_state("closed")
        assert stopped["transport"] == "sse"
        assert stopped["error"] == "invalid_token"
        assert stopped["code"] == 4500
        await asyncio.sleep(2)  # a client that retried would have dialed again by now (backoff under 1 s)
        assert [r["state"] for r in client.of("state")].count("connecting") == 1
        assert len([r for r in client.of("state") if r["state"] == "reconnecting"]) == 2, client.records
    finally:
        await blocker.stop()
