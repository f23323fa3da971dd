"""config/nginx.conf on the nginx people have (Debian's): it loads, and it proxies WebSockets to a real server."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import pytest
import websockets

from tests.processes import NotifierProcess, StartNotifier, notifier_env
from tests.support import Publisher, StartServer, free_port, token_for
from tests.support_sse import SseStream, command

pytestmark = pytest.mark.nginx

CONFIG = Path(__file__).resolve().parent.parent / "config" / "nginx.conf"

ServeProcess = Callable[..., Awaitable[NotifierProcess]]


@pytest.fixture
async def serve_process(start_notifier: StartNotifier, exchange: str) -> ServeProcess:
    """`notifier serve` on a free port, behind the proxies that tests start on this machine."""

    async def start(**settings: str) -> NotifierProcess:
        port = free_port()
        env = notifier_env(port, exchange, NOTIFIER_FORWARDED_ALLOW_IPS="127.0.0.1", **settings)
        return await start_notifier("serve", env=env, port=port)

    return start


def nginx_binary() -> str:
    found = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if found is None:
        pytest.fail("nginx is not installed (.ci/setup-nginx installs Debian's)")
    return found


def nginx_args(config: Path, prefix: Path, *extra: str, globals_: str = "") -> list[str]:
    """nginx on `config`, with its pid file, temp files and error log under `prefix` (no root-owned paths)."""
    directives = f"pid {prefix}/nginx.pid; {globals_}"
    return [nginx_binary(), "-p", str(prefix), "-e", "stderr", "-c", str(config), "-g", directives, *extra]


def test_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    result = subprocess.run(nginx_args(CONFIG, tmp_path, "-t"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


@contextlib.asynccontextmanager
async def nginx_in_front_of(port: int, tmp_path: Path, text: str | None = None) -> AsyncIterator[int]:
    """nginx on config/nginx.conf (or `text`, a variant of it) in front of the server on `port`; its port."""
    listen = free_port()
    text = (text or CONFIG.read_text()).replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    text = text.replace("http://notifier:8000", f"http://127.0.0.1:{port}")
    prefix = tmp_path / f"nginx-{listen}"
    prefix.mkdir()
    config = prefix / "nginx.conf"
    config.write_text(text)
    process = subprocess.Popen(
        nginx_args(config, prefix, globals_="daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{listen}") as http:
            for _ in range(100):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.stderr.read() if process.stderr else b""
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("nginx did not proxy /readyz")
        yield listen
    finally:
        process.terminate()
        process.wait(10)


async def test_websocket_through_nginx_with_the_pages_own_origin(
    start_server: StartServer, publisher: Publisher, tmp_path: Path
) -> None:
    running = await start_server(allowed_origins=[])
    async with nginx_in_front_of(running.settings.port, tmp_path) as listen:
        page_origin = f"http://127.0.0.1:{listen}"  # a page served through the same proxy
        async with websockets.connect(f"ws://127.0.0.1:{listen}/ws", origin=page_origin) as ws:  # type: ignore[arg-type]
            await ws.send('{"type": "auth", "token": "' + token_for("alice") + '"}')
            assert '"welcome"' in str(await asyncio.wait_for(ws.recv(), 5))
            await publisher.publish("user.alice", {"via": "nginx"})
            assert '"via":"nginx"' in str(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{listen}/ws", origin="https://evil.example.net")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403


def sse_location(text: str, *directives: str) -> str:
    """config/nginx.conf with `directives` added to its `location /sse` block."""
    head, marker, rest = text.partition("location /sse {")
    assert marker, "config/nginx.conf has no location /sse"
    return head + marker + "".join(f"\n            {directive}" for directive in directives) + rest


def buffering_and_compressing(text: str) -> str:
    """config/nginx.conf's `location /sse` with buffering on, and the stream compressed: a proxy that holds a
    buffered response until it has enough to compress."""
    head, marker, rest = text.partition("location /sse {")
    block, end, tail = rest.partition("}")
    assert "proxy_buffering off;" in block
    block = block.replace("proxy_buffering off;", "proxy_buffering on;")
    return sse_location(head + marker + block + end + tail, "gzip on;", "gzip_types text/event-stream;")


async def stream_through(
    listen: int, publisher: Publisher, user: str, *, within: float, compressed: bool = False
) -> None:
    """A page behind nginx opens a stream (accepting gzip), sends a command and gets its answers and events, each
    within `within` seconds, then a heartbeat."""
    page = f"http://127.0.0.1:{listen}"
    stream = await SseStream.open(page, token=token_for(user, ["news"]), headers={"Origin": page}, accept_gzip=True)
    try:
        assert (stream.headers.get("content-encoding") == "gzip") is compressed
        welcome = await stream.expect("welcome", timeout=within)
        assert welcome.data is not None
        subscribe = {"type": "subscribe", "topic": "news", "id": 1}
        assert (await command(page, welcome.data["stream"], subscribe, Origin=page)).status_code == 202
        await stream.expect("subscribed", timeout=within)
        await publisher.publish("news", {"via": "nginx"})
        assert (await stream.expect("event", timeout=within)).data["data"] == {"via": "nginx"}  # type: ignore[index]
        heartbeat = await stream.next_message(timeout=3, comments=True)
        assert heartbeat.comment == "heartbeat"
    finally:
        await stream.close()


async def test_streams_through_nginx_arrive_at_once_even_where_it_buffers(
    serve_process: ServeProcess, publisher: Publisher, tmp_path: Path
) -> None:
    """config/nginx.conf's `location /sse` passes each message on as it comes. So does a location that buffers
    and compresses responses, told by the stream's `X-Accel-Buffering: no` (nginx then flushes each message
    through gzip). The control: that location made to ignore the header holds the stream back, not even the
    welcome comes, so this test sees a proxy that buffers."""
    server = await serve_process(NOTIFIER_SSE_HEARTBEAT_S="1")
    shipped = CONFIG.read_text()
    async with nginx_in_front_of(server.port, tmp_path, shipped) as listen:
        await stream_through(listen, publisher, "alice", within=1)
    buffering = buffering_and_compressing(shipped)
    async with nginx_in_front_of(server.port, tmp_path, buffering) as listen:
        await stream_through(listen, publisher, "bob", within=1, compressed=True)
    held = sse_location(buffering, "proxy_ignore_headers X-Accel-Buffering;")
    async with nginx_in_front_of(server.port, tmp_path, held) as listen:
        with pytest.raises(TimeoutError):
            await stream_through(listen, publisher, "carol", within=3, compressed=True)
