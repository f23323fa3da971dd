"""Connect storm through the connect proxy: N distinct users connect at once with a JWT (the baseline), then N
other users connect at once with only a session cookie, which notifier hands to a real application server (a
small ASGI app under uvicorn in its own process, answering from the cookie) to learn who they are. Same notifier
process, same run. Writes bench/results/proxy_storm.{md,json}.

    .venv/bin/python -m bench.proxy_storm                    # 10,000 users per phase
    .venv/bin/python -m bench.proxy_storm --clients 2000     # smaller
    .venv/bin/python -m bench.proxy_storm --smoke            # 200 users, seconds

Goals (issue 24): every cookie client welcomed (no refusal), at no worse than half the JWT phase's connect rate,
and the application never sees more than NOTIFIER_CONNECT_PROXY_CONCURRENCY requests at once.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import secrets
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import orjson
from picows import WSCloseCode, WSListener, WSMsgType, WSTransport, ws_connect

from bench.clients import mint
from bench.run import RESULTS_DIR, cleanup_amqp
from bench.systems import AMQP_URL

ROOT = Path(__file__).resolve().parent.parent
CLIENT_PROCESSES = 2
DIALS_AT_ONCE_PER_PROCESS = 500


# The application: who a cookie `session=<user>` is. Run as `python -m bench.proxy_storm app --port P`.


class CookieApplication:
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s
        self.in_flight = 0
        self.max_in_flight = 0
        self.requests = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/stats":
            payload = orjson.dumps(
                {"requests": self.requests, "max_in_flight": self.max_in_flight, "in_flight": self.in_flight}
            )
            if scope["method"] == "DELETE":
                self.requests = self.max_in_flight = 0
            status = 200
        else:
            self.requests += 1
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                try:  # a request notifier gave up on mid-way arrives without its body
                    cookie = orjson.loads(body)["headers"].get("cookie", "")
                except (orjson.JSONDecodeError, KeyError, TypeError):
                    cookie = ""
                user = dict(part.strip().partition("=")[::2] for part in cookie.split(";")).get("session")
            finally:
                self.in_flight -= 1
            if user:
                status, payload = 200, orjson.dumps({"user": user, "topics": ["news.#"], "expires_in": 3600})
            else:
                status, payload = 401, b'{"error": "not signed in"}'
        headers = [(b"content-type", b"application/json")]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": payload})


def serve_application(port: int, delay_s: float) -> None:
    import uvicorn

    uvicorn.run(CookieApplication(delay_s), host="127.0.0.1", port=port, log_level="warning", lifespan="off")


# Clients.


class Listener(WSListener):
    def __init__(self, auth: bytes | None) -> None:
        self.auth = auth
        self.done: asyncio.Future[int] = asyncio.get_running_loop().create_future()  # 0 welcomed, else a code

    def on_ws_connected(self, transport: WSTransport) -> None:
        if self.auth is not None:
            transport.send(WSMsgType.TEXT, self.auth)

    def on_ws_frame(self, transport: WSTransport, frame: Any) -> None:
        if frame.msg_type is WSMsgType.TEXT and not self.done.done():
            kind = orjson.loads(frame.get_payload_as_bytes()).get("type")
            self.done.set_result(0 if kind == "welcome" else -2)
        elif frame.msg_type is WSMsgType.CLOSE:
            if not self.done.done():
                self.done.set_result(frame.get_close_code())
            transport.send_close(WSCloseCode(frame.get_close_code()))
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.done.done():
            self.done.set_result(-1)


async def storm(url: str, mode: str, users: list[str], secret: str, hold: Any) -> dict[str, Any]:
    gate = asyncio.Semaphore(DIALS_AT_ONCE_PER_PROCESS)
    transports: list[WSTransport] = []
    codes: dict[str, int] = {}
    tokens = [mint(secret, user) for user in users] if mode == "jwt" else []

    async def one(number: int, user: str) -> None:
        async with gate:
            listener: Listener | None = None

            def factory() -> Listener:
                nonlocal listener
                listener = Listener(None if mode == "jwt" else b'{"type":"auth"}')
                return listener

            target = f"{url}?token={tokens[number]}" if mode == "jwt" else url
            headers = None if mode == "jwt" else {"Cookie": f"theme=dark; session={user}"}
            try:
                transport, _ = await ws_connect(factory, target, extra_headers=headers, websocket_handshake_timeout=60)
                assert listener is not None
                code = await asyncio.wait_for(listener.done, 60)
            except (OSError, TimeoutError, RuntimeError, AssertionError) as error:
                codes[type(error).__name__] = codes.get(type(error).__name__, 0) + 1
                return
        if code == 0:
            transports.append(transport)
        else:
            codes[str(code)] = codes.get(str(code), 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one(number, user) for number, user in enumerate(users)))
    seconds = time.perf_counter() - started
    hold.send({"welcomed": len(transports), "codes": codes, "seconds": seconds})
    hold.recv()  # every process has finished: leave together
    for transport in transports:
        transport.send_close(WSCloseCode.OK)
        transport.disconnect()
    await asyncio.sleep(0.5)
    return {}


def client_main(url: str, mode: str, users: list[str], secret: str, conn: Any) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    asyncio.run(storm(url, mode, users, secret, conn))


def phase(url: str, mode: str, prefix: str, clients: int, secret: str) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    shares = [list(range(index, clients, CLIENT_PROCESSES)) for index in range(CLIENT_PROCESSES)]
    children = []
    for share in shares:
        mine, theirs = context.Pipe()
        process = context.Process(
            target=client_main, args=(url, mode, [f"{prefix}{n}" for n in share], secret, theirs), daemon=True
        )
        process.start()
        children.append((process, mine))
    parts = [conn.recv() for _, conn in children]
    for process, conn in children:
        conn.send("leave")
        process.join(60)
    codes: dict[str, int] = {}
    for part in parts:
        for code, count in part["codes"].items():
            codes[code] = codes.get(code, 0) + count
    seconds = max(part["seconds"] for part in parts)
    welcomed = sum(part["welcomed"] for part in parts)
    return {"clients": clients, "welcomed": welcomed, "refused": codes, "seconds": seconds, "rate": welcomed / seconds}


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_http(url: str, deadline_s: float = 30) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def application_stats(base: str, reset: bool = False) -> dict[str, Any]:
    request = urllib.request.Request(f"{base}/stats", method="DELETE" if reset else "GET")
    with urllib.request.urlopen(request, timeout=5) as answer:
        stats: dict[str, Any] = json.loads(answer.read())
    return stats


def raised_nofile() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", nargs="?", default="run", choices=["run", "app"])
    parser.add_argument("--clients", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=64, help="NOTIFIER_CONNECT_PROXY_CONCURRENCY")
    parser.add_argument("--app-delay-ms", type=float, default=2.0, help="the application's own time per answer")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args()
    if args.what == "app":
        serve_application(args.port, args.app_delay_ms / 1000)
        return
    clients = 200 if args.smoke else args.clients
    secret = secrets.token_urlsafe(32)
    exchange = f"bench.proxy.{secrets.token_hex(4)}"
    app_port, port = free_port(), free_port()
    app_base = f"http://127.0.0.1:{app_port}"
    application = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.proxy_storm",
            "app",
            "--port",
            str(app_port),
            "--app-delay-ms",
            str(args.app_delay_ms),
        ],
        cwd=ROOT,
        preexec_fn=raised_nofile,
    )
    env = {
        **os.environ,
        "NOTIFIER_PORT": str(port),
        "NOTIFIER_AMQP_URL": AMQP_URL,
        "NOTIFIER_JWT_SECRET": secret,
        "NOTIFIER_EXCHANGE": exchange,
        "NOTIFIER_DEAD_LETTER_EXCHANGE": f"{exchange}.dead",
        "NOTIFIER_CONNECT_PROXY_URL": f"{app_base}/connect",
        "NOTIFIER_CONNECT_PROXY_CONCURRENCY": str(args.concurrency),
        "NOTIFIER_CONNECT_PROXY_TIMEOUT_S": "10",
        "NOTIFIER_MAX_CONNECTIONS": "30000",
        "NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS": "30000",
        "NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS": "100000",
        "NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS": "30000",
        "NOTIFIER_MAX_UNAUTHENTICATED_CONNECTIONS": "30000",
        "NOTIFIER_AUTH_TIMEOUT_S": "60",
        "NOTIFIER_QUEUE_EXPIRES_S": "30",
        "NOTIFIER_LOG_LEVEL": "warning",
    }
    notifier = subprocess.Popen(
        [sys.executable, "-m", "notifier", "serve"], cwd=ROOT, env=env, preexec_fn=raised_nofile
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/readyz")
        wait_http(f"{app_base}/stats")
        url = f"ws://127.0.0.1:{port}/ws"
        print(f"JWT phase: {clients} users at once", flush=True)
        jwt_phase = phase(url, "jwt", "j", clients, secret)
        print(json.dumps(jwt_phase), flush=True)
        time.sleep(3)
        application_stats(app_base, reset=True)
        print(f"cookie phase: {clients} users at once through the connect proxy", flush=True)
        cookie_phase = phase(url, "cookie", "c", clients, secret)
        cookie_phase["application"] = application_stats(app_base)
        print(json.dumps(cookie_phase), flush=True)
    finally:
        notifier.terminate()
        application.terminate()
        notifier.wait(30)
        application.wait(30)
        cleanup_amqp(exchange, [])
    ratio = cookie_phase["rate"] / jwt_phase["rate"]
    goals = {
        "every cookie client welcomed": cookie_phase["welcomed"] == clients,
        "cookie rate at least half the JWT rate": ratio >= 0.5,
        "application concurrency within the cap": cookie_phase["application"]["max_in_flight"] <= args.concurrency,
    }
    report = {
        "clients": clients,
        "concurrency": args.concurrency,
        "app_delay_ms": args.app_delay_ms,
        "cpus": os.cpu_count(),
        "jwt": jwt_phase,
        "cookie": cookie_phase,
        "rate_ratio": ratio,
        "goals": goals,
    }
    out: Path = args.out / "smoke" if args.smoke and args.out == RESULTS_DIR else args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "proxy_storm.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        f"# Connect storm through the connect proxy, {clients:,} users per phase",
        "",
        f"One notifier process on RabbitMQ, the application a uvicorn process answering from the cookie in "
        f"{args.app_delay_ms:g} ms, NOTIFIER_CONNECT_PROXY_CONCURRENCY={args.concurrency}, {CLIENT_PROCESSES} "
        f"client processes dialing {DIALS_AT_ONCE_PER_PROCESS} at a time each; {os.cpu_count()} cores shared by all.",
        "",
        "| phase | welcomed | not welcomed | seconds | connects/s |",
        "|---|---|---|---|---|",
        f"| JWT (`?token=`) | {jwt_phase['welcomed']:,} | {jwt_phase['refused'] or 'none'} | "
        f"{jwt_phase['seconds']:.1f} | {jwt_phase['rate']:.0f} |",
        f"| cookie (connect proxy) | {cookie_phase['welcomed']:,} | {cookie_phase['refused'] or 'none'} | "
        f"{cookie_phase['seconds']:.1f} | {cookie_phase['rate']:.0f} |",
        "",
        f"Cookie rate / JWT rate: {ratio:.2f}. The application served {cookie_phase['application']['requests']:,} "
        f"requests, at most {cookie_phase['application']['max_in_flight']} at once.",
        "",
        "| goal | met |",
        "|---|---|",
        *(f"| {goal} | {'yes' if met else 'NO'} |" for goal, met in goals.items()),
        "",
    ]
    (out / "proxy_storm.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
