"""Reconnect storms: N distinct users connect at once, the same N drop and come back at once (and 2 s later),
then all leave; then a restart: clients held by one instance come back to a fresh one after its SIGTERM. Side by
side with a raw `websockets` server in the same run. Writes bench/results/storm.{md,json}; `python -m bench`
runs it too and puts its tables in latest.md.

    .venv/bin/python -m bench.storm                      # 5,000 and 10,000 users, restart of 15,000
    .venv/bin/python -m bench.storm --clients 5000 --restart-clients 0   # one size, no restart
    .venv/bin/python -m bench.storm --smoke              # 50 users, seconds (CI: tests/test_bench_smoke.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from bench.clients import BACKOFF_BASE_S, BACKOFF_CAP_S
from bench.run import RESULTS_DIR, Clients, Scenario, cleanup_amqp, machine, merged_counts, started
from bench.systems import AMQP_URL, Running, System, all_systems
from notifier.settings import Settings

# How long the mass-leave phase waits for the system's bindings at RabbitMQ to go: for notifier, the resume window
# (60 s) and then the linger (30 s) of a client that left without a goodbye.
LEAVE_WAIT_S = 120.0
# The restart phase: how long clients keep trying to come back, and how long the old process may take to exit.
RESTART_DEADLINE_S = 240.0
EXIT_WAIT_S = 120.0
# The systems the restart phase runs on (one process each, restarted in place).
RESTART_SYSTEMS = ("notifier", "websockets", "picows")


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
        by_name["notifier-quorum"],
        by_name["websockets"],
        by_name["picows"],
    ]


def _bindings() -> list[tuple[str, str]]:
    """(source, destination) of every binding in the bench's vhost (the shared broker holds others' too)."""
    vhost = unquote(urlsplit(AMQP_URL).path[1:]) or "/"
    output = subprocess.run(
        ["rabbitmqctl", "-q", "--no-table-headers", "list_bindings", "-p", vhost, "source_name", "destination_name"],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    rows = [line.split("\t") for line in output.splitlines()]
    return [(row[0].strip(), row[1].strip()) for row in rows if len(row) >= 2]


def bindings_of(exchange: str) -> int:
    """Bindings from `exchange` as RabbitMQ reports them."""
    return sum(1 for source, _ in _bindings() if source == exchange)


def bindings_to(exchange: str, queue: str) -> int:
    """Bindings from `exchange` to `queue`."""
    return sum(1 for source, destination in _bindings() if (source, destination) == (exchange, queue))


def phase(clients: Clients) -> dict[str, Any]:
    """Everyone connects at once (as many in flight as there are clients); welcomed/s and refusals by code."""
    result = clients.connect(concurrency=clients.count)
    return {
        "welcomed": result["connected"],
        "refused": result["failed"],
        "codes": result["codes"],
        "failures": result["failures"],  # the first few errors, as the client saw them
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


def run_restart(
    system: System, users: int, cpus: dict[str, set[int]], workdir: Path, log: Any, keep_logs: Path | None = None
) -> dict[str, Any]:
    """N clients on one instance; SIGTERM it, start a fresh one on the same port, and time until every client
    (reconnecting with backoff on refusals) is welcomed again."""
    exchange = f"bench.restart.{system.name}.{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(32)
    is_notifier = system.module == "notifier"
    default_timeout_s = Settings.model_fields["shutdown_timeout_s"].default
    shutdown_timeout_s = float(os.environ.get("NOTIFIER_SHUTDOWN_TIMEOUT_S", default_timeout_s))
    results: dict[str, Any] = {}
    queues: list[str] = []
    scenario = Scenario(f"restart_{users}", "idle", users)
    first: Running | None = None
    second: Running | None = None
    clients: Clients | None = None
    try:
        first = Running(system, exchange, secret, workdir, cpus["server"])
        queues.append(first.queue_name)
        first.wait_ready(60)
        clients = Clients(first, scenario, cpus["clients"], "rs")
        log(f"  {users}: connect (1,000 in flight)")
        setup = clients.connect(concurrency=1000)
        results["connected"] = setup["connected"]
        if setup["connected"] < users:
            results["connect_refused"] = setup["codes"]
        for worker in clients.workers:
            worker.send("follow_restart", deadline_s=RESTART_DEADLINE_S)
        time.sleep(0.5)  # the workers are waiting on every connection before the server goes
        log(f"  {users}: SIGTERM, then a fresh instance on port {first.port}")
        assert first.process is not None
        sigterm_at = time.monotonic()
        os.killpg(first.process.pid, signal.SIGTERM)
        try:
            first.process.wait(timeout=EXIT_WAIT_S)
        except subprocess.TimeoutExpired:
            results["exit_error"] = f"still running {EXIT_WAIT_S:.0f} s after SIGTERM; killed"
        exit_s = time.monotonic() - sigterm_at
        first.stop()
        results["exit_s"] = round(exit_s, 2)
        if is_notifier:
            results["shutdown_timeout_s"] = shutdown_timeout_s
            results["shutdown_timeout_held"] = exit_s <= shutdown_timeout_s
        # The fresh instance starts at once, as a supervisor would restart it: the old queue's bindings are
        # counted once every client is back (a rabbitmqctl call here would delay the restart by seconds).
        second = Running(system, exchange, secret, workdir, cpus["server"], port=first.port)
        queues.append(second.queue_name)
        second.wait_ready(60)
        ready_at = time.monotonic()
        results["new_ready_s"] = round(ready_at - sigterm_at, 2)
        answers = [worker.receive(RESTART_DEADLINE_S + 60) for worker in clients.workers]
        welcomes = sorted(moment for answer in answers for moment in answer["welcome_times"])
        last = max((answer["last_welcome"] for answer in answers if answer["last_welcome"]), default=None)
        first_drop = min((answer["first_drop"] for answer in answers if answer["first_drop"]), default=None)
        welcomed = sum(answer["welcomed"] for answer in answers)
        results.update(
            {
                "held": sum(answer["held"] for answer in answers),
                "welcomed": welcomed,
                "attempts": sum(answer["attempts"] for answer in answers),
                "refusals": merged_counts(answer["refusals"] for answer in answers),
                "first_drop_s": round(first_drop - sigterm_at, 2) if first_drop else None,
                "all_back_s": round(last - sigterm_at, 2) if last and welcomed == results["connected"] else None,
                "last_back_s": round(last - sigterm_at, 2) if last else None,
                "back_after_ready_s": round(last - ready_at, 2) if last else None,
                "half_back_s": round(welcomes[len(welcomes) // 2] - sigterm_at, 2) if welcomes else None,
                "failures": [failure for answer in answers for failure in answer["failures"]][:5],
            }
        )
        if is_notifier:
            results["bindings_to_old_queue_at_end"] = bindings_to(exchange, queues[0])
        log(f"  {users}: {welcomed:,} of {results['connected']:,} back after {results['last_back_s']} s")
    except (RuntimeError, TimeoutError, OSError, EOFError) as error:
        results["error"] = repr(error)[:500]
        log(f"    error: {error!r}")
    finally:
        if clients is not None:
            clients.stop()
        for running in (first, second):
            if running is not None:
                running.stop()
                if keep_logs is not None:
                    keep_logs.mkdir(parents=True, exist_ok=True)
                    shutil.copy(running.log_path, keep_logs / running.log_path.name)
    cleanup_amqp(exchange, queues if is_notifier else [])
    return results


STORM_PHASES = (
    ("connect", "connect at once"),
    ("reconnect", "drop + reconnect at once"),
    ("reconnect_2s", "drop + reconnect 2 s later"),
)


def _ratio(value: Any, base: Any) -> str:
    if not isinstance(value, (int, float)) or not isinstance(base, (int, float)) or not base:
        return ""
    return f" ({value / base:.2f}x)"


def storm_sections(report: dict[str, Any], heading: str = "##") -> list[str]:
    """The storm and restart tables as markdown lines, under `heading`-level titles (storm.md and latest.md)."""
    lines = [
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
            f"{heading} Storm, {users:,} users",
            "",
            "| system | phase | welcomed | welcomed/s | refused (codes) | seconds |",
            "|---|---|---|---|---|---|",
        ]
        for name, entry in report["systems"].items():
            result = entry.get(str(users), {})
            if "error" in result:
                lines.append(f"| {name} | error | {result['error'][:120]} | | | |")
            for key, title in STORM_PHASES:
                item = result.get(key)
                if not item:
                    continue
                codes = ", ".join(f"{code}: {count}" for code, count in sorted(item["codes"].items())) or "-"
                rate = item["welcomed_per_s"]
                ratio = seconds_ratio = ""
                if name != "websockets":
                    ratio = _ratio(rate, base.get(key, {}).get("welcomed_per_s"))
                    seconds_ratio = _ratio(item["seconds"], base.get(key, {}).get("seconds"))
                lines.append(
                    f"| {name} | {title} | {item['welcomed']:,} | {rate:,.0f}{ratio} | {item['refused']:,} ({codes}) "
                    f"| {item['seconds']:.1f}{seconds_ratio} |"
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
    if report["sizes"]:
        lines += [
            "notifier keeps the session of a client that left without closing with 1000 for "
            "NOTIFIER_RESUME_WINDOW_S (60 s), then lingers a topic NOTIFIER_BIND_LINGER_S (30 s) after its last "
            "subscriber left, so its bindings go some seconds after everyone left; the `websockets` baseline binds "
            "`#` once and keeps it.",
            "",
        ]
    restart = report.get("restart")
    if restart and restart.get("systems"):
        lines += restart_section(restart, heading)
    return lines


def restart_section(restart: dict[str, Any], heading: str) -> list[str]:
    users = restart["clients"]
    base = restart["systems"].get("websockets", {})
    lines = [
        f"{heading} Restart, {users:,} clients",
        "",
        "The clients hold connections to one instance, which gets SIGTERM; when it has exited a fresh instance "
        "starts on the same port. Each client reconnects when its connection ends, with notifier.js's backoff "
        f"(full jitter, base {BACKOFF_BASE_S} s, cap {BACKOFF_CAP_S:.0f} s, busy close codes start two steps up), "
        "until welcomed. Times are from the SIGTERM; *all back* is when the last client was welcomed again "
        "(ratio to `websockets`, which exits at once on SIGTERM and binds nothing per client).",
        "",
        "| system | held | back | all back s | half back s | exit s (timeout held) | new instance ready s "
        "| attempts | refusals | bindings left to the old queue |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, result in restart["systems"].items():
        if "error" in result:
            lines.append(f"| {name} | error: {result['error'][:160]} | | | | | | | | |")
            continue
        refusals = ", ".join(f"{code}: {count:,}" for code, count in sorted(result["refusals"].items())) or "-"
        all_back = result["all_back_s"]
        all_back_text = "-" if all_back is None else f"{all_back:.1f}"
        if name != "websockets":
            all_back_text += _ratio(all_back, base.get("all_back_s"))
        held = result.get("shutdown_timeout_held")
        exit_text = f"{result['exit_s']:.1f}"
        if held is not None:
            exit_text += f" ({'yes' if held else 'NO'}, {result['shutdown_timeout_s']:g} s)"
        if result.get("exit_error"):
            exit_text += f" {result['exit_error']}"
        at_end = result.get("bindings_to_old_queue_at_end")
        bindings_text = "-" if at_end is None else f"{at_end:,}"
        lines.append(
            f"| {name} | {result['connected']:,} | {result['welcomed']:,} | {all_back_text} "
            f"| {_fmt_s(result.get('half_back_s'))} | {exit_text} | {_fmt_s(result.get('new_ready_s'))} "
            f"| {result['attempts']:,} | {refusals} | {bindings_text} |"
        )
    lines += [
        "",
        "*bindings left to the old queue*: bindings from the system's exchange to the old instance's queue, "
        "counted once every client was back (the stop sends the queue's delete and RabbitMQ finishes it after "
        "the process has left).",
        "",
    ]
    return lines


def _fmt_s(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "storm.json"
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    lines = [
        "# Reconnect storms and a restart",
        "",
        f"Run {report['started']}, {report['seconds']} s; {report['machine'].get('cpu_model', '')}, "
        f"{report['machine'].get('cpus', '')} CPUs. {report['cpu_sharing']}.",
        "",
        *storm_sections(report),
    ]
    md_path = out / "storm.md"
    md_path.write_text("\n".join(lines))
    return [json_path, md_path]


def run_storms(
    sizes: list[int],
    chosen: list[System],
    restart_clients: int,
    restart_chosen: list[System],
    out: Path,
    log: Any,
    note: str = "",
    keep_logs: Path | None = None,
    smoke: bool = False,
    cpus: dict[str, set[int]] | None = None,
) -> dict[str, Any]:
    """Every storm size on every chosen system, then the restart phase; writes storm.{md,json} as it goes.
    `cpus` ({"server": ..., "clients": ...}) when the caller already split the cores; else the first available
    one is the server's."""
    if smoke:
        os.environ.setdefault("NOTIFIER_BIND_LINGER_S", "1")  # the servers inherit it: a short leave phase
        # Clients that leave without closing with 1000 park their sessions for the resume window, topics bound.
        os.environ.setdefault("NOTIFIER_RESUME_WINDOW_S", "1")
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # the servers started here inherit it
    if cpus is None:
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
    started_at = time.time()
    report: dict[str, Any] = {
        "mode": "smoke" if smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(started_at)),
        "machine": machine(),
        "cpu_sharing": sharing,
        "note": note,
        "sizes": sizes,
        "systems": {},
        "restart": {"clients": restart_clients, "systems": {}},
    }
    with tempfile.TemporaryDirectory(prefix="notifier-storm-") as workdir:
        for users in sizes:
            for system in chosen:
                log(f"storm: {system.name}")
                entry = report["systems"].setdefault(system.name, {"label": system.label, "note": system.note})
                entry[str(users)] = run_storm(system, users, cpus, Path(workdir), log, keep_logs)
                report["seconds"] = round(time.time() - started_at, 1)
                write_report(report, out)  # after each system, so a long run shows its progress
        for system in restart_chosen if restart_clients else []:
            log(f"restart: {system.name}")
            result = run_restart(system, restart_clients, cpus, Path(workdir), log, keep_logs)
            report["restart"]["systems"][system.name] = result
            report["seconds"] = round(time.time() - started_at, 1)
            write_report(report, out)
    report["seconds"] = round(time.time() - started_at, 1)
    for path in write_report(report, out):
        log(f"storm: wrote {path}")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storm", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="5000,10000", help="comma list of storm sizes (default 5000,10000)")
    parser.add_argument("--systems", default="notifier,notifier-2w,websockets", help="comma list of systems")
    parser.add_argument(
        "--restart-clients", type=int, help="clients in the restart phase (default 15000; smoke 50; 0 skips it)"
    )
    parser.add_argument(
        "--restart-systems", default="notifier,websockets", help=f"comma list of {', '.join(RESTART_SYSTEMS)}"
    )
    parser.add_argument("--smoke", action="store_true", help="50 users: checks the scenarios run, measures nothing")
    parser.add_argument("--note", default="", help="a line for the report (for instance: what else ran meanwhile)")
    parser.add_argument("--out", type=Path, help="directory for storm.md/json (default bench/results)")
    parser.add_argument("--keep-logs", type=Path, help="copy each server's log into this directory")
    args = parser.parse_args(argv)
    sizes = [50] if args.smoke else [int(size) for size in args.clients.split(",") if size.strip()]
    systems = {system.name: system for system in storm_systems()}
    names = [name for name in args.systems.split(",") if name]
    restart_names = [name for name in args.restart_systems.split(",") if name]
    unknown = set(names) - set(systems)
    if unknown:
        parser.error(f"unknown systems {sorted(unknown)}; known: {sorted(systems)}")
    if set(restart_names) - set(RESTART_SYSTEMS):
        parser.error(f"restart systems are {', '.join(RESTART_SYSTEMS)}")
    restart_clients = args.restart_clients if args.restart_clients is not None else (50 if args.smoke else 15000)
    out = args.out or (RESULTS_DIR / "smoke" if args.smoke else RESULTS_DIR)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    run_storms(
        sizes,
        [systems[name] for name in names],
        restart_clients,
        [systems[name] for name in restart_names],
        out,
        log,
        note=args.note,
        keep_logs=args.keep_logs,
        smoke=args.smoke,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
