"""A client of the HTTP stream transport (`GET /sse`), on raw asyncio sockets: it writes the request itself and reads
the response as it comes (chunked body, server-sent events), so a test can also stop reading, cut the line, or
look at the exact bytes. Plus the commands (`POST`/`DELETE /sse/<key>`) and a scrape of /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import zlib
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
from prometheus_client.parser import text_string_to_metric_families

RECEIVE_TIMEOUT_S = 5.0


@dataclass
class Message:
    """One server-sent event: its `id:` (None when it has none) and its data parsed as JSON; or a comment."""

    id: str | None
    data: dict[str, Any] | None
    comment: str | None = None


class StreamRefused(Exception):
    """The server answered the request with something else than a stream."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        super().__init__(f"{status} {body!r}")
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return orjson.loads(self.body)


@dataclass
class SseStream:
    """One open stream: its response head, and its messages as they arrive."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    status: int
    headers: dict[str, str]
    raw: bytearray = field(default_factory=bytearray)  # every body byte so far
    _events: bytearray = field(default_factory=bytearray)
    ended: bool = False  # the response ended (its last chunk arrived)
    _inflate: Any = None  # for a gzip body

    @classmethod
    async def open(
        cls,
        base_url: str,
        *,
        token: str | None = None,
        token_in_query: bool = False,
        last_event_id: str | None = None,
        query: str = "",
        headers: dict[str, str] | None = None,
        accept_gzip: bool = False,
    ) -> SseStream:
        """GET /sse; raises StreamRefused for any answer but a 200 stream. With `accept_gzip`, a compressed stream
        is inflated as it comes."""
        parts = urlsplit(base_url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        request_headers = {"Host": f"{host}:{port}", "Accept": "text/event-stream"} | (headers or {})
        params = [query] if query else []
        if token is not None and token_in_query:
            params.append(f"token={token}")
        elif token is not None:
            request_headers["Authorization"] = f"Bearer {token}"
        if last_event_id is not None:
            request_headers["Last-Event-ID"] = last_event_id
        if accept_gzip:
            request_headers["Accept-Encoding"] = "gzip"
        target = "/sse" + ("?" + "&".join(params) if params else "")
        head = f"GET {target} HTTP/1.1\r\n" + "".join(f"{name}: {value}\r\n" for name, value in request_headers.items())
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), RECEIVE_TIMEOUT_S)
        writer.write(head.encode() + b"\r\n")
        status, response_headers = await asyncio.wait_for(_read_head(reader), RECEIVE_TIMEOUT_S)
        if status != 200:
            length = int(response_headers.get("content-length", "0"))
            body = await asyncio.wait_for(reader.readexactly(length), RECEIVE_TIMEOUT_S)
            writer.close()
            raise StreamRefused(status, response_headers, body)
        stream = cls(reader, writer, status, response_headers)
        if response_headers.get("content-encoding") == "gzip":
            stream._inflate = zlib.decompressobj(wbits=31)
        return stream

    async def next_message(self, timeout: float = RECEIVE_TIMEOUT_S, *, comments: bool = False) -> Message:
        """The next message (comments only if asked for); EOFError once the response has ended."""
        async with asyncio.timeout(timeout):
            while True:
                block = self._take_block()
                if block is not None:
                    message = _parse_block(block)
                    if message is not None and (comments or message.comment is None):
                        return message
                    continue
                if self.ended:
                    raise EOFError("the stream ended")
                await self._read_chunk()

    async def next_frame(self, timeout: float = RECEIVE_TIMEOUT_S) -> Message:
        return await self.next_message(timeout)

    async def expect(self, kind: str, timeout: float = RECEIVE_TIMEOUT_S) -> Message:
        message = await self.next_message(timeout)
        assert message.data is not None and message.data["type"] == kind, message
        return message

    async def until(self, kind: str, timeout: float = RECEIVE_TIMEOUT_S) -> tuple[list[Message], Message]:
        """Messages up to the first of type `kind`: the ones before it, and it."""
        before: list[Message] = []
        async with asyncio.timeout(timeout):
            while True:
                message = await self.next_message()
                assert message.data is not None
                if message.data["type"] == kind:
                    return before, message
                before.append(message)

    async def read_to_end(self, timeout: float = RECEIVE_TIMEOUT_S) -> list[Message]:
        """Every message until the response ends (or the connection is cut)."""
        messages: list[Message] = []
        with contextlib.suppress(EOFError, ConnectionError, asyncio.IncompleteReadError):
            while True:
                messages.append(await self.next_message(timeout))
        return messages

    def _take_block(self) -> bytes | None:
        end = self._events.find(b"\n\n")
        if end < 0:
            return None
        block = bytes(self._events[:end])
        del self._events[: end + 2]
        return block

    async def _read_chunk(self) -> None:
        size_line = await self.reader.readuntil(b"\r\n")
        size = int(size_line.strip().split(b";")[0], 16)
        if size == 0:
            await self.reader.readuntil(b"\r\n")
            self.ended = True
            return
        data = await self.reader.readexactly(size)
        await self.reader.readexactly(2)
        if self._inflate is not None:
            data = self._inflate.decompress(data)
        self.raw += data
        self._events += data

    def abort(self) -> None:
        """Cut the connection without a word: the server sees the client gone (the session parks)."""
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError):
            await self.writer.wait_closed()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers


def _parse_block(block: bytes) -> Message | None:
    event_id: str | None = None
    data: list[str] = []
    comment: str | None = None
    for line in block.decode().split("\n"):
        if line.startswith(":"):
            comment = line[1:].strip()
        elif line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            data.append(line[6:])
    if data:
        assert len(data) == 1, f"a message is one data line: {block!r}"
        return Message(event_id, orjson.loads(data[0]))
    if comment is not None:
        return Message(None, None, comment)
    return None


@dataclass
class StreamClient:
    """What a resuming page keeps: the id of the last message it had (`<session>:<count>`), and the events."""

    base_url: str
    user: str
    token: str
    last_id: str | None = None
    data: list[Any] = field(default_factory=list)
    stream: SseStream | None = None
    key: str | None = None

    async def connect(self, base_url: str | None = None, **open_args: Any) -> dict[str, Any]:
        """Open a stream (resuming from the last id, if any); returns the welcome."""
        if base_url is not None:
            self.base_url = base_url
        self.stream = await SseStream.open(self.base_url, token=self.token, last_event_id=self.last_id, **open_args)
        welcome = await self.stream.expect("welcome")
        assert welcome.data is not None and welcome.id is not None
        assert welcome.id.rpartition(":")[0] == welcome.data["session"], welcome
        self.last_id = welcome.id
        self.key = welcome.data["stream"]
        return welcome.data

    async def next_event(self, timeout: float = RECEIVE_TIMEOUT_S) -> Any:
        assert self.stream is not None
        message = await self.stream.next_message(timeout)
        assert message.data is not None and message.data["type"] == "event", message
        session, _, count = (self.last_id or "").rpartition(":")
        assert message.id == f"{session}:{int(count) + 1}", (message.id, self.last_id)
        self.last_id = message.id
        self.data.append(message.data["data"])
        return message.data["data"]

    @property
    def received(self) -> int:
        return int((self.last_id or ":0").rpartition(":")[2])

    @property
    def session(self) -> str | None:
        return self.last_id.rpartition(":")[0] if self.last_id else None


async def command(base_url: str, key: str, body: bytes | dict[str, Any], **headers: str) -> httpx.Response:
    """POST one client frame to a stream, as text/plain (no CORS preflight)."""
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await http.post(f"/sse/{key}", content=content, headers={"Content-Type": "text/plain"} | headers)


async def goodbye(base_url: str, key: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
        return await http.delete(f"/sse/{key}")


async def scrape(base_url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Each sample of /metrics, by name and labels."""
    async with httpx.AsyncClient(base_url=base_url, timeout=5) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


async def metric(base_url: str, name: str, **labels: str) -> float:
    return (await scrape(base_url)).get((name, tuple(sorted(labels.items()))), 0.0)
