"""config/nginx.conf on the nginx people have (Debian's): it loads, and it proxies WebSockets to a real server."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest
import websockets

from tests.support import Publisher, StartServer, free_port, token_for

pytestmark = pytest.mark.nginx

CONFIG = Path(__file__).resolve().parent.parent / "config" / "nginx.conf"


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


async def test_websocket_through_nginx_with_the_pages_own_origin(
    start_server: StartServer, publisher: Publisher, tmp_path: Path
) -> None:
    running = await start_server(allowed_origins=[])
    listen = free_port()
    text = CONFIG.read_text().replace("listen 8080;", f"listen 127.0.0.1:{listen};")
    text = text.replace("http://notifier:8000", f"http://127.0.0.1:{running.settings.port}")
    config = tmp_path / "nginx.conf"
    config.write_text(text)
    process = subprocess.Popen(
        nginx_args(config, tmp_path, globals_="daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
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
        page_origin = f"http://127.0.0.1:{listen}"  # a page served through the same proxy
        async with websockets.connect(f"ws://127.0.0.1:{listen}/ws", origin=page_origin) as ws:  # type: ignore[arg-type]
            await ws.send('{"type": "auth", "token": "' + token_for("alice") + '"}')
            assert '"welcome"' in str(await asyncio.wait_for(ws.recv(), 5))
            await publisher.publish("user.alice", {"via": "nginx"})
            assert '"via":"nginx"' in str(await asyncio.wait_for(ws.recv(), 5))
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{listen}/ws", origin="https://evil.example.net")  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403
    finally:
        process.terminate()
        process.wait(10)
