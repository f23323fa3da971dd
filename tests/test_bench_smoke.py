"""The benchmark's smoke mode runs end to end and loses nothing (no timing is asserted here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("picows")
pytest.importorskip("socketio")

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
@pytest.mark.slow
@pytest.mark.rabbitmq  # the bench runs its own servers and publishers on the broker under test
def test_bench_smoke_delivers_every_event_to_every_subscriber(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert (tmp_path / "latest.md").read_text().count("| notifier |") >= 1
    report = json.loads((tmp_path / "latest.json").read_text())
    systems = report["systems"]

    def bursts(name: str) -> list[dict[str, Any]]:
        results = systems[name]["results"]
        return [result["burst"] for result in results.values() if isinstance(result, dict) and "burst" in result]

    assert bursts("notifier"), systems["notifier"]
    assert all(burst["delivered"] > 0 for burst in bursts("notifier"))
    baselines = [name for name in systems if name != "notifier" and any(b["delivered"] > 0 for b in bursts(name))]
    assert baselines, "no baseline delivered anything"

    for name, entry in systems.items():
        results = entry["results"]
        assert "error" not in results, (name, results)
        for scenario, result in results.items():
            assert "error" not in result, (name, scenario, result)
            steps = [*result.get("latency", []), *([result["burst"]] if "burst" in result else [])]
            for step in steps:
                # Every event published reached every client subscribed to its topic, exactly once.
                assert step["complete"], (name, scenario, step)
                assert step["delivered"] == step["expected"] > 0, (name, scenario, step)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_storm_smoke_welcomes_everyone_leaves_no_binding_and_comes_back_after_a_restart(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.storm", "--smoke", "--systems", "notifier,websockets", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads((tmp_path / "storm.json").read_text())
    assert "| notifier | drop + reconnect at once |" in (tmp_path / "storm.md").read_text()
    for name in ("notifier", "websockets"):
        result = report["systems"][name]["50"]
        assert "error" not in result, (name, result)
        for phase in ("connect", "reconnect", "reconnect_2s"):
            assert (result[phase]["welcomed"], result[phase]["refused"]) == (50, 0), (name, phase, result[phase])
    assert report["systems"]["notifier"]["50"]["leave"]["bindings_left"] == 0
    # The restart phase: every client held before the SIGTERM is welcomed by the fresh instance.
    for name in ("notifier", "websockets"):
        restart = report["restart"]["systems"][name]
        assert "error" not in restart, (name, restart)
        assert restart["connected"] == restart["held"] == restart["welcomed"] == 50, (name, restart)
    assert report["restart"]["systems"]["notifier"]["shutdown_timeout_held"], report["restart"]["systems"]["notifier"]
    assert "## Restart, 50 clients" in (tmp_path / "storm.md").read_text()
