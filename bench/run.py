"""The benchmark's orchestrator: starts each system, its load clients and the publisher, runs the scenarios,
and writes bench/results/latest.{md,json} and the latency plot.

    .venv/bin/python -m bench            # the full run, storms and the restart included
    .venv/bin/python -m bench --smoke    # tiny sizes, seconds per system, for CI
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing
import os
import platform
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import aio_pika

from bench.clients import worker_main
from bench.publisher import EVENT_BYTES, publisher_main
from bench.systems import (
    AMQP_URL,
    Running,
    System,
    all_systems,
    cpu_seconds,
    enable_web_stomp,
    rss_bytes,
)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHARED_TOPICS = 5


@dataclass
class Scenario:
    name: str
    kind: str  # broadcast, unicast, mixed, idle
    clients: int
    burst_events: int = 0
    rates: list[float] = field(default_factory=list)  # events/s for the latency steps
    step_seconds: float = 3.0
    shared_share: float = 0.2  # mixed: share of events that go to a shared topic


def full_scenarios() -> list[Scenario]:
    return [
        Scenario("broadcast_500", "broadcast", 500, burst_events=400, rates=[20]),
        Scenario("broadcast_1k", "broadcast", 1000, burst_events=300, rates=[5, 20, 50, 100]),
        Scenario("broadcast_5k", "broadcast", 5000, burst_events=60, rates=[4]),
        Scenario("unicast_1k", "unicast", 1000, burst_events=30000, rates=[500, 2000]),
        Scenario("mixed_1k", "mixed", 1000, burst_events=3000, rates=[100]),
        Scenario("idle_10k", "idle", 10000),
    ]


def smoke_scenarios() -> list[Scenario]:
    return [
        Scenario("broadcast_1k", "broadcast", 20, burst_events=20, rates=[20], step_seconds=1.0),
        Scenario("unicast_1k", "unicast", 20, burst_events=200, rates=[100], step_seconds=1.0),
        Scenario("mixed_1k", "mixed", 20, burst_events=100, step_seconds=1.0),
        Scenario("idle_10k", "idle", 20),
    ]


SMOKE_SYSTEMS = ["notifier", "notifier-memory", "fastapi-naive", "websockets", "picows", "socketio", "aio-pika"]


# Processes we start: pipes to client workers and the publisher.


class Child:
    """A multiprocessing child driven by (command, args) messages, each answered once."""

    def __init__(self, target: Any, spec: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(target=target, args=(child_conn, spec), daemon=True)
        self.process.start()
        child_conn.close()

    def send(self, command: str, **args: Any) -> None:
        self.conn.send((command, args))

    def receive(self, timeout_s: float = 300.0) -> Any:
        if not self.conn.poll(timeout_s):
            raise TimeoutError("child did not answer")
        return self.conn.recv()

    def call(self, command: str, timeout_s: float = 300.0, **args: Any) -> Any:
        self.send(command, **args)
        return self.receive(timeout_s)

    def stop(self) -> None:
        if self.process.is_alive():
            with contextlib.suppress(OSError, TimeoutError, EOFError):
                self.call("exit", timeout_s=10)
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)


class Clients:
    """The load clients of one scenario, spread over a few processes on the clients' core."""

    def __init__(self, running: Running, scenario: Scenario, cpus: set[int], prefix: str) -> None:
        system = running.system
        count = min(scenario.clients, system.max_clients or scenario.clients)
        self.count = count
        self.plan = [client_plan(scenario, index, prefix) for index in range(count)]
        processes = max(1, math.ceil(count / 5000))
        spec = {
            "protocol": system.protocol,
            "url": running.url,
            "secret": running.secret,
            "exchange": running.exchange,
            "cpus": sorted(cpus),
        }
        self.workers = [Child(worker_main, spec) for _ in range(processes)]
        self.shares = [self.plan[number::processes] for number in range(processes)]

    def connect(self, concurrency: int = 100) -> dict[str, Any]:
        started = time.perf_counter()
        for worker, share in zip(self.workers, self.shares, strict=True):
            worker.send("connect", plan=share, concurrency=concurrency)
        answers = [worker.receive(600) for worker in self.workers]
        seconds = time.perf_counter() - started
        connected = sum(answer["connected"] for answer in answers)
        return {
            "clients": self.count,
            "connected": connected,
            "failed": sum(answer["failed"] for answer in answers),
            "failures": [failure for answer in answers for failure in answer["failures"]][:5],
            "codes": merged_counts(answer.get("codes", {}) for answer in answers),
            "seconds": round(seconds, 3),
            "per_s": round(connected / seconds, 1) if seconds else 0.0,
        }

    def reset(self, timing: bool) -> None:
        for worker in self.workers:
            worker.call("reset", timing=timing)

    def disconnect(self) -> None:
        """Drop every client's connection at once (all client processes together)."""
        for worker in self.workers:
            worker.send("close")
        for worker in self.workers:
            worker.receive(60)

    def stats(self, latencies: bool = False) -> dict[str, Any]:
        answers = [worker.call("stats", latencies=latencies) for worker in self.workers]
        counts: list[int] = []
        for answer in answers:
            counts.extend(answer["counts"])
        firsts = [answer["first_ns"] for answer in answers if answer["first_ns"]]
        lasts = [answer["last_ns"] for answer in answers if answer["last_ns"]]
        return {
            "total": sum(answer["total"] for answer in answers),
            "counts": counts,
            "closed": sum(answer["closed"] for answer in answers),
            "first_ns": min(firsts) if firsts else 0,
            "last_ns": max(lasts) if lasts else 0,
            "latencies": [value for answer in answers for value in answer["latencies"]],
            "cpu_s": sum(answer["cpu_s"] for answer in answers),
        }

    def expected(self, published: dict[str, int]) -> list[int]:
        # Counts come back worker by worker, in each worker's share order.
        order = [item for share in self.shares for item in share]
        return [sum(published.get(topic, 0) for topic in item["all_topics"]) for item in order]

    def stop(self) -> None:
        for worker in self.workers:
            worker.stop()


def merged_counts(parts: Iterator[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for part in parts:
        for key, count in part.items():
            total[key] = total.get(key, 0) + count
    return total


def client_plan(scenario: Scenario, index: int, prefix: str) -> dict[str, Any]:
    user = f"{prefix}u{index}"
    personal = f"user.{user}"
    if scenario.kind == "broadcast":
        topics = [f"news.{prefix}all"]
    elif scenario.kind == "mixed":
        topics = [f"news.{prefix}s{index % SHARED_TOPICS}", f"news.{prefix}s{(index + 1) % SHARED_TOPICS}"]
    else:
        topics = []
    return {"user": user, "personal": personal, "topics": topics, "all_topics": [personal, *topics]}


def topic_spec(scenario: Scenario, clients: Clients, prefix: str) -> dict[str, Any]:
    users = [item["user"] for item in clients.plan]
    if scenario.kind == "broadcast":
        return {"kind": "broadcast", "shared": [f"news.{prefix}all"]}
    if scenario.kind == "mixed":
        shared = [f"news.{prefix}s{number}" for number in range(SHARED_TOPICS)]
        return {"kind": "mixed", "users": users, "shared": shared, "shared_share": scenario.shared_share}
    return {"kind": "unicast", "users": users}


# Measurements.


def percentile(sorted_values: list[float], share: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, math.ceil(share * len(sorted_values)) - 1))
    return sorted_values[index]


def wait_delivered(clients: Clients, expected_total: int, settle_s: float, cap_s: float) -> dict[str, Any]:
    """Poll until every expected delivery arrived, or nothing arrived for `settle_s`, or `cap_s` passed."""
    started = time.monotonic()
    last_total, last_change = -1, time.monotonic()
    while True:
        stats = clients.stats()
        if stats["total"] >= expected_total:
            return stats
        now = time.monotonic()
        if stats["total"] != last_total:
            last_total, last_change = stats["total"], now
        elif now - last_change > settle_s or now - started > cap_s:
            return stats
        time.sleep(0.1)


def loss_report(clients: Clients, stats: dict[str, Any], published: dict[str, int]) -> dict[str, Any]:
    expected = clients.expected(published)
    counts = stats["counts"]
    short = sum(1 for got, want in zip(counts, expected, strict=False) if got < want)
    extra = sum(1 for got, want in zip(counts, expected, strict=False) if got > want)
    return {
        "expected": sum(expected),
        "delivered": stats["total"],
        "clients_short": short + max(0, len(expected) - len(counts)),
        "clients_extra": extra,
        "complete": stats["total"] == sum(expected) and short == 0 and extra == 0 and len(counts) == len(expected),
    }


def burst_step(
    running: Running, clients: Clients, publisher: Child, scenario: Scenario, prefix: str, smoke: bool
) -> dict[str, Any]:
    """Saturation: queue a burst in RabbitMQ while the server is paused, resume it, and time the deliveries
    from first to last; so the publisher's speed does not limit what is measured."""
    clients.reset(timing=False)
    client_cpu_before = clients.stats()["cpu_s"]
    with paused(running):
        published = publisher.call("burst", count=scenario.burst_events, topics=topic_spec(scenario, clients, prefix))
        time.sleep(0.3)
        cpu_before = cpu_seconds(running.pid)
    expected_total = sum(clients.expected(published["published"]))
    stats = wait_delivered(clients, expected_total, settle_s=3.0 if not smoke else 2.0, cap_s=60.0)
    cpu = cpu_seconds(running.pid) - cpu_before
    window_s = max(1e-9, (stats["last_ns"] - stats["first_ns"]) / 1e9)
    delivered = stats["total"]
    result = {
        "events": scenario.burst_events,
        "publish_s": round(published["seconds"], 3),
        "publish_per_s": round(scenario.burst_events / published["seconds"], 1),
        "window_s": round(window_s, 3),
        "deliveries_per_s": round(delivered / window_s, 1) if delivered > 1 else 0.0,
        "events_per_s": round(delivered / window_s * scenario.burst_events / max(1, expected_total), 1),
        "server_cpu_s": round(cpu, 3),
        "cpu_s_per_100k": round(cpu / delivered * 100_000, 3) if delivered else None,
        "client_cpu_share": round((stats["cpu_s"] - client_cpu_before) / window_s / len(clients.workers), 3),
        "closed_clients": stats["closed"],
        **loss_report(clients, stats, published["published"]),
    }
    # A server we cannot pause (the broker itself) may be measured at the publisher's pace instead.
    result["publisher_bound"] = running.process is None and result["events_per_s"] >= 0.9 * result["publish_per_s"]
    return result


@contextlib.contextmanager
def paused(running: Running) -> Iterator[None]:
    """SIGSTOP the server process while the burst is queued in RabbitMQ; SIGCONT it however this ends."""
    if running.process is None:
        yield
        return
    os.kill(running.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(running.pid, signal.SIGCONT)


def warm_up(clients: Clients, publisher: Child, scenario: Scenario, prefix: str) -> None:
    """Publish probes until the first client receives one: the server's consumer is bound and flowing."""
    first = clients.plan[0]
    spec = (
        {"kind": "broadcast", "shared": [first["topics"][0]]}
        if first["topics"]
        else {"kind": "unicast", "users": [first["user"]]}
    )
    clients.reset(timing=False)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        publisher.call("burst", count=1, topics=spec)
        time.sleep(0.2)
        if clients.stats()["total"] > 0:
            break
    wait_delivered(clients, 10**12, settle_s=0.5, cap_s=10.0)


def latency_step(
    clients: Clients, publisher: Child, scenario: Scenario, rate: float, prefix: str, smoke: bool
) -> dict[str, Any]:
    """Publish at a fixed rate; every delivery's latency is its receive time minus the stamped publish time."""
    clients.reset(timing=True)
    published = publisher.call(
        "paced", rate=rate, seconds=scenario.step_seconds, topics=topic_spec(scenario, clients, prefix)
    )
    expected_total = sum(clients.expected(published["published"]))
    wait_delivered(clients, expected_total, settle_s=2.0, cap_s=10.0 if not smoke else 5.0)
    stats_with_latency = clients.stats(latencies=True)
    latencies = sorted(value / 1e6 for value in stats_with_latency["latencies"])
    return {
        "rate_events_per_s": rate,
        "offered_deliveries_per_s": round(expected_total / max(1e-9, published["seconds"]), 1),
        "p50_ms": round(percentile(latencies, 0.50), 3),
        "p99_ms": round(percentile(latencies, 0.99), 3),
        "max_ms": round(latencies[-1], 3) if latencies else None,
        "mean_ms": round(statistics.fmean(latencies), 3) if latencies else None,
        **loss_report(clients, stats_with_latency, published["published"]),
    }


def run_scenario(
    running: Running, scenario: Scenario, publisher: Child, cpus: set[int], prefix: str, smoke: bool
) -> dict[str, Any]:
    clients = Clients(running, scenario, cpus, prefix)
    try:
        rss_before = rss_bytes(running.pid)
        connect = clients.connect()
        result: dict[str, Any] = {"clients": clients.count, "connect": connect}
        if connect["connected"] < clients.count:
            result["error"] = f"only {connect['connected']} of {clients.count} clients connected"
            return result
        if scenario.kind == "idle":
            time.sleep(2.0 if not smoke else 0.5)
            rss_after = rss_bytes(running.pid)
            result["rss_before_mib"] = round(rss_before / 2**20, 1)
            result["rss_after_mib"] = round(rss_after / 2**20, 1)
            result["kib_per_connection"] = round((rss_after - rss_before) / 1024 / clients.count, 2)
            return result
        warm_up(clients, publisher, scenario, prefix)
        steps = []
        for rate in scenario.rates:
            step = latency_step(clients, publisher, scenario, rate, prefix, smoke)
            steps.append(step)
            if not step["complete"] or step["p99_ms"] > 1000:
                # Overloaded at this rate: higher rates would only queue more (and spill into the burst).
                step["overloaded"] = True
                wait_delivered(clients, 10**12, settle_s=2.0, cap_s=60.0)
                break
        result["latency"] = steps
        if scenario.burst_events:
            result["burst"] = burst_step(running, clients, publisher, scenario, prefix, smoke)
        return result
    finally:
        clients.stop()


def run_reference(running: Running, scenario: Scenario, publisher: Child, prefix: str, smoke: bool) -> dict[str, Any]:
    """aio-pika alone: the rate one Python process consumes and acks the unicast burst."""

    def status() -> dict[str, int]:
        try:
            return dict(json.loads(running.status_file.read_text()))
        except (OSError, ValueError):
            return {"count": 0, "first_ns": 0, "last_ns": 0}

    users = [client_plan(scenario, index, prefix)["user"] for index in range(scenario.clients)]
    before = status()["count"]
    with paused(running):
        published = publisher.call("burst", count=scenario.burst_events, topics={"kind": "unicast", "users": users})
        time.sleep(0.3)
        cpu_before = cpu_seconds(running.pid)
    deadline, last, last_change = time.monotonic() + 60, -1, time.monotonic()
    while time.monotonic() < deadline:
        state = status()
        if state["count"] - before >= scenario.burst_events:
            break
        if state["count"] != last:
            last, last_change = state["count"], time.monotonic()
        elif time.monotonic() - last_change > 3:
            break
        time.sleep(0.1)
    time.sleep(0.2)
    state = status()
    consumed = state["count"] - before
    cpu = cpu_seconds(running.pid) - cpu_before
    window_s = max(1e-9, (state["last_ns"] - state["first_ns"]) / 1e9)
    return {
        "burst": {
            "events": scenario.burst_events,
            "publish_s": round(published["seconds"], 3),
            "publish_per_s": round(scenario.burst_events / published["seconds"], 1),
            "delivered": consumed,
            "expected": scenario.burst_events,
            "complete": consumed == scenario.burst_events,
            "window_s": round(window_s, 3),
            "deliveries_per_s": round(consumed / window_s, 1),
            "cpu_s_per_100k": round(cpu / consumed * 100_000, 3) if consumed else None,
            "publisher_bound": False,
        }
    }


# One system from start to stop.


@contextlib.contextmanager
def started(system: System, exchange: str, secret: str, workdir: Path, cpus: set[int]) -> Iterator[Running]:
    running = Running(system, exchange, secret, workdir, cpus)
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def start_publisher(running: Running, cpus: set[int]) -> Child:
    spec = {
        "amqp_url": AMQP_URL,
        "exchange": running.exchange,
        "format": running.system.publish_format,
        "cpus": sorted(cpus),
    }
    return Child(publisher_main, spec)


def run_system(
    system: System, scenarios: list[Scenario], cpus: dict[str, set[int]], workdir: Path, smoke: bool, log: Any
) -> dict[str, Any]:
    exchange = f"bench.{system.name}.{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(32)
    results: dict[str, Any] = {}
    if system.reference:
        scenario = next((item for item in scenarios if item.kind == "unicast"), None)
        if scenario is None:
            return results
        with started(system, exchange, secret, workdir, cpus["server"]) as running:
            publisher = start_publisher(running, cpus["clients"])
            try:
                log(f"  {scenario.name}")
                results[scenario.name] = run_reference(running, scenario, publisher, "r0", smoke)
            finally:
                publisher.stop()
        cleanup_amqp(exchange, [])
        return results
    queues: list[str] = []
    # Each scenario gets a fresh server process: no backlog, bindings or heap growth carried from the last one.
    groups = [[item] for item in scenarios] if not smoke else [[item for item in scenarios if item.kind != "idle"]]
    groups += [[item] for item in scenarios if item.kind == "idle"] if smoke else []
    for group in [group for group in groups if group]:
        with started(system, exchange, secret, workdir, cpus["server"]) as running:
            queues.append(running.queue_name)
            publisher = start_publisher(running, cpus["clients"])
            try:
                for number, scenario in enumerate(group):
                    prefix = f"s{len(results)}{number}"
                    log(f"  {scenario.name}")
                    try:
                        results[scenario.name] = run_scenario(
                            running, scenario, publisher, cpus["clients"], prefix, smoke
                        )
                    except (RuntimeError, TimeoutError, OSError, EOFError) as error:
                        results[scenario.name] = {"error": repr(error)[:500]}
                        log(f"    error: {error!r}")
            finally:
                publisher.stop()
    cleanup_amqp(exchange, queues if system.module == "notifier" else [])
    return results


def cleanup_amqp(exchange: str, queues: list[str]) -> None:
    """Delete what this run declared on the shared broker (the notifier queues would expire anyway)."""

    async def delete() -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            for name in [*queues, f"{exchange}.dead"]:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)
            for name in (exchange, f"{exchange}.dead"):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(name)

    with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError, asyncio.TimeoutError):
        asyncio.run(asyncio.wait_for(delete(), 20))


# The machine and the report.


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in (
        "notifier",
        "uvicorn",
        "websockets",
        "fastapi",
        "starlette",
        "aio-pika",
        "aiormq",
        "orjson",
        "python-socketio",
        "python-engineio",
        "picows",
        "PyJWT",
    ):
        with contextlib.suppress(metadata.PackageNotFoundError):
            packages[name] = metadata.version(name)
    rabbitmq = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        rabbitmq = subprocess.run(
            ["rabbitmqctl", "version"], capture_output=True, text=True, timeout=20, check=False
        ).stdout.strip()
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu_model": model,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "rabbitmq": rabbitmq,
        "packages": packages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes, a few seconds per system (for CI)")
    parser.add_argument("--systems", help="comma list of systems (default: all; smoke: those that start quickly)")
    parser.add_argument("--scenarios", help="comma list of scenario names (default: all)")
    parser.add_argument("--out", type=Path, help="directory for latest.md/json/png (default bench/results)")
    parser.add_argument(
        "--storm",
        action=argparse.BooleanOptionalAction,
        help="also run bench.storm (storms and the restart) into the report; default: on for a full run of every "
        "system and scenario, off otherwise",
    )
    parser.add_argument("--storm-json", type=Path, help="put this bench.storm result (storm.json) in the report")
    parser.add_argument("--storm-clients", default="5000,10000", help="storm sizes (default 5000,10000; smoke 50)")
    parser.add_argument("--restart-clients", type=int, help="clients in the restart phase (default 15000; smoke 50)")
    parser.add_argument(
        "--rewrite",
        type=Path,
        metavar="LATEST_JSON",
        help="run nothing: write the report again from this latest.json (with --storm-json: its storm results)",
    )
    args = parser.parse_args(argv)
    if args.rewrite:
        from bench.report import write_report

        saved = json.loads(args.rewrite.read_text())
        if args.storm_json:
            saved["storm"] = json.loads(args.storm_json.read_text())
        for path in write_report(saved, args.out or args.rewrite.parent):
            print(f"bench: wrote {path}", file=sys.stderr)
        return 0

    systems = all_systems()
    names = (
        args.systems.split(",")
        if args.systems
        else (SMOKE_SYSTEMS if args.smoke else [system.name for system in systems])
    )
    unknown = set(names) - {system.name for system in systems}
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}")
    chosen = [system for system in systems if system.name in names]
    scenarios = smoke_scenarios() if args.smoke else full_scenarios()
    if args.scenarios:
        wanted = set(args.scenarios.split(","))
        scenarios = [item for item in scenarios if item.name in wanted]
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    out.mkdir(parents=True, exist_ok=True)

    cpu_count = os.cpu_count() or 1
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        cpus = {"server": {available[0]}, "clients": set(available[1:])}
    else:
        cpus = {"server": set(available), "clients": set(available)}
    os.sched_setaffinity(0, cpus["clients"])
    sharing = (
        f"server process pinned to CPU {sorted(cpus['server'])}; load clients, publisher and this orchestrator "
        f"pinned to CPU {sorted(cpus['clients'])} (sched_setaffinity); RabbitMQ not pinned (shares all "
        f"{cpu_count} CPUs)"
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log(f"bench: {sharing}")
    started_at = time.time()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started_at)),
        "machine": machine(),
        "cpu_sharing": sharing,
        "event_bytes": EVENT_BYTES,
        "scenarios": [scenario.__dict__ for scenario in scenarios],
        "systems": {},
    }
    if any(system.protocol == "stomp" for system in chosen) and not enable_web_stomp():
        log("bench: Web-STOMP did not start; skipping it")
        chosen = [system for system in chosen if system.protocol != "stomp"]
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as workdir:
        for system in chosen:
            log(f"bench: {system.name}")
            system_scenarios = scenarios
            if system.only_kinds:
                system_scenarios = [item for item in scenarios if item.kind in system.only_kinds]
            if system.protocol == "stomp":
                system_scenarios = [item for item in scenarios if item.name in ("broadcast_500", "idle_10k")]
                if args.smoke:
                    system_scenarios = scenarios
            try:
                results = run_system(system, system_scenarios, cpus, Path(workdir), args.smoke, log)
            except (RuntimeError, TimeoutError, OSError) as error:
                log(f"  failed: {error!r}")
                results = {"error": repr(error)[:1000]}
            report["systems"][system.name] = {"label": system.label, "note": system.note, "results": results}
    run_storm = args.storm if args.storm is not None else not (args.smoke or args.systems or args.scenarios)
    if args.storm_json:
        report["storm"] = json.loads(args.storm_json.read_text())
    elif run_storm:
        from bench.storm import run_storms, storm_systems

        log("bench: storms and the restart (bench.storm)")
        by_name = {system.name: system for system in storm_systems()}
        sizes = [50] if args.smoke else [int(size) for size in args.storm_clients.split(",") if size.strip()]
        restart_clients = args.restart_clients if args.restart_clients is not None else (50 if args.smoke else 15000)
        report["storm"] = run_storms(
            sizes,
            [by_name[name] for name in ("notifier", "notifier-2w", "websockets")],
            restart_clients,
            [by_name["notifier"], by_name["websockets"]],
            out,
            log,
            smoke=args.smoke,
            cpus=cpus,
        )
    report["seconds"] = round(time.time() - started_at, 1)

    from bench.report import write_report

    paths = write_report(report, out)
    for path in paths:
        log(f"bench: wrote {path}")
    return 0
