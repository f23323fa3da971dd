"""Per-user budgets: the pure bookkeeping on a fake clock, and the budget holding across a user's
reconnects and connections on a real server."""

from __future__ import annotations

import pytest

from notifier.formats import closecodes
from notifier.limits import budgets
from notifier.limits.budgets import UserBudgets
from tests.fakes import FakeClock
from tests.support import ConnectClient, StartServer, token_for, wait_until


@pytest.mark.unit
def test_operations_refill_at_the_rate_and_are_per_user() -> None:
    clock = FakeClock()
    user_budgets = UserBudgets(operations_per_s=2, operations_burst=3, max_topics=10, clock=clock)
    assert [user_budgets.spend("alice") for _ in range(4)] == [True, True, True, False]
    assert user_budgets.spend("bob")
    clock.now += 1.0
    assert [user_budgets.spend("alice") for _ in range(3)] == [True, True, False]


@pytest.mark.unit
def test_distinct_topics_are_counted_across_connections() -> None:
    user_budgets = UserBudgets(operations_per_s=1, operations_burst=1, max_topics=2, clock=FakeClock())
    assert user_budgets.hold("alice", "a")
    assert user_budgets.hold("alice", "a")  # a second connection on the same topic costs no new topic
    assert user_budgets.hold("alice", "b")
    assert not user_budgets.hold("alice", "c")
    user_budgets.release("alice", "a")
    assert not user_budgets.hold("alice", "c")  # "a" is still held by the other connection
    user_budgets.release("alice", "a")
    assert user_budgets.hold("alice", "c")
    assert user_budgets.topics_held("alice") == 2


@pytest.mark.unit
def test_idle_users_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budgets, "MAX_IDLE_USERS", 100)
    user_budgets = UserBudgets(operations_per_s=1, operations_burst=5, max_topics=5, clock=FakeClock())
    assert user_budgets.hold("holder", "t")
    for number in range(1000):
        user_budgets.spend(f"user{number}")
    assert len(user_budgets) <= 101
    assert user_budgets.topics_held("holder") == 1


async def test_reconnecting_does_not_refill_a_users_subscribe_budget(
    start_server: StartServer, connect: ConnectClient
) -> None:
    running = await start_server(user_subscribes_per_s=0.2, user_subscribes_burst=10, max_topics_per_user=50)
    answers = []
    # Each round: sign in (1 operation) and subscribe six times, then drop the connection and come back.
    for round_number in range(2):
        client = await connect(running, "alice", topics=["news.#"])
        for index in range(6):
            answers.append(await client.subscribe(f"news.r{round_number}.t{index}"))
        await client.close()
    kinds = [answer.get("code", answer["type"]) for answer in answers]
    assert kinds.count("subscribed") == 8, kinds  # 10 operations, 2 of them spent on sign-ins
    assert kinds.count("rate_limited") == 4, kinds
    # Signing in costs an operation too: past the budget a new connection is closed with 4004.
    late = await connect(running)
    await late.send({"type": "auth", "token": token_for("alice")})
    await late.expect_close(closecodes.RATE_LIMITED.code)
    # Another user has a budget of its own.
    bob = await connect(running, "bob", topics=["news.#"])
    assert (await bob.subscribe("news.bob"))["type"] == "subscribed"


async def test_topics_per_user_hold_across_connections(start_server: StartServer, connect: ConnectClient) -> None:
    running = await start_server(max_topics_per_user=3)
    first = await connect(running, "alice", topics=["news.#"])
    second = await connect(running, "alice", topics=["news.#"])
    assert (await first.subscribe("news.a"))["type"] == "subscribed"
    assert (await second.subscribe("news.b"))["type"] == "subscribed"
    assert (await second.subscribe("news.a"))["type"] == "subscribed"  # already counted for alice
    assert (await first.subscribe("news.c"))["type"] == "subscribed"
    refused = await second.subscribe("news.d")
    assert (refused["type"], refused["code"]) == ("error", "too_many_subscriptions")
    assert "per user" in refused["message"]
    await first.close()  # lets go of news.c (news.a is still held by the second connection)
    await wait_until(lambda: running.node.user_budgets.topics_held("alice") == 2, timeout=5)
    assert (await second.subscribe("news.d"))["type"] == "subscribed"
