"""Session resume over real sockets and RabbitMQ: a client whose connection died comes back and gets exactly
what it missed, once each and in order, then the live events."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import orjson
import pytest
import websockets
from structlog.testing import capture_logs

from notifier.formats import closecodes
from tests.processes import StartNotifier, notifier_env
from tests.support import (
    Client,
    ConnectClient,
    Publisher,
    RunningServer,
    StartServer,
    assert_nothing_before_sentinel,
    free_port,
    receive_json,
    token_for,
    wait_until,
)
from tests.support_sse import metric

pytestmark = pytest.mark.rabbitmq


class CountingClient:
    """What a resuming client keeps: its session id and how many event frames it received in it."""

    def __init__(self) -> None:
        self.session: str | None = None
        self.received = 0
        self.data: list[Any] = []

    async def sign_in(
        self, client: Client, user: str, topics: list[str] | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        auth: dict[str, Any] = {"type": "auth", "token": token_for(user, topics)}
        if self.session is not None:
            auth["resume"] = {"session": self.session, "received": self.received}
        await client.send(auth)
        welcome = await client.receive(timeout)
        assert welcome["type"] == "welcome", welcome
        if not welcome["recovered"]:
            self.received = 0
        self.session = welcome["session"]
        return welcome

    async def next_event(self, client: Client, timeout: float = 5.0) -> Any:
        event = await client.expect_event(timeout=timeout)
        self.received += 1
        self.data.append(event["data"])
        return event["data"]


async def lose_connection(running: RunningServer, client: Client, parked_before: int = 0) -> None:
    """The TCP connection dies without a close handshake; wait until the server has parked the session."""
    client.ws.transport.abort()
    await wait_until(lambda: running.node.directory.parked_count == parked_before + 1, 5)


async def test_a_client_whose_connection_died_gets_what_it_missed_then_live(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    alice = CountingClient()
    first = await connect(server)
    await alice.sign_in(first, "alice", ["news"])
    assert (await first.subscribe("news"))["type"] == "subscribed"
    for n in range(2):
        await publisher.publish("news", n)
        assert await alice.next_event(first) == n
    await lose_connection(server, first)
    for n in range(2, 5):
        await publisher.publish("news", n)
    await wait_until(lambda: server.node.stats.events_in == 5, 5)

    second = await connect(server)
    welcome = await alice.sign_in(second, "alice", ["news"])
    assert (welcome["recovered"], welcome["topics"]) == (True, ["user.alice", "news"])
    assert [await alice.next_event(second) for _ in range(3)] == [2, 3, 4]
    await publisher.publish("news", 5)
    assert await alice.next_event(second) == 5
    await assert_nothing_before_sentinel(second.receive, publisher.publish, "news")


async def test_a_steady_feed_across_drops_arrives_exactly_once_and_in_order(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    total = 300
    published = asyncio.Event()

    async def feed() -> None:
        for n in range(total):
            await publisher.publish("user.bob", n)
            await asyncio.sleep(0.003)
        published.set()

    bob = CountingClient()
    client = await connect(server)
    await bob.sign_in(client, "bob")
    feeding = asyncio.create_task(feed())
    drops = 0
    try:
        while len(bob.data) < total:
            await bob.next_event(client)
            if len(bob.data) in (50, 120, 200):  # the connection dies three times mid-feed
                await lose_connection(server, client)
                drops += 1
                await asyncio.sleep(0.05)  # events keep coming meanwhile
                client = await connect(server)
                welcome = await bob.sign_in(client, "bob")
                assert welcome["recovered"] is True
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(feeding, 30)
    assert drops == 3
    assert bob.data == list(range(total))
    await assert_nothing_before_sentinel(client.receive, publisher.publish, "user.bob")


async def test_a_slow_client_cut_with_4002_gets_its_dropped_queue_back(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    running = await start_server(send_queue_size=4)
    carol = CountingClient()
    slow = await connect(running)
    await carol.sign_in(slow, "carol")
    slow.ws.transport.pause_reading()
    n = 0
    while not running.node.stats.closes_by_code[closecodes.SLOW_CLIENT.code]:
        await publisher.publish("user.carol", {"n": n, "pad": "x" * 60_000})
        n += 1
        assert n < 1000
        await asyncio.sleep(0.005)
    slow.ws.transport.resume_reading()
    with contextlib.suppress(Exception):
        while True:
            await carol.next_event(slow, timeout=5)
    assert slow.ws.close_code == closecodes.SLOW_CLIENT.code
    await wait_until(lambda: running.node.directory.parked_count == 1, 10)
    await publisher.publish("user.carol", {"n": n, "pad": ""})

    again = await connect(running)
    assert (await carol.sign_in(again, "carol"))["recovered"] is True
    while len(carol.data) < n + 1:
        await carol.next_event(again)
    assert [item["n"] for item in carol.data] == list(range(n + 1))


async def test_an_ended_session_answers_recovered_false_and_replays_nothing(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    dave = CountingClient()
    first = await connect(server)
    await dave.sign_in(first, "dave")
    await first.close()  # a goodbye (1000): the session ends
    await wait_until(lambda: not server.node.sessions, 5)
    await publisher.publish("user.dave", "while away")
    # Taken while dave was away (his topic still lingers bound): before this, it could still reach his new
    # connection live, which is not a replay.
    await wait_until(lambda: server.node.stats.events_in == 1, 5)
    second = await connect(server)
    welcome = await dave.sign_in(second, "dave")
    assert welcome["recovered"] is False
    await assert_nothing_before_sentinel(second.receive, publisher.publish, "user.dave")


async def test_another_users_token_cannot_resume_a_session(
    server: RunningServer, connect: ConnectClient, publisher: Publisher
) -> None:
    erin = CountingClient()
    first = await connect(server)
    await erin.sign_in(first, "erin")
    await lose_connection(server, first)
    await publisher.publish("user.erin", "private")
    mallory = CountingClient()
    mallory.session, mallory.received = erin.session, 0
    attacker = await connect(server)
    welcome = await mallory.sign_in(attacker, "mallory")
    assert (welcome["recovered"], welcome["user"]) == (False, "mallory")
    await assert_nothing_before_sentinel(attacker.receive, publisher.publish, "user.mallory")


# Across instances: the control plane hands sessions over.


async def test_a_session_resumes_on_another_instance_with_what_it_missed(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    first, second = await start_server(), await start_server()
    alice = CountingClient()
    client = await connect(first)
    await alice.sign_in(client, "alice", ["news"])
    assert (await client.subscribe("news"))["type"] == "subscribed"
    await publisher.publish("news", 0)
    assert await alice.next_event(client) == 0
    await lose_connection(first, client)
    for n in (1, 2):
        await publisher.publish("news", n)
    await wait_until(lambda: first.node.stats.events_in == 3, 5)

    moved = await connect(second)
    welcome = await alice.sign_in(moved, "alice", ["news"])
    assert (welcome["recovered"], welcome["topics"]) == (True, ["user.alice", "news"])
    assert [await alice.next_event(moved) for _ in range(2)] == [1, 2]
    await publisher.publish("news", 3)
    assert await alice.next_event(moved) == 3
    await assert_nothing_before_sentinel(moved.receive, publisher.publish, "news")
    await wait_until(lambda: not first.node.hub.bound_topics, 5)  # the holder let go of it
    assert first.node.directory.parked_count == 0
    # Two round trips for the session, counted where it resumed: its topics, then its events.
    for kind in ("session.describe_batch", "session.hand_over_batch"):
        assert await metric(second.http_url, "notifier_handover_requests_total", kind=kind) == 1
        assert await metric(second.http_url, "notifier_handover_sessions_asked_total", kind=kind) == 1
    assert await metric(first.http_url, "notifier_handover_requests_total", kind="session.hand_over_batch") == 0


async def test_a_rolling_restart_loses_nothing_for_clients_on_a_steady_feed(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    """SIGTERM's drain on one instance: its clients get 1012, resume on the other, and every event of a steady
    feed arrives exactly once, in order."""
    leaving = await start_server(shutdown_timeout_s=8)
    staying = await start_server()
    users = [f"u{n}" for n in range(5)]
    clients = {user: CountingClient() for user in users}
    sockets = {}
    for user in users:
        sockets[user] = await connect(leaving)
        await clients[user].sign_in(sockets[user], user)
    total = 200
    resumed_elsewhere: list[str] = []

    async def feed() -> None:
        for n in range(total):
            for user in users:
                await publisher.publish(f"user.{user}", n)
            await asyncio.sleep(0.004)

    async def follow(user: str) -> None:
        state, client = clients[user], sockets[user]
        while len(state.data) < total:
            try:
                await state.next_event(client, timeout=10)
            except (AssertionError, websockets.ConnectionClosed):
                assert client.ws.close_code == closecodes.SHUTDOWN.code, client.ws.close_code
                client = await connect(staying)
                assert (await state.sign_in(client, user))["recovered"] is True
                resumed_elsewhere.append(user)

    feeding = asyncio.create_task(feed())
    following = asyncio.gather(*(follow(user) for user in users))
    await asyncio.sleep(0.3)
    stop = asyncio.create_task(leaving.stop())
    await asyncio.wait_for(following, 40)
    await stop
    await feeding
    assert sorted(resumed_elsewhere) == users  # each moved once, mid-feed
    for user in users:
        assert clients[user].data == list(range(total)), user
    assert leaving.node.directory.parked_count == 0  # all were handed over before it stopped


async def test_a_crashed_holder_answers_recovered_false_quickly(
    start_server: StartServer,
    connect: ConnectClient,
    publisher: Publisher,
    exchange: str,
    start_notifier: StartNotifier,
) -> None:
    port = free_port()
    process = await start_notifier("serve", env=notifier_env(port, exchange), port=port)
    ws = await websockets.connect(f"ws://127.0.0.1:{port}/ws")
    await ws.send(orjson.dumps({"type": "auth", "token": token_for("frank")}).decode())
    welcome = await receive_json(ws)
    process.kill()  # SIGKILL: no drain, no hand-over
    await process.wait()
    survivor = await start_server()
    await publisher.publish("user.frank", "after the crash")
    frank = CountingClient()
    frank.session = welcome["session"]
    client = await connect(survivor)
    started = time.monotonic()
    with capture_logs() as logs:
        answer = await frank.sign_in(client, "frank")
    assert answer["recovered"] is False
    assert time.monotonic() - started < 2.0
    # The log says which session was not recovered, who held it and where asking for it failed.
    said = [entry for entry in logs if entry["event"] == "resume_not_recovered"]
    assert [(entry["resumed_session"], entry["failed_at"]) for entry in said] == [(welcome["session"], "describe")]
    await assert_nothing_before_sentinel(client.receive, publisher.publish, "user.frank")
    assert await metric(survivor.http_url, "notifier_resumes_total", outcome="not_recovered") == 1
    assert await metric(survivor.http_url, "notifier_resumes_total", outcome="recovered") == 0


async def test_past_the_window_a_session_is_not_recovered(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    first = await start_server(resume_window_s=0.3)
    second = await start_server()
    grace = CountingClient()
    client = await connect(first)
    await grace.sign_in(client, "grace")
    await lose_connection(first, client)
    await wait_until(lambda: first.node.directory.parked_count == 0, 5)
    await publisher.publish("user.grace", "too late")
    again = await connect(second)
    assert (await grace.sign_in(again, "grace"))["recovered"] is False
    await assert_nothing_before_sentinel(again.receive, publisher.publish, "user.grace")


async def test_clients_that_come_back_after_their_instance_is_gone_resume_with_what_they_missed(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    """A stopping instance cannot wait for every client: it asks a peer to adopt the sessions still parked.
    Clients that reconnect only after it has exited resume there (or, through it, on a third instance) with
    every event published meanwhile, once each."""
    leaving = await start_server(shutdown_timeout_s=4)
    second = await start_server()
    users = [f"late{n}" for n in range(4)]
    clients = {user: CountingClient() for user in users}
    for user in users:
        socket = await connect(leaving)
        await clients[user].sign_in(socket, user)
        await publisher.publish(f"user.{user}", "before")
        assert await clients[user].next_event(socket) == "before"
    third = await start_server()  # the rolling update's new instance, up before the old one stops
    await wait_until(lambda: second.node.ready and third.node.ready, 5)
    await leaving.stop()  # clients get 1012 and stay away until the instance is gone
    for user in users:
        await publisher.publish(f"user.{user}", "while away")
    for index, user in enumerate(users):
        # The load balancer spreads them: some reach the peer that adopted them, some the other one.
        target = second if index % 2 == 0 else third
        socket = await connect(target)
        welcome = await clients[user].sign_in(socket, user)
        assert welcome["recovered"] is True, user
        assert await clients[user].next_event(socket) == "while away"
        await assert_nothing_before_sentinel(socket.receive, publisher.publish, f"user.{user}")
    assert second.node.directory.parked_count == third.node.directory.parked_count == 0


async def test_a_client_that_asks_the_stopping_holder_after_its_sessions_were_adopted_still_resumes(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race a fleet rollout hit: the stopping instance gave its parked sessions to a peer, and a client came
    back to a third instance that had not yet heard `session.moved`, so it asked the old holder, which no
    longer had the session: `recovered: false`. The old holder now answers with where the session went."""
    leaving = await start_server(shutdown_timeout_s=8)
    second = await start_server()
    client_state = CountingClient()
    socket = await connect(leaving)
    await client_state.sign_in(socket, "late")
    await publisher.publish("user.late", "before")
    assert await client_state.next_event(socket) == "before"
    third = await start_server()
    await wait_until(lambda: second.node.ready and third.node.ready, 5)
    # The news of the move is held back: the third instance can only learn where the session went from the
    # old holder, which stays up (its drain waits on the announcement) until the client has resumed.
    announce = asyncio.Event()
    hand_over = leaving.node._hand_over
    assert hand_over is not None
    real_announce = hand_over.announce_moved

    async def announce_late(adopters: tuple[str, ...]) -> None:
        await announce.wait()
        await real_announce(adopters)

    monkeypatch.setattr(hand_over, "announce_moved", announce_late)
    stopping = asyncio.create_task(leaving.stop())
    with contextlib.suppress(AssertionError, websockets.ConnectionClosed):
        await client_state.next_event(socket, timeout=5)  # the 1012 of the drain
    # Either peer may be the one to adopt it (by a hash of its id); the client comes back to the other.
    await wait_until(lambda: any(peer.node.directory.parked_count == 1 for peer in (second, third)), 8)
    adopter, other = (second, third) if second.node.directory.parked_count == 1 else (third, second)
    await publisher.publish("user.late", "while away")
    await wait_until(lambda: adopter.node.stats.events_in >= 1, 5)

    back = await connect(other)
    welcome = await client_state.sign_in(back, "late")
    assert welcome["recovered"] is True
    assert await client_state.next_event(back) == "while away"
    await assert_nothing_before_sentinel(back.receive, publisher.publish, "user.late")
    announce.set()
    await stopping
    assert adopter.node.directory.parked_count == 0


async def test_an_instance_started_after_the_holder_left_finds_the_peer_that_adopted_its_sessions(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    """The next step of a rolling update starts a new instance after the previous one has gone: it never heard
    `session.moved`, yet a client of the gone instance that comes back to it resumes with what it missed."""
    leaving = await start_server(shutdown_timeout_s=4)
    adopter = await start_server()
    late = CountingClient()
    socket = await connect(leaving)
    await late.sign_in(socket, "tardy")
    await publisher.publish("user.tardy", "before")
    assert await late.next_event(socket) == "before"
    await wait_until(lambda: adopter.node.ready, 5)
    await leaving.stop()
    await wait_until(lambda: adopter.node.directory.parked_count == 1, 5)
    await publisher.publish("user.tardy", "while away")
    newcomer = await start_server()
    await wait_until(lambda: newcomer.node.ready, 5)

    back = await connect(newcomer)
    welcome = await late.sign_in(back, "tardy")
    assert welcome["recovered"] is True
    assert await late.next_event(back) == "while away"
    await assert_nothing_before_sentinel(back.receive, publisher.publish, "user.tardy")
    assert adopter.node.directory.parked_count == 0


async def drain_events(client: Client) -> None:
    """Read and drop everything the server sends this client (a busy user whose events are not looked at)."""
    with contextlib.suppress(websockets.ConnectionClosed):
        while True:
            await client.ws.recv()


@pytest.mark.slow  # both queues seconds behind on purpose: about fifteen seconds
async def test_a_hand_over_between_instances_behind_their_queues_loses_nothing_and_repeats_nothing(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    """What a fleet rollout under load showed: an instance is seconds behind its queue while it hands a session
    over. The holder answered before it had consumed events routed to it before the new instance's bind (they
    reached a session it had already let go of: lost), and the new instance sent events of the replay again when
    they reached it later through its own queue (routed there after its bind, consumed after the merge).
    Here both queues fall seconds behind (a burst for other users, taken one message at a time) while a client
    resumes on a steady feed: it gets every event once, in order."""
    slow = {"prefetch": 1, "resume_timeout_s": 25}
    holder, asker = await start_server(**slow), await start_server(**slow)
    busy = [await connect(holder, "busy-h"), await connect(asker, "busy-a")]
    draining = [asyncio.create_task(drain_events(client)) for client in busy]
    alice = CountingClient()
    socket = await connect(holder)
    await alice.sign_in(socket, "alice")
    await publisher.publish("user.alice", 0)
    assert await alice.next_event(socket) == 0
    await lose_connection(holder, socket)

    await asyncio.gather(
        *(publisher.publish("user.busy-h", n) for n in range(300)),
        *(publisher.publish("user.busy-a", n) for n in range(600)),
    )
    total = 400

    async def feed() -> None:  # as fast as RabbitMQ confirms: events on both sides of every step of the move
        for n in range(1, total):
            await publisher.publish("user.alice", n)

    feeding = asyncio.create_task(feed())
    await asyncio.sleep(0.05)  # some of the feed is behind the burst in the holder's queue only
    assert holder.node.stats.events_in < 300, "the holder is not behind its queue: the test proves nothing"
    back = await connect(asker)
    welcome = await alice.sign_in(back, "alice", timeout=25)  # once the holder caught up
    assert welcome["recovered"] is True
    await feeding
    while len(alice.data) < total:
        await alice.next_event(back, timeout=15)
    await assert_nothing_before_sentinel(back.receive, publisher.publish, "user.alice")
    assert alice.data == list(range(total))
    assert await metric(asker.http_url, "notifier_resumes_total", outcome="recovered") == 1
    for task in draining:
        task.cancel()


async def test_a_session_adopted_by_an_instance_that_stops_in_turn_is_passed_on_and_still_resumes(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher
) -> None:
    """A rolling update can make an old instance adopt sessions just before its own turn: it passes them on to
    a live peer like its own, and the client, back after both have gone, resumes with every event."""
    first = await start_server(shutdown_timeout_s=4)
    second, third = await start_server(shutdown_timeout_s=4), await start_server()
    await wait_until(lambda: all(peer.node.ready for peer in (second, third)), 5)
    late = CountingClient()
    socket = await connect(first)
    await late.sign_in(socket, "twice")
    await publisher.publish("user.twice", "before")
    assert await late.next_event(socket) == "before"
    await lose_connection(first, socket)
    await first.stop()
    await wait_until(lambda: second.node.directory.parked_count + third.node.directory.parked_count == 1, 5)
    await publisher.publish("user.twice", "after the first stop")
    adopter, other = (second, third) if second.node.directory.parked_count == 1 else (third, second)
    await wait_until(lambda: adopter.node.stats.events_in >= 1, 5)
    await adopter.stop()  # the adopter's turn: it passes the session on to the one peer left
    await wait_until(lambda: other.node.directory.parked_count == 1, 5)
    await publisher.publish("user.twice", "after the second stop")
    newcomer = await start_server()
    await wait_until(lambda: newcomer.node.ready, 5)

    back = await connect(newcomer)
    welcome = await late.sign_in(back, "twice")
    assert welcome["recovered"] is True
    assert [await late.next_event(back) for _ in range(2)] == ["after the first stop", "after the second stop"]
    await assert_nothing_before_sentinel(back.receive, publisher.publish, "user.twice")
    assert other.node.directory.parked_count == 0


@pytest.mark.parametrize("release", ["current", "earlier"])
async def test_an_adopted_session_keeps_every_topic_whether_or_not_its_holder_sends_them(
    start_server: StartServer, connect: ConnectClient, publisher: Publisher, release: str
) -> None:
    """A stopping instance sends each parked session's topics with it, and the adopter binds them without asking.
    A holder of an earlier release sends none: the adopter asks for them. Either way the client, back after the
    holder is gone, has its subscriptions and every event published on them meanwhile, once each."""
    leaving = await start_server(shutdown_timeout_s=4)
    adopter = await start_server()
    await wait_until(lambda: adopter.node.ready, 5)
    if release == "earlier":
        hand_over = leaving.node._hand_over
        assert hand_over is not None
        push = hand_over.push_parked

        async def push_without_topics(adopters: tuple[str, ...], sessions: list[Any], deadline: float) -> None:
            await push(adopters, [(session, user, None) for session, user, _topics in sessions], deadline)

        hand_over.push_parked = push_without_topics  # type: ignore[method-assign]
    reader = CountingClient()
    socket = await connect(leaving)
    await reader.sign_in(socket, "reader", ["news.eu"])
    assert (await socket.subscribe("news.eu"))["type"] == "subscribed"
    await publisher.publish("news.eu", "before")
    assert await reader.next_event(socket) == "before"
    await lose_connection(leaving, socket)
    await leaving.stop()
    await wait_until(lambda: adopter.node.directory.parked_count == 1, 5)
    await publisher.publish("news.eu", "while away")
    await publisher.publish("user.reader", "to the user")

    back = await connect(adopter)
    welcome = await reader.sign_in(back, "reader", ["news.eu"])
    assert (welcome["recovered"], welcome["topics"]) == (True, ["user.reader", "news.eu"])
    assert [await reader.next_event(back) for _ in range(2)] == ["while away", "to the user"]
    await publisher.publish("news.eu", "live")
    assert await reader.next_event(back) == "live"
    await assert_nothing_before_sentinel(back.receive, publisher.publish, "news.eu")
