"""`notifier serve --workers N`: N full instances on one listening socket, under one supervising process.

Each worker is an instance in the RabbitMQ sense, with its own instance id, queue and bindings, so growing
across cores works exactly like growing across hosts: RabbitMQ routes each event to the workers whose clients
hold its topic. The parent binds the socket once and forks the workers, which all accept on it. It forwards
SIGTERM and SIGINT to them as SIGTERM, waits for them within `shutdown_bound_s`, and restarts a worker that
dies on its own, at most `RESTART_LIMIT` times in `RESTART_WINDOW_S` (past that it stops everything and exits
non-zero, so the orchestrator sees a broken instance instead of a crash loop hidden inside it). It also owns
the private directory where workers share their metrics, so any worker's `/metrics` reports them all.

With one worker there is no supervisor: the instance runs in this process.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import logging
import math
import multiprocessing
import os
import signal
import socket
import sys
import time
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import NoReturn

import structlog

from notifier.observability import group_metrics
from notifier.runtime.server import serve
from notifier.settings import ConfigError, Settings

log = structlog.get_logger("notifier.workers")

MAX_WORKERS = 64
STOP_POLL_S = 0.1
RESTART_LIMIT = 5
RESTART_WINDOW_S = 60.0
# Beyond the drain (NOTIFIER_SHUTDOWN_TIMEOUT_S): uvicorn's own close and the broker connection's close.
EXIT_MARGIN_S = 5.0

_PR_SET_PDEATHSIG = 1


def shutdown_bound_s(settings: Settings) -> float:
    """How long a stop may take before the supervisor kills what is left; an orchestrator's grace period
    (Kubernetes' terminationGracePeriodSeconds, `docker stop -t`) must be longer."""
    return settings.shutdown_timeout_s + EXIT_MARGIN_S


def check_workers(settings: Settings) -> None:
    """Several workers only make sense on RabbitMQ: in-memory brokers are private to each process."""
    if worker_count(settings) > 1 and settings.uses_memory_broker:
        raise ConfigError(
            "NOTIFIER_WORKERS > 1 needs RabbitMQ: with memory:// each worker would have its own broker "
            "and miss the others' events"
        )


def usable_cores() -> int:
    """The cores this process may use: the cgroup v2 CPU quota of its container if it has one, else its CPU
    affinity; at least 1, at most MAX_WORKERS."""
    cores = len(os.sched_getaffinity(0))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, math.ceil(int(quota) / int(period)))
    return max(1, min(cores, MAX_WORKERS))


def worker_count(settings: Settings) -> int:
    """NOTIFIER_WORKERS as a number; "auto" is one per usable core (one with the in-memory broker)."""
    if settings.workers != "auto":
        return settings.workers
    return 1 if settings.uses_memory_broker else usable_cores()


def serve_workers(settings: Settings) -> None:
    """Run NOTIFIER_WORKERS instances on NOTIFIER_HOST:NOTIFIER_PORT until SIGTERM or SIGINT."""
    settings = settings.model_copy(update={"workers": worker_count(settings)})
    check_workers(settings)
    if settings.workers == 1:
        serve(settings)
        leave_now()
    code = Supervisor(settings).run()
    if code:
        raise SystemExit(code)


def listen(host: str, port: int, backlog: int) -> socket.socket:
    """Bind and listen once, in the parent, so every worker accepts on the same socket."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(backlog)
    sock.set_inheritable(True)
    return sock


def worker_settings(settings: Settings, index: int) -> Settings:
    """A worker's own settings: a fixed NOTIFIER_INSTANCE_ID gets the worker's index, since two workers on one
    queue would each take the other's events; an empty one stays empty and each worker draws its own."""
    instance_id = f"{settings.instance_id}-{index}" if settings.instance_id else ""
    metrics_port = settings.metrics_port + index if settings.metrics_port else 0  # one port may have one server
    return settings.model_copy(update={"instance_id": instance_id, "workers": 1, "metrics_port": metrics_port})


class Supervisor:
    """The parent process of `notifier serve --workers N`."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._context = multiprocessing.get_context("fork")
        self._workers: dict[int, BaseProcess] = {}
        self._restarts: deque[float] = deque()
        self._signals: list[int] = []
        self._sock: socket.socket | None = None
        self._wake_read: socket.socket | None = None
        self._wake_write: socket.socket | None = None
        self._metrics_dir: Path | None = None

    def run(self) -> int:
        """Start the workers, keep them running until a signal, stop them; the exit code."""
        settings = self.settings
        try:
            self._sock = listen(settings.host, settings.port, settings.listen_backlog)
        except OSError as error:
            log.error("listen_failed", host=settings.host, port=settings.port, error=str(error))
            return 1
        self._metrics_dir = group_metrics.create_directory()
        self._wake_read, self._wake_write = socket.socketpair()
        self._wake_read.setblocking(False)
        self._wake_write.setblocking(False)
        # A signal writes a byte here, so the wait below wakes at once and none is missed between checks.
        previous_wakeup = signal.set_wakeup_fd(self._wake_write.fileno(), warn_on_full_buffer=False)
        previous_handlers = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        log.info(
            "supervisor_started",
            pid=os.getpid(),
            workers=worker_count(settings),
            host=settings.host,
            port=self._sock.getsockname()[1],
            metrics_dir=str(self._metrics_dir),
        )
        try:
            for index in range(worker_count(settings)):
                self._start(index)
            code = self._supervise()
            return self._stop_all() or code
        finally:
            signal.set_wakeup_fd(previous_wakeup)
            for sig, handler in previous_handlers.items():
                signal.signal(sig, handler)
            self._sock.close()
            group_metrics.remove_directory(self._metrics_dir)
            self._wake_read.close()
            self._wake_write.close()

    def _on_signal(self, sig: int, _: FrameType | None) -> None:
        self._signals.append(sig)

    def _start(self, index: int) -> None:
        assert self._sock is not None
        sys.stdout.flush()
        sys.stderr.flush()
        process = self._context.Process(
            target=_worker_main,
            args=(
                worker_settings(self.settings, index),
                self._sock,
                index,
                os.getpid(),
                self._close_in_worker,
                self._metrics_dir,
            ),
            name=f"notifier-worker-{index}",
        )
        process.start()
        self._workers[index] = process
        log.info("worker_started", worker=index, pid=process.pid)

    def _close_in_worker(self) -> None:
        # Runs in the forked worker: the parent's signal pipe is not the worker's business.
        for sock in (self._wake_read, self._wake_write):
            if sock is not None:
                sock.close()

    def _supervise(self) -> int:
        """Wait for a signal (0) or for too many unexpected worker deaths (1)."""
        assert self._wake_read is not None
        while not self._signals:
            sentinels = {process.sentinel: index for index, process in self._workers.items()}
            ready = wait([self._wake_read, *sentinels], timeout=None)
            self._drain_wakeups()
            if self._signals:
                break
            for item in ready:
                if not isinstance(item, int) or item not in sentinels:
                    continue
                index = sentinels[item]
                process = self._workers[index]
                process.join()
                log.error("worker_died", worker=index, pid=process.pid, exitcode=process.exitcode)
                if self._metrics_dir is not None and process.pid is not None:
                    group_metrics.retire(self._metrics_dir, process.pid)
                if not self._may_restart():
                    log.error("worker_restart_limit", restarts=RESTART_LIMIT, window_s=RESTART_WINDOW_S)
                    return 1
                self._start(index)
        log.info("stopping", signal=signal.Signals(self._signals[0]).name, workers=len(self._workers))
        return 0

    def _may_restart(self) -> bool:
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_S:
            self._restarts.popleft()
        if len(self._restarts) >= RESTART_LIMIT:
            return False
        self._restarts.append(now)
        return True

    def _stop_all(self) -> int:
        """SIGTERM every worker and wait within the bound; a second signal or the bound kills what is left."""
        signals_seen = len(self._signals)
        for process in self._workers.values():
            _send(process, signal.SIGTERM)
        deadline = time.monotonic() + shutdown_bound_s(self.settings)
        assert self._wake_read is not None
        while any(process.is_alive() for process in self._workers.values()):
            remaining = deadline - time.monotonic()
            if remaining <= 0 or len(self._signals) > signals_seen:
                alive = [process.pid for process in self._workers.values() if process.is_alive()]
                log.warning("workers_killed", pids=alive, reason="timeout" if remaining <= 0 else "second signal")
                for process in self._workers.values():
                    _send(process, signal.SIGKILL)
                break
            sentinels = [process.sentinel for process in self._workers.values() if process.is_alive()]
            # Also look again every moment: a sentinel can stay silent when a sibling inherited its pipe,
            # and a stop must not wait out the whole bound for a worker that is already gone.
            wait([self._wake_read, *sentinels], timeout=min(remaining, STOP_POLL_S))
            self._drain_wakeups()
        code = 0
        for index, process in self._workers.items():
            process.join()
            if process.exitcode != 0:
                code = 1
            log.info("worker_stopped", worker=index, pid=process.pid, exitcode=process.exitcode)
        log.info("supervisor_stopped", exitcode=code)
        return code

    def _drain_wakeups(self) -> None:
        assert self._wake_read is not None
        with contextlib.suppress(BlockingIOError):
            while self._wake_read.recv(512):
                pass


def _send(process: BaseProcess, sig: int) -> None:
    if process.pid is not None and process.is_alive():
        with contextlib.suppress(ProcessLookupError):
            os.kill(process.pid, sig)


def _worker_main(
    settings: Settings,
    sock: socket.socket,
    index: int,
    parent_pid: int,
    close_inherited: Callable[[], None],
    metrics_dir: Path | None,
) -> None:
    """A forked worker: one full instance on the shared socket."""
    signal.set_wakeup_fd(-1)
    close_inherited()
    # Until uvicorn installs its own handlers (which drain), a stop request ends the starting worker at once.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _exit_quietly)
    _stop_with_parent(parent_pid)
    structlog.contextvars.bind_contextvars(worker=index)
    serve(settings, sock=sock, metrics_dir=metrics_dir)
    leave_now()


def leave_now() -> NoReturn:
    """The instance has drained and stopped: exit at once rather than wait in interpreter teardown, which
    frees what thousands of connections left behind object by object (over a second at 15,000, while a restart
    waits for the port) and once waited seconds for helper threads a library had left behind."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _exit_quietly(_: int, __: FrameType | None) -> None:
    raise SystemExit(0)


def _stop_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGTERM this worker if the supervisor dies (say, SIGKILLed), so no orphan keeps the port."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent_pid:  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)
