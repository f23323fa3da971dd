"""The one token bucket: its refill and take, and that the gate's and the budgets' entries built on it stay one
small object each (they are kept for thousands of addresses and users)."""

from __future__ import annotations

import sys

import pytest

from notifier.limits.budgets import _User
from notifier.limits.gate import _Address
from notifier.limits.tokenbucket import RateLimiter, TokenBucket

pytestmark = pytest.mark.unit


def test_a_bucket_starts_full_refills_at_the_rate_and_holds_at_most_the_burst() -> None:
    bucket = TokenBucket(2, now=0.0)
    assert [bucket.take() for _ in range(3)] == [True, True, False]
    bucket.refill(rate=4.0, burst=2.0, now=0.25)
    assert [bucket.take() for _ in range(2)] == [True, False]
    bucket.refill(rate=4.0, burst=2.0, now=100.0)
    assert bucket.tokens == 2.0


def test_a_rate_limiter_allows_its_burst_at_once() -> None:
    limiter = RateLimiter(rate=0.001, burst=3)
    assert [limiter.allow() for _ in range(4)] == [True, True, True, False]


class _ThreeSlots:
    __slots__ = ("a", "b", "c")


class _FourSlots:
    __slots__ = ("a", "b", "c", "d")


def test_entries_are_one_object_with_no_dict_and_no_copy_of_the_policy() -> None:
    for entry in (_Address(5.0, 0.0), _User(5.0, 0.0)):
        assert not hasattr(entry, "__dict__")
        assert sys.getsizeof(entry) == sys.getsizeof(_ThreeSlots())  # tokens, last and the entry's own field
    limiter = RateLimiter(1.0, 1)
    assert not hasattr(limiter, "__dict__")
    assert sys.getsizeof(limiter) == sys.getsizeof(_FourSlots())  # tokens, last, rate and burst
