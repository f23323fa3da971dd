"""The app under ASGI servers other than `notifier serve`, built by the zero-argument factory from NOTIFIER_*
variables as each server's documentation has it: a fast reader gets a 500-event burst whole, and SIGTERM
drains with 1012 where the server lets the app hear of the stop."""

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
