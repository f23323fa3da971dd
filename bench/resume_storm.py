"""Resume after a SIGTERM: every client of one instance moves to another, side by side with a plain reconnect.

Two phases in one run, each on two fresh `notifier serve` instances (A and B) on one exchange of their own:
resume on (the default NOTIFIER_RESUME_WINDOW_S), and the plain baseline (NOTIFIER_RESUME_WINDOW_S=0 on both).
In each, N clients sign in on A from several processes and loopback source addresses while a publisher sends
a steady confirmed feed to their personal topics; A gets SIGTERM, closes them with 1012, and every client
reconnects to B with notifier.js's backoff and `resume`. Reports how long until all were back (and its ratio
to the plain baseline), the per-client gap, `recovered`, events missing, doubled or out of order per user, A's
exit time against NOTIFIER_SHUTDOWN_TIMEOUT_S (its default, unless BENCH_NOTIFIER_SHUTDOWN_TIMEOUT_S sets it),
B's CPU per client that came back, and how busy the whole machine was meanwhile.

    .venv/bin/python -m bench.resume_storm                         # 10,000 clients, 4 client processes
    .venv/bin/python -m bench.resume_storm --clients 2000
    .venv/bin/python -m bench.resume_storm --smoke                 # 200 clients, a quick check
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import math
import multiprocessing
import os
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aio_pika
import aiormq
import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

from bench.clients import BACKOFF_BASE_S, BACKOFF_CAP_S, BUSY_CLOSE_CODES
from bench.resume_clients import worker_main
from bench.run import machine
from bench.systems import AMQP_URL, broker_pid, cpu_seconds, free_port, machine_cpu_seconds
from notifier.settings import Settings

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parent.parent
# Client source addresses: loopback is all of 127/8, so each process binds its own few and neither the
# server's per-address limits nor one address's ephemeral ports are what is measured.
ADDRESSES = [f"127.0.0.{n}" for n in range(2, 62)]
CONNECT_IN_FLIGHT = 1000  # sign-ins on A in flight at once, over all client processes
BOTH_HEARD_S = 3.0  # after both are ready, before the SIGTERM: the instances hear each other's heartbeats
ALL_BACK_DEADLINE_S = 120.0
EXIT_WAIT_S = 60.0  # how long A may take to exit before it is killed (and the report says so)
SETTLE_MAX_S = 15.0
FEED_CONFIRM_TIMEOUT_S = 30.0  # a publish not confirmed within this is counted as not confirmed
FEED_NICE = -10  # the feed process's scheduling priority (it needs about a tenth of a CPU)
# The default the bench keeps, unless a run sets it (BENCH_NOTIFIER_SHUTDOWN_TIMEOUT_S, to size it): the goal of
# A's exit is read against the value the instances ran with.
SHUTDOWN_TIMEOUT_S = float(
    os.environ.get("BENCH_NOTIFIER_SHUTDOWN_TIMEOUT_S", Settings.model_fields["shutdown_timeout_s"].default)
)
SHUTDOWN_TIMEOUT_NOTE = "set for this run" if "BENCH_NOTIFIER_SHUTDOWN_TIMEOUT_S" in os.environ else "its default"
RESUME_WINDOW_S = float(Settings.model_fields["resume_window_s"].default)
# As bench/systems.py starts notifier for 10,000 clients, so its admission limits are not what is measured.
LIMITS_ENV = {
    "NOTIFIER_MAX_CONNECTIONS": "20000",
    "NOTIFIER_MAX_CONNECTIONS_PER_USER": "20",
    "NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS": "20000",
    "NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS": "100000",
    "NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS": "20000",
    "NOTIFIER_MAX_UNAUTHENTICATED_CONNECTIONS": "20000",
    "NOTIFIER_SEND_QUEUE_SIZE": "8192",
    "NOTIFIER_QUEUE_EXPIRES_S": "30",
}
PHASES = (("resume", "resume on"), ("plain", "plain reconnect (resume off)"))


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


class Instance:
    """One `notifier serve` process; its exit is reaped here so its CPU seconds are known after it left."""

    def __init__(self, name: str, exchange: str, secret: str, resume: bool, workdir: Path) -> None:
        self.name = name
        self.port = free_port()
        self.instance_id = f"rs{os.getpid()}{name}{secrets.token_hex(3)}"
        self.queue_name = f"{exchange}.instance.{self.instance_id}"
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.log_path = workdir / f"{exchange}-{name}.log"
        env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")}
        env.update(
            LIMITS_ENV,
            NOTIFIER_PORT=str(self.port),
            NOTIFIER_AMQP_URL=AMQP_URL,
            NOTIFIER_JWT_SECRET=secret,
            NOTIFIER_EXCHANGE=exchange,
            NOTIFIER_DEAD_LETTER_EXCHANGE=f"{exchange}.dead",
            NOTIFIER_INSTANCE_ID=self.instance_id,
            NOTIFIER_LOG_LEVEL=os.environ.get("BENCH_LOG_LEVEL", "warning"),
        )
        # A setting to try on the servers of a run: BENCH_NOTIFIER_X=value sets NOTIFIER_X.
        env.update(
            {key[len("BENCH_") :]: value for key, value in os.environ.items() if key.startswith("BENCH_NOTIFIER_")}
        )
        if not resume:
            env["NOTIFIER_RESUME_WINDOW_S"] = "0"
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "notifier", "serve"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                start_new_session=True,
            )
        self.pid = self.process.pid
        self.exit_code: int | None = None
        self.exited_at: float | None = None
        self.total_cpu_s: float | None = None  # utime + stime over its life, once it exited
        threading.Thread(target=self._reap_when_it_exits, name=f"reap-{name}", daemon=True).start()

    def cpu_s(self) -> float | None:
        if self.total_cpu_s is not None:
            return self.total_cpu_s
        with contextlib.suppress(OSError, IndexError, ValueError):
            return cpu_seconds(self.pid)
        return None

    def reap(self) -> bool:
        """Whether it has exited (reaped by its reaper thread, with its resource usage)."""
        return self.exit_code is not None

    def _reap_when_it_exits(self) -> None:
        """A thread blocked on the process's end notes the moment it exits: polling from the orchestrator's
        event loop, busy with the clients and the feed on a loaded machine, noted exits seconds late."""
        _pid, status, usage = os.wait4(self.pid, 0)
        self.exited_at = time.monotonic()
        self.total_cpu_s = usage.ru_utime + usage.ru_stime
        self.process.returncode = exit_code = os.waitstatus_to_exitcode(status)
        self.exit_code = exit_code  # last: reap() reads it

    async def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as http:
            while time.monotonic() < deadline:
                if self.reap():
                    raise RuntimeError(f"instance {self.name} exited with {self.exit_code}: {self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)).status_code == 200:
                        return
                await asyncio.sleep(0.1)
        raise RuntimeError(f"instance {self.name} not ready after {timeout_s} s: {self.log_tail()}")

    async def wait_exit(self, timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not self.reap():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)
        return True

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after 20 s. Idempotent."""
        if self.reap():
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGTERM)
        if not await self.wait_exit(20):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            await self.wait_exit(10)

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace")[-2000:]
        return ""


class Feed:
    """One publisher (one connection, confirms) sending `rate` events/s to `user.<id>` round-robin; each event's
    message_id is its sequence number. Keeps the confirmed sequence numbers of every user. Runs in a process of
    its own (`FeedProcess`)."""

    def __init__(self, exchange: str, users: list[str], rate: float) -> None:
        self.exchange = exchange
        self.users = users
        self.rate = rate
        self.confirmed: dict[str, list[int]] = {user: [] for user in users}
        self.published = 0
        self.sent_at: list[float] = []  # each event's publish time (monotonic), by sequence number
        self.confirm_s: list[float] = []  # from each confirmed event's publish to RabbitMQ's confirm
        self.failed = 0
        self.errors: Counter[str] = Counter()  # why publishes were not confirmed (a nack, a timeout, ...)
        self.seconds = 0.0
        self.stop = asyncio.Event()

    async def run(self) -> None:
        connection = await aio_pika.connect(AMQP_URL)
        async with connection:
            # aio-pika's publish waits for each message to be written before the next one may go; under the
            # storm's CPU starvation that queue, not RabbitMQ, became the delay. The channel's own publish
            # without that wait keeps what is timed to RabbitMQ's confirm.
            channel = await (await connection.channel(publisher_confirms=True)).get_underlay_channel()
            assert isinstance(channel, aiormq.Channel)  # its publish can skip the wait for the write
            pending: set[asyncio.Task[None]] = set()
            loop = asyncio.get_running_loop()
            started = loop.time()
            while not self.stop.is_set():
                due = int((loop.time() - started) * self.rate)
                while self.published < due:
                    self.sent_at.append(time.monotonic())
                    task = asyncio.create_task(self._one(channel, self.published))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    self.published += 1
                await asyncio.sleep(0.01)
            self.seconds = loop.time() - started
            await asyncio.gather(*pending, return_exceptions=True)

    async def _one(self, channel: aiormq.Channel, seq: int) -> None:
        user = self.users[seq % len(self.users)]
        properties = aiormq.spec.Basic.Properties(message_id=str(seq), content_type="application/json")
        try:
            await channel.basic_publish(
                orjson.dumps({"seq": seq}),
                exchange=self.exchange,
                routing_key=f"user.{user}",
                properties=properties,
                timeout=FEED_CONFIRM_TIMEOUT_S,
                wait=False,
            )
        except (aiormq.exceptions.AMQPError, TimeoutError, OSError) as error:
            self.failed += 1
            self.errors[type(error).__name__] += 1
            return
        self.confirmed[user].append(seq)
        self.confirm_s.append(time.monotonic() - self.sent_at[seq])

    def outcome(self) -> dict[str, Any]:
        return {
            "confirmed": self.confirmed,
            "published": self.published,
            "sent_at": self.sent_at,
            "failed": self.failed,
            "errors": dict(self.errors),
            "seconds": self.seconds,
            "confirm_s_p50": _round(percentile(self.confirm_s, 0.50), 3),
            "confirm_s_p99": _round(percentile(self.confirm_s, 0.99), 3),
            "confirm_s_max": _round(max(self.confirm_s, default=None), 3),
        }


def _feed_main(exchange: str, users: list[str], rate: float, pipe: Any) -> None:
    """The feed process: publish until the bench says "stop", then send back what was published and confirmed."""
    feed = Feed(exchange, users, rate)
    # A backend publishes from a machine of its own; here it shares two CPUs with every instance and client
    # process, so it goes first, lest the report time its wait for a CPU as RabbitMQ's confirm.
    with contextlib.suppress(OSError):
        os.nice(FEED_NICE)

    async def publish_until_stopped() -> None:
        publishing = asyncio.create_task(feed.run())
        await asyncio.to_thread(pipe.recv)
        feed.stop.set()
        await publishing

    try:
        asyncio.run(publish_until_stopped())
    except Exception as error:  # noqa: BLE001 - the bench reports it instead of waiting for an answer
        pipe.send({"error": repr(error)[:300]})
        return
    pipe.send(feed.outcome())


class FeedProcess:
    """The feed in a process of its own, as a backend publishes from its own. In the bench's process, which
    steps the instances and talks to the client processes, it was starved of CPU during the storm and sent
    thousands of events seconds late, which read as RabbitMQ confirming them late. Its results (the `Feed`
    attributes the reports read) are here once `run` has returned."""

    def __init__(self, exchange: str, users: list[str], rate: float) -> None:
        self._args = (exchange, users, rate)
        self.stop = asyncio.Event()
        self.confirmed: dict[str, list[int]] = {}
        self.published = 0
        self.sent_at: list[float] = []
        self.failed = 0
        self.errors: Counter[str] = Counter()
        self.seconds = 0.0
        self.confirm_percentiles_s: dict[str, float | None] = {}  # p50, p99 and max of the Feed's confirm_s

    async def run(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        process = context.Process(target=_feed_main, args=(*self._args, theirs), daemon=True)
        process.start()
        try:
            await self.stop.wait()
            ours.send("stop")
            if not await asyncio.to_thread(ours.poll, FEED_CONFIRM_TIMEOUT_S + 30):
                raise TimeoutError("the feed process did not report after it was stopped")
            outcome = ours.recv()
        finally:
            process.join(10)
            if process.is_alive():
                process.kill()
            ours.close()
        if "error" in outcome:
            raise RuntimeError(f"feed: {outcome['error']}")
        self.confirmed, self.published, self.sent_at = outcome["confirmed"], outcome["published"], outcome["sent_at"]
        self.failed, self.errors, self.seconds = outcome["failed"], Counter(outcome["errors"]), outcome["seconds"]
        self.confirm_percentiles_s = {key: outcome[f"confirm_s_{key}"] for key in ("p50", "p99", "max")}

    def report(self) -> dict[str, Any]:
        """What both benches report of the feed: published, not confirmed and why, its rate, confirm times."""
        return {
            "events_published": self.published,
            "events_not_confirmed": self.failed,
            "feed_errors": dict(self.errors),
            "feed_rate_per_s": round(self.published / self.seconds, 1) if self.seconds else None,
            **{f"confirm_s_{key}": value for key, value in self.confirm_percentiles_s.items()},
        }


class Clients:
    """The client processes and their pipes."""

    def __init__(
        self,
        users: list[str],
        processes: int,
        secret: str,
        first_urls: list[str],
        targets: list[str],
        send_resume: bool,
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self.pipes: list[Any] = []
        self.processes: list[Any] = []
        for index in range(processes):
            spec = {
                "users": users[index::processes],
                "addresses": ADDRESSES[index::processes] or ADDRESSES,
                "secret": secret,
                "first_urls": first_urls,
                "targets": targets,
                "concurrency": max(1, CONNECT_IN_FLIGHT // processes),
                "resume": send_resume,
            }
            ours, theirs = context.Pipe()
            process = context.Process(target=worker_main, args=(theirs, spec), daemon=True)
            process.start()
            theirs.close()
            self.pipes.append(ours)
            self.processes.append(process)

    async def ask(self, command: str | tuple[str, Any], timeout_s: float) -> list[Any]:
        def receive(pipe: Any) -> Any:
            if not pipe.poll(timeout_s):
                raise TimeoutError(f"a client process did not answer {command!r} within {timeout_s} s")
            return pipe.recv()

        for pipe in self.pipes:
            pipe.send(command)
        return list(await asyncio.gather(*(asyncio.to_thread(receive, pipe) for pipe in self.pipes)))

    def stop(self) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(OSError, ValueError):
                pipe.send("exit")
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()


async def cleanup_amqp(exchange: str, queues: list[str]) -> None:
    """Delete what the phase declared on the shared broker: instance queues, dead letters, exchanges."""
    with contextlib.suppress(OSError, aio_pika.exceptions.AMQPError, TimeoutError):
        connection = await aio_pika.connect(AMQP_URL, timeout=20)
        async with connection:
            for name in [*queues, f"{exchange}.dead"]:
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.queue_delete(name)
            for name in (exchange, f"{exchange}.dead", f"{exchange}.control"):
                channel = await connection.channel()
                with contextlib.suppress(aio_pika.exceptions.AMQPError):
                    await channel.exchange_delete(name)


async def wait_broker_quiet(max_s: float = 90.0, busy_share: float = 0.15) -> dict[str, Any]:
    """Wait until RabbitMQ's CPU over one second falls below `busy_share` of a core (it removes a phase's
    bindings after that phase's queues are deleted), so one phase's clean-up does not slow the next phase."""
    try:
        pid = broker_pid()
    except RuntimeError:
        return {"broker_quiet": None}
    started = time.monotonic()
    share = None
    while time.monotonic() - started < max_s:
        before = cpu_seconds(pid)
        await asyncio.sleep(1.0)
        share = cpu_seconds(pid) - before
        if share < busy_share:
            break
    return {"broker_quiet_after_s": round(time.monotonic() - started, 1), "broker_cpu_share": share}


def percentile(values: list[float], share: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]  # nearest rank


async def run_phase(
    name: str, resume: bool, send_resume: bool, args: argparse.Namespace, workdir: Path
) -> dict[str, Any]:
    """One phase: A and B with resume on or off, the clients, the feed, the SIGTERM; the phase's numbers."""
    count, processes, rate = args.clients, args.processes, args.rate
    exchange = f"bench.resume.{name}.{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(32)
    users = [f"u{n}" for n in range(count)]
    first = Instance("A", exchange, secret, resume, workdir)
    second = Instance("B", exchange, secret, resume, workdir)
    clients: Clients | None = None
    feed: FeedProcess | None = None
    feed_task: asyncio.Task[None] | None = None
    tasks: list[asyncio.Task[bool]] = []
    result: dict[str, Any] = {
        "exchange": exchange,
        "resume_window_s": RESUME_WINDOW_S if resume else 0.0,
        "clients_send_resume": send_resume,
    }
    try:
        clients = Clients(users, processes, secret, [first.url], [second.url], send_resume)
        await first.wait_ready()
        await second.wait_ready()
        both_ready = time.monotonic()
        log(f"{name}: A and B ready; {count:,} clients sign in on A")
        a_cpu_before = first.cpu_s()
        connects = await clients.ask("connect", 900)
        a_cpu_after = first.cpu_s()
        connected = sum(item["connected"] for item in connects)
        connect_s = max(item["seconds"] for item in connects)
        result["connect"] = {
            "connected": connected,
            "seconds": round(connect_s, 2),
            "per_s": round(connected / connect_s, 1) if connect_s else None,
            "refused": dict(sum((Counter(item["refused"]) for item in connects), Counter())),
            "a_cpu_ms_per_sign_in": _per_client_ms(a_cpu_before, a_cpu_after, connected),
        }
        log(f"{name}: {connected:,} on A after {connect_s:.1f} s")
        if connected < count:
            result["connect"]["failures"] = [failure for item in connects for failure in item["failures"]][:5]
        await asyncio.sleep(max(0.0, both_ready + BOTH_HEARD_S - time.monotonic()))

        feed = FeedProcess(exchange, users, rate)
        feed_task = asyncio.create_task(feed.run())
        await clients.ask("follow", 60)
        await asyncio.sleep(args.warm)

        a_cpu_at_term = first.cpu_s()
        b_cpu_at_term = second.cpu_s()
        load_at_sigterm = round(os.getloadavg()[0], 2)
        machine_at_term, rabbit_at_term = machine_cpu_seconds(), cpu_seconds(broker_pid())
        sigterm_at = time.monotonic()
        os.kill(first.pid, signal.SIGTERM)
        # Reaped every 20 ms from now on, so its exit time is not the moment someone looked.
        exit_watch = asyncio.create_task(first.wait_exit(EXIT_WAIT_S))
        tasks.append(exit_watch)
        log(f"{name}: SIGTERM to A; clients reconnect to B")
        deadline = sigterm_at + ALL_BACK_DEADLINE_S
        progress: list[dict[str, Any]] = []
        b_cpu_all_back: float | None = None
        while time.monotonic() < deadline:
            progress = await clients.ask("progress", 60)
            if sum(item["back"] for item in progress) >= connected:
                b_cpu_all_back = second.cpu_s()
                break
            await asyncio.sleep(0.2)
        else:
            b_cpu_all_back = second.cpu_s()
        machine_all_back, rabbit_all_back = machine_cpu_seconds(), cpu_seconds(broker_pid())
        detected_at = time.monotonic()
        back = sum(item["back"] for item in progress)
        log(f"{name}: {back:,} of {connected:,} back after {detected_at - sigterm_at:.1f} s")
        await asyncio.sleep(args.after)
        feed.stop.set()
        await feed_task
        b_cpu_end = second.cpu_s()
        feed_end_at = time.monotonic()
        result["handover"] = await handover_requests(second.port, connected)
        exited = await exit_watch
        if not exited:
            result["a_exit_error"] = f"still running {EXIT_WAIT_S:.0f} s after SIGTERM; killed"
            await first.stop()

        # The last events reach their users: wait until the count stops growing.
        settle_until = time.monotonic() + SETTLE_MAX_S
        last, still = -1, 0
        while time.monotonic() < settle_until and still < 4:
            total = sum(item["received"] for item in await clients.ask("progress", 60))
            still = still + 1 if total == last else 0
            last = total
            await asyncio.sleep(0.5)
        finished = await clients.ask("finish", 120)

        result.update(
            summarize(
                finished, feed, connected, sigterm_at, first, b_cpu_at_term, b_cpu_all_back, b_cpu_end, a_cpu_at_term
            )
        )
        result["all_back_detected_s"] = round(detected_at - sigterm_at, 2)
        result.update(net_cpu(result, finished, b_cpu_all_back, b_cpu_end, detected_at, feed_end_at - detected_at))
        result["load_average_1m_at_sigterm"] = load_at_sigterm
        # How busy the whole machine was while the clients came back: near 1, every process waited for a core.
        busy, total = (after - before for after, before in zip(machine_all_back, machine_at_term, strict=True))
        result["machine_busy_share_to_all_back"] = round(busy / total, 3) if total > 0 else None
        result["rabbitmq_cpu_s_to_all_back"] = round(rabbit_all_back - rabbit_at_term, 2)
        result["client_cpu_s"] = round(sum(item["cpu_s"] for item in finished), 1)
    except (RuntimeError, TimeoutError, OSError, EOFError) as error:
        result["error"] = repr(error)[:500]
        log(f"{name}: error {error!r}")
        for instance in (first, second):
            log(f"{name}: {instance.name} log tail: {instance.log_tail()[-600:]}")
    finally:
        for task in tasks:
            task.cancel()
        if feed is not None:
            feed.stop.set()
        if feed_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed_task, 40)
        if clients is not None:
            clients.stop()
        for instance in (first, second):
            await instance.stop()
        await cleanup_amqp(exchange, [first.queue_name, second.queue_name])
    return result


def net_cpu(
    result: dict[str, Any],
    finished: list[dict[str, Any]],
    at_all_back: float | None,
    at_end: float | None,
    detected_at: float,
    after_s: float,
) -> dict[str, Any]:
    """B's CPU per client back net of delivering the feed: B's CPU rate once all were back (the feed to every
    client, nothing else), per client, times each client's time on B before all were seen back, is taken off
    B's CPU from the SIGTERM to that moment."""
    storm = result.get("b_cpu_s_sigterm_to_all_back")
    back = result.get("back")
    if storm is None or not back or at_all_back is None or at_end is None or after_s <= 0:
        return {}
    feed_rate = (at_end - at_all_back) / after_s
    on_b_s = sum(
        max(0.0, detected_at - user["back_at"]) for item in finished for user in item["users"] if user["back_at"]
    )
    net = max(0.0, storm - feed_rate / back * on_b_s)
    return {
        "b_cpu_s_per_s_feed_only": round(feed_rate, 3),
        "b_cpu_ms_per_client_back_net_of_feed": round(net * 1000 / back, 3),
    }


async def handover_requests(port: int, clients: int) -> dict[str, Any]:
    """What B's /metrics counted of the hand-over: control-plane requests to take sessions over (round trips,
    a batch counting once), the sessions they asked for, and the requests per client that moved."""
    async with httpx.AsyncClient() as http:
        try:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics", timeout=10)).text
        except httpx.HTTPError as error:
            return {"error": repr(error)[:200]}
    requests: Counter[str] = Counter()
    sessions: Counter[str] = Counter()
    counters = {"notifier_handover_requests": requests, "notifier_handover_sessions_asked": sessions}
    for family in text_string_to_metric_families(text):
        counts = counters.get(family.name)
        if counts is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                counts[sample.labels["kind"]] += int(sample.value)
    total = sum(requests.values())
    return {
        "requests": total,
        "requests_by_kind": {kind: count for kind, count in requests.items() if count},
        "sessions_asked": sum(sessions.values()),
        "requests_per_client": round(total / clients, 3) if clients else None,
    }


def _per_client_ms(before: float | None, after: float | None, clients: int) -> float | None:
    if before is None or after is None or not clients:
        return None
    return round((after - before) * 1000 / clients, 3)


def summarize(
    finished: list[dict[str, Any]],
    feed: FeedProcess,
    connected: int,
    sigterm_at: float,
    first: Instance,
    b_cpu_at_term: float | None,
    b_cpu_all_back: float | None,
    b_cpu_end: float | None,
    a_cpu_at_term: float | None,
) -> dict[str, Any]:
    users = [user for item in finished for user in item["users"]]
    refusals: Counter[str] = sum((Counter(item["refusals"]) for item in finished), Counter())
    back_at = [user["back_at"] for user in users if user["back_at"] is not None]
    back = len(back_at)
    gaps = [user["back_at"] - user["closed_at"] for user in users if user["back_at"] and user["closed_at"]]
    delivery = delivery_counts(users, feed)
    last_back = max(back_at, default=None)
    a_exit_s = first.exited_at - sigterm_at if first.exited_at is not None else None
    a_cpu = (
        first.total_cpu_s - a_cpu_at_term
        if first.total_cpu_s is not None and a_cpu_at_term is not None and first.exit_code is not None
        else None
    )
    b_storm = b_cpu_all_back - b_cpu_at_term if b_cpu_all_back is not None and b_cpu_at_term is not None else None
    return {
        "held": connected,
        "dropped": sum(1 for user in users if user["closed_at"] is not None),
        "close_codes": dict(Counter(str(user["close_code"]) for user in users if user["close_code"] is not None)),
        "back": back,
        "recovered_true": sum(1 for user in users if user["recovered"] is True),
        "recovered_false": sum(1 for user in users if user["recovered"] is False),
        "all_back_s": round(last_back - sigterm_at, 2) if last_back is not None and back >= connected else None,
        "last_back_s": round(last_back - sigterm_at, 2) if last_back is not None else None,
        "half_back_s": round(sorted(back_at)[back // 2] - sigterm_at, 2) if back_at else None,
        "gap_s_p50": _round(percentile(gaps, 0.50), 3),
        "gap_s_p99": _round(percentile(gaps, 0.99), 3),
        "gap_s_max": _round(max(gaps, default=None), 3),
        "attempts": sum(user["attempts"] for user in users),
        "refused_503": refusals.get("http 503", 0),
        "refusals": dict(refusals),
        "dropped_again_after_back": sum(user["drops"] for user in users),
        **feed.report(),
        "events_confirmed": sum(len(ids) for ids in feed.confirmed.values()),
        **delivery,
        "a_exit_s": _round(a_exit_s, 2),
        "a_exit_code": first.exit_code,
        "a_cpu_s_after_sigterm": _round(a_cpu, 2),
        "b_cpu_s_sigterm_to_all_back": _round(b_storm, 2),
        "b_cpu_ms_per_client_back": _round(b_storm * 1000 / back, 3) if b_storm is not None and back else None,
        "b_cpu_s_sigterm_to_end": _round(
            b_cpu_end - b_cpu_at_term if b_cpu_end is not None and b_cpu_at_term is not None else None, 2
        ),
        "client_failures": [failure for item in finished for failure in item["failures"]][:5],
    }


MISSING_SAMPLE = 20


def delivery_counts(users: list[dict[str, Any]], feed: FeedProcess) -> dict[str, Any]:
    """What reached each user against what the feed had confirmed for it: events missing (and of those, for
    users whose resume said `recovered: true`), delivered twice, users whose events came out of order, and ids
    that were never published. For the first few users missing any: which events, when they were published and
    when the user was off the air (monotonic seconds), to find where they went."""
    missing = doubled = out_of_order = users_missing = foreign = missing_recovered = 0
    published = set(range(feed.published))
    sample: list[dict[str, Any]] = []
    doubled_sample: list[dict[str, Any]] = []
    for user in users:
        ids = user["ids"]
        seen = set(ids)
        doubled += len(ids) - len(seen)
        if any(later < earlier for earlier, later in itertools.pairwise(ids)):
            out_of_order += 1
        expected = set(feed.confirmed.get(user["user"], ()))
        lost = len(expected - seen)
        missing += lost
        missing_recovered += lost if user["recovered"] is True else 0
        users_missing += 1 if lost else 0
        foreign += len(seen - expected - published)
        if len(ids) > len(seen) and len(doubled_sample) < MISSING_SAMPLE:
            twice = sorted(seq for seq, count in Counter(ids).items() if count > 1)
            arrivals = user.get("arrivals") or []
            # Each copy's connection and arrival: one connection twice, or two connections each once.
            copies = {seq: [at for got, at in zip(ids, arrivals, strict=False) if got == seq] for seq in twice}
            doubled_sample.append(
                {"user": user["user"], "twice": twice, "received": ids, "gaps": user.get("gaps", []), "copies": copies}
            )
        if lost and len(sample) < MISSING_SAMPLE:
            gone = sorted(expected - seen)
            sample.append(
                {
                    "user": user["user"],
                    "missing": [[seq, round(feed.sent_at[seq], 3)] for seq in gone if seq < len(feed.sent_at)],
                    "received": ids,
                    "gaps": user.get("gaps", []),
                }
            )
    return {
        "missing_sample": sample,
        "doubled_sample": doubled_sample,
        "events_received": sum(len(user["ids"]) for user in users),
        "missing": missing,
        "users_missing": users_missing,
        "missing_recovered": missing_recovered,
        "doubled": doubled,
        "users_out_of_order": out_of_order,
        "foreign_ids": foreign,
    }


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def goals(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, measured, met) from the run's numbers; met is None when it could not be measured."""
    on = report["phases"].get("resume", {})
    plain = report["phases"].get("plain", {})
    clients = report["clients"]
    if "error" in on or "held" not in on:
        return [("resume phase ran", on.get("error", "no result"), False)]
    ratio = report.get("all_back_ratio")
    exit_s = on.get("a_exit_s")
    rows: list[tuple[str, str, bool | None]] = [
        (f"all {clients:,} held on A", f"{on['held']:,}", on["held"] == clients),
        ("every client back on B", f"{on['back']:,} of {on['held']:,}", on["back"] == on["held"] == clients),
        (
            "all with `recovered: true`",
            f"{on['recovered_true']:,} true, {on['recovered_false']:,} false",
            on["recovered_true"] == clients,
        ),
        ("0 events missing", f"{on['missing']:,} (of {on['events_confirmed']:,} confirmed)", on["missing"] == 0),
        ("0 events doubled", f"{on['doubled']:,}", on["doubled"] == 0),
        (
            "each user's events in order",
            f"{on['users_out_of_order']:,} users out of order",
            on["users_out_of_order"] == 0,
        ),
        (
            "all back within 2x the plain reconnect",
            f"{_s(on.get('all_back_s'))} vs {_s(plain.get('all_back_s'))}"
            + (f" = {ratio:.2f}x" if ratio is not None else ""),
            None if ratio is None else ratio <= 2.0,
        ),
        (
            "per-client gap p99 <= 5 s",
            _s(on.get("gap_s_p99")),
            None if on.get("gap_s_p99") is None else on["gap_s_p99"] <= 5.0,
        ),
        (
            f"A exits within NOTIFIER_SHUTDOWN_TIMEOUT_S ({SHUTDOWN_TIMEOUT_S:g} s, {SHUTDOWN_TIMEOUT_NOTE})",
            _s(exit_s) + (f", exit code {on['a_exit_code']}" if on.get("a_exit_code") is not None else ""),
            None if exit_s is None else exit_s <= SHUTDOWN_TIMEOUT_S,
        ),
    ]
    return rows


def _s(value: Any) -> str:
    return "-" if value is None else f"{value:.2f} s"


MEASURES = (
    ("connect.connected", "held on A", "{:,}"),
    ("connect.seconds", "sign-in of all on A, s", "{:.1f}"),
    ("connect.a_cpu_ms_per_sign_in", "A's CPU per fresh sign-in, ms", "{:.2f}"),
    ("dropped", "connections A ended", "{:,}"),
    ("close_codes", "close codes from A", "{}"),
    ("back", "back on B", "{:,}"),
    ("recovered_true", "`recovered: true`", "{:,}"),
    ("recovered_false", "`recovered: false`", "{:,}"),
    ("all_back_s", "SIGTERM to all back, s", "{:.2f}"),
    ("half_back_s", "SIGTERM to half back, s", "{:.2f}"),
    ("gap_s_p50", "gap p50 (close to welcome), s", "{:.3f}"),
    ("gap_s_p99", "gap p99, s", "{:.3f}"),
    ("gap_s_max", "gap max, s", "{:.3f}"),
    ("attempts", "connect attempts to B", "{:,}"),
    ("refused_503", "handshakes refused with 503", "{:,}"),
    ("refusals", "failed attempts by reason", "{}"),
    ("dropped_again_after_back", "connections to B that ended again", "{:,}"),
    ("feed_rate_per_s", "feed, events/s achieved", "{:,.0f}"),
    ("events_confirmed", "events confirmed", "{:,}"),
    ("events_not_confirmed", "events not confirmed (excluded from missing)", "{:,}"),
    ("feed_errors", "why not confirmed", "{}"),
    ("confirm_s_p50", "publish to RabbitMQ's confirm p50, s", "{:.3f}"),
    ("confirm_s_p99", "publish to RabbitMQ's confirm p99, s", "{:.3f}"),
    ("confirm_s_max", "publish to RabbitMQ's confirm max, s", "{:.3f}"),
    ("events_received", "events received", "{:,}"),
    ("missing", "events missing (confirmed, never received)", "{:,}"),
    ("users_missing", "users missing any", "{:,}"),
    ("missing_recovered", "of them missing by users told `recovered: true`", "{:,}"),
    ("doubled", "events doubled (same user, same id twice)", "{:,}"),
    ("users_out_of_order", "users with events out of order", "{:,}"),
    ("a_exit_s", "A's exit after SIGTERM, s", "{:.2f}"),
    ("a_exit_code", "A's exit code", "{}"),
    ("a_cpu_s_after_sigterm", "A's CPU from SIGTERM to exit, s", "{:.2f}"),
    ("b_cpu_s_sigterm_to_all_back", "B's CPU from SIGTERM to all back, s", "{:.2f}"),
    ("b_cpu_ms_per_client_back", "B's CPU per client back, ms", "{:.3f}"),
    ("b_cpu_s_per_s_feed_only", "B's CPU once all were back (feed only), s per s", "{:.3f}"),
    ("b_cpu_ms_per_client_back_net_of_feed", "B's CPU per client back, net of the feed, ms", "{:.3f}"),
    ("b_cpu_s_sigterm_to_end", "B's CPU from SIGTERM to the feed's end, s", "{:.2f}"),
    ("load_average_1m_at_sigterm", "machine's 1-minute load average at the SIGTERM", "{:.2f}"),
    ("machine_busy_share_to_all_back", "machine's CPUs busy from SIGTERM to all back, share", "{:.3f}"),
    ("rabbitmq_cpu_s_to_all_back", "RabbitMQ's CPU from SIGTERM to all back, s", "{:.2f}"),
    ("handover.requests", "B's hand-over requests (control-plane round trips)", "{:,}"),
    ("handover.requests_by_kind", "of them by kind", "{}"),
    ("handover.sessions_asked", "sessions those requests asked for", "{:,}"),
    ("handover.requests_per_client", "hand-over round trips per client held on A", "{:.3f}"),
    ("client_cpu_s", "client processes' CPU (whole phase), s", "{:.1f}"),
)


def _lookup(result: dict[str, Any], key: str) -> Any:
    value: Any = result
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def _cell(result: dict[str, Any], key: str, form: str) -> str:
    value = _lookup(result, key)
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {v:,}" for k, v in sorted(value.items())) or "-"
    return form.format(value)


def render(report: dict[str, Any]) -> str:
    info = report["machine"]
    phases = report["phases"]
    lines = [
        "# Resume after a SIGTERM, side by side with a plain reconnect",
        "",
        f"Run {report['started']} on commit `{report['commit']}`{report['dirty_note']}; {report['seconds']:.0f} s.",
        f"Machine: {info.get('cpu_model', '?')}, {info.get('cpus', '?')} CPUs, {info.get('memory_gib', '?')} GiB, "
        f"{info.get('python', '')}; RabbitMQ {report['rabbitmq']}; open files {report['open_files']}; nothing "
        "pinned (A, B, RabbitMQ, the client processes and the publisher share the cores).",
        "",
        f"{report['clients']:,} clients in {report['processes']} processes (source addresses 127.0.0.2 to "
        f"127.0.0.61), feed {report['rate']:,.0f} events/s round-robin over their personal topics (one "
        f"connection with confirms, in a process of its own at nice {FEED_NICE}); {report['warm_s']:g} s of feed "
        f"before the SIGTERM, {report['after_s']:g} s after "
        f"all were back. Reconnect with notifier.js's backoff (full jitter, base {BACKOFF_BASE_S} s, cap "
        f"{BACKOFF_CAP_S:g} s; close codes {', '.join(map(str, sorted(BUSY_CLOSE_CODES)))} and HTTP 503 start two "
        "steps up) to B, with `resume` and the count of event frames. NOTIFIER_SHUTDOWN_TIMEOUT_S is "
        f"{SHUTDOWN_TIMEOUT_S:g} s ({SHUTDOWN_TIMEOUT_NOTE}); resume on is NOTIFIER_RESUME_WINDOW_S at its default "
        f"({RESUME_WINDOW_S:g} s), the plain reconnect sets it to 0 on both instances"
        + (
            " and its clients still send `resume` (answered `recovered: false`)."
            if report["plain_sends_resume"]
            else " and its clients sign in without `resume` (a `resume` there still asks the gone holder and can "
            "wait NOTIFIER_RESUME_TIMEOUT_S; `--plain-sends-resume` measures that)."
        ),
        "",
        "## Goals (resume on)",
        "",
        "| goal | measured | met |",
        "|---|---|---|",
    ]
    for goal, measured, met in goals(report):
        verdict = "not measured" if met is None else ("met" if met else "NOT met")
        lines.append(f"| {goal} | {measured} | {verdict} |")
    ratio = report.get("all_back_ratio")
    lines += [
        "",
        "## Both phases",
        "",
        f"Time all back, resume / plain: {'-' if ratio is None else f'{ratio:.2f}x'}.",
        "",
        f"| measure | {PHASES[0][1]} | {PHASES[1][1]} |",
        "|---|---|---|",
    ]
    for name, _title in PHASES:
        if "error" in phases.get(name, {}):
            lines.append(f"| error ({name}) | {phases[name]['error'][:300]} | |")
    for key, title, form in MEASURES:
        cells = [_cell(phases.get(name, {}), key, form) for name, _ in PHASES]
        lines.append(f"| {title} | {cells[0]} | {cells[1]} |")
    cost = report.get("resume_cost_ratio", {})
    lines += [
        "",
        "*gap*: from a client's old connection closing (its close frame or disconnect) to the welcome of its new "
        "one. *missing*: events the broker confirmed that their user never received; in the plain phase these "
        "are the events published while a client was away (nothing keeps them). *B's CPU per client back*: B's "
        "utime+stime from the SIGTERM to the moment all were seen back (polled every 0.2 s), divided by the "
        "clients back; it includes delivering the feed to those back meanwhile, in both phases."
        + "".join(f" Resume / plain, {key}: {value:.2f}x." for key, value in cost.items())
        + " *net of the feed*: B's CPU rate per client once all were back (delivering the feed), times each "
        "client's time on B before all were seen back, taken off.",
        "",
    ]
    failures = [f for name, _ in PHASES for f in phases.get(name, {}).get("client_failures", [])]
    if failures:
        lines += ["Client errors (first few): " + "; ".join(f"`{failure}`" for failure in failures[:5]), ""]
    return "\n".join(lines)


def git_commit() -> tuple[str, str]:
    """The checked-out commit and the last one that changed the service (notifier/), and a note on uncommitted
    changes to it."""

    def last(*paths: str) -> str:
        return subprocess.run(
            ["git", "log", "-1", "--format=%h %s", "--", *paths], cwd=REPO, capture_output=True, text=True, check=False
        ).stdout.strip()[:100]

    head, service = last(), last("notifier")
    commit = head if head == service else f"{head}`; the service (notifier/) last changed in `{service}"
    changed = subprocess.run(
        ["git", "status", "--porcelain", "--", "notifier"], cwd=REPO, capture_output=True, text=True, check=False
    ).stdout.strip()
    note = f" (with {len(changed.splitlines())} uncommitted changes under notifier/)" if changed else ""
    return commit, note


async def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    commit, dirty = git_commit()
    info = machine()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "dirty_note": dirty,
        "machine": info,
        "rabbitmq": info.get("rabbitmq", "?"),
        "open_files": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "clients": args.clients,
        "processes": args.processes,
        "rate": args.rate,
        "warm_s": args.warm,
        "after_s": args.after,
        "shutdown_timeout_s": SHUTDOWN_TIMEOUT_S,
        "resume_window_s": RESUME_WINDOW_S,
        "plain_sends_resume": args.plain_sends_resume,
        "phases": {},
    }
    started = time.monotonic()
    for name, _title in PHASES:
        if name not in args.phases:
            continue
        quiet = await wait_broker_quiet()
        log(f"{name}: broker quiet after {quiet.get('broker_quiet_after_s')} s")
        resume = name == "resume"
        report["phases"][name] = await run_phase(name, resume, resume or args.plain_sends_resume, args, workdir)
        report["phases"][name]["before"] = quiet
    on, plain = report["phases"].get("resume", {}), report["phases"].get("plain", {})
    if on.get("all_back_s") and plain.get("all_back_s"):
        report["all_back_ratio"] = round(on["all_back_s"] / plain["all_back_s"], 3)
    for key in ("b_cpu_ms_per_client_back", "b_cpu_ms_per_client_back_net_of_feed"):
        if on.get(key) and plain.get(key):
            report.setdefault("resume_cost_ratio", {})[key] = round(on[key] / plain[key], 3)
    report["goals"] = [{"goal": goal, "measured": measured, "met": met} for goal, measured, met in goals(report)]
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.resume_storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, help="clients that move (default 10000; smoke 200)")
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--rate", type=float, default=1000.0, help="feed, events/s over all users (default 1000)")
    parser.add_argument("--warm", type=float, help="seconds of feed before the SIGTERM (default 5; smoke 2)")
    parser.add_argument("--after", type=float, help="seconds of feed after all are back (default 5; smoke 2)")
    parser.add_argument(
        "--plain-sends-resume",
        action="store_true",
        help="in the plain phase, clients still send `resume` (answered `recovered: false`) instead of a plain sign-in",
    )
    parser.add_argument(
        "--phases", default="resume,plain", help="comma list of the phases to run (default resume,plain)"
    )
    parser.add_argument("--smoke", action="store_true", help="200 clients: a quick check that it all runs")
    parser.add_argument("--out", type=Path, help="where resume_storm.{md,json} go (default bench/results)")
    parser.add_argument("--keep-logs", type=Path, help="copy the instances' logs into this directory")
    args = parser.parse_args(argv)
    args.phases = {name for name in args.phases.split(",") if name}
    if args.phases - {name for name, _ in PHASES}:
        parser.error(f"phases are {', '.join(name for name, _ in PHASES)}")
    args.clients = args.clients or (200 if args.smoke else 10000)
    args.warm = args.warm if args.warm is not None else (2.0 if args.smoke else 5.0)
    args.after = args.after if args.after is not None else (2.0 if args.smoke else 5.0)
    out = args.out or (RESULTS / "smoke" if args.smoke else RESULTS)
    if args.processes < 1 or args.clients < args.processes:
        parser.error("need at least one client per process")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the instances started here inherit it
    with tempfile.TemporaryDirectory(prefix="notifier-resume-") as workdir:
        try:
            report = asyncio.run(run_all(args, Path(workdir)))
        finally:
            if args.keep_logs is not None:
                args.keep_logs.mkdir(parents=True, exist_ok=True)
                for path in Path(workdir).glob("*.log"):
                    (args.keep_logs / path.name).write_bytes(path.read_bytes())
    out.mkdir(parents=True, exist_ok=True)
    (out / "resume_storm.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    text = render(report)
    (out / "resume_storm.md").write_text(text)
    print(text)
    return 0 if all(met for _goal, _measured, met in goals(report)) else 1


if __name__ == "__main__":
    raise SystemExit(main())
