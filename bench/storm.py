"""Reconnect storms: N distinct users connect at once, the same N drop and come back at once (and 2 s later),
then all leave; side by side with a raw `websockets` server in the same run. Writes bench/results/storm.{md,json}.

    .venv/bin/python -m bench.storm                      # 5,000 and 10,000 users (about 10 minutes)
    .venv/bin/python -m bench.storm --clients 5000       # one size
    .venv/bin/python -m bench.storm --smoke              # 50 users, seconds (CI: tests/test_bench_smoke.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.run import RESULTS_DIR, Clients, Scenario, cleanup_amqp, machine, started
from bench.systems import System, all_systems

# How long the mass-leave phase waits for the system's bindings at RabbitMQ to go.
LEAVE_WAIT_S = 60.0


def storm_systems() -> list[System]:
    by_name = {system.name: system for system in all_systems()}
    two = by_name["notifier"]
    return [
        by_name["notifier"],
        System(
            "notifier-2w",
            "notifier --workers 2",
            "notifier",
            module="notifier",
            env={"NOTIFIER_WORKERS": "2"},
            note=f"{two.note}; two instances on one port, each with its own queue and bindings",
        ),
        by_name["websockets"],
    ]


def bindings_of(exchange: str) -> int:
    """Bindings from `exchange` as RabbitMQ reports them (the shared broker holds others' too)."""
    output = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_bindings", "source_name"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    return sum(1 for line in output.splitlines() if line.strip() == exchange)


def phase(clients: Clients) -> dict[str, Any]:
    """Everyone connects at once (as many in flight as there are clients); welcomed/s and refusals by code."""
    result = clients.connect(concurrency=clients.count)
    return {
        "welcomed": result["connected"],
        "refused": result["failed"],
        "codes": result["codes"],
        "seconds": result["seconds"],
        "welcomed_per_s": result["per_s"],
    }


def leave(clients: Clients, exchange: str, binds_per_user: bool) -> dict[str, Any]:
    """Everyone leaves at once; how many bindings are there right after, and how long until none is left."""
    clients.disconnect()
    left = time.monotonic()
    first = bindings_of(exchange)
    if not binds_per_user:
        return {"bindings_after_leave": first, "bindings_left": first, "seconds_to_none": None}
    count = first
    while count and time.monotonic() - left < LEAVE_WAIT_S:
        time.sleep(0.5)
        count = bindings_of(exchange)
    return {
        "bindings_after_leave": first,
        "bindings_left": count,
        "seconds_to_none": round(time.monotonic() - left, 1) if not count else None,
    }


def run_storm(
    system: System, users: int, cpus: dict[str, set[int]], workdir: Path, log: Any, keep_logs: Path | None = None
) -> dict[str, Any]:
    exchange = f"bench.storm.{system.name}.{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(32)
    results: dict[str, Any] = {}
    queues: list[str] = []
    scenario = Scenario(f"storm_{users}", "idle", users)
    binds_per_user = system.module == "notifier"
    try:
        with started(system, exchange, secret, workdir, cpus["server"]) as running:
            queues = [running.queue_name, *(f"{running.queue_name}-{index}" for index in range(2))]
            clients = Clients(running, scenario, cpus["clients"], "st")
            try:
                log(f"  {users}: connect at once")
                results["connect"] = phase(clients)
                log(f"  {users}: drop and reconnect at once")
                clients.disconnect()
                results["reconnect"] = phase(clients)
                log(f"  {users}: drop, reconnect 2 s later")
                clients.disconnect()
                time.sleep(2.0)
                results["reconnect_2s"] = phase(clients)
                log(f"  {users}: everyone leaves")
                results["leave"] = leave(clients, exchange, binds_per_user)
            finally:
                clients.stop()
                if keep_logs is not None:
                    keep_logs.mkdir(parents=True, exist_ok=True)
                    shutil.copy(running.log_path, keep_logs / f"{system.name}-{users}.log")
    except (RuntimeError, TimeoutError, OSError, EOFError) as error:
        results["error"] = repr(error)[:500]
        log(f"    error: {error!r}")
    cleanup_amqp(exchange, queues if binds_per_user else [])
    return results


def _ratio(value: Any, base: Any) -> str:
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or not base:
        return ""
    return f" ({value / base:.2f}x)"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "storm.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Reconnect storms",
        "",
        f"Run {report['started']}, {report['seconds']} s; {report['machine'].get('cpu_model', '')}, "
        f"{report['machine'].get('cpus', '')} CPUs. {report['cpu_sharing']}.",
        "",
        "Every phase starts all its clients at once. *welcomed/s* is clients welcomed divided by the time from the "
        "first connect to the last answer; *refused* counts clients closed or failed, by close code. "
        "Ratios are to the raw `websockets` server of the same run, which welcomes without binding anything.",
        "",
    ]
    if report.get("note"):
        lines += [report["note"], ""]
    for users in report["sizes"]:
        base = report["systems"].get("websockets", {}).get(str(users), {})
        lines += [
            f"## {users:,} users",
            "",
            "| system | phase | welcomed | welcomed/s | refused (codes) | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in report["systems"].items():
            result = entry.get(str(users), {})
            if "error" in result:
                lines.append(f"| {name} | error | {result['error'][:120]} | | | |")
            for key, title in (
                ("connect", "connect at once"),
                ("reconnect", "drop + reconnect at once"),
                ("reconnect_2s", "drop + reconnect 2 s later"),
            ):
                item = result.get(key)
                if not item:
                    continue
                codes = ", ".join(f"{code}: {count}" for code, count in sorted(item["codes"].items())) or "-"
                rate = item["welcomed_per_s"]
                ratio = _ratio(rate, base.get(key, {}).get("welcomed_per_s")) if name != "websockets" else ""
                lines.append(
                    f"| {name} | {title} | {item['welcomed']:,} | {rate:,.0f}{ratio} | {item['refused']:,} ({codes}) "
                    f"| {item['seconds']:.1f} |"
                )
        lines += ["", "| system | bindings right after everyone left | bindings left | seconds until none |"]
        lines += ["|---|---|---|---|"]
        for name, entry in report["systems"].items():
            leave_result = entry.get(str(users), {}).get("leave")
            if leave_result:
                seconds = leave_result["seconds_to_none"]
                lines.append(
                    f"| {name} | {leave_result['bindings_after_leave']:,} | {leave_result['bindings_left']:,} "
                    f"| {'-' if seconds is None else seconds} |"
                )
        lines.append("")
    lines += [
        "notifier keeps the session of a client that left without closing with 1000 for NOTIFIER_RESUME_WINDOW_S "
        "(60 s), then lingers a topic NOTIFIER_BIND_LINGER_S (30 s) after its last subscriber left, so its bindings go "
        "some seconds after everyone left; the `websockets` baseline binds `#` once and keeps it.",
        "",
    ]
    md_path = out / "storm.md"
    md_path.write_text("\n".join(lines))
    return [json_path, md_path]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="5000,10000", help="comma list of storm sizes (default 5000,10000)")
    parser.add_argument("--systems", default="notifier,notifier-2w,websockets", help="comma list of systems")
    parser.add_argument("--smoke", action="store_true", help="50 users: checks the scenarios run, measures nothing")
    parser.add_argument("--note", default="", help="a line for the report (for instance: what else ran meanwhile)")
    parser.add_argument("--out", type=Path, help="directory for storm.md/json (default bench/results)")
    parser.add_argument("--keep-logs", type=Path, help="copy each server's log into this directory")
    args = parser.parse_args(argv)
    sizes = [50] if args.smoke else [int(size) for size in args.clients.split(",")]
    systems = {system.name: system for system in storm_systems()}
    unknown = set(args.systems.split(",")) - set(systems)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: {sorted(systems)}")
    chosen = [systems[name] for name in args.systems.split(",")]
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)
    if args.smoke:
        os.environ.setdefault("NOTIFIER_BIND_LINGER_S", "1")  # the servers inherit it: a short leave phase
        # Clients that leave without closing with 1000 park their sessions for the resume window, topics bound.
        os.environ.setdefault("NOTIFIER_RESUME_WINDOW_S", "1")

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers started here inherit it
    available = sorted(os.sched_getaffinity(0))
    if len(available) >= 2:
        cpus = {"server": {available[0]}, "clients": set(available[1:])}
    else:
        cpus = {"server": set(available), "clients": set(available)}
    os.sched_setaffinity(0, cpus["clients"])
    sharing = (
        f"server pinned to CPU {sorted(cpus['server'])} (both workers of notifier-2w too), clients to "
        f"{sorted(cpus['clients'])}; RabbitMQ not pinned; open files {hard}"
    )

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    started_at = time.time()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started_at)),
        "machine": machine(),
        "cpu_sharing": sharing,
        "note": args.note,
        "sizes": sizes,
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="notifier-storm-") as workdir:
        for users in sizes:
            for system in chosen:
                log(f"storm: {system.name}")
                entry = report["systems"].setdefault(system.name, {"label": system.label, "note": system.note})
                entry[str(users)] = run_storm(system, users, cpus, Path(workdir), log, args.keep_logs)
                report["seconds"] = round(time.time() - started_at, 1)
                write_report(report, out)  # after each system, so a long run shows its progress
    report["seconds"] = round(time.time() - started_at, 1)
    for path in write_report(report, out):
        log(f"storm: wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
