"""Pure parts of the control plane and the publish dedupe: command parsing, the bounded id memory, and the
single-instance control plane of the in-memory broker."""

from __future__ import annotations

from typing import Any

import pytest

from notifier.cluster.codec import BadControlMessage, parse_command
from notifier.cluster.local_control import LocalControlPlane
from notifier.formats.recent import RecentIds
from tests.fakes import FakeClock

pytestmark = pytest.mark.unit


def test_recent_ids_forget_after_the_window() -> None:
    clock = FakeClock()
    recent = RecentIds(window_s=10, max_ids=100, clock=clock)
    recent.add("a")
    clock.now = 9.9
    assert "a" in recent
    clock.now = 10.1
    assert "a" not in recent
    assert len(recent) == 0


def test_recent_ids_are_bounded_in_number_oldest_forgotten_first() -> None:
    recent = RecentIds(window_s=60, max_ids=3, clock=FakeClock())
    for item in "abcd":
        recent.add(item)
    assert len(recent) == 3
    assert "a" not in recent
    assert all(item in recent for item in "bcd")


def test_a_zero_window_remembers_nothing() -> None:
    recent = RecentIds(window_s=0, max_ids=10)
    recent.add("a")
    assert "a" not in recent


@pytest.mark.parametrize(
    ("command_id", "body"),
    [
        (None, b'{"kind": "presence"}'),
        ("", b'{"kind": "presence"}'),
        ("x" * 129, b'{"kind": "presence"}'),
        ("c1", b"not json"),
        ("c1", b"[1, 2]"),
        ("c1", b'{"args": {}}'),
        ("c1", b'{"kind": 3}'),
        ("c1", b'{"kind": "presence", "args": [1]}'),
        ("c1", b'{"kind": "presence", "args": {"pad": "' + b"x" * 70_000 + b'"}}'),
    ],
)
def test_unusable_commands_are_refused(command_id: Any, body: bytes) -> None:
    with pytest.raises(BadControlMessage):
        parse_command(command_id, body)


def test_a_good_command_parses() -> None:
    command = parse_command("c1", b'{"kind": "disconnect", "args": {"user": "a"}}')
    assert (command.id, command.kind, command.args) == ("c1", "disconnect", {"user": "a"})


async def test_local_control_plane_runs_a_repeated_command_once() -> None:
    control = LocalControlPlane()
    runs: list[dict[str, Any]] = []

    async def record(args: dict[str, Any]) -> dict[str, Any]:
        runs.append(args)
        return {"count": len(runs)}

    control.on("record", record)
    await control.start()
    await control.broadcast("record", {"n": 1}, command_id="same")
    await control.broadcast("record", {"n": 1}, command_id="same")
    assert runs == [{"n": 1}]
    gathered = await control.gather("record", {"n": 2}, timeout=1)
    assert gathered.replies == {"local": {"count": 2}}  # the default instance id of a local plane
    assert gathered.instances == 1


async def test_a_failing_handler_is_logged_not_raised() -> None:
    control = LocalControlPlane()

    async def broken(_: dict[str, Any]) -> None:
        raise RuntimeError("bug")

    control.on("broken", broken)
    await control.start()
    await control.broadcast("broken", {})
    assert (await control.gather("broken", {}, timeout=1)).replies == {"local": None}
