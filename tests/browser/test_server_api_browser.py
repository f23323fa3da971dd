"""The server API seen from a real page: notifier.js in headless Chromium lets go of a topic the backend took
away, and stops without reconnecting when the backend disconnects the user."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from playwright.async_api import Browser, Page, expect

from tests.browser.conftest import API_KEY, Backend, notes, sign_in_with_token, subscribe, token_for
from tests.processes import NotifierProcess

pytestmark = [pytest.mark.browser, pytest.mark.timeout(60)]

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context()
    page = await context.new_page()
    yield page
    await context.close()


async def test_page_drops_a_topic_the_server_took_and_stops_when_disconnected(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    expect.set_options(timeout=15_000)
    await sign_in_with_token(page, service.http_url, token_for("alice", ["news.#"]))
    await subscribe(page, "news.sport")
    async with httpx.AsyncClient(base_url=service.http_url, headers=AUTH) as http:
        presence = (await http.get("/api/presence", params={"user": "alice"})).json()
        assert (presence["online"], presence["connections"]) == (True, 1)

        response = await http.post("/api/unsubscribe", json={"user": "alice", "topic": "news.sport"})
        assert response.status_code == 202
        await expect(page.locator('.sub[data-topic="news.sport"]')).to_have_count(0)
        await backend.publish("news.sport", {"title": "not for alice any more"})
        await backend.publish("user.alice", {"title": "still connected"})
        await expect(notes(page, "user.alice")).to_have_count(1)
        await expect(notes(page, "news.sport")).to_have_count(0)

        response = await http.post("/api/disconnect", json={"user": "alice", "reason": "session revoked"})
        assert response.status_code == 202
        await expect(page.locator("#state")).to_have_attribute("data-state", "closed")
        await expect(page.locator("#state .label")).to_have_text("Stopped: disconnected")
        await page.wait_for_timeout(2_000)  # the page does not come back by itself
        await expect(page.locator("#state")).to_have_attribute("data-state", "closed")
        presence = (await http.get("/api/presence", params={"user": "alice"})).json()
        assert (presence["online"], presence["connections"]) == (False, 0)
