"""The tutorial approach: FastAPI, a dict of rooms, and one aio-pika loop that awaits `send_text` per client.

Run: python -m bench.baselines.fastapi_naive  (BENCH_PORT, BENCH_SECRET, BENCH_EXCHANGE, BENCH_AMQP, BENCH_WS)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator

import aio_pika
import jwt
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

SECRET = os.environ["BENCH_SECRET"]
rooms: defaultdict[str, set[WebSocket]] = defaultdict(set)


async def consume(queue: aio_pika.abc.AbstractQueue) -> None:
    async with queue.iterator() as messages:
        async for message in messages:
            async with message.process():
                topic = message.routing_key or ""
                frame = '{"type":"event","topic":"' + topic + '","data":' + message.body.decode() + "}"
                for websocket in list(rooms.get(topic, ())):
                    try:
                        await websocket.send_text(frame)
                    except (WebSocketDisconnect, RuntimeError):
                        rooms[topic].discard(websocket)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    connection = await aio_pika.connect_robust(os.environ["BENCH_AMQP"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=256)
    exchange = await channel.declare_exchange(os.environ["BENCH_EXCHANGE"], aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="#")
    task = asyncio.create_task(consume(queue))
    yield
    task.cancel()
    await connection.close()


app = FastAPI(lifespan=lifespan)


@app.websocket("/ws")
async def websocket_endpoint(websocket: WebSocket, token: str) -> None:
    try:
        claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    except jwt.PyJWTError:
        await websocket.close(code=4500)
        return
    await websocket.accept()
    topics = {f"user.{claims['sub']}"}
    rooms[f"user.{claims['sub']}"].add(websocket)
    await websocket.send_text(json.dumps({"type": "welcome", "user": claims["sub"]}))
    try:
        while True:
            frame = json.loads(await websocket.receive_text())
            if frame.get("type") == "subscribe" and str(frame.get("topic", "")).startswith("news."):
                topics.add(frame["topic"])
                rooms[frame["topic"]].add(websocket)
                await websocket.send_text(
                    json.dumps({"type": "subscribed", "topic": frame["topic"], "id": frame.get("id")})
                )
    except WebSocketDisconnect:
        pass
    finally:
        for topic in topics:
            rooms[topic].discard(websocket)


if __name__ == "__main__":
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=int(os.environ["BENCH_PORT"]),
        ws=os.environ.get("BENCH_WS", "auto"),
        log_level="warning",
    )
