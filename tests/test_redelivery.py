"""The ring of the ids handed off last (notifier/broker/redelivery.py): what a redelivered copy is checked against."""

from __future__ import annotations

import pytest

from notifier.broker.redelivery import RecentHandOffs


def test_the_last_ids_handed_off_are_known_and_older_ones_are_forgotten() -> None:
    recent = RecentHandOffs(3)
    for event_id in ("a", "b", "c", "d"):
        recent.add(event_id)
    assert ["a" in recent, "b" in recent, "c" in recent, "d" in recent] == [False, True, True, True]
    assert None not in recent  # the ring's empty slots never match


def test_a_ring_needs_room_for_one_id() -> None:
    with pytest.raises(ValueError):
        RecentHandOffs(0)
