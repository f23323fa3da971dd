"""The app under ASGI servers other than `notifier serve`, built by the zero-argument factory from NOTIFIER_*
variables as each server's documentation has it: a fast reader gets a 500-event burst whole, and SIGTERM
drains with 1012 where the server lets the app hear of the stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path

import aio_pika
import httpx
import orjson
import pytest
import websockets

from tests.support import AMQP_URL, SECRET, Client, Publisher, free_port, token_for

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
    server: str, exchange: str, publisher: Publisher, tmp_path: Path
) -> None:
    port = free_port()
    env = {
        **{key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")},
        "NOTIFIER_AMQP_URL": AMQP_URL,
        "NOTIFIER_EXCHANGE": exchange,
        "NOTIFIER_DEAD_LETTER_EXCHANGE": f"{exchange}.dead",
        "NOTIFIER_JWT_SECRET": SECRET,
        "NOTIFIER_QUEUE_EXPIRES_S": "5",
        "NOTIFIER_SHUTDOWN_TIMEOUT_S": "3",
    }
    log_path = tmp_path / f"{server}.log"
    with log_path.open("wb") as log:
        # A session of its own: granian forks workers, and killing only their parent would leave them running.
        process = await asyncio.create_subprocess_exec(
            *command(server, port), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT, start_new_session=True
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
            for _ in range(300):
                assert process.returncode is None, log_path.read_text()
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.05)
            else:
                raise AssertionError(f"{server} never became ready: {log_path.read_text()}")

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
            await asyncio.wait_for(process.wait(), 15)
            assert "Traceback" not in log_path.read_text(), log_path.read_text()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # the whole group, workers included, even if the parent exited
        await process.wait()
