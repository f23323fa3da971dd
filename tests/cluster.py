"""The parts of the cluster tests: the 3-node RabbitMQ cluster of .ci/cluster, browsers that reconnect and resume
as notifier.js does, and a backend feed that keeps what RabbitMQ confirmed, so every event can be accounted for.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import websockets

from notifier.broker.failover import NodeAddresses, connect_to_any
from tests.support import token_for

ROOT = Path(__file__).resolve().parent.parent
CLUSTER_CTL = ROOT / ".ci" / "cluster"
CLUSTER_DIR = os.environ.get("NOTIFIER_CLUSTER_DIR", "/tmp/notifier-cluster")
NODES = ("c1", "c2", "c3")
AMQP_BASE_PORT = int(os.environ.get("CLUSTER_AMQP_BASE_PORT", "5701"))


def node_url(node: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{AMQP_BASE_PORT + NODES.index(node)}/"


def urls_from(*nodes: str) -> str:
    """NOTIFIER_AMQP_URL listing `nodes` in this order (the first is tried first)."""
    return ",".join(node_url(node) for node in nodes)


class Cluster:
    """The cluster of .ci/cluster: three RabbitMQ nodes of their own, never the machine's default node."""

    def ctl(self, command: str, *args: str, timeout: float = 120) -> str:
        result = subprocess.run(
            [str(CLUSTER_CTL), command, *args, CLUSTER_DIR],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise AssertionError(f".ci/cluster {command} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def start(self) -> None:
        """Start the cluster, or bring every node of it back (idempotent)."""
        self.ctl("start")

    def kill(self, node: str) -> None:
        self.ctl("kill-node", node)

    def start_node(self, node: str) -> None:
        self._bring_back("start-node", node)

    def stop_app(self, node: str) -> None:
        self.ctl("stop-app", node)

    def start_app(self, node: str) -> None:
        self._bring_back("start-app", node)

    def freeze(self, node: str) -> None:
        self.ctl("freeze-node", node)

    def thaw(self, node: str) -> None:
        self._bring_back("thaw-node", node)

    def _bring_back(self, command: str, node: str) -> None:
        """Undo a fault; if the node does not answer in time (a loaded machine), `start` repairs the cluster:
        it starts dead nodes, thaws frozen ones and restarts stopped apps."""
        try:
            self.ctl(command, node)
        except AssertionError:
            self.ctl("start")


@dataclass
class Browser:
    """One user's page: a WebSocket that reconnects after a drop and resumes its session with the count of event
    frames received, as notifier.js does; `told` counts the times it learned events may be missing (a `resync`
    frame, or a resume answered `recovered: false`)."""

    url: Callable[[], str]
    user: str
    seqs: list[int] = field(default_factory=list)  # the `seq` of each event frame, in arrival order
    told: int = 0
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    connections: int = 0
    session: str | None = None
    received: int = 0
    _stopping: bool = False

    async def run(self) -> None:
        while not self._stopping:
            try:
                async with websockets.connect(self.url(), open_timeout=10) as ws:
                    self.connections += 1
                    await self._serve(ws)
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            if not self._stopping:
                await asyncio.sleep(0.5)  # a short backoff, as notifier.js's first retry

    async def _serve(self, ws: websockets.ClientConnection) -> None:
        auth: dict[str, Any] = {"type": "auth", "token": token_for(self.user)}
        asked = self.session is not None
        if asked:
            auth["resume"] = {"session": self.session, "received": self.received}
        await ws.send(orjson.dumps(auth).decode())
        async for raw in ws:
            frame = orjson.loads(raw)
            kind = frame["type"]
            if kind == "event":
                self.received += 1
                self.seqs.append(frame["data"]["seq"])
            elif kind == "welcome":
                self.session = frame["session"]
                if asked and not frame["recovered"]:
                    self.told += 1
                    self.received = 0
                self.welcomed.set()
            elif kind == "resync":
                self.told += 1

    def stop(self) -> None:
        self._stopping = True

    def missing(self, confirmed: list[int]) -> list[int]:
        got = set(self.seqs)
        return [seq for seq in confirmed if seq not in got]

    def in_order(self) -> bool:
        """Distinct events arrived in the order they were published (a redelivered repeat may follow)."""
        first_seen: list[int] = []
        seen: set[int] = set()
        for seq in self.seqs:
            if seq not in seen:
                seen.add(seq)
                first_seen.append(seq)
        return first_seen == sorted(first_seen)


class Feed:
    """A backend publishing one event per user per tick to `user.<id>`, with publisher confirms, through the nodes
    it is given (the next on each reconnect). Keeps, per user, the sequence numbers RabbitMQ confirmed."""

    def __init__(self, amqp_urls: str, exchange: str, users: list[str], interval_s: float) -> None:
        self._urls = amqp_urls.split(",")
        self._exchange_name = exchange
        self._users = users
        self._interval_s = interval_s
        self.confirmed: dict[str, list[int]] = {user: [] for user in users}
        self.unconfirmed = 0
        self._stopping = asyncio.Event()
        self.seq = 0

    async def run(self) -> None:
        connection = await connect_to_any(
            NodeAddresses(self._urls, reconnect_interval=0.5, heartbeat=3),
            timeout=5,
            client_properties={"connection_name": "test feed"},
        )
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(self._exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
            while not self._stopping.is_set():
                started = time.monotonic()
                self.seq += 1
                await asyncio.gather(*(self._publish(exchange, user, self.seq) for user in self._users))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(
                        self._stopping.wait(), max(0.0, self._interval_s - (time.monotonic() - started))
                    )

    async def _publish(self, exchange: aio_pika.abc.AbstractExchange, user: str, seq: int) -> None:
        message = aio_pika.Message(
            orjson.dumps({"seq": seq}),
            message_id=f"{user}-{seq}",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await exchange.publish(message, routing_key=f"user.{user}", timeout=10)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError):
            self.unconfirmed += 1  # never counted as published: the backend would know to retry
            return
        self.confirmed[user].append(seq)

    def stop(self) -> None:
        self._stopping.set()
