"""`notifier.client` against a live server on the real RabbitMQ: every method, its errors, and retries that
never notify twice."""

from __future__ import annotations

import asyncio
import contextlib
import re
from pathlib import Path

import pytest

from notifier.client import AsyncClient, Client, NotifierAPIError, NotifierConnectionError
from tests.support import (
    API_KEY,
    ConnectClient,
    RunningServer,
    assert_nothing_before_sentinel,
    free_port,
    publish_over_http,
)

pytestmark = pytest.mark.rabbitmq


async def test_async_client_publishes_and_acts_on_users(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice", topics=["news.*"])
    assert (await alice.subscribe("news.sport"))["type"] == "subscribed"
    async with AsyncClient(server.http_url, api_key=API_KEY, timeout=5) as notifier:
        event_id = await notifier.publish("user.alice", {"text": "hi"})
        frame = await alice.expect_event("user.alice")
        assert (frame["id"], frame["data"]) == (event_id, {"text": "hi"})
        assert await notifier.publish("user.alice", 1, id="fixed-id") == "fixed-id"
        assert (await alice.expect_event())["id"] == "fixed-id"

        ids = await notifier.publish_many([{"topic": "news.sport", "data": n} for n in range(3)])
        assert [(await alice.expect_event("news.sport"))["id"] for _ in range(3)] == ids

        assert await notifier.presence("alice") == {"user": "alice", "online": True, "connections": 1, "instances": 1}
        await notifier.unsubscribe("alice", "news.sport")
        assert (await alice.receive(2))["reason"] == "server"
        await notifier.disconnect("alice", reason="signed out")
        await alice.expect_close(4503, timeout=2)
        assert alice.ws.close_reason == "signed out"


async def test_sync_client_publishes_and_reports_errors(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice")

    def use_client() -> tuple[str, dict[str, object]]:
        with Client(server.http_url, api_key=API_KEY) as notifier:
            event_id = notifier.publish("user.alice", "sync")
            return event_id, notifier.presence("alice")

    event_id, presence = await asyncio.to_thread(use_client)
    assert (await alice.expect_event())["id"] == event_id
    assert presence["connections"] == 1

    def refused(key: str, call: str) -> NotifierAPIError:
        with Client(server.http_url, api_key=key) as notifier, pytest.raises(NotifierAPIError) as caught:
            if call == "publish":
                notifier.publish("bad..topic", 1)
            elif call == "batch":
                notifier.publish_many([{"topic": "a", "data": 1}, {"topic": "#", "data": 2}])
            else:
                notifier.presence("a.b")
        return caught.value

    error = await asyncio.to_thread(refused, "wrong-key", "publish")
    assert (error.status, error.code) == (403, "forbidden")
    error = await asyncio.to_thread(refused, API_KEY, "publish")
    assert (error.status, error.code) == (422, "invalid_topic")
    error = await asyncio.to_thread(refused, API_KEY, "batch")
    assert (error.status, error.code, error.body["index"]) == (422, "invalid_topic", 1)
    error = await asyncio.to_thread(refused, API_KEY, "presence")
    assert (error.status, error.code) == (422, "invalid_user")
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(server), "user.alice")


class LosesFirstAnswer:
    """A TCP relay to the server that passes the first request on but drops the connection before its answer
    comes back: what a backend sees when its request timed out after the server acted on it."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.connections = 0
        self._server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> LosesFirstAnswer:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._server is not None
        self._server.close()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        drop_answer = self.connections == 1
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, *, to_client: bool) -> None:
            with contextlib.suppress(ConnectionError):
                while data := await source.read(65536):
                    if to_client and drop_answer:
                        writer.transport.abort()
                        return
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(
            pipe(reader, upstream_writer, to_client=False),
            pipe(upstream_reader, writer, to_client=True),
            return_exceptions=True,
        )
        upstream_writer.close()


async def test_a_retry_after_a_lost_answer_does_not_notify_twice(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice")
    async with (
        LosesFirstAnswer(server.settings.port) as relay,
        AsyncClient(f"http://127.0.0.1:{relay.port}", api_key=API_KEY, retries=2) as notifier,
    ):
        event_id = await notifier.publish("user.alice", "once")
    assert relay.connections == 2  # the first answer was lost, the retry got one
    assert server.server.config.app.state.publisher.repeats_skipped == 1  # type: ignore[union-attr]
    frame = await alice.expect_event()
    assert (frame["id"], frame["data"]) == (event_id, "once")
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(server), "user.alice")


async def test_the_sync_client_retries_with_the_same_id_too(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice")
    async with LosesFirstAnswer(server.settings.port) as relay:

        def publish() -> list[str]:
            with Client(f"http://127.0.0.1:{relay.port}", api_key=API_KEY, retries=2) as notifier:
                return notifier.publish_many([{"topic": "user.alice", "data": n} for n in range(2)])

        ids = await asyncio.to_thread(publish)
    assert relay.connections == 2
    assert [(await alice.expect_event())["id"] for _ in range(2)] == ids
    await assert_nothing_before_sentinel(alice.receive, publish_over_http(server), "user.alice")


@pytest.mark.loopback
async def test_an_unreachable_server_raises_a_connection_error() -> None:
    async with AsyncClient(f"http://127.0.0.1:{free_port()}", api_key=API_KEY, retries=1, timeout=1) as notifier:
        with pytest.raises(NotifierConnectionError):
            await notifier.presence("alice")


def test_client_needs_an_api_key() -> None:
    with pytest.raises(ValueError, match="api_key"):
        Client("http://127.0.0.1:1", api_key="")


async def test_the_readme_example_runs_as_written(server: RunningServer, connect: ConnectClient) -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Publish from a backend", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    example = match.group(1).replace("http://notifier:8000", server.http_url)
    user42 = await connect(server, "42", topics=["team.7.*"])
    assert (await user42.subscribe("team.7.news"))["type"] == "subscribed"
    await asyncio.to_thread(exec, example, {"API_KEY": API_KEY})
    assert (await user42.expect_event("user.42"))["id"] == "order-1234-shipped"
    assert [(await user42.expect_event("team.7.news"))["data"] for _ in range(3)] == [0, 1, 2]
    assert (await user42.receive())["reason"] == "server"
    await user42.expect_close(4503)
    assert user42.ws.close_reason == "session revoked"
