"""A raw `websockets` server: rooms of connections, and `websockets.broadcast()` for each aio-pika message.

Run: python -m bench.baselines.websockets_broadcast  (BENCH_PORT, BENCH_SECRET, BENCH_EXCHANGE, BENCH_AMQP)
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import defaultdict
from urllib.parse import parse_qs, urlsplit

import aio_pika
import jwt
import websockets
from websockets.asyncio.server import ServerConnection, serve

SECRET = os.environ["BENCH_SECRET"]
rooms: defaultdict[str, set[ServerConnection]] = defaultdict(set)


async def handler(websocket: ServerConnection) -> None:
    assert websocket.request is not None
    token = parse_qs(urlsplit(websocket.request.path).query).get("token", [""])[0]
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    except jwt.PyJWTError:
        await websocket.close(4500, "invalid token")
        return
    topics = {f"user.{claims['sub']}"}
    rooms[f"user.{claims['sub']}"].add(websocket)
    try:
        await websocket.send(json.dumps({"type": "welcome", "user": claims["sub"]}))
        async for message in websocket:
            frame = json.loads(message)
            if frame.get("type") == "subscribe" and str(frame.get("topic", "")).startswith("news."):
                topics.add(frame["topic"])
                rooms[frame["topic"]].add(websocket)
                await websocket.send(json.dumps({"type": "subscribed", "topic": frame["topic"], "id": frame.get("id")}))
    except websockets.ConnectionClosed:
        pass
    finally:
        for topic in topics:
            rooms[topic].discard(websocket)


async def consume(queue: aio_pika.abc.AbstractQueue) -> None:
    async with queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                topic = message.routing_key or ""
                frame = '{"type":"event","topic":"' + topic + '","data":' + message.body.decode() + "}"
                websockets.broadcast(rooms.get(topic, ()), frame)


async def main() -> None:
    connection = await aio_pika.connect_robust(os.environ["BENCH_AMQP"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    exchange = await channel.declare_exchange(os.environ["BENCH_EXCHANGE"], aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="#")
    consumer = asyncio.create_task(consume(queue))
    # The listen backlog uvicorn gives notifier (2048): with asyncio's default of 100, a storm of connects
    # would measure SYN retransmits rather than the server.
    port = int(os.environ["BENCH_PORT"])
    async with serve(handler, "127.0.0.1", port, compression=None, backlog=2048) as server:
        try:
            await server.serve_forever()
        finally:
            consumer.cancel()
            await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
