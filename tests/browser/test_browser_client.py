"""notifier.js in real headless Chromium, on the page the service serves, against `notifier serve` and RabbitMQ."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, expect

from notifier.runtime import devstate
from tests.browser.conftest import Backend, browser_env, notes, sign_in_with_token, subscribe, token_for
from tests.faults import CuttableProxy
from tests.processes import NotifierProcess, StartNotifier
from tests.support import free_port

WAIT_MS = 15_000
RECONNECT_WAIT_MS = 30_000
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(autouse=True)
def _expect_timeout() -> None:
    expect.set_options(timeout=WAIT_MS)


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    yield page
    await context.close()


async def test_page_subscribes_and_shows_an_event_published_to_rabbitmq(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    await sign_in_with_token(page, service.http_url, token_for("alice", ["news.#"]))
    await expect(page.locator("#who")).to_contain_text("alice")
    await expect(page.locator('.sub[data-topic="user.alice"]')).to_have_attribute("data-status", "subscribed")
    await subscribe(page, "news.sport")

    event_id = await backend.publish("news.sport", {"title": "Goal!", "score": [1, 0]})

    note = page.locator(f'#feed .note[data-id="{event_id}"]')
    await expect(note).to_have_attribute("data-topic", "news.sport")
    await expect(note.locator(".title")).to_have_text("Goal!")
    await expect(note.locator(".data")).to_contain_text('"score"')
    shown_at = datetime.fromisoformat(str(await note.locator("time").get_attribute("datetime")))
    assert abs((shown_at - datetime.now(UTC)).total_seconds()) < 60, "the time shown is the publish time"
    await expect(page.locator("#count")).to_have_text("1")


async def test_forbidden_topic_is_refused_with_its_code(service: NotifierProcess, page: Page) -> None:
    await sign_in_with_token(page, service.http_url, token_for("alice", ["news.#"]))
    await page.fill("#topic", "user.bob")
    await page.press("#topic", "Enter")
    await expect(page.locator("#subscribe-error")).to_have_attribute("data-code", "forbidden")
    await expect(page.locator('.sub[data-topic="user.bob"]')).to_have_count(0)


async def test_page_reconnects_after_a_restart_resubscribes_and_shows_the_next_event(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    await sign_in_with_token(page, service.http_url, token_for("alice", ["news.#"]))
    await subscribe(page, "news.sport")
    await backend.publish("news.sport", {"title": "before the restart"})
    await expect(notes(page, "news.sport")).to_have_count(1)

    assert await service.stop() == 0
    await expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
    await expect(page.locator('.sub[data-topic="news.sport"]')).to_have_attribute("data-status", "pending")

    await service.start()  # same port
    await expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=RECONNECT_WAIT_MS)
    await expect(page.locator('.sub[data-topic="news.sport"]')).to_have_attribute("data-status", "subscribed")

    await backend.publish("news.sport", {"title": "after the restart"})
    await expect(notes(page, "news.sport")).to_have_count(2)
    await expect(notes(page, "news.sport").first.locator(".title")).to_have_text("after the restart")


async def test_a_page_never_shows_another_users_events(
    service: NotifierProcess, backend: Backend, browser: Browser
) -> None:
    alice_context = await browser.new_context()
    bob_context = await browser.new_context()
    try:
        alice = await alice_context.new_page()
        bob = await bob_context.new_page()
        await sign_in_with_token(alice, service.http_url, token_for("alice"))
        await sign_in_with_token(bob, service.http_url, token_for("bob"))

        # Both events go through one queue in order: once Alice has her later event, Bob's earlier one would
        # have reached her already if it were going to.
        await backend.publish("user.bob", {"title": "for bob only"})
        await backend.publish("user.alice", {"title": "for alice only"})

        await expect(notes(alice, "user.alice")).to_have_count(1)
        await expect(notes(bob, "user.bob")).to_have_count(1)
        await expect(notes(alice, "user.bob")).to_have_count(0)
        await expect(notes(bob, "user.alice")).to_have_count(0)
        await expect(alice.locator("#feed")).not_to_contain_text("for bob only")
        await expect(bob.locator("#feed")).not_to_contain_text("for alice only")
    finally:
        await alice_context.close()
        await bob_context.close()


async def test_demo_page_in_dev_mode_signs_in_subscribes_and_publishes(
    exchange: str, page: Page, start_notifier: StartNotifier
) -> None:
    """`notifier dev --amqp`: the page mints its own token and publishes through the service. Saves docs/demo.png."""
    port = free_port()
    dev = await start_notifier("dev", "--amqp", env=browser_env(port, exchange), port=port)
    try:
        await page.goto(dev.http_url + "/")
        await page.fill("#user", "ada")
        await page.fill("#patterns", "news.#, team.7.*")
        await page.click("#connect")
        await expect(page.locator("#state")).to_have_attribute("data-state", "open")
        await subscribe(page, "news.sport")
        await subscribe(page, "team.7.deploys")
        await page.fill("#publish-data", "not json")
        await page.click("#publish button[type=submit]")
        await expect(page.locator("#publish-result")).to_contain_text("must be JSON")

        events = [
            ("team.7.deploys", '{"title": "Deploy finished", "service": "checkout", "version": "2.14.0"}'),
            ("user.ada", '{"title": "Anna mentioned you", "text": "Can you review the release notes?"}'),
            ("news.sport", '{"title": "Goal!", "text": "Spain 1-0 Italy, 54\'"}'),
        ]
        for count, (topic, data) in enumerate(events, start=1):
            await page.fill("#publish-topic", topic)
            await page.fill("#publish-data", data)
            await page.click("#publish button[type=submit]")
            await expect(page.locator("#count")).to_have_text(str(count))
            await expect(page.locator("#publish-result")).to_have_text(f"Published to {topic}")
        await expect(page.locator("#feed .note").first.locator(".title")).to_have_text("Goal!")
        await page.screenshot(path=str(SCREENSHOT), animations="disabled")
    finally:
        await dev.stop()
    assert not devstate.state_path(port).exists(), "notifier dev removes the state it left for the CLI"


async def test_a_long_lived_page_renews_its_token_and_keeps_one_connection(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    """Tokens of a few seconds, renewed over the open connection by `refresh`; pings answered by the server."""
    minted: list[str] = []

    def mint_short_token() -> str:
        minted.append(token_for("alice", ["news.#"], ttl_s=4))
        return minted[-1]

    await page.expose_function("mintShortToken", mint_short_token)
    await page.goto(service.http_url + "/")
    await page.evaluate(
        """async () => {
            const { NotifierClient } = await import('/static/notifier.js');
            const log = (window.clientLog = { welcomes: 0, refreshes: 0, states: [], events: [], errors: [] });
            const client = new NotifierClient({
                url: '/ws', getToken: () => window.mintShortToken(), pingInterval: 300, pongTimeout: 1000,
            });
            client.on('welcome', () => log.welcomes++);
            client.on('refreshed', () => log.refreshes++);
            client.on('state', (state) => log.states.push(state));
            client.on('error', (error) => log.errors.push(error.code));
            client.on('event', (event) => log.events.push(event.data));
            client.connect();
            await client.subscribe('news.sport');
        }"""
    )
    # exp is whole seconds, so three renewals take about 4 s; without them the server closes with 4001.
    await page.wait_for_function("window.clientLog.refreshes >= 3", timeout=WAIT_MS)
    await backend.publish("news.sport", {"still": "here"})
    await page.wait_for_function("window.clientLog.events.length === 1", timeout=WAIT_MS)
    log = await page.evaluate("window.clientLog")
    assert log["welcomes"] == 1, "one connection throughout"
    assert log["states"] == ["connecting", "open"]
    assert log["errors"] == []
    assert log["events"] == [{"still": "here"}]
    assert len(minted) >= 4, "getToken was asked before each renewal"


async def test_a_page_whose_connection_drops_gets_every_event_it_missed_once_in_order(
    service: NotifierProcess, backend: Backend, page: Page
) -> None:
    """The network between the browser and the server is cut while events are published: the page resumes its
    session when the line is back and shows each missed event once, in order, then the live ones."""
    line = CuttableProxy(target=("127.0.0.1", service.port))
    await line.start()
    try:
        await sign_in_with_token(page, f"http://127.0.0.1:{line.port}", token_for("alice", ["news.#"]))
        await subscribe(page, "news.sport")
        await backend.publish("news.sport", {"title": "before"})
        await expect(notes(page, "news.sport")).to_have_count(1)

        line.cut()
        await expect(page.locator("#state")).to_have_attribute("data-state", "reconnecting")
        for n in range(3):
            await backend.publish("news.sport", {"title": f"missed {n}"})
        line.restore()

        await expect(page.locator("#state")).to_have_attribute("data-state", "open", timeout=RECONNECT_WAIT_MS)
        await expect(notes(page, "news.sport")).to_have_count(4)
        await backend.publish("news.sport", {"title": "after"})
        await expect(notes(page, "news.sport")).to_have_count(5)
        titles = await notes(page, "news.sport").locator(".title").all_inner_texts()
        assert titles == ["after", "missed 2", "missed 1", "missed 0", "before"]  # newest first, each once
    finally:
        await line.stop()
