"""Real faults for the tests: a TCP proxy in front of RabbitMQ that can cut or slow the line, and rabbitmqctl."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess


class CuttableProxy:
    """Forwards 127.0.0.1:<port> to RabbitMQ; `cut()` drops every connection and refuses new ones until
    `restore()`, which is what a network partition between one instance and the broker looks like."""

    def __init__(self, target_port: int = 5672) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._cut = False
        self._delay_s = 0.0
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def cut(self) -> None:
        self._cut = True
        for writer in tuple(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def restore(self) -> None:
        self._cut = False

    def slow_down(self, delay_s: float) -> None:
        """Hold what the client sends for `delay_s` before passing it on (0 for a normal line)."""
        self._delay_s = delay_s

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, upstream_writer))
        await asyncio.gather(
            self._pipe(reader, upstream_writer, upstream=True),
            self._pipe(upstream_reader, writer, upstream=False),
            return_exceptions=True,
        )

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self._delay_s > 0:
                    await asyncio.sleep(self._delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


def rabbitmqctl(*args: str, timeout: float = 60) -> str:
    return subprocess.run(
        ["rabbitmqctl", "-q", *args], check=True, capture_output=True, text=True, timeout=timeout
    ).stdout


def close_connections_named(name_part: str) -> int:
    """Close the broker connections whose client-given name contains `name_part`; return how many."""
    closed = 0
    for line in rabbitmqctl("list_connections", "pid", "client_properties").splitlines():
        pid, _, properties = line.partition("\t")
        if name_part in properties:
            rabbitmqctl("close_connection", pid, "fault test")
            closed += 1
    return closed


async def wait_until(predicate: object, timeout: float, interval: float = 0.05) -> None:
    """Poll a condition the test cannot await directly (another process's state)."""
    assert callable(predicate)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)
