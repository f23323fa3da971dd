"""Every process a test starts that runs notifier: one environment builder and one launcher.

`notifier_env` gives a child this process's environment without any NOTIFIER_* variable (so it reads only the
settings its test gives it), and with an exchange, the settings of a test server on the broker under test.
`NotifierProcess` starts `python -m notifier ...` (or another program that runs the app) in a session of its
own, with its output in files the test can read, waits for /readyz, and stops it: SIGTERM as an orchestrator
would, then SIGKILL to the whole group, so no worker outlives the test. Tests get one from the
`start_notifier` fixture (conftest.py), which ends them all when the test is over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import httpx

from tests.support import AMQP_URL, API_KEY, SECRET

PYTHON = sys.executable
NOTIFIER = (PYTHON, "-m", "notifier")
SHUTDOWN_TIMEOUT_S = 3.0
"""NOTIFIER_SHUTDOWN_TIMEOUT_S of test servers: a drain well within the time a test waits for a stop."""
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 15.0


def notifier_env(port: int | None = None, exchange: str | None = None, /, **variables: str) -> dict[str, str]:
    """The environment of a child process: this process's own without any NOTIFIER_* variable, then

    - with `port`: a server on 127.0.0.1:`port`;
    - with `exchange`: the broker under test, that exchange and its dead-letter exchange, the tests' token key
      and API key, queues that expire 5 s after their instance is gone, and a short drain;

    then `variables` (NOTIFIER_* settings or any other variable) over all of it.
    """
    env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")}
    if port is not None:
        env |= {"NOTIFIER_HOST": "127.0.0.1", "NOTIFIER_PORT": str(port)}
    if exchange is not None:
        env |= {
            "NOTIFIER_AMQP_URL": AMQP_URL,
            "NOTIFIER_EXCHANGE": exchange,
            "NOTIFIER_DEAD_LETTER_EXCHANGE": f"{exchange}.dead",
            "NOTIFIER_JWT_SECRET": SECRET,
            "NOTIFIER_API_KEYS": API_KEY,
            "NOTIFIER_QUEUE_EXPIRES_S": "5",
            "NOTIFIER_SHUTDOWN_TIMEOUT_S": str(SHUTDOWN_TIMEOUT_S),
        }
    return env | variables


def run_command(
    command: Sequence[str], env: Mapping[str, str], timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    """Run a command to completion with `env` (see `notifier_env`), its output captured as text."""
    return subprocess.run(list(command), env=dict(env), capture_output=True, text=True, timeout=timeout, check=False)


def run_cli(*args: str, env: Mapping[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`python -m notifier ...` to completion, with no NOTIFIER_* setting but those in `env`."""
    return run_command([*NOTIFIER, *args], notifier_env(**(env or {})), timeout)


class NotifierProcess:
    """One process running notifier, in a session (process group) of its own: `python -m notifier ...` by
    default, or any `command` that runs the app. Its stdout goes to `out_path`, its stderr (the logs) to
    `log_path`; both are appended to when it is started again."""

    def __init__(
        self,
        args: Sequence[str],
        env: Mapping[str, str],
        log_path: Path,
        port: int,
        *,
        command: Sequence[str] = NOTIFIER,
        cwd: Path | None = None,
    ) -> None:
        self.argv = [*command, *args]
        self.env = dict(env)
        self.port = port
        self.cwd = cwd
        self.log_path = log_path
        self.out_path = log_path.with_suffix(".out")
        self._process: asyncio.subprocess.Process | None = None

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.returncode

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    async def start(self, *, ready: bool = True, timeout: float = START_TIMEOUT_S) -> None:
        """Start it; with `ready`, wait until it answers /readyz on its port with 200 (connected to its broker)."""
        assert self._process is None or self._process.returncode is not None, "already running"
        with self.log_path.open("ab") as log, self.out_path.open("ab") as out:
            self._process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=self.env,
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=log,
                start_new_session=True,  # its own group: the test can see, and end, every process it forks
            )
        if ready:
            await self.wait_ready(timeout)

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        async with httpx.AsyncClient(base_url=self.http_url, timeout=2) as http:
            while True:
                if self.process.returncode is not None:
                    raise AssertionError(f"{self.argv} exited with {self.process.returncode}:\n{self.log_tail()}")
                with contextlib.suppress(httpx.TransportError):
                    if (await http.get("/readyz")).status_code == 200:
                        return
                if asyncio.get_running_loop().time() > deadline:
                    raise AssertionError(f"{self.argv} not ready within {timeout} s:\n{self.log_tail()}")
                await asyncio.sleep(0.05)  # polling a port that is not open yet: there is no event to await

    def send_signal(self, sig: int) -> None:
        self.process.send_signal(sig)

    async def wait(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """Its exit code, once it exits; TimeoutError if it does not within `timeout`."""
        return await asyncio.wait_for(self.process.wait(), timeout)

    async def stop(self, timeout: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, as an orchestrator stops it; its exit code. One that does not exit in time is killed, and
        that fails the test."""
        if self.process.returncode is None:
            self.send_signal(signal.SIGTERM)
            try:
                return await self.wait(timeout)
            except TimeoutError:
                self.kill()
                await self.process.wait()
                message = f"{self.argv} did not exit within {timeout} s of SIGTERM:\n{self.log_tail()}"
                raise AssertionError(message) from None
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the whole group: a crash, with no drain, of the process and of any worker it forked."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)

    def group_alive(self) -> bool:
        """Whether any process of its group still runs. A zombie does not count: a child orphaned by a killed
        worker (its body-parse process) is reparented to the machine's init, which may be slow to reap it."""
        return bool(self.group_members())

    def group_members(self) -> list[str]:
        """The running processes of its group, as "pid command" lines (read from /proc, Linux only)."""
        members = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                text = stat.read_text()
                command, fields = text[text.index("(") + 1 : text.rindex(")")], text[text.rindex(")") + 2 :].split()
                state, process_group = fields[0], int(fields[2])
                if process_group == self.pid and state != "Z":
                    members.append(f"{stat.parent.name} {command}")
        return members

    async def end(self) -> None:
        """The fixture's clean-up: SIGTERM if it still runs (a drained stop removes its queue), SIGKILL to
        whatever is left of its group, and collect its exit."""
        if self._process is None:
            return
        if self._process.returncode is None:
            self._process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._process.wait(), STOP_TIMEOUT_S)
        self.kill()
        await self._process.wait()

    def logs(self) -> str:
        """What it wrote to stderr: its log lines."""
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def output(self) -> str:
        """What it wrote to stdout (`notifier dev`'s banner, `publish`'s answer)."""
        return self.out_path.read_text(errors="replace") if self.out_path.exists() else ""

    def log_records(self) -> list[dict[str, Any]]:
        """Its JSON log lines, parsed."""
        return [json.loads(line) for line in self.logs().splitlines() if line.startswith("{")]

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-lines:])


class StartNotifier(Protocol):
    """The `start_notifier` fixture: start a NotifierProcess that serves on `port` (and wait until it is ready,
    unless `ready=False`); it is ended when the test is over."""

    async def __call__(
        self,
        *args: str,
        env: Mapping[str, str],
        port: int,
        ready: bool = True,
        command: Sequence[str] = NOTIFIER,
        cwd: Path | None = None,
    ) -> NotifierProcess: ...
