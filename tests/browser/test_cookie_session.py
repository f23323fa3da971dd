"""A cookie-session application in real headless Chromium: no token anywhere. The application (a small ASGI app
under uvicorn on loopback, as a Django or Express application would be) signs the browser in with a session
cookie and serves a page that loads notifier.js with `connectProxy: true`; `notifier serve` asks the
application's /auth who the browser is, from the cookie the WebSocket handshake carries.

Both run on 127.0.0.1 on different ports: cookies are per host, not per port, so the cookie the application
set is sent with the WebSocket handshake to the notifier's port too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import uvicorn
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import Backend
from tests.processes import NotifierProcess, StartNotifier, notifier_env
from tests.support import free_port

WAIT_MS = 15_000

pytestmark = pytest.mark.timeout(60)

PAGE = """<!doctype html>
<meta charset="utf-8">
<title>An application</title>
<p id="state" data-state="closed">closed</p>
<p id="who"></p>
<p id="error"></p>
<ul id="feed"></ul>
<script type="module">
  import { NotifierClient } from '%(notifier)s/static/notifier.js';
  const client = new NotifierClient({ url: '%(ws)s/ws', connectProxy: true, %(options)s });
  const state = document.getElementById('state');
  client.on('state', (value) => { state.dataset.state = value; state.textContent = value; });
  client.on('welcome', ({ user }) => { document.getElementById('who').textContent = user; });
  client.on('error', (error) => { document.getElementById('error').textContent = error.code; });
  client.on('event', ({ id, topic, data }) => {
    const note = document.createElement('li');
    note.className = 'note';
    note.dataset.id = id;
    note.dataset.topic = topic;
    note.textContent = JSON.stringify(data);
    document.getElementById('feed').append(note);
  });
  client.connect();
  window.notifierClient = client;
</script>
"""


class CookieApplication:
    """GET /login?user=42 sets the session cookie and sends the browser to /; GET / is the page; POST /auth is
    the connect proxy's endpoint: who the cookie names, the topics it may follow and for how long (401 without
    a session). It keeps the bodies /auth was sent."""

    def __init__(self) -> None:
        self.notifier_url = ""
        self.client_options = ""
        """More NotifierClient options for the page, as JavaScript."""
        self.auth_bodies: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"] == "/login":
            user = scope["query_string"].decode().removeprefix("user=")
            headers = [(b"set-cookie", f"session={user}; Path=/; HttpOnly; SameSite=Lax".encode()), (b"location", b"/")]
            await self._answer(send, 302, b"", headers)
        elif scope["path"] == "/":
            ws = self.notifier_url.replace("http://", "ws://")
            page = PAGE % {"notifier": self.notifier_url, "ws": ws, "options": self.client_options}
            await self._answer(send, 200, page.encode(), [(b"content-type", b"text/html; charset=utf-8")])
        elif scope["path"] == "/auth" and scope["method"] == "POST":
            request = orjson.loads(body)
            self.auth_bodies.append(request)
            user = self._session_user(request["headers"].get("cookie", ""))
            if user is None:
                await self._answer(send, 401, b'{"error": "not signed in"}', [])
            else:
                answer = {"user": user, "topics": ["news.*"], "expires_in": 3600}
                await self._answer(send, 200, orjson.dumps(answer), [(b"content-type", b"application/json")])
        else:
            await self._answer(send, 404, b"", [])

    @staticmethod
    def _session_user(cookie: str) -> str | None:
        for part in cookie.split(";"):
            name, _, value = part.strip().partition("=")
            if name == "session" and value:
                return value
        return None

    @staticmethod
    async def _answer(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@pytest.fixture(autouse=True)
def _expect_timeout() -> None:
    expect.set_options(timeout=WAIT_MS)


@pytest.fixture
async def application() -> AsyncIterator[tuple[CookieApplication, str]]:
    app = CookieApplication()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    yield app, f"http://127.0.0.1:{port}"
    server.should_exit = True
    await asyncio.wait_for(task, 10)


@pytest.fixture
async def service(
    application: tuple[CookieApplication, str], exchange: str, start_notifier: StartNotifier
) -> NotifierProcess:
    """`notifier serve` whose connect proxy is the application's /auth, allowing the application's origin."""
    app, app_url = application
    port = free_port()
    env = notifier_env(
        port,
        exchange,
        NOTIFIER_CONNECT_PROXY_URL=f"{app_url}/auth",
        NOTIFIER_ALLOWED_ORIGINS=app_url,
        NOTIFIER_LOG_FORMAT="console",
    )
    process = await start_notifier("serve", env=env, port=port)
    app.notifier_url = process.http_url
    return process


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    yield page
    await context.close()


async def test_a_page_signed_in_by_its_session_cookie_connects_without_a_token_and_shows_an_event(
    application: tuple[CookieApplication, str], service: NotifierProcess, backend: Backend, page: Page
) -> None:
    app, app_url = application
    await page.goto(f"{app_url}/login?user=42")  # the cookie is set, then the page loads
    await expect(page.locator("#state")).to_have_attribute("data-state", "open")
    await expect(page.locator("#who")).to_have_text("42")
    # The application saw its own cookie, from the WebSocket handshake to the notifier's port, and the page's origin.
    (asked,) = app.auth_bodies
    assert asked["headers"]["cookie"] == "session=42"
    assert asked["origin"] == app_url

    event_id = await backend.publish("user.42", {"text": "Your order shipped"})
    note = page.locator(f'#feed .note[data-id="{event_id}"]')
    await expect(note).to_have_attribute("data-topic", "user.42")
    await expect(note).to_have_text('{"text":"Your order shipped"}')

    # The application's grants hold too: news.* may be followed, news.sport.live may not.
    await page.evaluate("window.notifierClient.subscribe('news.sport')")
    refused = await page.evaluate(
        "window.notifierClient.subscribe('news.sport.live').then(() => 'subscribed', (error) => error.code)"
    )
    assert refused == "forbidden"
    sport = await backend.publish("news.sport", {"score": [1, 0]})
    await expect(page.locator(f'#feed .note[data-id="{sport}"]')).to_have_attribute("data-topic", "news.sport")


async def test_a_page_without_a_session_is_refused_by_the_application_and_stops(
    application: tuple[CookieApplication, str], service: NotifierProcess, page: Page
) -> None:
    app, app_url = application
    await page.goto(f"{app_url}/")  # never signed in: no cookie
    await expect(page.locator("#error")).to_have_text("refused_by_application")
    await expect(page.locator("#state")).to_have_attribute("data-state", "closed")
    assert app.auth_bodies and "cookie" not in app.auth_bodies[0]["headers"]


async def test_a_page_signed_in_by_its_cookie_connects_over_the_http_stream_from_another_origin(
    application: tuple[CookieApplication, str], service: NotifierProcess, backend: Backend, page: Page
) -> None:
    """The same page on the HTTP stream only: its cross-origin requests carry the cookie (credentials), the
    stream's answers are readable by the page (CORS), and a subscribe goes out as a command."""
    app, app_url = application
    app.client_options = "transports: ['sse']"
    await page.goto(f"{app_url}/login?user=42")
    await expect(page.locator("#state")).to_have_attribute("data-state", "open")
    await expect(page.locator("#who")).to_have_text("42")
    assert await page.evaluate("window.notifierClient.transport") == "sse"
    (asked,) = app.auth_bodies
    assert asked["headers"]["cookie"] == "session=42", "the stream request carried the application's cookie"
    assert asked["origin"] == app_url

    await page.evaluate("window.notifierClient.subscribe('news.sport')")
    sport = await backend.publish("news.sport", {"score": [2, 1]})
    await expect(page.locator(f'#feed .note[data-id="{sport}"]')).to_have_attribute("data-topic", "news.sport")
