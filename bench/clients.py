"""Load clients: one process holds many picows WebSocket connections and counts what they receive.

The orchestrator drives a worker through a multiprocessing pipe with small commands (connect, reset, stats,
close, follow_restart). Per event a client does as little as it can: a prefix check and a counter; only in
latency mode does it read the publish time stamped in the event's data.
"""

from __future__ import annotations

import asyncio
import os
import random
import re
import resource
import time
from typing import Any

import jwt
import orjson
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from bench.sse_clients import SseClient, dial_sse

# Every system's events carry the publisher's JSON data, so the stamp is found the same way in all of them
# (socket.io re-encodes it with the standard library, hence the optional space).
_STAMP = re.compile(rb'"t": ?(\d+)')


class Protocol:
    """How one system's clients say hello, subscribe, and tell an event from anything else."""

    event_prefix = b""

    def url(self, base: str, token: str) -> str:
        return base

    def headers(self) -> dict[str, str] | None:
        return None

    def on_connected(self, client: Client) -> None:
        pass

    def on_handshake_frame(self, client: Client, payload: bytes) -> None:
        raise NotImplementedError


class NotifierProtocol(Protocol):
    """notifier's contract (docs/protocol.md); the FastAPI and websockets baselines speak the same shape."""

    event_prefix = b'{"type":"event"'

    def url(self, base: str, token: str) -> str:
        return f"{base}?token={token}"

    def on_handshake_frame(self, client: Client, payload: bytes) -> None:
        message = orjson.loads(payload)
        kind = message.get("type")
        if kind == "welcome":
            if not client.topics:
                client.set_ready()
                return
            for number, topic in enumerate(client.topics):
                frame = orjson.dumps({"type": "subscribe", "topic": topic, "id": number})
                client.transport.send(WSMsgType.TEXT, frame)
        elif kind == "subscribed":
            client.pending -= 1
            if client.pending == 0:
                client.set_ready()
        else:
            client.fail(f"unexpected frame {payload[:200]!r}")


class SocketIOProtocol(Protocol):
    """Engine.IO 4 over a bare WebSocket: open packet, namespace connect with auth, then socket.io events."""

    event_prefix = b'42["event"'

    def url(self, base: str, token: str) -> str:
        return f"{base}/socket.io/?EIO=4&transport=websocket"

    def on_handshake_frame(self, client: Client, payload: bytes) -> None:
        if payload.startswith(b"0{"):
            client.transport.send(WSMsgType.TEXT, b"40" + orjson.dumps({"token": client.token}))
        elif payload.startswith(b"40"):
            if not client.topics:
                client.set_ready()
                return
            for topic in client.topics:
                client.transport.send(WSMsgType.TEXT, b"42" + orjson.dumps(["subscribe", topic]))
        elif payload.startswith(b'42["subscribed"'):
            client.pending -= 1
            if client.pending == 0:
                client.set_ready()
        elif payload == b"2":
            client.transport.send(WSMsgType.TEXT, b"3")
        else:
            client.fail(f"unexpected frame {payload[:200]!r}")


class StompProtocol(Protocol):
    """STOMP 1.2 over WebSocket (RabbitMQ Web-STOMP); topics are routing keys on the benchmark's exchange."""

    event_prefix = b"MESSAGE\n"

    def __init__(self, exchange: str) -> None:
        self.exchange = exchange

    def headers(self) -> dict[str, str] | None:
        return {"Sec-WebSocket-Protocol": "v12.stomp"}

    def on_connected(self, client: Client) -> None:
        frame = b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\x00"
        client.transport.send(WSMsgType.TEXT, frame)

    def on_handshake_frame(self, client: Client, payload: bytes) -> None:
        if payload.startswith(b"CONNECTED"):
            client.pending = len(client.stomp_topics)
            for number, topic in enumerate(client.stomp_topics):
                frame = (
                    f"SUBSCRIBE\nid:{number}\ndestination:/exchange/{self.exchange}/{topic}\nack:auto\n"
                    f"receipt:{number}\n\n\x00"
                ).encode()
                client.transport.send(WSMsgType.TEXT, frame)
        elif payload.startswith(b"RECEIPT"):
            client.pending -= 1
            if client.pending == 0:
                client.set_ready()
        else:
            client.fail(f"unexpected frame {payload[:200]!r}")


class Client(WSListener):
    """One browser stand-in."""

    def __init__(self, worker: Worker, user: str, token: str, topics: list[str], personal: str) -> None:
        self.worker = worker
        self.user = user
        self.personal = personal
        self.token = token
        self.topics = topics  # topics to subscribe to after the hello (notifier subscribes the personal one)
        self.stomp_topics = [personal, *topics]
        self.pending = len(topics)
        self.ready = False
        self.count = 0
        self.closed_code: int | None = None
        self.transport: WSTransport
        self.ready_future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()  # closed or disconnected

    def set_ready(self) -> None:
        self.ready = True
        if not self.ready_future.done():
            self.ready_future.set_result(None)

    def fail(self, why: str) -> None:
        if not self.ready_future.done():
            self.ready_future.set_exception(RuntimeError(why))

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        self.worker.protocol.on_connected(self)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            worker = self.worker
            if self.ready and payload.startswith(worker.event_prefix):
                self.count += 1
                now = time.time_ns()
                if worker.first_ns == 0:
                    worker.first_ns = now
                worker.last_ns = now
                if worker.timing:
                    match = _STAMP.search(payload)
                    if match is not None:
                        worker.latencies.append(now - int(match.group(1)))
            elif payload == b"2":  # Engine.IO ping
                transport.send(WSMsgType.TEXT, b"3")
            elif not self.ready:
                try:
                    worker.protocol.on_handshake_frame(self, payload)
                except (ValueError, KeyError) as error:
                    self.fail(repr(error))
        elif kind is WSMsgType.CLOSE:
            self.closed_code = frame.get_close_code()
            self.fail(f"closed with {self.closed_code}")
            # As a browser does: answer the close and let the connection go, so a reconnect can start.
            transport.send_close(WSCloseCode(self.closed_code))
            transport.disconnect()
            self.set_gone()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.closed_code is None:
            self.closed_code = -1
        self.fail("disconnected")
        self.set_gone()

    def set_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def drop(self) -> None:
        """Drop the connection, as a closed tab does."""
        if not self.transport.is_disconnected:
            self.transport.disconnect()


class Worker:
    """All the clients of one process, and the counters the orchestrator reads."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        system = spec["protocol"]
        if system == "socketio":
            self.protocol: Protocol = SocketIOProtocol()
        elif system == "stomp":
            self.protocol = StompProtocol(spec["exchange"])
        else:
            self.protocol = NotifierProtocol()
        self.event_prefix = self.protocol.event_prefix
        self.stamp = _STAMP
        self.clients: list[Client | SseClient] = []
        self.first_ns = 0
        self.last_ns = 0
        self.timing = False
        self.latencies: list[int] = []

    async def connect(self, plan: list[dict[str, Any]], concurrency: int) -> dict[str, Any]:
        """Connect, authenticate and subscribe every client of `plan`; returns timings and failures."""
        secret = self.spec["secret"]
        gate = asyncio.Semaphore(concurrency)
        failures: list[str] = []
        codes: dict[str, int] = {}  # why clients were not welcomed: close code, or the error's type
        tokens = [mint(secret, item["user"]) for item in plan]
        started = time.perf_counter()

        slots: list[Client | SseClient | None] = [None] * len(plan)

        async def one(number: int, item: dict[str, Any], token: str) -> None:
            async with gate:
                client, why, error = await self.dial(item["user"], token, item["topics"], item["personal"])
            if client is None:
                failures.append(error)
                codes[why] = codes.get(why, 0) + 1
                return
            slots[number] = client

        await asyncio.gather(
            *(one(number, item, token) for number, (item, token) in enumerate(zip(plan, tokens, strict=True)))
        )
        # Kept in plan order, so the orchestrator can match each client's count with what it should have got.
        self.clients = [client for client in slots if client is not None]
        return {
            "connected": len(self.clients),
            "failed": len(failures),
            "failures": failures[:5],
            "codes": codes,
            "seconds": time.perf_counter() - started,
        }

    async def dial(
        self, user: str, token: str, topics: list[str], personal: str
    ) -> tuple[Client | SseClient | None, str, str]:
        """One connect attempt: the client once it is welcomed (and subscribed), or why it was not (a close code
        or the error's type) and the error itself."""
        if self.spec["protocol"] == "sse":
            return await dial_sse(self, user, token, topics, personal, self.spec["url"])
        client: Client | None = None

        def factory() -> Client:
            nonlocal client
            client = Client(self, user, token, topics, personal)
            return client

        try:
            await ws_connect(
                factory,
                self.protocol.url(self.spec["url"], token),
                extra_headers=self.protocol.headers(),
                websocket_handshake_timeout=30,
                read_buffer_init_size=4096,
            )
            if client is None:  # picows returns without a listener when the server closed before its answer
                raise ConnectionAbortedError("closed by the server during the handshake")
            await asyncio.wait_for(client.ready_future, 60)
        except (OSError, RuntimeError, TimeoutError) as error:
            why = str(client.closed_code) if client is not None and client.closed_code else type(error).__name__
            if client is not None and client.ready_future.done() and not client.ready_future.cancelled():
                client.ready_future.exception()  # retrieved, so asyncio does not warn about it
            return None, why, repr(error)[:200]
        return client, "", ""

    async def follow_restart(self, deadline_s: float) -> dict[str, Any]:
        """Every held client waits for its connection to end (the server restarting), then reconnects with the
        backoff of notifier.js until it is welcomed again or `deadline_s` passed."""
        deadline = time.monotonic() + deadline_s
        held = list(self.clients)
        attempts = 0
        refusals: dict[str, int] = {}
        dropped_at: list[float] = []
        welcomed_at: list[float] = []
        slots: list[Client | SseClient | None] = [None] * len(held)
        failures: list[str] = []  # the first few errors other than a refused connect, as the client saw them

        async def one(number: int, old: Client | SseClient) -> None:
            nonlocal attempts
            try:
                await asyncio.wait_for(asyncio.shield(old.gone), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                refusals["never dropped"] = refusals.get("never dropped", 0) + 1
                return
            dropped_at.append(time.monotonic())
            step = backoff_step(old.closed_code)
            while time.monotonic() < deadline:
                await asyncio.sleep(min(max(0.0, deadline - time.monotonic()), backoff_delay(step)))
                step += 1
                attempts += 1
                client, why, error = await self.dial(old.user, old.token, old.topics, old.personal)
                if client is not None:
                    welcomed_at.append(time.monotonic())
                    slots[number] = client
                    return
                refusals[why] = refusals.get(why, 0) + 1
                if why != "ConnectionRefusedError" and len(failures) < 5:
                    failures.append(f"{why}: {error}")
                step = max(step, backoff_step(int(why) if why.lstrip("-").isdigit() else None))

        await asyncio.gather(*(one(number, client) for number, client in enumerate(held)))
        self.clients = [client for client in slots if client is not None]
        return {
            "held": len(held),
            "welcomed": len(welcomed_at),
            "attempts": attempts,
            "refusals": refusals,
            "first_drop": min(dropped_at, default=None),
            "last_drop": max(dropped_at, default=None),
            "last_welcome": max(welcomed_at, default=None),
            "welcome_times": sorted(welcomed_at),
            "failures": failures,
        }

    def reset(self, timing: bool) -> None:
        for client in self.clients:
            client.count = 0
        self.first_ns = self.last_ns = 0
        self.timing = timing
        self.latencies = []

    def stats(self, with_latencies: bool) -> dict[str, Any]:
        counts = [client.count for client in self.clients]  # in plan order
        return {
            "total": sum(counts),
            "counts": counts,
            "closed": sum(1 for client in self.clients if client.closed_code is not None),
            "first_ns": self.first_ns,
            "last_ns": self.last_ns,
            "latencies": self.latencies if with_latencies else [],
            "cpu_s": sum(os.times()[:2]),
        }

    async def close(self) -> None:
        for client in self.clients:
            client.drop()
        self.clients = []
        await asyncio.sleep(0.2)


# Reconnect backoff as notifier.js does it: full jitter, a uniform delay in [0, min(cap, base * 2^step)), and
# a close that says the server is busy starts at step 2.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 20.0
BUSY_CLOSE_CODES = {1013, 4002, 4003, 4004}


def backoff_step(close_code: int | None) -> int:
    return 2 if close_code in BUSY_CLOSE_CODES else 0


def backoff_delay(step: int) -> float:
    return random.uniform(0.0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** min(step, 30)))


def mint(secret: str, user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600, "topics": ["news.#"]}, secret, algorithm="HS256")


def worker_main(conn: Any, spec: dict[str, Any]) -> None:
    """Entry point of a client process: pin to the clients' core, then serve commands until 'exit'."""
    os.sched_setaffinity(0, set(spec["cpus"]))
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(conn, spec))


async def _serve(conn: Any, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec)
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while True:
        command, args = await commands.get()
        if command == "connect":
            conn.send(await worker.connect(args["plan"], args["concurrency"]))
        elif command == "reset":
            worker.reset(args["timing"])
            conn.send(True)
        elif command == "stats":
            conn.send(worker.stats(args["latencies"]))
        elif command == "follow_restart":
            conn.send(await worker.follow_restart(args["deadline_s"]))
        elif command == "close":
            await worker.close()
            conn.send(True)
        elif command == "exit":
            await worker.close()
            conn.send(True)
            return
