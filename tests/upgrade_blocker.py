"""A real fault for the transport tests: an HTTP proxy on loopback that answers 403 to every WebSocket upgrade
(any request with an `Upgrade` header) while `blocking`, as some company proxies do, and passes every other
connection through untouched. `cut()` drops every connection it carries, as a network change does."""

from __future__ import annotations

import asyncio
import contextlib

from tests.faults import LoopbackProxy

HEAD_LIMIT = 64 * 1024
REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain\r\nContent-Length: 19\r\nConnection: close\r\n\r\n"
    b"upgrades not passed"
)


def asks_for_upgrade(head: bytes) -> bool:
    """Whether an HTTP request head carries an `Upgrade` header."""
    lines = head.split(b"\r\n")[1:]
    return any(line.split(b":", 1)[0].strip().lower() == b"upgrade" for line in lines)


class UpgradeBlocker(LoopbackProxy):
    """Forwards 127.0.0.1:<port> to `target`; refuses upgrades while `blocking` (see the module docstring).
    Only the first request of a connection is looked at: a browser or fetch opens a new one for a WebSocket."""

    def __init__(self, target: tuple[str, int], *, blocking: bool = True) -> None:
        super().__init__(target)
        self.blocking = blocking
        self.refused = 0

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                return
            if self.blocking and asks_for_upgrade(head):
                self.refused += 1
                writer.write(REFUSAL)
                await writer.drain()
                return
            try:
                upstream_reader, upstream_writer = await asyncio.open_connection(*self._target, limit=HEAD_LIMIT)
            except OSError:
                return
            self._writers.add(upstream_writer)
            upstream_writer.write(head)
            await asyncio.gather(self._pipe(reader, upstream_writer), self._pipe(upstream_reader, writer))
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(65536):
                writer.write(chunk)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writers.discard(writer)
            with contextlib.suppress(Exception):
                writer.transport.abort()
