"""A raw picows server (Cython WebSocket framing): rooms of transports, one `send` per subscriber per message.

The ceiling for a Python process: no ASGI, no per-connection task, frames written straight to the transport.
It speaks the bench clients' contract (a JWT in `?token=`, `welcome`, `subscribe`/`subscribed`, events as
`{"type":"event","topic":...,"data":...}`, a bad token closed with 4500) and binds `#` once, like the other
baselines.

Run: python -m bench.baselines.picows_broadcast  (BENCH_PORT, BENCH_SECRET, BENCH_EXCHANGE, BENCH_AMQP)
"""

from __future__ import annotations

import asyncio
import os
from collections import defaultdict
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import aio_pika
import jwt
import orjson
from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, WSUpgradeRequest, ws_create_server

INVALID_TOKEN = 4500


class Rooms:
    """Which transports hear each topic."""

    def __init__(self) -> None:
        self.members: defaultdict[str, set[WSTransport]] = defaultdict(set)

    def join(self, topic: str, transport: WSTransport) -> None:
        self.members[topic].add(transport)

    def leave(self, topics: set[str], transport: WSTransport) -> None:
        for topic in topics:
            members = self.members.get(topic)
            if members is not None:
                members.discard(transport)
                if not members:
                    del self.members[topic]

    def send(self, topic: str, frame: bytes) -> None:
        for transport in self.members.get(topic, ()):
            transport.send(WSMsgType.TEXT, frame)


class Subscriber(WSListener):
    """One authenticated browser: welcomed on connect, joins `news.*` topics it asks for."""

    def __init__(self, rooms: Rooms, user: str) -> None:
        self.rooms = rooms
        self.user = user
        self.topics = {f"user.{user}"}
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        for topic in self.topics:
            self.rooms.join(topic, transport)
        transport.send(WSMsgType.TEXT, orjson.dumps({"type": "welcome", "user": self.user}))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        if frame.msg_type is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()
            return
        if frame.msg_type is not WSMsgType.TEXT:
            return
        try:
            message = orjson.loads(frame.get_payload_as_bytes())
        except orjson.JSONDecodeError:
            return
        topic = str(message.get("topic", "")) if isinstance(message, dict) else ""
        if message.get("type") == "subscribe" and topic.startswith("news."):
            self.topics.add(topic)
            self.rooms.join(topic, transport)
            answer = {"type": "subscribed", "topic": topic, "id": message.get("id")}
            transport.send(WSMsgType.TEXT, orjson.dumps(answer))

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.rooms.leave(self.topics, transport)


class Rejected(WSListener):
    """A connection whose token did not verify: closed with 4500 as soon as it is open."""

    def on_ws_connected(self, transport: WSTransport) -> None:
        transport.send_close(WSCloseCode(INVALID_TOKEN), b"invalid token")
        transport.disconnect()


def listener_factory(rooms: Rooms, secret: str) -> Callable[[WSUpgradeRequest], WSListener]:
    def factory(request: WSUpgradeRequest) -> WSListener:
        path = request.path.decode() if isinstance(request.path, bytes) else str(request.path)
        token = parse_qs(urlsplit(path).query).get("token", [""])[0]
        try:
            claims = jwt.decode(token, secret, algorithms=["HS256"])
        except jwt.PyJWTError:
            return Rejected()
        return Subscriber(rooms, str(claims["sub"]))

    return factory


async def consume(queue: aio_pika.abc.AbstractQueue, rooms: Rooms) -> None:
    async with queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                topic = message.routing_key or ""
                frame = b'{"type":"event","topic":"' + topic.encode() + b'","data":' + message.body + b"}"
                rooms.send(topic, frame)


async def main() -> None:
    rooms = Rooms()
    connection = await aio_pika.connect_robust(os.environ["BENCH_AMQP"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    exchange = await channel.declare_exchange(os.environ["BENCH_EXCHANGE"], aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="#")
    consumer = asyncio.create_task(consume(queue, rooms))
    server = await ws_create_server(
        listener_factory(rooms, os.environ["BENCH_SECRET"]),
        "127.0.0.1",
        int(os.environ["BENCH_PORT"]),
        websocket_handshake_timeout=30,
        backlog=2048,  # as uvicorn gives notifier: see the websockets baseline
    )
    try:
        await server.serve_forever()
    finally:
        consumer.cancel()
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
