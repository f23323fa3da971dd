"""python-socketio with its AsyncAioPikaManager, served by uvicorn: rooms per topic, `emit` fans out.

Backends publish through the manager's fanout exchange (BENCH_EXCHANGE) with the emit envelope, which is how
socket.io's external emitters reach it. Run: python -m bench.baselines.socketio_server
"""

from __future__ import annotations

import os

import jwt
import socketio
import uvicorn

SECRET = os.environ["BENCH_SECRET"]
manager = socketio.AsyncAioPikaManager(os.environ["BENCH_AMQP"], channel=os.environ["BENCH_EXCHANGE"])
sio = socketio.AsyncServer(async_mode="asgi", client_manager=manager, cors_allowed_origins="*")
app = socketio.ASGIApp(sio)


@sio.event
async def connect(sid: str, environ: dict[str, object], auth: dict[str, str] | None) -> None:
    try:
        claims = jwt.decode((auth or {}).get("token", ""), SECRET, algorithms=["HS256"])
    except jwt.PyJWTError as error:
        raise socketio.exceptions.ConnectionRefusedError("invalid token") from error
    await sio.enter_room(sid, f"user.{claims['sub']}")


@sio.event
async def subscribe(sid: str, topic: str) -> None:
    if isinstance(topic, str) and topic.startswith("news."):
        await sio.enter_room(sid, topic)
        await sio.emit("subscribed", topic, to=sid)


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(os.environ["BENCH_PORT"]), log_level="warning")
