"""A rolling deploy under a steady feed: three instances, each replaced in turn as a rolling update with one
extra instance at a time does it (start the new one, then stop the old one); every browser resumes with
`recovered: true`, and every event arrives once, in order."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from tests.cluster import Browser, Feed
from tests.support import AMQP_URL, RunningServer, StartServer, wait_until

USERS = 60
TICK_S = 0.2
SETTLE_S = 2.0


@pytest.mark.slow  # three instances replaced in turn under a feed: about half a minute
async def test_a_rolling_deploy_of_three_instances_resumes_everyone_with_every_event_once(
    start_server: StartServer, exchange: str
) -> None:
    fleet: list[RunningServer] = [await start_server() for _ in range(3)]
    turns = itertools.count()

    def next_instance() -> str:
        # A load balancer sends each new connection to one of the instances that are up.
        live = [instance for instance in fleet if not instance.task.done() and instance.node.ready]
        return live[next(turns) % len(live)].ws_url

    browsers = [Browser(next_instance, f"u{n}") for n in range(USERS)]
    running = [asyncio.create_task(browser.run()) for browser in browsers]
    feed = Feed(AMQP_URL, exchange, [browser.user for browser in browsers], TICK_S)
    try:
        await asyncio.wait_for(asyncio.gather(*(browser.welcomed.wait() for browser in browsers)), 30)
        feeding = asyncio.create_task(feed.run())
        await asyncio.sleep(SETTLE_S)
        for old in list(fleet):
            fleet.append(await start_server())  # the new instance is ready before the old one is stopped
            await old.stop()  # SIGTERM's drain: clients get 1012, resume elsewhere, their sessions handed over
            await asyncio.sleep(SETTLE_S)
        feed.stop()
        await feeding

        def everyone_has_every_event() -> bool:
            return all(not browser.missing(feed.confirmed[browser.user]) for browser in browsers)

        await wait_until(everyone_has_every_event, 30, interval=0.2)
    finally:
        for browser in browsers:
            browser.stop()
        for task in running:
            task.cancel()
        await asyncio.gather(*running, return_exceptions=True)

    confirmed = sum(len(seqs) for seqs in feed.confirmed.values())
    doubled = {browser.user: len(browser.seqs) - len(set(browser.seqs)) for browser in browsers}
    print(f"{confirmed} events confirmed over {USERS} users; connections made: {sum(b.connections for b in browsers)}")
    assert confirmed >= SETTLE_S * 4 / TICK_S * USERS * 0.5, "the feed did not run"
    assert all(browser.connections >= 2 for browser in browsers), "every client moved at least once"
    assert [browser.user for browser in browsers if browser.told] == [], "every resume recovered"
    assert {user: count for user, count in doubled.items() if count} == {}, "no event twice"
    assert all(browser.in_order() for browser in browsers)
