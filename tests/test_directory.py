"""The parked sessions' bounds: per user, and the instance's pool shared fairly between users."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any

import pytest

from notifier.connection.directory import SessionDirectory

pytestmark = pytest.mark.unit


class Parked:
    def __init__(self, user: str, number: int) -> None:
        self.session_id: str | None = f"one.{user}-{number}"
        self._user = user
        self.ended = False

    @property
    def user(self) -> str | None:
        return self._user

    def expire(self) -> Coroutine[Any, Any, None] | None:
        self.ended = True
        return None


def park(directory: SessionDirectory, user: str, number: int) -> Parked:
    session = Parked(user, number)
    directory.register(session)
    directory.park(session)
    return session


async def test_a_user_past_its_bound_ends_its_own_oldest() -> None:
    directory = SessionDirectory("one", window_s=60, max_parked=100, max_parked_per_user=3)
    bystander = park(directory, "bob", 0)
    sessions = [park(directory, "mallory", number) for number in range(10)]
    assert [session.ended for session in sessions] == [True] * 7 + [False] * 3
    assert directory.parked_count_of("mallory") == 3 and directory.parked_count == 4
    assert not bystander.ended and directory.find(str(bystander.session_id)) is bystander


async def test_a_full_pool_evicts_the_user_with_the_most_never_one_within_its_share() -> None:
    directory = SessionDirectory("one", window_s=60, max_parked=20, max_parked_per_user=5)
    bystanders = [park(directory, f"user{number}", 0) for number in range(5)]
    attackers = [park(directory, f"mallory{account}", n) for n in range(5) for account in range(10)]
    assert directory.parked_count == 20
    assert not any(bystander.ended for bystander in bystanders)
    # Ten accounts share the other 15 places: none holds more than two more than another.
    counts = [directory.parked_count_of(f"mallory{account}") for account in range(10)]
    assert sum(counts) == 15 and max(counts) - min(counts) <= 1, counts
    assert sum(not attacker.ended for attacker in attackers) == 15


async def test_ending_and_forgetting_keep_the_counts() -> None:
    directory = SessionDirectory("one", window_s=60, max_parked=3, max_parked_per_user=3)
    first = park(directory, "alice", 0)
    second = park(directory, "alice", 1)
    directory.forget(first)
    directory.end(second)
    assert directory.parked_count == 0 and directory.parked_count_of("alice") == 0
    sessions = [park(directory, "bob", n) for n in range(3)] + [park(directory, "carol", 0)]
    assert [session.ended for session in sessions] == [True, False, False, False]
    directory.end_all_parked()
    assert directory.parked_count == 0 and all(session.ended for session in sessions)


async def test_with_no_pool_nothing_stays_parked() -> None:
    directory = SessionDirectory("one", window_s=60, max_parked=0, max_parked_per_user=3)
    assert park(directory, "alice", 0).ended
    assert directory.parked_count == 0
