"""The systems under test: how to start each on loopback, where its clients connect, which pid to measure."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# The broker, vhost included; the same variable the tests read.
AMQP_URL = os.environ.get("NOTIFIER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
WEB_STOMP_PORT = 15674
# Web-STOMP opens one broker connection per client; RabbitMQ here may have 1024 open files, so stay well below.
WEB_STOMP_MAX_CLIENTS = 500


@dataclass
class System:
    name: str
    label: str
    protocol: str  # client protocol: "notifier" (WebSocket), "sse" (notifier's HTTP stream), "socketio" or "stomp"
    publish_format: str = "topic"  # "topic" (routing key = topic) or "socketio" (emit envelope, fanout)
    module: str | None = None  # python -m <module>; None for systems we do not start (Web-STOMP)
    env: dict[str, str] = field(default_factory=dict)
    max_clients: int | None = None
    reference: bool = False  # no WebSocket clients: only consumes (aio-pika alone)
    only_kinds: tuple[str, ...] = ()  # scenario kinds it runs (empty: all); see bench.run.Scenario.kind
    note: str = ""


def all_systems() -> list[System]:
    return [
        System(
            "notifier",
            "notifier",
            "notifier",
            module="notifier",
            note="python -m notifier serve (uvicorn, websockets-sansio)",
        ),
        System(
            "notifier-sse",
            "notifier, HTTP stream (SSE)",
            "sse",
            module="notifier",
            note="the same server; clients on GET /sse (Server-Sent Events), subscribing with POST /sse/<key>",
        ),
        System(
            "notifier-quorum",
            "notifier, quorum instance queue",
            "notifier",
            module="notifier",
            env={"NOTIFIER_QUEUE_TYPE": "quorum"},
            note="NOTIFIER_QUEUE_TYPE=quorum: the instance queue replicated through Raft (one member on a "
            "single node; three on a 3-node cluster)",
        ),
        System(
            "notifier-memory",
            "notifier, in-memory broker",
            "notifier",
            module="notifier",
            env={"NOTIFIER_AMQP_URL": "memory://"},
            only_kinds=("idle",),
            note="NOTIFIER_AMQP_URL=memory://: the connect path without RabbitMQ (no bind round trip); "
            "connect+auth and idle memory only, since events from the bench's publisher cannot reach it",
        ),
        System(
            "fastapi-naive",
            "FastAPI naive loop (uvicorn websockets)",
            "notifier",
            module="bench.baselines.fastapi_naive",
            env={"BENCH_WS": "websockets"},
            note="await send_text per client in one aio-pika loop; uvicorn ws=websockets (its default)",
        ),
        System(
            "fastapi-naive-sansio",
            "FastAPI naive loop (uvicorn websockets-sansio)",
            "notifier",
            module="bench.baselines.fastapi_naive",
            env={"BENCH_WS": "websockets-sansio"},
            note="same app under the WebSocket implementation notifier uses",
        ),
        System(
            "websockets",
            "websockets broadcast()",
            "notifier",
            module="bench.baselines.websockets_broadcast",
            note="websockets 14+ asyncio server, websockets.broadcast() per aio-pika message",
        ),
        System(
            "picows",
            "picows server (Cython framing)",
            "notifier",
            module="bench.baselines.picows_broadcast",
            note="raw picows server, one transport.send() per subscriber per aio-pika message: the Python ceiling",
        ),
        System(
            "socketio",
            "python-socketio + AsyncAioPikaManager",
            "socketio",
            publish_format="socketio",
            module="bench.baselines.socketio_server",
            note="uvicorn ASGI; fed through the manager's fanout exchange with its emit envelope",
        ),
        System(
            "web-stomp",
            "RabbitMQ Web-STOMP",
            "stomp",
            max_clients=WEB_STOMP_MAX_CLIENTS,
            note=f"at most {WEB_STOMP_MAX_CLIENTS} clients (broker open-files limit); measured pid is the broker's",
        ),
        System(
            "aio-pika",
            "aio-pika alone (consume + ack, no WebSockets)",
            "none",
            module="bench.baselines.aiopika_consume",
            reference=True,
            note="reference for unicast: one queue, prefetch 512, ack per message",
        ),
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pin(cpus: set[int]) -> None:
    os.sched_setaffinity(0, cpus)


class Running:
    """One started system; `stop()` is idempotent and kills the whole process group."""

    def __init__(
        self, system: System, exchange: str, secret: str, workdir: Path, cpus: set[int], port: int | None = None
    ) -> None:
        self.system = system
        self.exchange = exchange
        self.secret = secret
        self.instance_id = f"bench{os.getpid()}x{int(time.time() * 1000) % 10**8}"
        self.status_file = workdir / f"{system.name}-{self.instance_id}.status"
        self.log_path = workdir / f"{system.name}-{self.instance_id}.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.pid: int
        if system.protocol == "stomp":
            self.port = WEB_STOMP_PORT
            self.pid = broker_pid()
            self.url = f"ws://127.0.0.1:{WEB_STOMP_PORT}/ws"
            return
        self.port = port or free_port()
        if system.protocol == "notifier":
            self.url = f"ws://127.0.0.1:{self.port}/ws"
        elif system.protocol == "sse":
            self.url = f"http://127.0.0.1:{self.port}/sse"
        else:
            self.url = f"ws://127.0.0.1:{self.port}"
        env = dict(os.environ)
        env.update(
            {
                "NOTIFIER_PORT": str(self.port),
                "NOTIFIER_AMQP_URL": AMQP_URL,
                "NOTIFIER_JWT_SECRET": secret,
                "NOTIFIER_EXCHANGE": exchange,
                "NOTIFIER_DEAD_LETTER_EXCHANGE": f"{exchange}.dead",
                "NOTIFIER_INSTANCE_ID": self.instance_id,
                "NOTIFIER_MAX_CONNECTIONS": "20000",
                "NOTIFIER_MAX_CONNECTIONS_PER_USER": "20",
                # Every bench client connects from 127.0.0.1, thousands at once.
                "NOTIFIER_MAX_CONNECTIONS_PER_ADDRESS": "20000",
                "NOTIFIER_NEW_CONNECTIONS_PER_S_PER_ADDRESS": "100000",
                "NOTIFIER_NEW_CONNECTIONS_BURST_PER_ADDRESS": "20000",
                "NOTIFIER_MAX_UNAUTHENTICATED_CONNECTIONS": "20000",
                # Room for a whole burst per client, so a saturated server is measured, not its slow-client policy.
                "NOTIFIER_SEND_QUEUE_SIZE": "8192",
                "NOTIFIER_QUEUE_EXPIRES_S": "30",
                "BENCH_PORT": str(self.port),
                "BENCH_SECRET": secret,
                "BENCH_EXCHANGE": exchange,
                "BENCH_AMQP": AMQP_URL,
                "BENCH_STATUS": str(self.status_file),
                **system.env,
            }
        )
        command = [sys.executable, "-m", str(system.module)]
        if system.module == "notifier":
            command.append("serve")
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lambda: pin(cpus),
            cwd=Path(__file__).resolve().parent.parent,
        )
        self.pid = self.process.pid

    @property
    def queue_name(self) -> str:
        return f"{self.exchange}.instance.{self.instance_id}"

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.system.name} exited with {self.process.returncode}: {self.log_tail()}")
            if self._is_ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.system.name} not ready after {timeout_s} s: {self.log_tail()}")

    def _is_ready(self) -> bool:
        if self.system.reference:
            return Path(str(self.status_file) + ".ready").exists()
        if self.system.module == "notifier":
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as response:
                    return bool(response.status == 200)
            except OSError:
                return False
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
        except OSError:
            return False
        # The baselines bind their queue in their startup, before they listen.
        return True

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.process is None:
            return
        process, self.process = self.process, None
        if process.poll() is None:
            try:
                # A graceful drain of thousands of clients is not what is measured: give it a few seconds only.
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=3)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=5)
            except ProcessLookupError:
                pass
        self._log.close()


def broker_pid() -> int:
    output = subprocess.run(["pgrep", "-o", "beam.smp"], capture_output=True, text=True, check=False).stdout.split()
    if not output:
        raise RuntimeError("RabbitMQ (beam.smp) is not running")
    return int(output[0])


def web_stomp_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", WEB_STOMP_PORT), timeout=1):
            return True
    except OSError:
        return False


def enable_web_stomp(timeout_s: float = 60.0) -> bool:
    """Enable RabbitMQ's Web-STOMP plugin if it is not already listening; True once port 15674 answers."""
    if web_stomp_available():
        return True
    subprocess.run(
        ["rabbitmq-plugins", "enable", "rabbitmq_web_stomp"], capture_output=True, timeout=timeout_s, check=False
    )
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if web_stomp_available():
            return True
        time.sleep(0.5)
    return False


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 of /proc/<pid>/stat (index 11 and 12 after the command name).
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> tuple[float, float]:
    """(busy, all) CPU seconds of the whole machine since boot, summed over its CPUs (/proc/stat): busy is all
    but idle and waiting for I/O."""
    fields = [int(value) for value in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    idle = fields[3] + fields[4]
    tick = os.sysconf("SC_CLK_TCK")
    return (sum(fields) - idle) / tick, sum(fields) / tick


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0
