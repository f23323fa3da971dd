"""The proxies' HTTP/1.1 client (notifier/connection/http_post.py) against raw HTTP servers on loopback: it keeps
a connection alive and reuses it, opens a new one when the server closes, refuses an oversized answer, times
out, refuses a bad status line or too many headers, reads chunked answers within the bound and never holds more
connections than its bound."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import pytest

from notifier.connection.http_post import AnswerTooLarge, HttpPostClient, HttpPostError

pytestmark = pytest.mark.loopback

# (connection number, request number on that connection, request head, body) -> raw answer bytes, or None to
# close the connection without answering.
Respond = Callable[[int, int, bytes, bytes], bytes | None]


def ok(body: bytes = b'{"ok": true}', *extra: str) -> bytes:
    head = "".join(f"{line}\r\n" for line in extra)
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{head}\r\n".encode() + body


class Server:
    """A raw HTTP/1.1 server: reads each request whole and writes what `respond` says; it closes the connection
    after an answer when `close` is set or the answer says `connection: close`."""

    def __init__(self, respond: Respond, delay_s: float = 0.0, close: bool = False) -> None:
        self.respond = respond
        self.delay_s = delay_s
        self.close = close
        self.connections = 0
        self.open_now = 0
        self.max_open = 0
        self.heads: list[bytes] = []
        self.url = ""

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = self.connections
        self.connections += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                for request in range(1_000):
                    head = await reader.readuntil(b"\r\n\r\n")
                    self.heads.append(head)
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":", 1)[1])
                    body = await reader.readexactly(length)
                    if self.delay_s:
                        await asyncio.sleep(self.delay_s)
                    answer = self.respond(number, request, head, body)
                    if answer is None:
                        break
                    writer.write(answer)
                    await writer.drain()
                    if self.close or b"connection: close" in answer.lower():
                        break
        finally:
            self.open_now -= 1
            writer.close()


@contextlib.asynccontextmanager
async def serving(respond: Respond, delay_s: float = 0.0, close: bool = False) -> AsyncIterator[Server]:
    server = Server(respond, delay_s, close)
    listener = await asyncio.start_server(server.handle, "127.0.0.1", 0)
    server.url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}/who?x=1"
    try:
        yield server
    finally:
        listener.close()


@contextlib.asynccontextmanager
async def client(max_connections: int = 4) -> AsyncIterator[HttpPostClient]:
    http = HttpPostClient(max_connections)
    try:
        yield http
    finally:
        await http.aclose()


async def post(http: HttpPostClient, url: str, timeout_s: float = 5.0, max_body: int = 1024) -> tuple[int, bytes]:
    return await http.post(
        url, b'{"a": 1}', {"content-type": "application/json"}, timeout_s=timeout_s, max_body=max_body
    )


async def test_a_kept_alive_connection_carries_the_next_requests() -> None:
    async with serving(lambda c, r, head, body: ok(body)) as server, client() as http:
        for _ in range(3):
            assert await post(http, server.url) == (200, b'{"a": 1}')
        assert server.connections == 1
        assert http.opened == 1 and http.idle_connections() == 1
    head = server.heads[0].decode()
    assert head.startswith("POST /who?x=1 HTTP/1.1\r\n")
    assert "content-length: 8\r\n" in head and "content-type: application/json\r\n" in head
    assert f"host: {server.url.split('/')[2]}\r\n" in head
    assert "cookie" not in head.lower()


async def test_an_answer_with_connection_close_is_not_reused() -> None:
    async with serving(lambda c, r, head, body: ok(b"{}", "connection: close")) as server, client() as http:
        for _ in range(2):
            assert await post(http, server.url) == (200, b"{}")
        assert http.opened == 2 and http.idle_connections() == 0


async def test_an_http_1_0_answer_is_not_reused() -> None:
    answer = b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\n{}"
    async with serving(lambda c, r, head, body: answer) as server, client() as http:
        for _ in range(2):
            assert await post(http, server.url) == (200, b"{}")
        assert http.opened == 2


async def test_a_connection_the_server_closed_while_idle_is_replaced() -> None:
    # The server closes each connection after one answer without saying so; the client sees it while idle.
    async with serving(lambda c, r, head, body: ok(), close=True) as server, client() as http:
        for _ in range(3):
            assert await post(http, server.url) == (200, b'{"ok": true}')
            await asyncio.sleep(0.05)
        assert server.connections == 3


async def test_a_request_a_kept_connection_drops_unanswered_is_sent_again_on_a_new_one() -> None:
    # The server answers the first request of each connection and drops the connection on the second.
    async with serving(lambda c, r, head, body: ok() if r == 0 else None) as server, client() as http:
        for _ in range(3):
            assert await post(http, server.url) == (200, b'{"ok": true}')
            await asyncio.sleep(0.05)
        assert server.connections == 3


async def test_a_server_that_closes_without_answering_is_an_error() -> None:
    async with serving(lambda c, r, head, body: None) as server, client() as http:
        with pytest.raises(HttpPostError, match="without answering"):
            await post(http, server.url)
        assert http.open_connections() == 0


async def test_nobody_listening_is_an_error() -> None:
    async with serving(lambda c, r, head, body: ok()) as server:
        url = server.url
    async with client() as http:
        with pytest.raises(HttpPostError, match="cannot connect"):
            await post(http, url)


@pytest.mark.parametrize(
    "answer",
    [
        "HTTP/1.1 200 OK\r\ncontent-length: 2000\r\n\r\n" + "x" * 2000,
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n400\r\n" + "x" * 1024 + "\r\n1\r\nx\r\n0\r\n\r\n",
        "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n" + "x" * 2000,
    ],
    ids=["content-length", "chunked", "to-the-end"],
)
async def test_an_answer_over_the_bound_is_refused_and_its_connection_dropped(answer: str) -> None:
    async with serving(lambda c, r, head, body: answer.encode()) as server, client() as http:
        with pytest.raises(AnswerTooLarge) as refused:
            await post(http, server.url, max_body=1024)
        assert refused.value.status == 200
        assert http.open_connections() == 0


async def test_a_chunked_answer_within_the_bound_is_read_and_the_connection_kept() -> None:
    answer = b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\n{"a":\r\n3\r\n 1}\r\n0\r\nt: 1\r\n\r\n'
    async with serving(lambda c, r, head, body: answer) as server, client() as http:
        assert await post(http, server.url) == (200, b'{"a": 1}')
        assert await post(http, server.url) == (200, b'{"a": 1}')
        assert server.connections == 1


async def test_an_answer_read_to_the_end_of_the_connection_is_not_reused() -> None:
    answer = b"HTTP/1.1 200 OK\r\n\r\n{}"
    async with serving(lambda c, r, head, body: answer, close=True) as server, client() as http:
        assert await post(http, server.url) == (200, b"{}")
        assert http.idle_connections() == 0


async def test_an_application_that_does_not_answer_in_time_times_out_and_its_connection_is_dropped() -> None:
    async with serving(lambda c, r, head, body: ok(), delay_s=2.0) as server, client() as http:
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await post(http, server.url, timeout_s=0.2)
        assert asyncio.get_running_loop().time() - started < 1.0
        assert http.open_connections() == 0


@pytest.mark.parametrize(
    "answer",
    [b"HTP/1.1 200 OK\r\n\r\n", b"HTTP/1.1 2000 OK\r\n\r\n", b"HTTP/1.1\r\n\r\n", b"hello\r\n", b"HTTP/1.1 200 OK"],
    ids=["version", "status", "no-status", "garbage", "cut"],
)
async def test_a_bad_status_line_is_an_error(answer: bytes) -> None:
    async with serving(lambda c, r, head, body: answer, close=True) as server, client() as http:
        with pytest.raises(HttpPostError):
            await post(http, server.url)
        assert http.open_connections() == 0


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\n" + b"x-a: 1\r\n" * 101 + b"content-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-a: " + b"a" * 9000 + b"\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n{}",
    ],
    ids=["too-many-headers", "header-too-long", "no-colon", "bad-length", "coding", "short-body"],
)
async def test_headers_or_a_body_that_break_the_rules_are_an_error(answer: bytes) -> None:
    async with serving(lambda c, r, head, body: answer, close=True) as server, client() as http:
        with pytest.raises(HttpPostError):
            await post(http, server.url)


async def test_an_interim_answer_is_skipped() -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\n" + ok()
    async with serving(lambda c, r, head, body: answer) as server, client() as http:
        assert await post(http, server.url) == (200, b'{"ok": true}')


async def test_never_more_connections_than_the_bound() -> None:
    async with serving(lambda c, r, head, body: ok(), delay_s=0.05) as server, client(max_connections=3) as http:
        answers = await asyncio.gather(*(post(http, server.url) for _ in range(20)))
        assert answers == [(200, b'{"ok": true}')] * 20
        assert server.max_open <= 3 and http.opened == 3 and http.open_connections() == 3


async def test_a_closed_client_refuses_and_keeps_nothing() -> None:
    async with serving(lambda c, r, head, body: ok()) as server:
        http = HttpPostClient(2)
        await post(http, server.url)
        await http.aclose()
        assert http.open_connections() == 0
        with pytest.raises(HttpPostError, match="closed"):
            await post(http, server.url)
