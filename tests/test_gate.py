"""The per-address bookkeeping of the admission gate, on a fake clock."""

from __future__ import annotations

import pytest

from notifier.limits import gate as admission
from notifier.limits.gate import AddressLimits
from tests.fakes import FakeClock

pytestmark = pytest.mark.unit


def test_open_connections_per_address_are_capped_and_released() -> None:
    limits = AddressLimits(max_open=2, rate_per_s=100, burst=100, clock=FakeClock())
    assert limits.open("a") is None
    assert limits.open("a") is None
    refusal = limits.open("a")
    assert refusal is not None and (refusal.status, refusal.error) == (429, "too_many_connections")
    assert limits.open("b") is None  # another address is not affected
    limits.close("a")
    assert limits.open("a") is None


def test_new_connections_per_second_refill_over_time() -> None:
    clock = FakeClock()
    limits = AddressLimits(max_open=1000, rate_per_s=2, burst=3, clock=clock)
    assert [limits.open("a") is None for _ in range(4)] == [True, True, True, False]
    clock.now += 1.0
    assert [limits.open("a") is None for _ in range(3)] == [True, True, False]


def test_idle_addresses_are_forgotten_past_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(admission, "MAX_IDLE_ADDRESSES", 100)
    limits = AddressLimits(max_open=10, rate_per_s=1, burst=1, clock=FakeClock())
    assert limits.open("busy") is None  # stays open, so it is remembered
    for number in range(1000):
        assert limits.open(f"10.0.{number // 256}.{number % 256}") is None
        limits.close(f"10.0.{number // 256}.{number % 256}")
    assert len(limits) <= 101
    refusal = limits.open("busy")
    assert refusal is not None and refusal.error == "too_many_new_connections"
