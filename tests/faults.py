"""Real faults for the tests: a TCP proxy in front of RabbitMQ that can cut, stall or slow the line, and
closing our own broker connections with rabbitmqctl."""

from __future__ import annotations

import asyncio
import contextlib

from tests.support import amqp_host, amqp_port, amqp_vhost, rabbitmqctl, rabbitmqctl_rows


class LoopbackProxy:
    """A TCP proxy on 127.0.0.1:<port> (known once started) to `target`; what it does with a connection is its
    subclass's `_accept`. `cut()` drops every connection it carries, as a network change does."""

    def __init__(self, target: tuple[str, int]) -> None:
        self._target = target
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
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
        for writer in tuple(self._writers):
            writer.transport.abort()
        self._writers.clear()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        raise NotImplementedError


class CuttableProxy(LoopbackProxy):
    """Forwards 127.0.0.1:<port> to RabbitMQ (or to `target`); `cut()` drops every connection and refuses new
    ones until `restore()`, which is what a network partition looks like.
    `stall()` keeps every connection open but silent (bytes either way are swallowed), like a broker that
    hangs or a firewall that drops packets without a reset."""

    def __init__(self, target: tuple[str, int] | None = None) -> None:
        super().__init__(target or (amqp_host(), amqp_port()))
        self._cut = False
        self._stalled = False
        self._delay_s = 0.0

    def cut(self) -> None:
        self._cut = True
        super().cut()

    def stall(self) -> None:
        self._stalled = True

    def restore(self) -> None:
        self._cut = False
        self._stalled = False

    def slow_down(self, delay_s: float) -> None:
        """Hold what the client sends for `delay_s` before passing it on (0 for a normal line)."""
        self._delay_s = delay_s

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._cut:
            writer.transport.abort()
            return
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
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
                if self._stalled:
                    continue
                if upstream and self._delay_s > 0:
                    await asyncio.sleep(self._delay_s)
                writer.write(data)
                await writer.drain()
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()


def close_connections_named(name_part: str) -> int:
    """Close the broker connections of the vhost under test whose client-given name contains `name_part`;
    return how many."""
    closed = 0
    for pid, vhost, *properties in rabbitmqctl_rows("list_connections", "pid", "vhost", "client_properties"):
        if vhost == amqp_vhost() and name_part in "\t".join(properties):
            rabbitmqctl("close_connection", pid, "fault test")
            closed += 1
    return closed
