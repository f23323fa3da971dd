"""A RabbitMQ cluster loses a node under a steady feed: no user goes deaf without being told, no event is lost
with quorum queues, nothing needs a restart, and a new instance starts while a node is down.

Instance A lists c1 first (its connection and its queue start there), B lists c2 first; the feed publishes
through c3 and c2 with confirms, one event per user per tick; the faults hit c1. Browsers reconnect and resume
as notifier.js does. Every confirmed event is accounted for: received, or its user was told (`resync`, or a
resume answered `recovered: false`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from tests.cluster import Browser, Cluster, Feed, urls_from
from tests.support import RunningServer, StartServer, wait_until

pytestmark = pytest.mark.cluster

USERS_PER_INSTANCE = 10
TICK_S = 0.2
STEADY_S = 2.0
DOWN_S = 12.0
# Shorter than the test cluster's failure detection (net_ticktime 10 s: about 10 to 14 s), as a GC pause or a
# stalled disk would be.
FREEZE_S = 4.0
AFTER_S = 4.0
# A node's upgrade: stopped this long, then the next one after this long.
UPGRADE_DOWN_S = 5.0
UPGRADE_BETWEEN_S = 3.0
# The service's default NOTIFIER_BIND_WAIT_S.
BIND_WAIT_S = 20.0
# What a reader of a failed run wants to see of the instances' logs.
ROUTING_EVENTS = {
    "routing_lost",
    "routing_restored",
    "routing_restore_failed",
    "broker_queue_replaced",
    "routing_gap_told",
    "broker_consumer_cancelled",
    "broker_reconnected",
}


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    """The 3-node cluster of .ci/cluster, started once for the session (about 20 s) and stopped after it."""
    running = Cluster()
    running.start()
    yield running
    running.ctl("stop")


@pytest.fixture
def healthy_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The cluster with every node up before and after the test (a test's fault is undone even if it failed)."""
    cluster.start()
    yield cluster
    cluster.start()


@pytest.fixture
def cluster_exchange() -> str:
    return f"cl-{uuid.uuid4().hex[:10]}"


async def in_thread(step: Callable[[], object]) -> None:
    await asyncio.to_thread(step)


FAULTS: dict[str, tuple[Callable[[Cluster], object], Callable[[Cluster], object], float]] = {
    # a crash: the node is gone at once, its classic queues with it, until it is started again
    "kill": (lambda c: c.kill("c1"), lambda c: c.start_node("c1"), DOWN_S),
    # a RabbitMQ upgrade or restart: clients are closed with 320 CONNECTION_FORCED
    "stop_app": (lambda c: c.stop_app("c1"), lambda c: c.start_app("c1"), DOWN_S),
    # a stall shorter than failure detection
    "freeze": (lambda c: c.freeze("c1"), lambda c: c.thaw("c1"), FREEZE_S),
}


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[[RunningServer, list[str]], Coroutine[Any, Any, list[Browser]]]]:
    tasks: list[asyncio.Task[None]] = []
    opened: list[Browser] = []

    async def open_browsers(instance: RunningServer, users: list[str]) -> list[Browser]:
        made = [Browser(lambda: instance.ws_url, user) for user in users]
        for browser in made:
            tasks.append(asyncio.create_task(browser.run()))
        await asyncio.wait_for(asyncio.gather(*(browser.welcomed.wait() for browser in made)), 30)
        opened.extend(made)
        return made

    yield open_browsers
    for browser in opened:
        browser.stop()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


OpenBrowsers = Callable[[RunningServer, list[str]], Coroutine[Any, Any, list[Browser]]]


@dataclass
class Outcome:
    """What the users of both instances saw while `fault` ran under the feed."""

    on_a: list[Browser]
    on_b: list[Browser]
    feed: Feed
    lost: dict[str, list[int]]
    logs: list[MutableMapping[str, Any]]


async def under_feed(
    cluster: Cluster,
    start_server: StartServer,
    browsers: OpenBrowsers,
    exchange: str,
    queue_type: str,
    fault: Callable[[RunningServer, RunningServer], Awaitable[None]],
) -> Outcome:
    """Instances A (c1 first) and B (c2 first), USERS_PER_INSTANCE browsers on each and the feed; run `fault`,
    then wait until every confirmed event reached its user or the user was told."""
    settings = {
        "exchange": exchange,
        "dead_letter_exchange": f"{exchange}.dead",
        "queue_type": queue_type,
        "broker_timeout_s": 3.0,
    }
    with capture_logs() as logs:
        a = await start_server(amqp_url=urls_from("c1", "c2", "c3"), **settings)
        b = await start_server(amqp_url=urls_from("c2", "c3", "c1"), **settings)
        on_a = await browsers(a, [f"a{index}" for index in range(USERS_PER_INSTANCE)])
        on_b = await browsers(b, [f"b{index}" for index in range(USERS_PER_INSTANCE)])
        everyone = on_a + on_b
        feed = Feed(urls_from("c3", "c2", "c1"), exchange, [browser.user for browser in everyone], TICK_S)
        feeding = asyncio.create_task(feed.run())
        await asyncio.sleep(STEADY_S)
        await fault(a, b)
        await asyncio.sleep(AFTER_S)
        feed.stop()
        await feeding

        def accounted_for() -> bool:
            return all(not browser.missing(feed.confirmed[browser.user]) or browser.told for browser in everyone)

        # Late is allowed; deaf is not: every confirmed event arrives, or its user was told.
        await wait_until(accounted_for, 60, interval=0.2)

        # No restart needed: both instances say they route again.
        async with httpx.AsyncClient() as http:
            for instance in (a, b):
                assert (await http.get(f"{instance.http_url}/readyz")).status_code == 200

    lost = {browser.user: browser.missing(feed.confirmed[browser.user]) for browser in everyone}
    outcome = Outcome(on_a, on_b, feed, {user: seqs for user, seqs in lost.items() if seqs}, logs)
    confirmed = sum(len(seqs) for seqs in feed.confirmed.values())
    print(f"{queue_type}: {confirmed} events confirmed, lost {sum(map(len, outcome.lost.values()))}: {outcome.lost}")
    print("told:", {browser.user: browser.told for browser in everyone if browser.told})
    for line in logs:
        if line["event"] in ROUTING_EVENTS:
            print({key: value for key, value in line.items() if key != "log_level"})
    # (While a node is frozen, confirms of events routed to its queues wait: the feed pauses with them.)
    assert confirmed >= (STEADY_S + AFTER_S) / TICK_S * len(everyone) * 0.5, "the feed did not run"
    assert all(browser.in_order() for browser in everyone)
    # B's queue is on c2, which no fault here touches before B's own users are checked: B loses nothing.
    return outcome


def assert_every_loss_was_told(outcome: Outcome) -> None:
    everyone = outcome.on_a + outcome.on_b
    deaf = [browser.user for browser in everyone if browser.user in outcome.lost and not browser.told]
    assert deaf == [], f"users who lost events without being told: {deaf}"
    if any(browser.told for browser in outcome.on_a):
        assert any(line["event"] == "routing_gap_told" for line in outcome.logs)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_lost_node_leaves_no_user_deaf_without_being_told(
    healthy_cluster: Cluster,
    start_server: StartServer,
    browsers: OpenBrowsers,
    cluster_exchange: str,
    queue_type: str,
    fault: str,
) -> None:
    start_fault, end_fault, lasts_s = FAULTS[fault]

    async def on_c1(a: RunningServer, b: RunningServer) -> None:
        await in_thread(lambda: start_fault(healthy_cluster))
        await asyncio.sleep(lasts_s)
        await in_thread(lambda: end_fault(healthy_cluster))

    outcome = await under_feed(healthy_cluster, start_server, browsers, cluster_exchange, queue_type, on_c1)
    assert_every_loss_was_told(outcome)
    if queue_type == "quorum" or fault == "freeze":
        assert outcome.lost == {}, "a replicated queue, or a node that only stalled, loses nothing"
    assert all(browser.told == 0 for browser in outcome.on_b)
    assert not any(user.startswith("b") for user in outcome.lost)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_a_rolling_upgrade_of_every_node_in_turn(
    healthy_cluster: Cluster,
    start_server: StartServer,
    browsers: OpenBrowsers,
    cluster_exchange: str,
    queue_type: str,
) -> None:
    """stop_app and start_app on c1, c2, then c3, as an upgrade of RabbitMQ does: with quorum queues nothing is
    lost; with classic ones every loss is told."""

    async def upgrade(a: RunningServer, b: RunningServer) -> None:
        for node in ("c1", "c2", "c3"):
            await in_thread(lambda node=node: healthy_cluster.stop_app(node))  # type: ignore[misc]
            await asyncio.sleep(UPGRADE_DOWN_S)
            await in_thread(lambda node=node: healthy_cluster.start_app(node))  # type: ignore[misc]
            await asyncio.sleep(UPGRADE_BETWEEN_S)

    outcome = await under_feed(healthy_cluster, start_server, browsers, cluster_exchange, queue_type, upgrade)
    assert_every_loss_was_told(outcome)
    if queue_type == "quorum":
        assert outcome.lost == {}, "a replicated queue loses nothing in a rolling upgrade"


async def test_a_frozen_node_delays_logins_elsewhere_within_the_bind_wait(
    healthy_cluster: Cluster,
    start_server: StartServer,
    browsers: OpenBrowsers,
    cluster_exchange: str,
) -> None:
    """While c1 is frozen, a bind at RabbitMQ (a change to the cluster's metadata) waits for it, even through a
    healthy node: a login on B waits, and either is welcomed once c1 answers again or is refused with 1013 at
    NOTIFIER_BIND_WAIT_S. Never longer, and never deaf: after the thaw it is welcomed and gets its events."""
    waits: list[float] = []

    async def freeze_and_log_in(a: RunningServer, b: RunningServer) -> None:
        await in_thread(lambda: healthy_cluster.freeze("c1"))
        started = time.monotonic()
        logging_in = asyncio.create_task(browsers(b, ["late"]))
        try:
            await asyncio.wait({logging_in}, timeout=FREEZE_S)
        finally:
            await in_thread(lambda: healthy_cluster.thaw("c1"))
        late = await logging_in
        waits.append(time.monotonic() - started)
        assert late[0].welcomed.is_set()

    outcome = await under_feed(healthy_cluster, start_server, browsers, cluster_exchange, "classic", freeze_and_log_in)
    print(f"a login on B while c1 was frozen for {FREEZE_S} s waited {waits[0]:.1f} s")
    assert outcome.lost == {}
    assert waits[0] < BIND_WAIT_S


async def test_a_new_instance_starts_while_a_node_is_down(
    healthy_cluster: Cluster, start_server: StartServer, cluster_exchange: str
) -> None:
    """The shared dead-letter queue lives on whichever node declared it first; its node's loss must not stop
    another instance from becoming ready."""
    settings = {"exchange": cluster_exchange, "dead_letter_exchange": f"{cluster_exchange}.dead"}
    first = await start_server(amqp_url=urls_from("c1"), **settings)  # declares the dead-letter queue on c1
    await wait_until(lambda: first.node.ready, 10)
    await first.stop()
    await in_thread(lambda: healthy_cluster.kill("c1"))
    second = await start_server(amqp_url=urls_from("c1", "c2", "c3"), **settings)
    await wait_until(lambda: second.node.ready, 20)
