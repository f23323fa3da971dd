"""Browser-like clients of the resume storm: one process holds a share of the users, each on a picows WebSocket
bound to one of a few loopback source addresses, and follows its session across an instance's SIGTERM.

A client signs in on the first instance with an `auth` frame, keeps the `session` of its welcome and counts the
event frames of that session (as notifier.js does). When its connection ends it reconnects to the second
instance with notifier.js's backoff (full jitter, uniform in [0, min(20 s, 0.5 s * 2^attempt)), a busy close or
an HTTP 503 refusal starts two steps up), asks to `resume` with its count, and waits for the welcome as long as
the server takes once the socket is open. Every event id it receives is kept, in order, so the orchestrator
can count what is missing, doubled or out of order per user.

The orchestrator (bench/resume_storm.py, bench/fleet_rollout.py) drives a worker through a multiprocessing pipe:
connect, follow, progress, finish, exit, and ("targets", urls) to change where reconnects go. A user signs in on
one of `first_urls` (spread by its number) and reconnects to one of the current targets, picked at random for
each attempt as a load balancer would.
"""

from __future__ import annotations

import asyncio
import os
import random
import resource
import time
from typing import Any

import jwt
import orjson
from picows import WSCloseCode, WSHandshakeError, WSListener, WSMsgType, WSTransport, ws_connect

from bench.clients import BUSY_CLOSE_CODES, backoff_delay

# notifier.js's backoff (bench/clients.py has it): a close or HTTP status that says the server is busy starts
# at attempt 2.
BUSY_HTTP_STATUSES = frozenset({503})
BUSY_MIN_ATTEMPT = 2
EVENT_PREFIX = b'{"type":"event"'
# How long the HTTP upgrade may take; once the socket is open the welcome is awaited without a bound of its own.
HANDSHAKE_TIMEOUT_S = 60.0


def busy(why: str) -> bool:
    """Whether a failed attempt's reason says the server is busy (notifier.js waits a few steps more)."""
    kind, _, value = why.partition(" ")
    if not value.isdigit():
        return False
    return int(value) in (BUSY_CLOSE_CODES if kind == "close" else BUSY_HTTP_STATUSES if kind == "http" else ())


def mint(secret: str, user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


class User:
    """One browser: its session and count (kept across connections) and every event id it received."""

    __slots__ = (
        "address",
        "arrivals",
        "attempts",
        "back_at",
        "close_code",
        "closed_at",
        "connections",
        "drops",
        "first_url",
        "gaps",
        "ids",
        "last_recovered",
        "listener",
        "name",
        "received",
        "recovered",
        "session",
        "token",
    )

    def __init__(self, name: str, token: str, address: str, first_url: str) -> None:
        self.name = name
        self.token = token
        self.address = address
        self.first_url = first_url
        self.session: str | None = None
        self.received = 0  # event frames of this session, over its resumes (repeats included)
        self.ids: list[int] = []  # every event id received, in order, over all connections
        # For each of `ids`: the welcomed connection it came on (1 for the first) and when (monotonic).
        self.arrivals: list[tuple[int, float]] = []
        self.connections = 0
        self.listener: Listener | None = None
        self.closed_at: float | None = None  # the end of the connection held before the SIGTERM
        self.close_code: int | None = None
        self.back_at: float | None = None  # the welcome of the connection after it
        self.recovered: bool | None = None  # what the welcome after the SIGTERM said
        self.last_recovered = False
        self.attempts = 0
        self.drops = 0  # connections that ended after the first one came back
        # Every time it was off the air: (connection ended, next welcome, that welcome's `recovered`).
        self.gaps: list[tuple[float, float, bool]] = []


class Listener(WSListener):
    """One connection of a user."""

    def __init__(self, user: User, resume: bool) -> None:
        self.user = user
        self.resume = resume  # ask to resume the user's session (the plain baseline may sign in fresh instead)
        self.transport: WSTransport | None = None
        self.welcomed = False
        self.serial = 0  # which of the user's welcomed connections this is
        loop = asyncio.get_running_loop()
        self.welcome: asyncio.Future[dict[str, Any]] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()
        self.code: int | None = None
        self.ended_at: float | None = None
        self.welcomed_at: float | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport
        user = self.user
        auth: dict[str, Any] = {"type": "auth", "token": user.token}
        if user.session is not None and self.resume:
            auth["resume"] = {"session": user.session, "received": user.received}
        transport.send(WSMsgType.TEXT, orjson.dumps(auth))

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT:
            payload = frame.get_payload_as_bytes()
            if self.welcomed:
                if payload.startswith(EVENT_PREFIX):
                    self.user.received += 1
                    self.user.ids.append(int(orjson.loads(payload)["id"]))
                    self.user.arrivals.append((self.serial, round(time.monotonic(), 3)))
                return
            message = orjson.loads(payload)
            if message.get("type") == "welcome":
                # Here, not where the welcome is awaited: events that follow it in the same read count already.
                self.welcomed = True
                self.welcomed_at = time.monotonic()
                user = self.user
                user.connections += 1
                self.serial = user.connections
                user.session = message["session"]
                user.last_recovered = bool(message.get("recovered"))
                if not user.last_recovered:
                    user.received = 0  # a fresh session counts from its first event
                if not self.welcome.done():
                    self.welcome.set_result(message)
            elif not self.welcome.done():
                self.welcome.set_exception(RuntimeError(f"unexpected frame {payload[:200]!r}"))
        elif kind is WSMsgType.CLOSE:
            self.code = frame.get_close_code()
            # As a browser does: answer the close and let the connection go.
            transport.send_close(WSCloseCode(self.code))
            transport.disconnect()
            self._ended()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.code is None:
            self.code = 1006
        self._ended()

    def _ended(self) -> None:
        if self.ended_at is None:
            self.ended_at = time.monotonic()
        if not self.welcome.done():
            self.welcome.set_exception(ConnectionResetError(f"closed with {self.code} before the welcome"))
        if not self.gone.done():
            self.gone.set_result(None)


class Worker:
    """The users of one process and what happened to them."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        addresses = spec["addresses"]
        secret = spec["secret"]
        first_urls = spec["first_urls"]
        self.users = [
            User(name, mint(secret, name), addresses[number % len(addresses)], first_urls[number % len(first_urls)])
            for number, name in enumerate(spec["users"])
        ]
        self.targets: list[str] = list(spec["targets"])  # where reconnects go; the orchestrator changes it
        self.refusals: dict[str, int] = {}  # failed attempts after the SIGTERM, by HTTP status, close code or error
        self.failures: list[str] = []
        self.follow_task: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.stopping = False

    async def dial(self, user: User, url: str) -> tuple[Listener | None, str]:
        """One attempt: the welcomed connection, or why there is none (HTTP status, close code or error type)."""
        listener: Listener | None = None

        def factory() -> Listener:
            nonlocal listener
            listener = Listener(user, self.spec["resume"])
            return listener

        try:
            await ws_connect(
                factory,
                url,
                websocket_handshake_timeout=HANDSHAKE_TIMEOUT_S,
                read_buffer_init_size=4096,
                local_addr=(user.address, 0),
            )
            if listener is None:
                raise ConnectionAbortedError("closed by the server during the handshake")
            await listener.welcome
        except WSHandshakeError as error:
            status = getattr(error.response, "status", None)
            return None, f"http {int(status)}" if status is not None else type(error).__name__
        except (OSError, RuntimeError, TimeoutError) as error:
            if listener is not None and listener.code is not None:
                return None, f"close {listener.code}"
            if len(self.failures) < 5:
                self.failures.append(f"{user.name}: {error!r}"[:200])
            return None, type(error).__name__
        user.listener = listener
        return listener, ""

    async def connect(self, concurrency: int) -> dict[str, Any]:
        """Every user signs in on the first instance (a few tries each, with backoff)."""
        gate = asyncio.Semaphore(concurrency)
        refused: dict[str, int] = {}
        started = time.monotonic()

        async def one(user: User) -> None:
            attempt = 0
            while True:
                async with gate:
                    listener, why = await self.dial(user, user.first_url)
                if listener is not None or attempt >= 5:
                    break
                refused[why] = refused.get(why, 0) + 1
                await asyncio.sleep(backoff_delay(attempt))
                attempt += 1

        await asyncio.gather(*(one(user) for user in self.users))
        return {
            "connected": sum(1 for user in self.users if user.listener is not None),
            "refused": refused,
            "seconds": time.monotonic() - started,
            "failures": self.failures[:5],
        }

    def follow(self) -> None:
        """From now on every user whose connection ends reconnects to the second instance with resume."""
        for user in self.users:
            if user.listener is not None:
                task = asyncio.create_task(self._follow(user))
                self.tasks.add(task)
                task.add_done_callback(self.tasks.discard)

    async def _follow(self, user: User) -> None:
        first = True
        while user.listener is not None and not self.stopping:
            old = user.listener
            await old.gone
            if self.stopping:
                return
            if first:
                user.closed_at = old.ended_at
                user.close_code = old.code
            else:
                user.drops += 1
            user.listener = None
            attempt = BUSY_MIN_ATTEMPT if old.code in BUSY_CLOSE_CODES else 0
            while not self.stopping:
                await asyncio.sleep(backoff_delay(attempt))
                attempt += 1
                user.attempts += 1
                listener, why = await self.dial(user, random.choice(self.targets))
                if listener is not None:
                    if old.ended_at is not None and listener.welcomed_at is not None:
                        user.gaps.append((old.ended_at, listener.welcomed_at, user.last_recovered))
                    if first:
                        user.back_at = listener.welcomed_at
                        user.recovered = user.last_recovered
                    break
                self.refusals[why] = self.refusals.get(why, 0) + 1
                if busy(why):
                    attempt = max(attempt, BUSY_MIN_ATTEMPT)
            first = False

    def progress(self) -> dict[str, Any]:
        back = [user.back_at for user in self.users if user.back_at is not None]
        return {
            "connected": sum(1 for user in self.users if user.listener is not None),
            "held": sum(1 for user in self.users if user.session is not None),
            "dropped": sum(1 for user in self.users if user.closed_at is not None),
            "back": len(back),
            "last_back": max(back, default=None),
            "received": sum(len(user.ids) for user in self.users),
        }

    async def finish(self) -> dict[str, Any]:
        """Stop reconnecting, close every connection, and report every user."""
        self.stopping = True
        for user in self.users:
            listener = user.listener
            if listener is not None and listener.transport is not None and not listener.transport.is_disconnected:
                listener.transport.send_close(WSCloseCode.OK)
                listener.transport.disconnect()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        times = os.times()
        return {
            "users": [
                {
                    "user": user.name,
                    "ids": user.ids,
                    "arrivals": user.arrivals,
                    "closed_at": user.closed_at,
                    "close_code": user.close_code,
                    "back_at": user.back_at,
                    "recovered": user.recovered,
                    "attempts": user.attempts,
                    "drops": user.drops,
                    "gaps": user.gaps,
                }
                for user in self.users
            ],
            "refusals": self.refusals,
            "failures": self.failures[:5],
            "cpu_s": times.user + times.system,
        }


def worker_main(conn: Any, spec: dict[str, Any]) -> None:
    """Entry point of a client process: serve the orchestrator's commands until 'exit'."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(_serve(conn, spec))


async def _serve(conn: Any, spec: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    worker = Worker(spec)
    commands: asyncio.Queue[Any] = asyncio.Queue()
    loop.add_reader(conn.fileno(), lambda: commands.put_nowait(conn.recv()))
    while True:
        command = await commands.get()
        if isinstance(command, tuple) and command[0] == "targets":
            worker.targets = list(command[1])
            conn.send(True)
        elif command == "connect":
            conn.send(await worker.connect(spec["concurrency"]))
        elif command == "follow":
            worker.follow()
            conn.send(True)
        elif command == "progress":
            conn.send(worker.progress())
        elif command == "finish":
            conn.send(await worker.finish())
        elif command == "exit":
            loop.remove_reader(conn.fileno())
            conn.send(True)
            return
