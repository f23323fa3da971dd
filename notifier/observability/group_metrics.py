"""One `/metrics` for the whole process group of `notifier serve --workers N`.

The workers share one port, so a scrape reaches one of them at random. Each worker therefore writes a snapshot
of its own metrics into a private directory the supervisor created (every `SNAPSHOT_INTERVAL_S` and at each
scrape it answers), and the worker that answers a scrape adds up its live metrics and the others' snapshots.

Counters and histograms of a worker that died stay in the sum, so the group's counters never go backwards when
a worker is replaced; its gauges (connections, subscriptions, ...) leave the sum. The supervisor folds a dead
worker's snapshot into one `retired` snapshot, so the directory holds one file per live worker plus one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from notifier.observability.pids import process_exists

log = structlog.get_logger("notifier.group_metrics")

SNAPSHOT_INTERVAL_S = 1.0
SNAPSHOT_SUFFIX = ".json"
RETIRED_NAME = "retired"
# Kinds whose samples only mean something while their process lives.
LIVE_ONLY_TYPES = frozenset({"gauge", "info", "stateset"})

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def create_directory() -> Path:
    """The supervisor's private snapshot directory (mode 0700, so no other user reads or plants snapshots)."""
    return Path(tempfile.mkdtemp(prefix="notifier-metrics-"))


def remove_directory(directory: Path) -> None:
    for path in directory.glob(f"*{SNAPSHOT_SUFFIX}*"):
        with contextlib.suppress(OSError):
            path.unlink()
    with contextlib.suppress(OSError):
        directory.rmdir()


def _families(registry: CollectorRegistry) -> list[dict[str, Any]]:
    return [
        {
            "name": metric.name,
            "documentation": metric.documentation,
            "type": metric.type,
            "samples": [[sample.name, sample.labels, sample.value] for sample in metric.samples],
        }
        for metric in registry.collect()
    ]


class GroupMetrics:
    """A worker's side of the shared directory: publishes its own snapshot, merges everyone's for a scrape."""

    def __init__(self, directory: Path, own: CollectorRegistry) -> None:
        self.directory = directory
        self._own = own
        self._pid = os.getpid()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_GroupCollector(self))

    @property
    def _path(self) -> Path:
        return self.directory / f"{self._pid}{SNAPSHOT_SUFFIX}"

    def snapshot(self) -> list[dict[str, Any]]:
        """This worker's metrics now, as plain data."""
        return _families(self._own)

    def write(self, families: list[dict[str, Any]]) -> None:
        """Replace this worker's snapshot atomically, so a reader never sees half of one."""
        _write_atomically(self._path, {"pid": self._pid, "families": families})

    async def publish_forever(self) -> None:
        """Keep this worker's snapshot fresh until cancelled."""
        while True:
            try:
                await asyncio.to_thread(self.write, self.snapshot())
            except OSError as error:
                log.warning("metrics_snapshot_failed", directory=str(self.directory), error=str(error))
            await asyncio.sleep(SNAPSHOT_INTERVAL_S)

    def others(self) -> list[tuple[bool, list[dict[str, Any]]]]:
        """(alive, families) of every other worker's snapshot, living or dead, and of the retired ones."""
        workers: dict[int, list[dict[str, Any]]] = {}
        for path in self.directory.glob(f"*{SNAPSHOT_SUFFIX}"):
            if path == self._path or path.stem == RETIRED_NAME:
                continue
            snapshot = _read(path)
            if snapshot is not None:
                workers[int(snapshot["pid"])] = snapshot["families"]
        # Read last: a worker retired meanwhile was written here before its own file was removed, so it is
        # counted once, either way.
        retired = _read(self.directory / f"{RETIRED_NAME}{SNAPSHOT_SUFFIX}") or {"pids": [], "families": []}
        found = [(process_exists(pid), families) for pid, families in workers.items() if pid not in retired["pids"]]
        return [*found, (False, retired["families"])]

    def merged(self) -> Iterator[Metric]:
        own = self.snapshot()
        # A scrape answered is a value reported: keep it in the snapshot so a sum never falls below it.
        with contextlib.suppress(OSError):
            self.write(own)
        others = self.others()
        yield from merge([(True, own), *others])
        yield workers_reporting(1 + sum(alive for alive, _ in others))


def workers_reporting(count: int) -> Metric:
    """How many live processes a scrape adds up (1 without `--workers`)."""
    metric = Metric("notifier_workers_reporting", "Live workers whose metrics this scrape adds up", "gauge")
    metric.add_sample("notifier_workers_reporting", {}, float(count))
    return metric


def scrape_registry(own: CollectorRegistry, directory: Path | None) -> tuple[CollectorRegistry, GroupMetrics | None]:
    """The registry `/metrics` renders: the group's sum when `directory` is the workers' shared one, else the
    process's own metrics (plus `notifier_workers_reporting` 1, so dashboards read the same either way)."""
    if directory is None:
        own.register(_OneProcess())
        return own, None
    group = GroupMetrics(directory, own)
    return group.registry, group


def _read(path: Path) -> dict[str, Any] | None:
    try:
        loaded: dict[str, Any] = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None  # removed while listing, or never complete: the next scrape reads the new one
    return loaded


def _write_atomically(path: Path, data: dict[str, Any]) -> None:
    temporary = path.with_suffix(f"{SNAPSHOT_SUFFIX}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(json.dumps(data).encode())
    os.replace(temporary, path)


def retire(directory: Path, pid: int) -> None:
    """Fold the snapshot of worker `pid`, which has died, into the retired one (its counters stay in every
    sum, its gauges leave), then remove its file: one file per worker restart would grow without bound."""
    dead = _read(directory / f"{pid}{SNAPSHOT_SUFFIX}")
    if dead is None:
        return
    retired_path = directory / f"{RETIRED_NAME}{SNAPSHOT_SUFFIX}"
    retired = _read(retired_path) or {"pids": [], "families": []}
    families = [
        {
            "name": metric.name,
            "documentation": metric.documentation,
            "type": metric.type,
            "samples": [[sample.name, sample.labels, sample.value] for sample in metric.samples],
        }
        for metric in merge([(False, retired["families"]), (False, dead["families"])])
    ]
    try:
        _write_atomically(retired_path, {"pid": 0, "pids": [*retired["pids"], pid], "families": families})
        (directory / f"{pid}{SNAPSHOT_SUFFIX}").unlink()
    except OSError as error:
        log.warning("metrics_retire_failed", pid=pid, error=str(error))


def merge(snapshots: Iterable[tuple[bool, list[dict[str, Any]]]]) -> Iterator[Metric]:
    """Sum each sample (same name and labels) over the snapshots; gauges only over living processes."""
    metrics: dict[str, Metric] = {}
    values: dict[str, dict[SampleKey, float]] = {}
    for alive, families in snapshots:
        for family in families:
            name = family["name"]
            if name not in metrics:
                metrics[name] = Metric(name, family["documentation"], family["type"])
                values[name] = {}
            if not alive and family["type"] in LIVE_ONLY_TYPES:
                continue
            sums = values[name]
            for sample_name, labels, value in family["samples"]:
                key = (sample_name, tuple(labels.items()))
                sums[key] = sums.get(key, 0.0) + float(value)
    for name, metric in metrics.items():
        for (sample_name, labels), value in values[name].items():
            metric.add_sample(sample_name, dict(labels), value)
        yield metric


class _OneProcess(Collector):
    def collect(self) -> Iterator[Metric]:
        yield workers_reporting(1)


class _GroupCollector(Collector):
    def __init__(self, group: GroupMetrics) -> None:
        self._group = group

    def collect(self) -> Iterator[Metric]:
        return self._group.merged()
