"""The HTTP stream in real headless Chromium with the browser's own `EventSource`, no library: a page reads `/sse`
(its token on the URL, as EventSource cannot set headers), its commands go out as `fetch` POSTs, and when the
line is cut the browser reconnects by itself with `Last-Event-ID`, which resumes the session."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from playwright.async_api import Browser, Page

from tests.browser.conftest import Backend, token_for
from tests.faults import CuttableProxy
from tests.processes import NotifierProcess
from tests.support import wait_until

pytestmark = pytest.mark.timeout(90)

OPEN_STREAM = """(url) => {
  window.received = [];
  const source = new EventSource(url);
  source.onmessage = (message) => window.received.push({ id: message.lastEventId, frame: JSON.parse(message.data) });
  window.source = source;
}"""

SEND = """async ([key, frame]) => {
  const answer = await fetch('/sse/' + key, { method: 'POST', headers: { 'Content-Type': 'text/plain' },
                                              body: JSON.stringify(frame) });
  return answer.status;
}"""


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    yield page
    await context.close()


async def received(page: Page) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = await page.evaluate("window.received")
    return messages


async def wait_for(page: Page, kind: str, count: int, timeout: float = 15) -> list[dict[str, Any]]:
    async def enough() -> bool:
        return len([m for m in await received(page) if m["frame"]["type"] == kind]) >= count

    await wait_until(enough, timeout, interval=0.1)
    return [message for message in await received(page) if message["frame"]["type"] == kind]


async def test_an_event_source_resumes_by_itself_with_last_event_id_after_the_line_is_cut(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    line = CuttableProxy(target=("127.0.0.1", service.port))
    await line.start()
    try:
        origin = f"http://127.0.0.1:{line.port}"
        await page.goto(origin + "/")
        await page.evaluate(OPEN_STREAM, f"/sse?token={token_for('alice', ['news.#'])}")
        (welcome,) = await wait_for(page, "welcome", 1)
        session = welcome["frame"]["session"]
        assert welcome["id"] == f"{session}:0"
        assert (
            await page.evaluate(
                SEND, [welcome["frame"]["stream"], {"type": "subscribe", "topic": "news.sport", "id": 1}]
            )
            == 202
        )
        await wait_for(page, "subscribed", 1)
        await backend.publish("news.sport", {"title": "before"})
        (before,) = await wait_for(page, "event", 1)
        assert before["id"] == f"{session}:1"

        line.cut()
        for n in range(3):
            await backend.publish("news.sport", {"title": f"missed {n}"})
        line.restore()

        welcomes = await wait_for(page, "welcome", 2, timeout=30)  # EventSource retries on its own
        again = welcomes[1]["frame"]
        assert (again["recovered"], again["topics"]) == (True, ["user.alice", "news.sport"])
        assert welcomes[1]["id"] == f"{again['session']}:1"
        await wait_for(page, "event", 4)
        await backend.publish("news.sport", {"title": "after"})
        events = await wait_for(page, "event", 5)
        assert [event["frame"]["data"]["title"] for event in events] == [
            "before",
            "missed 0",
            "missed 1",
            "missed 2",
            "after",
        ]
        assert [event["id"] for event in events[1:]] == [f"{again['session']}:{n}" for n in range(2, 6)]
    finally:
        await page.evaluate("window.source && window.source.close()")
        await line.stop()
