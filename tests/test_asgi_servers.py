"""The app under ASGI servers other than `notifier serve`, built by the zero-argument factory from NOTIFIER_*
variables as each server's documentation has it: a fast reader, on a WebSocket or an HTTP stream, gets a
500-event burst whole, and SIGTERM drains with 1012 where the server lets the app hear of the stop."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import aio_pika
import orjson
import pytest
import websockets

from tests.processes import StartNotifier, notifier_env
from tests.support import Client, Publisher, free_port, token_for
from tests.support_sse import SseStream
from tests.support_sse import command as stream_command

BURST = 500
BIN = Path(sys.executable).parent


def command(server: str, port: int) -> list[str]:
    if server == "uvicorn":
        return [str(BIN / "uvicorn"), "--factory", "notifier.app:create_app", "--port", str(port)]
    if server == "hypercorn":
        # --workers 0: the app runs in hypercorn's own process, where it can hear SIGTERM (see docs/scaling.md).
        return [str(BIN / "hypercorn"), "--workers", "0", "--bind", f"127.0.0.1:{port}", "notifier.app:create_app()"]
    return [
        str(BIN / "granian"),
        "--interface",
        "asgi",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "notifier.app:create_app",
    ]


SERVERS = ["uvicorn", "hypercorn", "granian"]


@pytest.mark.rabbitmq
@pytest.mark.parametrize("server", SERVERS)
async def test_a_fast_reader_gets_a_whole_burst_and_sigterm_drains(
    server: str, exchange: str, publisher: Publisher, start_notifier: StartNotifier
) -> None:
    port = free_port()
    # The server binds by its own flags: NOTIFIER_PORT is `notifier serve`'s. Each runs in a group of its own,
    # and the whole group is killed afterwards: granian forks workers, which would outlive their parent.
    process = await start_notifier(env=notifier_env(None, exchange), port=port, command=command(server, port))

    client = Client(await websockets.connect(f"ws://127.0.0.1:{port}/ws", max_queue=None))
    await client.send({"type": "auth", "token": token_for("alice")})
    assert (await client.receive())["type"] == "welcome"
    # As fast as RabbitMQ takes them: no publisher confirms on this channel, one flush at the end.
    channel = await publisher.connection.channel(publisher_confirms=False)
    burst_exchange = await channel.get_exchange(exchange)
    for n in range(BURST):
        message = aio_pika.Message(orjson.dumps({"n": n}), message_id=f"b{n}")
        await burst_exchange.publish(message, routing_key="user.alice")
    received = [(await client.expect_event("user.alice", timeout=10))["data"]["n"] for _ in range(BURST)]
    assert received == list(range(BURST))

    if server != "granian":  # granian drops the socket before the app's close frame goes out
        process.send_signal(signal.SIGTERM)
        await client.expect_close(1012, timeout=10)
        await process.wait(15)
        assert "Traceback" not in process.logs(), process.logs()


@pytest.mark.rabbitmq
@pytest.mark.parametrize("server", SERVERS)
async def test_an_http_stream_gets_a_whole_burst_and_its_commands_answers(
    server: str, exchange: str, publisher: Publisher, start_notifier: StartNotifier
) -> None:
    """Under another server a stream's messages go out through ASGI sends, by its writer task. On SIGTERM uvicorn
    (on uvloop, where the app cannot hear the stop) waits for open streams: only past its graceful timeout does
    it drop them, without a close message (the client resumes)."""
    port = free_port()
    launch = command(server, port) + (["--timeout-graceful-shutdown", "2"] if server == "uvicorn" else [])
    process = await start_notifier(env=notifier_env(None, exchange), port=port, command=launch)
    url = f"http://127.0.0.1:{port}"
    stream = await SseStream.open(url, token=token_for("alice"))
    welcome = await stream.expect("welcome")
    assert welcome.data is not None
    session = welcome.data["session"]
    assert (await stream_command(url, welcome.data["stream"], {"type": "ping", "id": "p"})).status_code == 202
    assert (await stream.expect("pong")).data == {"type": "pong", "id": "p"}
    channel = await publisher.connection.channel(publisher_confirms=False)
    burst_exchange = await channel.get_exchange(exchange)
    for n in range(BURST):
        message = aio_pika.Message(orjson.dumps({"n": n}), message_id=f"b{n}")
        await burst_exchange.publish(message, routing_key="user.alice")
    events = [await stream.expect("event", timeout=10) for _ in range(BURST)]
    assert [event.data["data"]["n"] for event in events] == list(range(BURST))  # type: ignore[index]
    assert [event.id for event in events] == [f"{session}:{n}" for n in range(1, BURST + 1)]

    if server == "hypercorn":
        process.send_signal(signal.SIGTERM)
        _, close = await stream.until("close", timeout=10)
        assert close.data == {"type": "close", "code": 1012, "reason": "server restarting"}
        await process.wait(15)
        assert "Traceback" not in process.logs(), process.logs()
    elif server == "uvicorn":
        process.send_signal(signal.SIGTERM)
        assert await stream.read_to_end(timeout=10) == []
        await process.wait(15)
