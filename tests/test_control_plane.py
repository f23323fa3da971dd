"""The control plane itself, between two live instances on the real RabbitMQ: asking one instance, bounded
waits, and commands that run once per id."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from tests.support import RunningServer, StartServer, wait_until

pytestmark = pytest.mark.rabbitmq


def control_of(running: RunningServer) -> Any:
    return running.server.config.app.state.control  # type: ignore[union-attr]


@pytest.fixture
async def pair(start_server: StartServer) -> tuple[RunningServer, RunningServer]:
    first, second = await start_server(instance_id="cp-first"), await start_server(instance_id="cp-second")
    await wait_until(lambda: all(len(control_of(running).live_instances()) == 2 for running in (first, second)), 5)
    return first, second


async def test_ask_gets_the_answer_of_the_named_instance_only(pair: tuple[RunningServer, RunningServer]) -> None:
    first, second = pair
    asked: list[str] = []
    for running in pair:
        name = running.settings.instance_id

        async def whoami(_: dict[str, Any], name: str = name) -> dict[str, Any]:
            asked.append(name)
            return {"instance": name}

        control_of(running).on("whoami", whoami)
    answer = await control_of(first).ask("cp-second", "whoami", {}, timeout=1)
    assert answer == {"instance": "cp-second"}
    assert asked == ["cp-second"]

    started = time.monotonic()
    assert await control_of(first).ask("nobody-here", "whoami", {}, timeout=0.3) is None
    assert 0.3 <= time.monotonic() - started < 1

    gathered = await control_of(second).gather("whoami", {}, timeout=1)
    assert gathered.replies == {"cp-first": {"instance": "cp-first"}, "cp-second": {"instance": "cp-second"}}
    assert (gathered.instances, gathered.expected) == (2, 2)


async def test_a_command_id_runs_once_on_each_instance(pair: tuple[RunningServer, RunningServer]) -> None:
    first, _ = pair
    runs: list[str] = []
    for running in pair:

        async def count(_: dict[str, Any], name: str = running.settings.instance_id) -> None:
            runs.append(name)

        control_of(running).on("count", count)
    for _ in range(3):
        await control_of(first).broadcast("count", {}, command_id="one-command")
    await wait_until(lambda: len(runs) == 2, 2)
    # A later command, queued behind the repeats: once it ran everywhere, the repeats were dealt with.
    await control_of(first).gather("count", {}, timeout=1)
    assert sorted(runs) == ["cp-first", "cp-first", "cp-second", "cp-second"]  # the repeated id once, the gather once


async def test_a_stopped_instance_says_bye_and_is_not_waited_for(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    first, second = pair
    await second.stop()
    await wait_until(lambda: control_of(first).live_instances() == {"cp-first"}, 2)
    started = time.monotonic()
    gathered = await control_of(first).gather("presence", {"user": "alice"}, timeout=1)
    assert time.monotonic() - started < 0.5  # every instance still alive answered: no waiting for the bound
    assert gathered.replies == {"cp-first": {"connections": 0}}


async def test_a_request_to_an_instance_that_says_bye_ends_at_once(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """An instance that stops while a request to it waits (it will never answer) ends that wait with its
    goodbye, not at the request's bound: a resume can then go to where its sessions went."""
    first, second = pair
    hold = asyncio.Event()

    async def never(_: dict[str, Any]) -> dict[str, Any]:
        await hold.wait()
        return {"late": True}

    control_of(second).on("slow", never)
    asking = asyncio.create_task(control_of(first).ask("cp-second", "slow", {}, timeout=20))
    await asyncio.sleep(0.3)
    assert not asking.done()
    started = time.monotonic()
    stopping = asyncio.create_task(second.stop())
    assert await asyncio.wait_for(asking, 10) is None
    assert time.monotonic() - started < 10  # its goodbye ended the wait, not the 20 s bound
    hold.set()
    await stopping


async def test_a_reply_on_its_way_when_an_instance_stops_reaches_the_asker_before_its_goodbye(
    pair: tuple[RunningServer, RunningServer],
) -> None:
    """A holder that handed a session over has let go of it before its reply is out: if it said goodbye first
    (or dropped the reply as it stopped), the asker would end its wait with nothing and the session would be
    lost. Its reply is held up on its way here, as a busy broker connection does, while it stops."""
    first, second = pair
    handled = asyncio.Event()

    async def let_go(_: dict[str, Any]) -> dict[str, Any]:
        handled.set()
        return {"found": True}

    control_of(second).on("let_go", let_go)
    replies = control_of(second)._reply_exchange
    publish = replies.publish

    async def slow_publish(*args: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(0.3)
        return await publish(*args, **kwargs)

    replies.publish = slow_publish
    asking = asyncio.create_task(control_of(first).ask("cp-second", "let_go", {}, timeout=20))
    await asyncio.wait_for(handled.wait(), 5)
    await second.stop()
    assert await asyncio.wait_for(asking, 5) == {"found": True}
