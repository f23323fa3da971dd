"""The README's snippets, run as a newcomer would paste them."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import aio_pika
import orjson
import pytest

from tests.support import Publisher

README = Path(__file__).resolve().parent.parent / "README.md"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


@pytest.mark.rabbitmq
async def test_the_readme_publish_example_runs_as_a_script(publisher: Publisher, exchange: str) -> None:
    (example,) = [block for block in python_blocks() if "aio_pika" in block]
    assert '"notifications"' in example
    # The same program on this test's own exchange, so the shared broker's real exchange is left alone.
    script = example.replace('"notifications"', repr(exchange))
    channel = await publisher.connection.channel()
    tap = await channel.declare_queue(exclusive=True, auto_delete=True)
    await tap.bind(exchange, routing_key="user.42")
    result = await asyncio.to_thread(
        subprocess.run, [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    message = await tap.get(timeout=5)
    assert isinstance(message, aio_pika.abc.AbstractIncomingMessage)
    assert orjson.loads(message.body) == {"text": "Your order shipped"}
    assert message.message_id == "order-1234-shipped"
    assert isinstance(message.headers["timestamp_in_ms"], int)


@pytest.mark.unit
def test_readme_commands_say_how_to_reach_the_installed_command() -> None:
    text = README.read_text()
    shell_lines = [
        line.strip() for block in re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL) for line in block.splitlines()
    ]
    bare = [line for line in shell_lines if re.match(r"notifier\s", line)]
    assert not bare, f"a bare `notifier` is not on PATH without activating the venv: {bare}"
