"""A small HTTP/1.1 client on asyncio streams that does one thing: POST a body and read a bounded answer, over a
keep-alive connection pool per origin. The application's proxies (notifier/connection/proxy.py) use it.

Why not httpx: in a connect storm the proxies have tens of requests in flight at once, and httpx's AsyncClient
(httpx 0.29 / httpcore 1.0.9) spends more CPU per request the more requests are in flight (upstream
encode/httpx#3215). Measured on the 2-core bench machine against the same small ASGI application: httpx made
58-88 requests/s with 64 in flight and 199-318/s with 8, while a plain asyncio HTTP/1.1 client made over
10,000/s. Through httpx the cookie storm of bench/proxy_storm.py ran at 0.36 of the JWT path's rate and 695 of
10,000 users timed out waiting for their turn.

What it does, and no more:

- `POST` with the given headers plus `Host`, `Content-Length` and `Accept-Encoding: identity`; no cookies are
  ever kept (a `Set-Cookie` of the answer is ignored), no redirects followed, no proxy from the environment.
- It reads the status line and the headers (at most `MAX_HEADERS` lines of at most `MAX_LINE_BYTES` each), then
  a body framed by `Content-Length`, by chunked transfer coding, or by the connection's end, never more than
  the caller's `max_body` bytes (`AnswerTooLarge` otherwise, and the connection is dropped).
- Connections are kept per origin (scheme, host, port): at most `max_connections` open at once per client, a
  request waits for one when all are busy. One goes back to the pool only when its answer was read whole and
  allows keep-alive (HTTP/1.1 without `Connection: close`); otherwise, or on any error, timeout or cancel, it
  is closed. A request on a reused connection that the server had already closed is sent again once on a new
  connection (the proxies' questions are safe to ask twice).
- `https://` through an `ssl` context (the system's defaults unless one is given).
- Every request is bounded in time by its `timeout_s` (connecting included); `TimeoutError` when it runs out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_LINE_BYTES = 8 * 1024
MAX_HEADERS = 100
# The buffer limit of each connection's reader: a line longer than this is refused.
_READ_LIMIT = 2 * MAX_LINE_BYTES


class HttpPostError(Exception):
    """No usable answer: the connection failed or closed early, or the answer breaks HTTP/1.1."""


class AnswerTooLarge(HttpPostError):
    """The answer's body is larger than the caller's bound; `status` is the answer's status."""

    def __init__(self, status: int, limit: int) -> None:
        super().__init__(f"the answer is larger than {limit} bytes")
        self.status = status


@dataclass(frozen=True)
class _Origin:
    scheme: str
    host: str
    port: int


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class _StaleConnection(HttpPostError):
    """A reused connection ended before the first byte of the answer."""


class HttpPostClient:
    """POSTs over keep-alive connections, at most `max_connections` open at once. `aclose` closes them all."""

    def __init__(self, max_connections: int, ssl_context: ssl.SSLContext | None = None) -> None:
        if max_connections < 1:
            raise ValueError("max_connections must be at least 1")
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: dict[_Origin, list[_Connection]] = {}
        self._ssl = ssl_context
        self._max = max_connections
        self._open = 0  # connections open now, idle or in use
        self._closed = False
        self.opened = 0  # connections opened so far (for tests and stats)

    async def post(
        self, url: str, body: bytes, headers: Mapping[str, str], *, timeout_s: float, max_body: int
    ) -> tuple[int, bytes]:
        """POST `body` to `url`: the answer's status and body. Raises HttpPostError (AnswerTooLarge for a body
        over `max_body`) or TimeoutError."""
        origin, target, host_header = _parse(url)
        head = _request_head(target, host_header, headers, len(body))
        async with asyncio.timeout(timeout_s), self._slots:
            if self._closed:
                raise HttpPostError("the client is closed")
            while True:
                connection, reused = await self._take(origin)
                try:
                    status, answer, keep = await _exchange(connection, head, body, max_body, reused)
                except _StaleConnection:
                    self._discard(connection)
                    continue  # the server closed it while it was idle: once more on a new one
                except BaseException:
                    self._discard(connection)
                    raise
                if keep and not self._closed:
                    self._idle.setdefault(origin, []).append(connection)
                else:
                    self._discard(connection)
                return status, answer

    async def _take(self, origin: _Origin) -> tuple[_Connection, bool]:
        idle = self._idle.get(origin)
        while idle:
            connection = idle.pop()
            if connection.usable():
                return connection, True
            self._discard(connection)
        # A new one. Requests in flight hold at most max_connections - 1 others (the slots), so the bound can
        # only be passed by idle connections of other origins: close the oldest of those.
        for connections in self._idle.values():
            while connections and self._open >= self._max:
                self._discard(connections.pop(0))
        try:
            reader, writer = await asyncio.open_connection(
                origin.host,
                origin.port,
                ssl=self._ssl_context() if origin.scheme == "https" else None,
                limit=_READ_LIMIT,
            )
        except (OSError, ssl.SSLError) as error:
            raise HttpPostError(f"cannot connect to {origin.host}:{origin.port}: {error}") from None
        self._open += 1
        self.opened += 1
        return _Connection(reader, writer), False

    def _discard(self, connection: _Connection) -> None:
        self._open -= 1
        connection.close()

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            self._ssl = ssl.create_default_context()
        return self._ssl

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                self._discard(connection)

    def idle_connections(self) -> int:
        return sum(len(connections) for connections in self._idle.values())

    def open_connections(self) -> int:
        return self._open


def _parse(url: str) -> tuple[_Origin, str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpPostError(f"not an http:// or https:// URL: {url!r}")
    default_port = 443 if parts.scheme == "https" else 80
    try:
        port = parts.port or default_port
    except ValueError:
        raise HttpPostError(f"bad port in {url!r}") from None
    host = parts.hostname
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == default_port else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Origin(parts.scheme, host, port), target, host_header


def _request_head(target: str, host: str, headers: Mapping[str, str], length: int) -> bytes:
    lines = [f"POST {target} HTTP/1.1", f"host: {host}", f"content-length: {length}", "accept-encoding: identity"]
    for name, value in headers.items():
        lower = name.lower()
        if lower in ("host", "content-length", "accept-encoding", "transfer-encoding", "connection"):
            continue
        if any(c in name or c in value for c in "\r\n"):
            raise HttpPostError("a header with a line break")
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _exchange(
    connection: _Connection, head: bytes, body: bytes, max_body: int, reused: bool
) -> tuple[int, bytes, bool]:
    """Send the request, read the answer: (status, body, whether the connection may be reused)."""
    reader = connection.reader
    try:
        connection.writer.write(head + body)
        await connection.writer.drain()
        first = await reader.readline()
    except (ConnectionError, OSError) as error:
        if reused:
            raise _StaleConnection(str(error)) from None
        raise HttpPostError(f"connection failed: {error}") from None
    except (ValueError, asyncio.LimitOverrunError):
        raise HttpPostError("the status line is too long") from None
    if not first:
        if reused:
            raise _StaleConnection("closed before answering")
        raise HttpPostError("the server closed the connection without answering")
    try:
        while True:
            version, status = _status_line(first)
            fields = await _headers(reader)
            if 100 <= status < 200:  # an interim answer (100 Continue, 103 Early Hints): the final one follows
                first = await reader.readline()
                if not first:
                    raise HttpPostError("the server closed the connection after an interim answer")
                continue
            break
        answer, framed = await _body(reader, status, fields, max_body)
    except (ValueError, asyncio.LimitOverrunError):
        raise HttpPostError("a line of the answer is too long") from None
    except asyncio.IncompleteReadError:
        raise HttpPostError("the server closed the connection in the middle of the answer") from None
    except (ConnectionError, OSError) as error:
        raise HttpPostError(f"connection failed: {error}") from None
    tokens = {token.strip() for token in fields.get("connection", "").lower().split(",")}
    keep = framed and version == "HTTP/1.1" and "close" not in tokens
    return status, answer, keep


def _status_line(line: bytes) -> tuple[str, int]:
    if not line.endswith(b"\n"):
        raise HttpPostError("the server closed the connection in the middle of the status line")
    parts = line.rstrip(b"\r\n").split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3 or not parts[1].isdigit():
        raise HttpPostError(f"bad status line {line[:100]!r}")
    return parts[0].decode(), int(parts[1])


async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
    """The header fields (lower-case names; repeats joined with ", "), bounded in count and line length."""
    fields: dict[str, str] = {}
    for _ in range(MAX_HEADERS + 1):
        line = await reader.readline()
        if not line.endswith(b"\n"):
            raise HttpPostError("the server closed the connection in the middle of the headers")
        if len(line) > MAX_LINE_BYTES:
            raise HttpPostError("a header line is too long")
        if line in (b"\r\n", b"\n"):
            return fields
        name, colon, value = line.decode("latin-1").partition(":")
        if not colon or not name or name != name.strip():
            raise HttpPostError(f"bad header line {line[:100]!r}")
        lower, value = name.lower(), value.strip()
        fields[lower] = f"{fields[lower]}, {value}" if lower in fields else value
    raise HttpPostError(f"more than {MAX_HEADERS} header lines")


async def _body(reader: asyncio.StreamReader, status: int, fields: dict[str, str], max_body: int) -> tuple[bytes, bool]:
    """The body, and whether it was framed (so the connection may carry another request)."""
    if status in (204, 304):
        return b"", True
    coding = fields.get("transfer-encoding", "").lower()
    if coding:
        if [token.strip() for token in coding.split(",")] != ["chunked"]:
            raise HttpPostError(f"unsupported transfer-encoding {coding[:50]!r}")
        return await _chunked(reader, status, max_body), True
    if "content-length" in fields:
        text = fields["content-length"]
        if not (text.isascii() and text.isdigit()) or len(text) > 18:
            raise HttpPostError(f"bad content-length {text[:50]!r}")
        length = int(text)
        if length > max_body:
            raise AnswerTooLarge(status, max_body)
        return await reader.readexactly(length), True
    # Neither: the body runs to the connection's end.
    data = await reader.read(max_body + 1)
    chunks = [data]
    size = len(data)
    while data:
        if size > max_body:
            raise AnswerTooLarge(status, max_body)
        data = await reader.read(max_body + 1 - size)
        chunks.append(data)
        size += len(data)
    return b"".join(chunks), False


async def _chunked(reader: asyncio.StreamReader, status: int, max_body: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
            raise HttpPostError("bad chunk size line")
        text = line.split(b";", 1)[0].strip()
        if not text or len(text) > 16 or any(c not in b"0123456789abcdefABCDEF" for c in text):
            raise HttpPostError(f"bad chunk size {text[:20]!r}")
        length = int(text, 16)
        if length == 0:
            break
        size += length
        if size > max_body:
            raise AnswerTooLarge(status, max_body)
        chunks.append(await reader.readexactly(length))
        if await reader.readexactly(2) != b"\r\n":
            raise HttpPostError("a chunk does not end with CRLF")
    for _ in range(MAX_HEADERS + 1):  # the trailer, ignored
        line = await reader.readline()
        if not line.endswith(b"\n") or len(line) > MAX_LINE_BYTES:
            raise HttpPostError("bad trailer line")
        if line in (b"\r\n", b"\n"):
            return b"".join(chunks)
    raise HttpPostError(f"more than {MAX_HEADERS} trailer lines")
