"""A RabbitMQ node lost under a steady feed, measured: two notifier instances on the 3-node cluster of .ci/cluster,
resuming browsers on each, a confirmed feed; for each queue type (classic, quorum) and each fault of node c1
(killed, app stopped, frozen) it reports what was confirmed, lost, told, how long routing took to come back and
the longest delivery delay. Writes bench/results/cluster.{md,json}.

Instance A lists the nodes c1,c2,c3 (its connection and its queue start on c1, the node hit), B lists c2,c3,c1;
the feed publishes through c3,c2,c1 with publisher confirms. Every trial gets fresh instances and a fresh exchange.
The cluster is left with every node running (`.ci/cluster start`) after each trial and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import websockets

from bench.systems import free_port
from notifier.broker.failover import NodeAddresses, connect_to_any
from notifier.connection.auth import mint_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(__file__).resolve().parent / "results"
CLUSTER_CTL = ROOT / ".ci" / "cluster"
CLUSTER_DIR = os.environ.get("NOTIFIER_CLUSTER_DIR", "/tmp/notifier-cluster")
NODES = ("c1", "c2", "c3")
AMQP_BASE_PORT = int(os.environ.get("CLUSTER_AMQP_BASE_PORT", "5701"))
SECRET = "bench-cluster-secret-long-enough-for-hs256"
QUEUE_TYPES = ("classic", "quorum")
# fault name: (.ci/cluster command that starts it, the one that ends it, default seconds between them)
FAULTS: dict[str, tuple[str, str, float]] = {
    "kill": ("kill-node", "start-node", 15.0),  # a crash: kill -9 of the node, started again
    "stop_app": ("stop-app", "start-app", 15.0),  # a RabbitMQ restart or upgrade: connections closed with 320
    "freeze": ("freeze-node", "thaw-node", 4.0),  # a stall (GC, disk) shorter than failure detection
}
ROUTING_EVENTS = ("routing_lost", "routing_restored", "broker_queue_replaced", "routing_gap_told")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def node_url(node: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:{AMQP_BASE_PORT + NODES.index(node)}/"


def urls_from(*nodes: str) -> str:
    return ",".join(node_url(node) for node in nodes)


def ctl(command: str, *args: str, timeout: float = 180) -> str:
    """One `.ci/cluster` command; raises with its output when it fails."""
    result = subprocess.run(
        [str(CLUSTER_CTL), command, *args, CLUSTER_DIR], capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f".ci/cluster {command} {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


class Instance:
    """One `notifier serve` process; its log lines (JSON) are read as they come, each stamped with its arrival."""

    def __init__(self, name: str, nodes: tuple[str, ...], exchange: str, queue_type: str) -> None:
        self.name = name
        self.port = free_port()
        self.lines: list[tuple[float, dict[str, Any]]] = []
        env = dict(os.environ)
        env.update(
            {
                "NOTIFIER_PORT": str(self.port),
                "NOTIFIER_AMQP_URL": urls_from(*nodes),
                "NOTIFIER_JWT_SECRET": SECRET,
                "NOTIFIER_EXCHANGE": exchange,
                "NOTIFIER_DEAD_LETTER_EXCHANGE": f"{exchange}.dead",
                "NOTIFIER_INSTANCE_ID": f"{name}-{uuid.uuid4().hex[:6]}",
                "NOTIFIER_QUEUE_TYPE": queue_type,
                "NOTIFIER_QUEUE_EXPIRES_S": "30",
                "NOTIFIER_BROKER_TIMEOUT_S": "3",
                "NOTIFIER_LOG_FORMAT": "json",
                "NOTIFIER_LOG_LEVEL": "info",
                "NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS": "20000",
                "NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS": "100000",
                "NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS": "20000",
            }
        )
        self.process = subprocess.Popen(
            [sys.executable, "-m", "notifier", "serve"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            cwd=ROOT,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            try:
                line = orjson.loads(raw)
            except orjson.JSONDecodeError:
                line = {"event": "text", "text": raw.decode(errors="replace").rstrip()[:500]}
            if isinstance(line, dict):
                self.lines.append((time.time(), line))

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/readyz"

    async def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient(timeout=2) as http:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"instance {self.name} exited: {self.lines[-5:]}")
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(self.ready_url)).status_code == 200:
                        return
                await asyncio.sleep(0.2)
        raise RuntimeError(f"instance {self.name} not ready within {timeout_s} s: {self.lines[-5:]}")

    def events(self, *names: str) -> list[tuple[float, dict[str, Any]]]:
        return [(at, line) for at, line in self.lines if line.get("event") in names]

    def stop(self) -> None:
        """SIGTERM to this process (by its pid), SIGKILL if it has not exited within 15 s."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(5)
        self._reader.join(5)


@dataclass
class Browser:
    """One user's page: reconnects after a drop and resumes with the count of event frames received, as
    notifier.js does. Keeps each event's arrival; `told` counts `resync` frames and resumes answered
    `recovered: false`."""

    url: str
    user: str
    arrivals: dict[int, float] = field(default_factory=dict)  # seq -> first arrival (time.time())
    stamps: dict[int, float] = field(default_factory=dict)  # seq -> publish stamp carried by the event
    duplicates: int = 0
    told: int = 0
    told_at: list[float] = field(default_factory=list)
    connections: int = 0
    welcomed: asyncio.Event = field(default_factory=asyncio.Event)
    session: str | None = None
    received: int = 0
    stopping: bool = False

    async def run(self) -> None:
        token = mint_token(SECRET, self.user)
        while not self.stopping:
            try:
                async with websockets.connect(self.url, open_timeout=10) as ws:
                    self.connections += 1
                    await self._serve(ws, token)
            except (OSError, websockets.WebSocketException, TimeoutError):
                pass
            if not self.stopping:
                await asyncio.sleep(0.5)

    async def _serve(self, ws: websockets.ClientConnection, token: str) -> None:
        auth: dict[str, Any] = {"type": "auth", "token": token}
        asked = self.session is not None
        if asked:
            auth["resume"] = {"session": self.session, "received": self.received}
        await ws.send(orjson.dumps(auth).decode())
        async for raw in ws:
            now = time.time()
            frame = orjson.loads(raw)
            kind = frame.get("type")
            if kind == "event":
                self.received += 1
                seq = int(frame["data"]["seq"])
                if seq in self.arrivals:
                    self.duplicates += 1
                else:
                    self.arrivals[seq] = now
                    self.stamps[seq] = float(frame["data"]["t"])
            elif kind == "welcome":
                self.session = frame.get("session")
                if asked and not frame.get("recovered"):
                    self.told += 1
                    self.told_at.append(now)
                    self.received = 0
                self.welcomed.set()
            elif kind == "resync":
                self.told += 1
                self.told_at.append(now)


class Feed:
    """A backend: one event per user per tick to `user.<id>`, persistent, with publisher confirms, through the
    nodes given (the next on each reconnect). Keeps the seqs RabbitMQ confirmed, per user, and their stamps."""

    def __init__(self, amqp_urls: str, exchange: str, users: list[str], tick_s: float) -> None:
        self._urls = amqp_urls.split(",")
        self._exchange = exchange
        self._users = users
        self._tick_s = tick_s
        self.confirmed: dict[str, list[int]] = {user: [] for user in users}
        self.sent_at: dict[int, float] = {}
        self.unconfirmed = 0
        self.seq = 0
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        connection = await connect_to_any(
            NodeAddresses(self._urls, reconnect_interval=0.5, heartbeat=3),
            timeout=5,
            client_properties={"connection_name": "bench cluster feed"},
        )
        async with connection:
            channel = await connection.channel(publisher_confirms=True)
            exchange = await channel.declare_exchange(self._exchange, aio_pika.ExchangeType.TOPIC, durable=True)
            while not self._stopping.is_set():
                started = time.monotonic()
                self.seq += 1
                stamp = time.time()
                self.sent_at[self.seq] = stamp
                await asyncio.gather(*(self._publish(exchange, user, self.seq, stamp) for user in self._users))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), max(0.0, self._tick_s - (time.monotonic() - started)))

    async def _publish(self, exchange: aio_pika.abc.AbstractExchange, user: str, seq: int, stamp: float) -> None:
        message = aio_pika.Message(
            orjson.dumps({"seq": seq, "t": stamp}),
            message_id=f"{user}-{seq}",
            delivery_mode=aio_pika.DeliveryMode.PERSISTENT,
        )
        try:
            await exchange.publish(message, routing_key=f"user.{user}", timeout=10)
        except (aio_pika.exceptions.AMQPError, ConnectionError, RuntimeError, TimeoutError):
            self.unconfirmed += 1  # not confirmed: a backend would retry it; not counted as published
            return
        self.confirmed[user].append(seq)

    def stop(self) -> None:
        self._stopping.set()


async def poll_ready(instance: Instance, samples: list[tuple[float, bool]], stop: asyncio.Event) -> None:
    """GET /readyz every 0.25 s until `stop`."""
    async with httpx.AsyncClient(timeout=1) as http:
        while not stop.is_set():
            try:
                ok = (await http.get(instance.ready_url)).status_code == 200
            except httpx.HTTPError:
                ok = False
            samples.append((time.time(), ok))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.25)


def not_ready_s(samples: list[tuple[float, bool]]) -> float:
    """Seconds /readyz did not answer 200 (sum of the intervals that started with a failed poll)."""
    total = 0.0
    for (at, ok), (next_at, _) in itertools.pairwise(samples):
        if not ok:
            total += next_at - at
    return round(total, 2)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def in_thread(step: Callable[[], object]) -> None:
    await asyncio.to_thread(step)


async def trial(
    queue_type: str, fault: str, users: int, tick_s: float, down_s: float | None, keep_logs: Path | None
) -> dict[str, Any]:
    """Fresh instances A and B and their browsers under the feed; `fault` on c1; then wait until every confirmed
    event arrived or its user was told (at most 45 s)."""
    start_cmd, end_cmd, default_down_s = FAULTS[fault]
    down = default_down_s if down_s is None else down_s
    exchange = f"bench-cl-{uuid.uuid4().hex[:8]}"
    a = Instance("A", ("c1", "c2", "c3"), exchange, queue_type)
    b = Instance("B", ("c2", "c3", "c1"), exchange, queue_type)
    tasks: list[asyncio.Task[None]] = []
    browsers: list[Browser] = []
    stop_polling = asyncio.Event()
    ready: dict[str, list[tuple[float, bool]]] = {"A": [], "B": []}
    try:
        await asyncio.gather(a.wait_ready(), b.wait_ready())
        for instance, prefix in ((a, "a"), (b, "b")):
            for index in range(users):
                browser = Browser(instance.ws_url, f"{prefix}{index}-{exchange[-8:]}")
                browsers.append(browser)
                tasks.append(asyncio.create_task(browser.run()))
        await asyncio.wait_for(asyncio.gather(*(browser.welcomed.wait() for browser in browsers)), 60)
        pollers = [asyncio.create_task(poll_ready(inst, ready[inst.name], stop_polling)) for inst in (a, b)]
        feed = Feed(urls_from("c3", "c2", "c1"), exchange, [browser.user for browser in browsers], tick_s)
        feeding = asyncio.create_task(feed.run())
        tasks += [*pollers, feeding]  # cancelled on the way out if the trial fails
        await asyncio.sleep(5.0)  # steady state
        fault_at = time.time()
        log(f"  {queue_type} {fault}: {start_cmd} c1, {end_cmd} after {down:g} s")
        await in_thread(lambda: ctl(start_cmd, "c1"))
        await asyncio.sleep(down)
        ended_at = time.time()
        await in_thread(lambda: ctl(end_cmd, "c1"))
        back_at = time.time()
        await asyncio.sleep(10.0)  # the feed goes on after the node is back
        feed.stop()
        await feeding
        feed_stopped_at = time.time()

        def missing(browser: Browser) -> list[int]:
            return [seq for seq in feed.confirmed[browser.user] if seq not in browser.arrivals]

        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            if all(not missing(browser) or browser.told for browser in browsers):
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # stragglers
        settled_at = time.time()
        # A ready again without a restart: /readyz answers 200 within 30 s of the node's return (it may already).
        a_ready_again_s: float | None = None
        async with httpx.AsyncClient(timeout=1) as http:
            while time.time() < back_at + 30:
                with contextlib.suppress(httpx.HTTPError):
                    if (await http.get(a.ready_url)).status_code == 200:
                        a_ready_again_s = 0.0
                        break
                await asyncio.sleep(0.5)
        stop_polling.set()
        await asyncio.gather(*pollers)
        if a_ready_again_s is not None:
            # first poll after which /readyz stayed 200
            last_bad = max((at for at, ok in ready["A"] if not ok), default=None)
            a_ready_again_s = round(max(0.0, last_bad - ended_at), 2) if last_bad is not None else 0.0
    finally:
        stop_polling.set()
        for browser in browsers:
            browser.stopping = True
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        a.stop()
        b.stop()

    confirmed = sum(len(seqs) for seqs in feed.confirmed.values())
    lost = {browser.user: missing(browser) for browser in browsers}
    delays = [browser.arrivals[seq] - browser.stamps[seq] for browser in browsers for seq in browser.arrivals]
    steady = [
        browser.arrivals[seq] - browser.stamps[seq]
        for browser in browsers
        for seq in browser.arrivals
        if browser.stamps[seq] < fault_at
    ]
    restored: list[dict[str, Any]] = [
        {
            "instance": inst.name,
            "gap_s": line.get("gap_s"),
            "events_may_be_lost": line.get("events_may_be_lost"),
            "node": line.get("node"),
            "after_fault_s": round(at - fault_at, 2),
        }
        for inst in (a, b)
        for at, line in inst.events("routing_restored")
    ]
    routing_lines = [
        {"instance": inst.name, "at_s": round(at - fault_at, 2), **line}
        for inst in (a, b)
        for at, line in inst.events(*ROUTING_EVENTS)
    ]
    a_gaps = [item["gap_s"] for item in restored if item["instance"] == "A" and item["gap_s"] is not None]
    on = {
        "A": [br for br in browsers if br.user.startswith("a")],
        "B": [br for br in browsers if br.user.startswith("b")],
    }
    result: dict[str, Any] = {
        "queue_type": queue_type,
        "fault": fault,
        "fault_s": down,
        "node_back_after_s": round(back_at - fault_at, 2),
        "users": len(browsers),
        "events_confirmed": confirmed,
        "events_unconfirmed": feed.unconfirmed,
        "events_lost": sum(map(len, lost.values())),
        "events_lost_by_instance": {name: sum(len(lost[br.user]) for br in group) for name, group in on.items()},
        "duplicates": sum(browser.duplicates for browser in browsers),
        "users_told": sum(1 for browser in browsers if browser.told),
        "users_told_by_instance": {name: sum(1 for br in group if br.told) for name, group in on.items()},
        "users_lost_untold": sum(1 for browser in browsers if lost[browser.user] and not browser.told),
        "routing_restored": restored,
        "routing_gap_s": max(a_gaps) if a_gaps else None,
        "routing_restored_after_fault_s": max(
            (float(item["after_fault_s"]) for item in restored if item["instance"] == "A"), default=None
        ),
        "delay_max_s": round(max(delays), 3) if delays else None,
        "delay_max_s_by_instance": {
            name: round(max((br.arrivals[seq] - br.stamps[seq] for br in group for seq in br.arrivals), default=0), 3)
            for name, group in on.items()
        },
        "delay_p99_s": round(percentile(delays, 0.99), 3),
        "steady_delay_p99_s": round(percentile(steady, 0.99), 3),
        "steady_delay_max_s": round(max(steady), 3) if steady else None,
        "a_not_ready_s": not_ready_s(ready["A"]),
        "b_not_ready_s": not_ready_s(ready["B"]),
        "a_ready_again": a_ready_again_s is not None,
        "a_ready_again_after_fault_end_s": a_ready_again_s,
        "a_exit_code": a.process.returncode,
        "settle_s": round(settled_at - feed_stopped_at, 1),
        "reconnects": sum(browser.connections - 1 for browser in browsers),
        # Routing lines before the fault: something else hit the cluster (the row is marked in the report).
        "routing_events_before_fault": sum(1 for item in routing_lines if item["at_s"] < 0),
        "routing_log": routing_lines[:20],
    }
    if keep_logs is not None:
        keep_logs.mkdir(parents=True, exist_ok=True)
        for inst in (a, b):
            path = keep_logs / f"{queue_type}-{fault}-{inst.name}.log"
            path.write_text("".join(f"{at:.3f} {json.dumps(line)}\n" for at, line in inst.lines))
    log(
        f"  -> confirmed {confirmed}, lost {result['events_lost']}, told {result['users_told']}, "
        f"untold {result['users_lost_untold']}, gap {result['routing_gap_s']}, max delay {result['delay_max_s']} s, "
        f"A ready again {result['a_ready_again']}"
    )
    with contextlib.suppress(Exception):
        await asyncio.wait_for(cleanup(exchange), 30)
    return result


async def cleanup(exchange: str) -> None:
    """Delete the trial's queues and exchanges (names start with its exchange) through a node that is up."""
    listed = await asyncio.to_thread(
        subprocess.run,
        ["rabbitmqctl", "-n", "c2@localhost", "-q", "--no-table-headers", "list_queues", "name"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    queues = [name.strip() for name in listed.stdout.splitlines() if name.strip().startswith(exchange)]
    connection = await aio_pika.connect(node_url("c2"))
    async with connection:
        for name in queues:
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.queue_delete(name)
        for name in (exchange, f"{exchange}.dead", f"{exchange}.control"):
            channel = await connection.channel()
            with contextlib.suppress(aio_pika.exceptions.AMQPError):
                await channel.exchange_delete(name)


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    def total(key: str) -> int:
        return sum(int(row.get(key, 0)) for row in report["trials"])

    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "cluster.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# A RabbitMQ node lost under a steady feed",
        "",
        f"`python -m bench.cluster` on {report['started']} ({report['seconds']} s in all). Cluster of `.ci/cluster` "
        f"(3 nodes, net_ticktime 10 s); instance A lists c1,c2,c3 (its queue on c1, the node hit), B lists "
        f"c2,c3,c1; {report['users_per_instance']} resuming browsers per instance; the feed publishes one event per "
        f"user every {report['tick_s']} s through c3,c2,c1 with confirms. Fresh instances and exchange per row. "
        "The machine has 2 shared cores: delays are this machine's, compare rows within the run.",
        "",
        "| queue | fault | confirmed | lost | users told | lost, not told | routing gap (s) | routing back, from "
        "fault (s) | max delay A / B (s) | steady p99 (s) | A not ready (s) | A ready again, no restart |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["trials"]:
        if "error" in row:
            error = row["error"][:200].replace("\n", " ").replace("|", "/")
            lines.append(f"| {row['queue_type']} | {row['fault']} | error: {error} ||||||||||")
            continue
        lines.append(
            f"| {row['queue_type']} | {row['fault']} ({fmt(row['fault_s'])} s) | {row['events_confirmed']} | "
            f"{row['events_lost']} | {row['users_told']} | {row['users_lost_untold']} | {fmt(row['routing_gap_s'])} | "
            f"{fmt(row['routing_restored_after_fault_s'])} | {fmt(row['delay_max_s_by_instance']['A'])} / "
            f"{fmt(row['delay_max_s_by_instance']['B'])} | {fmt(row['steady_delay_p99_s'])} | "
            f"{fmt(row['a_not_ready_s'])} | {fmt(row['a_ready_again'])} |"
        )
        if row["routing_events_before_fault"]:
            lines[-1] = lines[-1].replace(f"| {row['fault']} (", f"| {row['fault']} (disturbed before the fault; ", 1)
    lines += [
        "",
        "- **confirmed**: events RabbitMQ confirmed to the feed (a publish unconfirmed within 10 s is not counted: "
        "a backend would retry it). **lost**: confirmed, never received by its user. **users told**: users who got "
        "`resync` or a resume answered `recovered: false`. **lost, not told**: users missing an event who were "
        "never told (must be 0).",
        "- **routing gap**: `gap_s` of instance A's `routing_restored` log line (from routing lost to restored; "
        "`-` when A never lost routing); **routing back, from fault**: from the start of the fault's `.ci/cluster` "
        "command to that line (the command itself takes part of a second).",
        "- **max delay**: the longest publish-to-receive time of any event received in the trial (the publish stamp "
        "is taken before the publish, so a confirm that waits on a frozen node counts), for A's users and B's; "
        "**steady p99**: the p99 of events published before the fault.",
        "- **A not ready**: seconds A's `/readyz` did not answer 200 during the trial (polled every 0.25 s). **A "
        "ready again**: `/readyz` answers 200 after the node is back, the same process, never restarted.",
        f"- Unconfirmed publishes (not counted above): {total('events_unconfirmed')}; duplicates received: "
        f"{total('duplicates')}; browser reconnects: {total('reconnects')}; users told on B (its node untouched): "
        f"{sum(row.get('users_told_by_instance', {}).get('B', 0) for row in report['trials'])}.",
        "",
        "Routing log lines of instance A and B (seconds from the fault's start):",
        "",
    ]
    for row in report["trials"]:
        if "error" in row:
            continue
        lines.append(f"- {row['queue_type']} {row['fault']}:")
        for item in row["routing_log"]:
            keys = ("reason", "gap_s", "events_may_be_lost", "node", "resync_sent", "queue")
            shown = ", ".join(f"{key}={item[key]}" for key in keys if key in item and item[key] is not None)
            lines.append(f"  - {item['instance']} +{item['at_s']} s `{item['event']}` {shown}")
        if not row["routing_log"]:
            lines.append("  - (none)")
    md_path = out / "cluster.md"
    md_path.write_text("\n".join(lines) + "\n")
    return [md_path, json_path]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    queue_types = [item for item in args.queue_types.split(",") if item]
    faults = [item for item in args.faults.split(",") if item]
    report: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "users_per_instance": args.users,
        "tick_s": args.tick,
        "trials": [],
    }
    started = time.time()
    for queue_type in queue_types:
        for fault in faults:
            # The cluster is shared with the tests marked `cluster`: a trial whose instances lost routing before
            # the fault was disturbed by something else, and runs once more (the report marks it if it was again);
            # so does a trial that failed (a node that did not start again on a loaded machine, say).
            row: dict[str, Any] = {}
            for attempt in (1, 2):
                try:
                    row = await trial(queue_type, fault, args.users, args.tick, args.down, args.keep_logs)
                except Exception as error:  # noqa: BLE001 - one failed trial is reported, the others still run
                    log(f"  {queue_type} {fault} failed: {error!r}")
                    row = {"queue_type": queue_type, "fault": fault, "error": repr(error)[:1000]}
                await in_thread(lambda: ctl("start"))  # every node back (and healed) before the next trial
                row["attempt"] = attempt
                if "error" not in row and not row["routing_events_before_fault"]:
                    break
                if attempt == 1:
                    log("  failed, or disturbed before the fault (routing lost with no fault yet): once more")
            report["trials"].append(row)
    report["seconds"] = round(time.time() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cluster", description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=100, help="browsers per instance (default 100)")
    parser.add_argument("--tick", type=float, default=1.0, help="seconds between a user's events (default 1)")
    parser.add_argument("--queue-types", default=",".join(QUEUE_TYPES), help="comma list (default classic,quorum)")
    parser.add_argument("--faults", default=",".join(FAULTS), help=f"comma list of {', '.join(FAULTS)}")
    parser.add_argument("--down", type=float, help="seconds each fault lasts (default: kill 15, stop_app 15, freeze 4)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for cluster.{md,json}")
    parser.add_argument("--keep-logs", type=Path, help="write each instance's log lines into this directory")
    args = parser.parse_args(argv)
    unknown = {item for item in args.faults.split(",") if item} - set(FAULTS)
    unknown |= {item for item in args.queue_types.split(",") if item} - set(QUEUE_TYPES)
    if unknown:
        parser.error(f"unknown {sorted(unknown)}")
    log("starting the cluster (.ci/cluster start)")
    ctl("start")
    try:
        report = asyncio.run(run(args))
    finally:
        log("leaving the cluster with every node running (.ci/cluster start)")
        ctl("start")
    for path in write_report(report, args.out):
        log(f"wrote {path}")
    failed = [row for row in report["trials"] if "error" in row or row["users_lost_untold"]]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
