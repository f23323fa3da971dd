"""Fixtures for the browser tests: a real `notifier` process on loopback, real RabbitMQ, real headless Chromium."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import httpx
import orjson
import pytest
from playwright.async_api import Browser, Locator, Page, async_playwright, expect

from notifier.connection.auth import mint_token
from tests.support import AMQP_URL, free_port

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
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0


class NotifierProcess:
    """`python -m notifier serve` (or `dev`) as its own process, as it runs in production."""

    def __init__(self, command: str, port: int, exchange: str, log: Path, extra_args: tuple[str, ...] = ()) -> None:
        self.command = command
        self.port = port
        self.exchange = exchange
        self.extra_args = extra_args
        self.base_url = f"http://127.0.0.1:{port}"
        self._process: subprocess.Popen[bytes] | None = None
        self._log = log

    def env(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith("NOTIFIER_")}
        env.update(
            NOTIFIER_HOST="127.0.0.1",
            NOTIFIER_PORT=str(self.port),
            NOTIFIER_AMQP_URL=AMQP_URL,
            NOTIFIER_JWT_SECRET=SECRET,
            NOTIFIER_API_KEYS=API_KEY,
            NOTIFIER_EXCHANGE=self.exchange,
            NOTIFIER_DEAD_LETTER_EXCHANGE=f"{self.exchange}.dead",
            NOTIFIER_ALLOWED_ORIGINS=self.base_url,
            NOTIFIER_DEMO_PAGE="true",
            NOTIFIER_QUEUE_EXPIRES_S="5",
            NOTIFIER_SHUTDOWN_TIMEOUT_S="3",
            NOTIFIER_LOG_FORMAT="console",
        )
        return env

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])

    async def start(self) -> None:
        """Start the process and wait until it answers `/readyz` (connected to RabbitMQ)."""
        assert self._process is None or self._process.poll() is not None, "already running"
        with self._log.open("ab") as log:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "notifier", self.command, *self.extra_args],
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        async with httpx.AsyncClient(timeout=2.0) as http:
            while time.monotonic() < deadline:
                if self._process.poll() is not None:
                    pytest.fail(f"notifier {self.command} exited with {self._process.returncode}:\n{self.log_tail()}")
                try:
                    if (await http.get(f"{self.base_url}/readyz")).status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)  # polling a port that is not open yet: there is no event to await
        pytest.fail(f"notifier {self.command} not ready within {START_TIMEOUT_S} s:\n{self.log_tail()}")

    async def stop(self) -> int:
        """SIGTERM, as an orchestrator stops it; returns the exit code."""
        process = self._process
        assert process is not None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                pytest.fail(f"notifier did not exit within {STOP_TIMEOUT_S} s of SIGTERM:\n{self.log_tail()}")
        return process.returncode

    def kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()


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
async def exchange_name(rabbitmq: str) -> AsyncIterator[str]:
    """A fresh exchange per test (events of one test never reach another); deleted at the end."""
    name = f"test-browser-{uuid.uuid4().hex[:12]}"
    yield name
    connection = await aio_pika.connect(rabbitmq, timeout=5)
    async with connection:
        channel = await connection.channel()
        exchange = await channel.declare_exchange(name, aio_pika.ExchangeType.TOPIC, durable=True)
        await exchange.delete()
        await channel.exchange_delete(f"{name}.dead")
        await channel.exchange_delete(f"{name}.control")
        await channel.queue_delete(f"{name}.dead")


@pytest.fixture
async def backend(rabbitmq: str, exchange_name: str) -> AsyncIterator[Backend]:
    """Named apart from the suite's `publisher` fixture: this one returns each event's id."""
    connection = await aio_pika.connect(rabbitmq, timeout=5)
    async with connection:
        channel = await connection.channel(publisher_confirms=True)
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        yield Backend(exchange)


@pytest.fixture
async def service(exchange_name: str, tmp_path: Path) -> AsyncIterator[NotifierProcess]:
    """`notifier serve` with the demo page on, on a free loopback port."""
    process = NotifierProcess("serve", free_port(), exchange_name, tmp_path / "notifier.log")
    await process.start()
    yield process
    process.kill()


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
