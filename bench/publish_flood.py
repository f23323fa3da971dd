"""Maximal publish batches at once: the memory a `notifier serve` process takes for N concurrent
`POST /api/publish` bodies built to parse into as many objects as possible, and what a WebSocket client's ping
round trip is meanwhile.

Each body is one batch of 63 events whose `data` is a 64 KiB array of empty arrays (about 3.9 MiB in all, just
under NOTIFIER_MAX_PUBLISH_BODY_BYTES): parsed, each `[]` is a Python list. For each N a fresh instance is
started; N such requests are sent at once while a signed-in WebSocket client, in a process of its own, sends
a `ping` frame every 75 ms (within its frame budget) and waits for its `pong`. Reports the answers by status,
the process's peak RSS (VmHWM) and its RSS a second after the last answer (and those of the process that
parses large bodies), and the ping round trips during the requests (median, 99th percentile, max).

    .venv/bin/python -m bench.publish_flood               # N = 1, 10, 30
    .venv/bin/python -m bench.publish_flood --counts 30
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import websockets

from bench.systems import AMQP_URL, free_port
from notifier.connection.auth import mint_token

SECRET = "bench-secret-that-is-long-enough-for-hs256!"
API_KEY = "bench-api-key-0123456789"
EVENTS = 63
EVENT_BYTES = 64 * 1024
PING_EVERY_S = 0.075


def maximal_body() -> bytes:
    data = b"[" + b"[]," * ((EVENT_BYTES - 4) // 3) + b"[]]"
    events = b",".join(b'{"topic":"bench.flood","data":' + data + b"}" for _ in range(EVENTS))
    return b'{"events":[' + events + b"]}"


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def children_of(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(child) for child in (task / "children").read_text().split()]
    return found


async def wait_ready(url: str, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=2) as http:
        for _ in range(600):
            if process.poll() is not None:
                raise RuntimeError("notifier exited during start-up")
            with contextlib.suppress(httpx.TransportError):
                if (await http.get("/readyz")).status_code == 200:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("notifier not ready")


async def run_once(count: int, body: bytes, log_dir: Path) -> dict[str, Any]:
    port = free_port()
    exchange = f"bench-flood-{uuid.uuid4().hex[:8]}"
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")}
    env |= {
        "NOTIFIER_HOST": "127.0.0.1",
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_AMQP_URL": AMQP_URL,
        "NOTIFIER_EXCHANGE": exchange,
        "NOTIFIER_DEAD_LETTER_EXCHANGE": f"{exchange}.dead",
        "NOTIFIER_JWT_SECRET": SECRET,
        "NOTIFIER_API_KEYS": API_KEY,
        "NOTIFIER_QUEUE_EXPIRES_S": "5",
    }
    log = (log_dir / f"flood-{count}.log").open("wb")
    process = subprocess.Popen([sys.executable, "-m", "notifier", "serve"], env=env, stderr=log, stdout=log)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_ready(url, process)
        rss_before = status_kib(process.pid, "VmRSS")
        # The pinger is a process of its own, so what it measures is the server, not this process sending.
        pinger = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "bench.publish_flood", "--pinger", str(port), stdout=asyncio.subprocess.PIPE
        )
        assert pinger.stdout is not None
        assert (await pinger.stdout.readline()).strip() == b"ready"
        headers = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}
        limits = httpx.Limits(max_connections=count)
        async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:
            started_at = time.perf_counter()
            answers = await asyncio.gather(
                *(http.post("/api/publish", content=body, headers=headers) for _ in range(count)),
                return_exceptions=True,
            )
            elapsed = time.perf_counter() - started_at
        pinger.send_signal(signal.SIGINT)
        during = json.loads(await pinger.stdout.read())
        await pinger.wait()
        await asyncio.sleep(1)
        children = children_of(process.pid)  # the process that parses large bodies, once started
        statuses = Counter(
            answer.status_code if isinstance(answer, httpx.Response) else type(answer).__name__ for answer in answers
        )
        retry_after = {
            answer.headers.get("retry-after") for answer in answers if isinstance(answer, httpx.Response)
        } - {None}
        return {
            "concurrent": count,
            "statuses": dict(statuses),
            "retry_after": sorted(retry_after),
            "seconds": round(elapsed, 2),
            "rss_before_mib": round(rss_before / 1024, 1),
            "peak_rss_mib": round(status_kib(process.pid, "VmHWM") / 1024, 1),
            "rss_after_mib": round(status_kib(process.pid, "VmRSS") / 1024, 1),
            "parse_process_peak_rss_mib": round(sum(status_kib(child, "VmHWM") for child in children) / 1024, 1),
            "parse_process_rss_after_mib": round(sum(status_kib(child, "VmRSS") for child in children) / 1024, 1),
            "ping_ms_p99": round(1000 * sorted(during)[int(len(during) * 0.99)], 1) if during else None,
            "ping_ms_median": round(1000 * statistics.median(during), 1) if during else None,
            "ping_ms_max": round(1000 * max(during), 1) if during else None,
            "pings": len(during),
        }
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(15)
        if process.poll() is None:
            process.kill()
        log.close()


async def ping_until_interrupted(port: int) -> None:
    """Sign in, say "ready", then `ping` every PING_EVERY_S until SIGINT; print the round trips (s) as JSON."""
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws", open_timeout=5, ping_interval=None)
    await ws.send(json.dumps({"type": "auth", "token": mint_token(SECRET, "bench")}))
    assert json.loads(await ws.recv())["type"] == "welcome"
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    print("ready", flush=True)
    rtts: list[float] = []
    number = 0
    while not stop.is_set():
        number += 1
        started = time.perf_counter()
        await ws.send(json.dumps({"type": "ping", "id": number}))
        pong = json.loads(await asyncio.wait_for(ws.recv(), 60))
        assert pong == {"type": "pong", "id": number}, str(pong)[:200]
        rtts.append(time.perf_counter() - started)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), PING_EVERY_S)
    await ws.close()
    print(json.dumps(rtts), flush=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--counts", default="1,10,30", help="concurrent requests per run, comma-separated")
    parser.add_argument("--logs", default="/tmp", help="where the instances' logs go")
    parser.add_argument("--pinger", type=int, help=argparse.SUPPRESS)  # the pinging child, on this port
    args = parser.parse_args()
    if args.pinger:
        await ping_until_interrupted(args.pinger)
        return
    body = maximal_body()
    print(f"body: {len(body) / 2**20:.2f} MiB, {EVENTS} events", flush=True)
    for count in (int(part) for part in args.counts.split(",")):
        print(json.dumps(await run_once(count, body, Path(args.logs))), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
