"""Load clients of notifier's HTTP stream (docs/protocol.md, "Browser side (HTTP stream)"): one asyncio
protocol per client on a raw socket, so a client costs about what a picows WebSocket client costs.

A client sends `GET /sse?token=...`, reads the chunked `text/event-stream` answer, subscribes with one
`POST /sse/<stream key>` per topic once the `welcome` names its stream, and counts `event` messages.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import orjson

if TYPE_CHECKING:
    from bench.clients import Worker

# The byte that starts an event frame's JSON on its `data:` line.
EVENT_MARK = b'data: {"type":"event"'
MAX_HEAD_BYTES = 16 * 1024


class SseClient(asyncio.Protocol):
    """One browser stand-in on the HTTP stream."""

    def __init__(self, worker: Worker, user: str, token: str, topics: list[str], personal: str, url: str) -> None:
        self.worker = worker
        self.user = user
        self.personal = personal
        self.token = token
        self.topics = topics
        self.pending = len(topics)
        self.url = urlsplit(url)
        self.ready = False
        self.count = 0
        self.closed_code: int | None = None
        self.transport: asyncio.Transport | None = None
        self.stream_key = ""
        self._head = bytearray()
        self._head_done = False
        self._chunked = bytearray()  # undecoded chunked body
        self._body = bytearray()  # decoded body not yet split into messages
        loop = asyncio.get_running_loop()
        self.ready_future: asyncio.Future[None] = loop.create_future()
        self.gone: asyncio.Future[None] = loop.create_future()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        host = self.url.netloc
        request = (
            f"GET {self.url.path}?token={self.token} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n"
        )
        transport.write(request.encode())

    def data_received(self, data: bytes) -> None:
        if not self._head_done:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                if len(self._head) > MAX_HEAD_BYTES:
                    self._fail("answer head too long")
                return
            head, rest = bytes(self._head[:end]), bytes(self._head[end + 4 :])
            self._head_done = True
            status = head.split(b" ", 2)[1] if head.count(b" ") >= 1 else b"?"
            if status != b"200":
                self.closed_code = int(status) if status.isdigit() else -1
                self._fail(f"refused with HTTP {status.decode(errors='replace')}: {rest[:200]!r}")
                return
            data = rest
        self._chunked += data
        self._decode_chunks()
        self._read_messages()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.closed_code is None:
            self.closed_code = -1
        self._fail("disconnected")
        self._set_gone()

    # The body.

    def _decode_chunks(self) -> None:
        buffer = self._chunked
        position = 0
        while True:
            line_end = buffer.find(b"\r\n", position)
            if line_end < 0:
                break
            size = int(buffer[position:line_end].split(b";", 1)[0], 16)
            start = line_end + 2
            if len(buffer) < start + size + 2:
                break
            if size == 0:  # the stream ended
                position = start + 2
                break
            self._body += buffer[start : start + size]
            position = start + size + 2
        del buffer[:position]

    def _read_messages(self) -> None:
        body = self._body
        end = body.rfind(b"\n\n")
        if end < 0:
            return
        complete = bytes(body[: end + 2])
        del body[: end + 2]
        if self.ready:
            events = complete.count(EVENT_MARK)
            if events:
                self._count(events, complete)
            if b'"type":"close"' in complete:
                self._on_close_message(complete)
            return
        for message in complete.split(b"\n\n"):
            for line in message.split(b"\n"):
                if line.startswith(b"data: "):
                    self._on_frame(line[6:])

    def _count(self, events: int, messages: bytes) -> None:
        worker = self.worker
        self.count += events
        now = time.time_ns()
        if worker.first_ns == 0:
            worker.first_ns = now
        worker.last_ns = now
        if worker.timing:
            for line in messages.split(b"\n"):
                if line.startswith(EVENT_MARK):
                    match = worker.stamp.search(line)
                    if match is not None:
                        worker.latencies.append(now - int(match.group(1)))

    def _on_frame(self, payload: bytes) -> None:
        if self.ready:
            if payload.startswith(EVENT_MARK[6:]):
                self._count(1, b"data: " + payload)
            return
        frame = orjson.loads(payload)
        kind = frame.get("type")
        if kind == "welcome":
            self.stream_key = str(frame["stream"])
            if not self.topics:
                self._set_ready()
                return
            asyncio.get_running_loop().create_task(self._subscribe_all())
        elif kind == "subscribed":
            self.pending -= 1
            if self.pending == 0:
                self._set_ready()
        elif kind == "close":
            self.closed_code = int(frame.get("code", -1))
            self._fail(f"closed with {self.closed_code}")
        else:
            self._fail(f"unexpected frame {payload[:200]!r}")

    def _on_close_message(self, messages: bytes) -> None:
        for line in messages.split(b"\n"):
            if line.startswith(b'data: {"type":"close"'):
                self.closed_code = int(orjson.loads(line[6:]).get("code", -1))

    async def _subscribe_all(self) -> None:
        for number, topic in enumerate(self.topics):
            body = orjson.dumps({"type": "subscribe", "topic": topic, "id": number})
            try:
                await post_command(
                    self.url.hostname or "127.0.0.1", self.url.port or 80, self.url.path, self.stream_key, body
                )
            except (OSError, RuntimeError) as error:
                self._fail(f"subscribe failed: {error!r}")
                return

    # State.

    def _set_ready(self) -> None:
        self.ready = True
        if not self.ready_future.done():
            self.ready_future.set_result(None)

    def _fail(self, why: str) -> None:
        if not self.ready_future.done():
            self.ready_future.set_exception(RuntimeError(why))

    def _set_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    def drop(self) -> None:
        """Drop the connection, as a closed tab does."""
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()


async def post_command(host: str, port: int, path: str, key: str, body: bytes) -> None:
    """One command on a connection of its own; raises unless it is accepted (202)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        head = (
            f"POST {path}/{key} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        status_line = await asyncio.wait_for(reader.readline(), 30)
        if b" 202 " not in status_line:
            raise RuntimeError(f"command answered {status_line!r}")
    finally:
        writer.close()


async def dial_sse(
    worker: Worker, user: str, token: str, topics: list[str], personal: str, url: str
) -> tuple[SseClient | None, str, str]:
    """One connect attempt on the HTTP stream: the client once welcomed and subscribed, or why not."""
    loop = asyncio.get_running_loop()
    parts = urlsplit(url)
    client = SseClient(worker, user, token, topics, personal, url)
    try:
        await loop.create_connection(lambda: client, parts.hostname or "127.0.0.1", parts.port or 80)
        await asyncio.wait_for(client.ready_future, 60)
    except (OSError, RuntimeError, TimeoutError) as error:
        why = str(client.closed_code) if client.closed_code else type(error).__name__
        if client.ready_future.done() and not client.ready_future.cancelled():
            client.ready_future.exception()
        client.drop()
        return None, why, repr(error)[:200]
    return client, "", ""
