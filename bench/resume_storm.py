"""Reconnect storm with session resume: every client of one instance moves to another after its SIGTERM.

N clients hold sessions on instance A while a publisher sends each of them a numbered event stream. A gets
SIGTERM: it closes them with 1012 and keeps taking events for their parked sessions; each client reconnects to
instance B with `resume` and must get `recovered: true` and every event of its stream exactly once, in order.
Reports how long the whole move took and whether anything was lost or doubled.

    .venv/bin/python -m bench.resume_storm                 # 2,000 clients
    .venv/bin/python -m bench.resume_storm --clients 200   # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import websockets

from bench.systems import AMQP_URL, free_port
from notifier.connection.auth import mint_token

RESULTS = Path(__file__).parent / "results"
CONNECT_CONCURRENCY = 100
PUBLISH_RATE_PER_S = 400
WARM_S = 2.0
AFTER_MOVE_S = 2.0


@dataclass
class Tracked:
    """One browser-like client: its session, its count, and what it received."""

    user: str
    session: str | None = None
    received: int = 0
    numbers: list[int] = field(default_factory=list)
    closed_at: float | None = None
    welcomed_again_at: float | None = None
    recovered: bool | None = None


def start_instance(port: int, exchange: str, secret: str, log: Path) -> subprocess.Popen[bytes]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")}
    env.update(
        NOTIFIER_PORT=str(port),
        NOTIFIER_AMQP_URL=AMQP_URL,
        NOTIFIER_JWT_SECRET=secret,
        NOTIFIER_EXCHANGE=exchange,
        NOTIFIER_DEAD_LETTER_EXCHANGE=f"{exchange}.dead",
        NOTIFIER_MAX_CONNECTIONS="20000",
        NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS="20000",
        NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS="100000",
        NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS="20000",
        NOTIFIER_MAX_UNAUTHENTICATED_CONNECTIONS="20000",
        NOTIFIER_USER_SUBSCRIBES_PER_S="100000",
        NOTIFIER_USER_SUBSCRIBES_BURST="100000",
        NOTIFIER_SHUTDOWN_TIMEOUT_S="30",
        NOTIFIER_QUEUE_EXPIRES_S="30",
        NOTIFIER_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
    )
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "notifier", "serve"], env=env, stdout=out, stderr=subprocess.STDOUT
        )


async def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient() as http:
        for _ in range(400):
            if process.poll() is not None:
                raise RuntimeError(f"instance on {port} exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get(f"http://127.0.0.1:{port}/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError(f"instance on {port} not ready")


async def sign_in(url: str, client: Tracked, secret: str) -> Any:
    ws = await websockets.connect(url, max_size=None, open_timeout=30)
    auth: dict[str, Any] = {"type": "auth", "token": mint_token(secret, client.user, ttl_s=3600)}
    if client.session is not None:
        auth["resume"] = {"session": client.session, "received": client.received}
    await ws.send(orjson.dumps(auth).decode())
    welcome = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
    if welcome.get("type") != "welcome":
        raise RuntimeError(f"{client.user}: {welcome}")
    if client.session is not None:
        client.recovered = bool(welcome["recovered"])
        if not welcome["recovered"]:
            client.received = 0
    client.session = welcome["session"]
    return ws


async def follow(client: Tracked, ws: Any, second_url: str, secret: str) -> None:
    """Read events; after the 1012, resume on the second instance and read on until cancelled."""
    while True:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame["type"] == "event":
                    client.received += 1
                    client.numbers.append(frame["data"]["n"])
        except websockets.ConnectionClosed:
            pass
        if client.closed_at is not None:
            return  # the second connection ended too
        client.closed_at = time.monotonic()
        ws = await sign_in(second_url, client, secret)
        client.welcomed_again_at = time.monotonic()


async def publish(exchange: str, users: list[str], stop: asyncio.Event, sent: dict[str, int]) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        target = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        index = 0
        interval = 1 / PUBLISH_RATE_PER_S
        next_at = time.monotonic()
        while not stop.is_set():
            user = users[index % len(users)]
            index += 1
            n = sent.get(user, 0)
            body = orjson.dumps({"n": n, "pad": "x" * 120})
            await target.publish(aio_pika.Message(body, message_id=f"{user}-{n}"), routing_key=f"user.{user}")
            sent[user] = n + 1
            next_at += interval
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)


async def run(count: int, workdir: Path) -> dict[str, Any]:
    secret = secrets.token_urlsafe(32)
    exchange = f"bench-resume-{os.getpid()}"
    ports = free_port(), free_port()
    first = start_instance(ports[0], exchange, secret, workdir / "first.log")
    second = start_instance(ports[1], exchange, secret, workdir / "second.log")
    stop_publishing = asyncio.Event()
    try:
        await wait_ready(ports[0], first)
        await wait_ready(ports[1], second)
        await asyncio.sleep(2.5)  # the instances hear each other's heartbeats on the control plane
        clients = [Tracked(f"r{n}") for n in range(count)]
        gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
        first_url, second_url = (f"ws://127.0.0.1:{port}/ws" for port in ports)

        async def open_one(client: Tracked) -> Any:
            async with gate:
                return await sign_in(first_url, client, secret)

        started = time.monotonic()
        sockets = await asyncio.gather(*(open_one(client) for client in clients))
        connect_s = time.monotonic() - started
        sent: dict[str, int] = {}
        readers = [
            asyncio.create_task(follow(client, ws, second_url, secret))
            for client, ws in zip(clients, sockets, strict=True)
        ]
        publisher = asyncio.create_task(publish(exchange, [client.user for client in clients], stop_publishing, sent))
        await asyncio.sleep(WARM_S)

        sigterm_at = time.monotonic()
        first.send_signal(signal.SIGTERM)
        deadline = sigterm_at + 60
        while any(client.welcomed_again_at is None for client in clients) and time.monotonic() < deadline:
            if any(task.done() and task.exception() for task in readers):
                break
            await asyncio.sleep(0.05)
        all_moved_s = max((c.welcomed_again_at or deadline) for c in clients) - sigterm_at
        await asyncio.sleep(AFTER_MOVE_S)
        stop_publishing.set()
        await publisher
        # Let the last events arrive, then stop reading.
        settle_until = time.monotonic() + 10
        while time.monotonic() < settle_until and any(len(c.numbers) < sent.get(c.user, 0) for c in clients):
            await asyncio.sleep(0.1)
        failures = [repr(task.exception()) for task in readers if task.done() and task.exception()]
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        first_exit = first.wait(40)
        first_stop_s = time.monotonic() - sigterm_at
    finally:
        for process in (first, second):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in (first, second):
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(40)
        await delete_exchange(exchange)

    gaps = sorted((c.welcomed_again_at - c.closed_at) * 1000 for c in clients if c.welcomed_again_at and c.closed_at)
    missing = sum(max(0, sent.get(c.user, 0) - len(set(c.numbers))) for c in clients)
    doubled = sum(len(c.numbers) - len(set(c.numbers)) for c in clients)
    out_of_order = sum(1 for c in clients if c.numbers != sorted(c.numbers))
    return {
        "clients": count,
        "connect_s": round(connect_s, 2),
        "moved": sum(1 for c in clients if c.welcomed_again_at is not None),
        "recovered_true": sum(1 for c in clients if c.recovered is True),
        "recovered_false": sum(1 for c in clients if c.recovered is False),
        "sigterm_to_all_resumed_s": round(all_moved_s, 2),
        "reconnect_gap_ms_p50": round(statistics.median(gaps), 1) if gaps else None,
        "reconnect_gap_ms_p99": round(gaps[int(len(gaps) * 0.99) - 1 if len(gaps) > 1 else 0], 1) if gaps else None,
        "events_published": sum(sent.values()),
        "events_received": sum(len(c.numbers) for c in clients),
        "missing": missing,
        "doubled": doubled,
        "clients_out_of_order": out_of_order,
        "first_instance_exit_code": first_exit,
        "first_instance_stop_s": round(first_stop_s, 2),
        "reader_failures": failures[:5],
    }


async def delete_exchange(exchange: str) -> None:
    connection = await aio_pika.connect(AMQP_URL)
    async with connection:
        channel = await connection.channel()
        for name in (exchange, f"{exchange}.control", f"{exchange}.dead"):
            await channel.exchange_delete(name)
        await channel.queue_delete(f"{exchange}.dead")


def report(result: dict[str, Any]) -> str:
    rows = "\n".join(f"| {key} | {value} |" for key, value in result.items() if key != "machine")
    return (
        "# Reconnect storm with resume\n\n"
        f"{result['clients']} clients of instance A, each on its own numbered stream ({PUBLISH_RATE_PER_S} events/s"
        " in all), SIGTERM to A; every client resumes on instance B.\n\n"
        f"Machine: {result['machine']}\n\n| measure | value |\n|---|---|\n{rows}\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resume_storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=2000, help="clients that move (default 2000)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="where resume_storm.{md,json} go")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    workdir = args.out / "resume_storm_logs"
    workdir.mkdir(exist_ok=True)
    result = asyncio.run(run(args.clients, workdir))
    result["machine"] = f"{platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    (args.out / "resume_storm.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "resume_storm.md").write_text(report(result))
    print(report(result))
    ok = result["recovered_true"] == result["clients"] and not result["missing"] and not result["doubled"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
