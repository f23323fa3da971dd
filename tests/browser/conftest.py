"""Fixtures for the browser tests: a real `notifier` process on loopback, real RabbitMQ, real headless Chromium."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aio_pika
import orjson
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from notifier.connection.auth import mint_token
from tests.processes import NotifierProcess, StartNotifier, notifier_env
from tests.support import free_port

SECRET = "browser-test-secret-long-enough-for-hs256"
API_KEY = "browser-test-api-key"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def browser_env(port: int, exchange: str) -> dict[str, str]:
    """A `notifier` process whose demo page, on its own origin, the browser tests open."""
    return notifier_env(
        port,
        exchange,
        NOTIFIER_JWT_SECRET=SECRET,
        NOTIFIER_API_KEYS=API_KEY,
        NOTIFIER_ALLOWED_ORIGINS=f"http://127.0.0.1:{port}",
        NOTIFIER_DEMO_PAGE="true",
        NOTIFIER_LOG_FORMAT="console",
    )


class Backend:
    """An independent backend: publishes to the topic exchange with aio-pika, as protocol.md describes, and
    returns the id it gave each event (the page shows it)."""

    def __init__(self, exchange: aio_pika.abc.AbstractExchange) -> None:
        self._exchange = exchange

    async def publish(self, topic: str, data: Any) -> str:
        event_id = uuid.uuid4().hex
        message = aio_pika.Message(orjson.dumps(data), content_type="application/json", message_id=event_id)
        await self._exchange.publish(message, routing_key=topic)
        return event_id


@pytest.fixture
async def backend(rabbitmq: str, exchange: str) -> AsyncIterator[Backend]:
    """Named apart from the suite's `publisher` fixture: this one returns each event's id."""
    connection = await aio_pika.connect(rabbitmq, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        declared = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
        yield Backend(declared)


@pytest.fixture
async def service(exchange: str, start_notifier: StartNotifier) -> NotifierProcess:
    """`notifier serve` with the demo page on, on a free loopback port."""
    port = free_port()
    return await start_notifier("serve", env=browser_env(port, exchange), port=port)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: run .ci/setup-browser")
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


def token_for(user: str, topics: list[str] | None = None, ttl_s: float = 600) -> str:
    return mint_token(SECRET, user, topics=topics, ttl_s=ttl_s)


async def sign_in_with_token(page: Page, base_url: str, token: str) -> None:
    await page.goto(base_url + "/")
    await page.fill("#token", token)
    await page.click("#connect")
    await expect(page.locator("#state")).to_have_attribute("data-state", "open")


async def subscribe(page: Page, topic: str) -> None:
    await page.fill("#topic", topic)
    await page.press("#topic", "Enter")
    await expect(page.locator(f'.sub[data-topic="{topic}"]')).to_have_attribute("data-status", "subscribed")


def notes(page: Page, topic: str) -> Locator:
    return page.locator(f'#feed .note[data-topic="{topic}"]')
