"""`/metrics` of `notifier serve --workers 2`: every scrape reports the whole process group, not one worker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from notifier.observability.group_metrics import SNAPSHOT_INTERVAL_S
from tests.support import Client, Publisher
from tests.support_workers import Service, StartService, connect_until_every_queue_has_clients


async def scrape(service: Service) -> dict[str, float]:
    """One scrape on a fresh connection (so any worker may answer): each sample's value, by name (connections
    summed over their transports)."""
    async with httpx.AsyncClient(base_url=service.http_url, timeout=5) as http:
        answer = await http.get("/metrics")
    assert answer.status_code == 200, answer.text
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(answer.text):
        for sample in family.samples:
            if not sample.labels or set(sample.labels) == {"transport"}:
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return values


async def scrape_until(service: Service, name: str, expected: float) -> None:
    deadline = time.monotonic() + 10 * SNAPSHOT_INTERVAL_S + 5
    while (values := await scrape(service)).get(name) != expected:
        assert time.monotonic() < deadline, f"{name} is {values.get(name)}, expected {expected}"
        await asyncio.sleep(0.2)


async def test_every_scrape_reports_all_workers_and_counters_never_fall(
    start_service: StartService, publisher: Publisher
) -> None:
    service = await start_service("--workers", "2")
    queues = await service.wait_for_queues(2)
    opened: list[Client] = []
    try:
        by_user = await connect_until_every_queue_has_clients(service, queues, opened, prefix="m")
        total = len(by_user)
        await scrape_until(service, "notifier_connections", total)
        for _ in range(20):
            values = await scrape(service)
            assert values["notifier_connections"] == total
            assert values["notifier_subscriptions"] == total  # each holds its personal topic
            assert values["notifier_workers_reporting"] == 2

        for user in by_user:
            await publisher.publish(f"user.{user}", {"to": user})
        for user, client in by_user.items():
            await client.expect_event(f"user.{user}")
        await scrape_until(service, "notifier_events_delivered_total", total)
        delivered = []
        for _ in range(20):
            values = await scrape(service)
            delivered.append(values["notifier_events_delivered_total"])
            assert values["notifier_events_consumed_total"] == total
        assert delivered == [total] * 20

        # A worker dies: its counts stay in the sum, its connections leave it, its replacement reports too.
        directory = Path(next(e["metrics_dir"] for e in service.log() if e["event"] == "supervisor_started"))
        killed = service.worker_pids()[0]
        os.kill(killed, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            values = await scrape(service)
            assert values["notifier_events_delivered_total"] == total, "a counter went backwards"
            assert values["notifier_events_consumed_total"] == total
            replaced = len(service.live_worker_pids()) == 2 and killed not in service.live_worker_pids()
            if replaced and values["notifier_workers_reporting"] == 2 and values["notifier_connections"] < total:
                break
            assert time.monotonic() < deadline, values
            await asyncio.sleep(0.2)
        files = sorted(path.name for path in directory.iterdir())
        assert f"{killed}.json" not in files and "retired.json" in files, files
        assert len(files) == 3, files  # two live workers and the retired one

        assert directory.stat().st_mode & 0o077 == 0, "the snapshot directory is private"
        service.process.send_signal(signal.SIGTERM)
        assert await service.process.wait(20) == 0
        assert not directory.exists(), "the supervisor removes the snapshot directory when it stops"
    finally:
        for client in opened:
            with contextlib.suppress(Exception):
                await client.close()
