"""New connections take turns per event loop iteration (notifier/limits/pacing.py)."""

from __future__ import annotations

import asyncio

import pytest

from notifier.limits.pacing import TurnPacer

pytestmark = pytest.mark.unit


async def next_iteration() -> None:
    await asyncio.sleep(0)


async def test_at_most_per_turn_callers_go_in_one_iteration_and_the_rest_in_arrival_order() -> None:
    pacer = TurnPacer(per_turn=2)
    ran: list[tuple[int, int]] = []  # (caller, iteration)
    iteration = 0

    def arrive(caller: int) -> None:
        if pacer.take():
            ran.append((caller, iteration))
        else:
            pacer.wait(lambda: ran.append((caller, iteration)))

    for caller in range(7):
        arrive(caller)
    while pacer.waiting or len(ran) < 7:
        iteration += 1
        await next_iteration()
    assert [caller for caller, _ in ran] == list(range(7))
    per_iteration: dict[int, int] = {}
    for _, when in ran:
        per_iteration[when] = per_iteration.get(when, 0) + 1
    assert max(per_iteration.values()) == 2


async def test_a_newcomer_never_jumps_ahead_of_those_waiting() -> None:
    pacer = TurnPacer(per_turn=1)
    assert pacer.take()
    order: list[str] = []
    pacer.wait(lambda: order.append("first"))
    assert not pacer.take()  # a turn may be left in a later iteration, but "first" is waiting for it
    pacer.wait(lambda: order.append("second"))
    for _ in range(5):
        await next_iteration()
    assert order == ["first", "second"]
    assert pacer.take()  # all served: turns are free again
