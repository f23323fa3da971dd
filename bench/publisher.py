"""The independent publisher: an aio-pika process that stamps each event with its publish time.

Every system is fed the same events (same count, rate, topics and ~200-byte JSON data). They reach RabbitMQ
the way each system's backends publish: a message on the topic exchange with routing key = topic and body =
the data (notifier, the FastAPI and websockets baselines, Web-STOMP), or, for python-socketio, the emit
envelope its AsyncAioPikaManager reads from its own fanout exchange.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from collections import Counter
from typing import Any

import aio_pika
import aiormq
import orjson

EVENT_BYTES = 200
# {"t":<19 digits>,"pad":"..."}: 34 bytes around the padding.
_PAD = "x" * (EVENT_BYTES - 34)


_PROPERTIES = aiormq.spec.Basic.Properties(content_type="application/json")


def event_body(now_ns: int) -> bytes:
    return b'{"t":%d,"pad":"%s"}' % (now_ns, _PAD.encode())


class TopicPicker:
    """Chooses each event's topic for a scenario, reproducibly."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.kind = spec["kind"]
        self.users: list[str] = spec.get("users", [])
        self.shared: list[str] = spec.get("shared", [])
        self.shared_share: float = spec.get("shared_share", 0.0)
        self.random = random.Random(spec.get("seed", 1))

    def next(self) -> str:
        if self.kind == "broadcast":
            return self.shared[0]
        if self.kind == "mixed" and self.random.random() < self.shared_share:
            return self.random.choice(self.shared)
        return "user." + self.random.choice(self.users)


class Publisher:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.channel: aiormq.abc.AbstractChannel
        self.exchange_name = spec["exchange"]

    async def start(self) -> None:
        self.connection = await aio_pika.connect(self.spec["amqp_url"])
        channel = await self.connection.channel(publisher_confirms=False)
        if self.spec["format"] == "socketio":
            await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.FANOUT)
        else:
            await channel.declare_exchange(self.exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        # aio-pika's Message/Exchange layer costs ~3x its protocol layer per publish; the burst must outrun the
        # consumers, so messages go out through the channel's own basic_publish.
        self.channel = await channel.get_underlay_channel()

    def _message(self, topic: str) -> tuple[bytes, str]:
        body = event_body(time.time_ns())
        if self.spec["format"] == "socketio":
            envelope = {
                "method": "emit",
                "event": "event",
                "data": orjson.loads(body),
                "namespace": "/",
                "room": topic,
                "skip_sid": None,
                "callback": None,
                "host_id": "bench-publisher",
            }
            return orjson.dumps(envelope), "*"
        return body, topic

    async def _publish(self, topic: str) -> None:
        body, routing_key = self._message(topic)
        await self.channel.basic_publish(
            body, exchange=self.exchange_name, routing_key=routing_key, properties=_PROPERTIES
        )

    async def burst(self, count: int, picker: TopicPicker) -> dict[str, Any]:
        """Publish `count` events as fast as one connection allows."""
        published: Counter[str] = Counter()
        started = time.perf_counter()
        batch = 500
        for first in range(0, count, batch):
            topics = [picker.next() for _ in range(min(batch, count - first))]
            await asyncio.gather(*(self._publish(topic) for topic in topics))
            published.update(topics)
        return {"published": dict(published), "seconds": time.perf_counter() - started}

    async def paced(self, rate: float, seconds: float, picker: TopicPicker) -> dict[str, Any]:
        """Publish `rate` events per second for `seconds`, each stamped when it is sent."""
        published: Counter[str] = Counter()
        total = int(rate * seconds)
        started = time.perf_counter()
        sent = 0
        while sent < total:
            due = min(total, int((time.perf_counter() - started) * rate) + 1)
            while sent < due:
                topic = picker.next()
                await self._publish(topic)
                published[topic] += 1
                sent += 1
            next_at = started + sent / rate
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
        return {"published": dict(published), "seconds": time.perf_counter() - started}


def publisher_main(conn: Any, spec: dict[str, Any]) -> None:
    os.sched_setaffinity(0, set(spec["cpus"]))
    asyncio.run(_serve(conn, spec))


async def _serve(conn: Any, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    publisher = Publisher(spec)
    await publisher.start()
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    try:
        while True:
            command, args = await commands.get()
            if command == "burst":
                conn.send(await publisher.burst(args["count"], TopicPicker(args["topics"])))
            elif command == "paced":
                conn.send(await publisher.paced(args["rate"], args["seconds"], TopicPicker(args["topics"])))
            elif command == "exit":
                conn.send(True)
                return
    finally:
        if publisher.connection is not None:
            await publisher.connection.close()
