"""The demo page in real headless Chromium behind a real nginx that answers 403 to every WebSocket upgrade, as
some company proxies do: notifier.js falls back to the HTTP stream by itself and the page shows every event, in
order. Opened directly, the same page still uses a WebSocket."""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import websockets
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import Backend, notes, sign_in_with_token, subscribe, token_for
from tests.processes import NotifierProcess
from tests.support import free_port
from tests.test_nginx import nginx_args

pytestmark = [pytest.mark.timeout(90), pytest.mark.nginx]

WAIT_MS = 20_000

# A proxy that passes plain HTTP (and streams it unbuffered) but refuses WebSocket upgrades.
BLOCKING_NGINX_CONF = """
worker_processes 1;
events { worker_connections 256; }
http {
    access_log off;
    server {
        listen 127.0.0.1:%(listen)d;
        location / {
            if ($http_upgrade != "") {
                return 403;
            }
            proxy_pass http://127.0.0.1:%(upstream)d;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_buffering off;
            proxy_read_timeout 75s;
        }
    }
}
"""


@pytest.fixture(autouse=True)
def _expect_timeout() -> None:
    expect.set_options(timeout=WAIT_MS)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    yield page
    await context.close()


@pytest.fixture
async def blocking_proxy(service: NotifierProcess, tmp_path: Path) -> AsyncIterator[str]:
    """nginx in front of `service` that refuses upgrades; its base URL."""
    listen = free_port()
    config = tmp_path / "nginx.conf"
    config.write_text(BLOCKING_NGINX_CONF % {"listen": listen, "upstream": service.port})
    process = subprocess.Popen(
        nginx_args(config, tmp_path, globals_="daemon off;"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    base_url = f"http://127.0.0.1:{listen}"
    try:
        async with httpx.AsyncClient(base_url=base_url) as http:
            for _ in range(100):
                try:
                    if (await http.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert process.poll() is None, process.stderr.read() if process.stderr else b""
                await asyncio.sleep(0.05)  # nginx's port is not open yet: there is no event to await
            else:
                raise AssertionError("nginx did not proxy /readyz")
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"ws://127.0.0.1:{listen}/ws", origin=base_url)  # type: ignore[arg-type]
        assert refused.value.response.status_code == 403, "the proxy refuses WebSockets"
        yield base_url
    finally:
        process.terminate()
        process.wait(10)


async def test_demo_page_behind_a_proxy_that_refuses_websockets_shows_events_in_order_over_the_http_stream(
    blocking_proxy: str, backend: Backend, page: Page
) -> None:
    await sign_in_with_token(page, blocking_proxy, token_for("alice", ["news.#"]))
    await expect(page.locator("#transport")).to_have_attribute("data-transport", "sse")
    await expect(page.locator("#transport")).to_have_text("HTTP stream")
    await subscribe(page, "news.sport")  # the subscribe goes out as a POST to the stream

    for n in range(10):
        await backend.publish("news.sport", {"title": f"event {n}"})
    await expect(notes(page, "news.sport")).to_have_count(10)
    titles = await notes(page, "news.sport").locator(".title").all_inner_texts()
    assert titles == [f"event {n}" for n in reversed(range(10))], "newest first, each once"
    await expect(page.locator("#transport")).to_have_attribute("data-transport", "sse")


async def test_demo_page_without_the_proxy_still_uses_a_websocket(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    await sign_in_with_token(page, service.http_url, token_for("alice", ["news.#"]))
    await expect(page.locator("#transport")).to_have_attribute("data-transport", "websocket")
    await expect(page.locator("#transport")).to_have_text("WebSocket")
    await subscribe(page, "news.sport")
    await backend.publish("news.sport", {"title": "direct"})
    await expect(notes(page, "news.sport")).to_have_count(1)
