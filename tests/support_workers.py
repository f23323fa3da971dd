"""Helpers for tests that run `notifier serve --workers N` as a process group: the group, its queues and its
clients. The `start_service` fixture is in conftest.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import aio_pika
import websockets

from tests.processes import START_TIMEOUT_S, NotifierProcess
from tests.support import AMQP_URL, Client, Publisher, rabbitmqctl_rows, token_for


def instance_queues(exchange: str) -> set[str]:
    return {row[0] for row in rabbitmqctl_rows("list_queues", "name") if row[0].startswith(f"{exchange}.instance.")}


def queue_of_topic(exchange: str) -> dict[str, str]:
    """Which instance queue each topic is bound to: tells which worker holds a client's subscription."""
    rows = rabbitmqctl_rows("list_bindings", "source_name", "destination_name", "routing_key")
    return {row[2]: row[1] for row in rows if row[0] == exchange}


@dataclass
class Service:
    """A `notifier serve` process group (started by the `start_service` fixture), its exchange and its JSON log."""

    process: NotifierProcess
    exchange: str
    seen_queues: set[str] = field(default_factory=set)

    @property
    def ws_url(self) -> str:
        return self.process.ws_url

    @property
    def http_url(self) -> str:
        return self.process.http_url

    def log(self) -> list[dict[str, Any]]:
        return self.process.log_records()

    def worker_pids(self) -> list[int]:
        return [entry["pid"] for entry in self.log() if entry["event"] == "worker_started"]

    def live_worker_pids(self) -> set[int]:
        return {pid for pid in self.worker_pids() if alive(pid)}

    async def wait_for_queues(self, count: int, *, besides: set[str] | None = None) -> set[str]:
        """Wait until `count` instance queues exist that are not in `besides` (RabbitMQ's view: polled)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            assert self.process.returncode is None, self.process.logs()
            queues = await asyncio.to_thread(instance_queues, self.exchange) - (besides or set())
            self.seen_queues |= queues
            if len(queues) >= count:
                return queues
            assert time.monotonic() < deadline, f"{len(queues)} of {count} instance queues after {START_TIMEOUT_S}s"
            await asyncio.sleep(0.3)


class StartService(Protocol):
    """The `start_service` fixture: `notifier serve *args` with the NOTIFIER_* variables `extra_env` added."""

    async def __call__(self, *args: str, **extra_env: str) -> Service: ...


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError):
        # A zombie has exited; it only waits for its parent to collect it.
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


async def delete_queues(names: set[str]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in names:
            await channel.queue_delete(name)


async def connect_user(service: Service, user: str, opened: list[Client]) -> Client:
    connection = await websockets.connect(service.ws_url, open_timeout=5)
    client = Client(connection)
    opened.append(client)
    await client.send({"type": "auth", "token": token_for(user)})
    welcome = await client.receive()
    assert welcome["type"] == "welcome", welcome
    return client


async def connect_until_every_queue_has_clients(
    service: Service, queues: set[str], opened: list[Client], *, prefix: str = "w"
) -> dict[str, Client]:
    """Connect clients, a few at a time, until each instance queue holds some client's personal topic."""
    by_user: dict[str, Client] = {}
    while len(by_user) < 64:
        for _ in range(6):
            user = f"{prefix}{len(by_user)}"
            by_user[user] = await connect_user(service, user, opened)
        holders = {queue for topic, queue in queue_of_topic(service.exchange).items() if topic.startswith("user.")}
        if holders >= queues:
            return by_user
    raise AssertionError(f"64 clients and still not every worker has one: {queue_of_topic(service.exchange)}")


async def expect_each_user_gets_its_event(service: Service, publisher: Publisher, by_user: dict[str, Client]) -> None:
    for user in by_user:
        await publisher.publish(f"user.{user}", {"to": user})
    for user, client in by_user.items():
        event = await client.expect_event(f"user.{user}")
        assert event["data"] == {"to": user}
