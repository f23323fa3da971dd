"""A whole fleet rolled: three instances and 15,000 clients, each instance replaced in turn as a Kubernetes
rolling update with `maxSurge: 1, maxUnavailable: 0` does, under a steady feed; the same rollout with resume off
beside it, in one run.

Each phase runs three `notifier serve` instances on an exchange of its own. The clients (several processes,
many loopback source addresses, notifier.js's backoff) sign in spread over the three while a publisher sends a
steady confirmed feed to their personal topics. Then, for each old instance in turn: a new one starts and
becomes ready (the surge), the load balancer's targets become the instances that stay, the old one gets
SIGTERM, and the step ends once it has exited and every client is connected again; then the next. A client
that reconnects picks one of the current targets at random for each attempt.

Reports the whole rollout's time (the first surge to the last client back) beside the plain rollout's, every
time a client was off the air (its gap, and whether its resume said `recovered: true`), events missing,
doubled or out of order per user over the whole run, and each old instance's exit time after its SIGTERM.

    .venv/bin/python -m bench.fleet_rollout                  # 15,000 clients, 4 client processes
    .venv/bin/python -m bench.fleet_rollout --smoke          # 300 clients, a quick check that it all runs
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from bench.resume_storm import (
    RESULTS,
    SETTLE_MAX_S,
    SHUTDOWN_TIMEOUT_NOTE,
    SHUTDOWN_TIMEOUT_S,
    Clients,
    FeedProcess,
    Instance,
    _round,
    cleanup_amqp,
    delivery_counts,
    git_commit,
    log,
    percentile,
    wait_broker_quiet,
)
from bench.run import machine

FLEET = 3
STEP_DEADLINE_S = 120.0  # one instance replaced: its exit and every client back
HEARD_S = 3.0  # a new instance's heartbeats reach the others before the next SIGTERM
PHASES = (("resume", "resume on"), ("plain", "plain reconnect (resume off)"))


async def until_all_back(clients: Clients, count: int, old: Instance, deadline: float) -> tuple[bool, float]:
    """Wait until `old` has exited and all `count` clients are connected again; whether they were, and when.
    The exit is watched on its own, every 20 ms: asking the busy client processes for progress can take
    seconds, and the exit would be seen that late."""
    exit_watch = asyncio.create_task(old.wait_exit(max(0.0, deadline - time.monotonic())))
    try:
        while time.monotonic() < deadline:
            progress = await clients.ask("progress", 60)
            if old.exit_code is not None and sum(item["connected"] for item in progress) >= count:
                return True, time.monotonic()
            await asyncio.sleep(0.2)
        return False, time.monotonic()
    finally:
        exit_watch.cancel()


async def run_phase(name: str, resume: bool, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """One rollout: three instances, the clients and the feed, each instance replaced in turn."""
    exchange = f"bench.fleet.{name}.{secrets.token_hex(4)}"
    secret = secrets.token_urlsafe(32)
    users = [f"u{n}" for n in range(args.clients)]
    old = [Instance(f"old{n + 1}", exchange, secret, resume, workdir) for n in range(FLEET)]
    new: list[Instance] = []
    clients: Clients | None = None
    feed: FeedProcess | None = None
    feed_task: asyncio.Task[None] | None = None
    result: dict[str, Any] = {"exchange": exchange, "resume": resume, "steps": []}
    try:
        for instance in old:
            await instance.wait_ready()
        clients = Clients(users, args.processes, secret, [i.url for i in old], [i.url for i in old], resume)
        connects = await clients.ask("connect", 900)
        connected = sum(item["connected"] for item in connects)
        result["connected"] = connected
        result["connect_s"] = round(max(item["seconds"] for item in connects), 2)
        log(f"{name}: {connected:,} clients on {FLEET} instances")
        await asyncio.sleep(HEARD_S)
        feed = FeedProcess(exchange, users, args.rate)
        feed_task = asyncio.create_task(feed.run())
        await clients.ask("follow", 60)
        await asyncio.sleep(args.warm)

        rollout_started = time.monotonic()
        for step, leaving in enumerate(old):
            step_started = time.monotonic()
            surge = Instance(f"new{step + 1}", exchange, secret, resume, workdir)
            new.append(surge)
            await surge.wait_ready()
            await asyncio.sleep(HEARD_S)
            staying = [instance for instance in (*old[step + 1 :], *new)]
            await clients.ask(("targets", [instance.url for instance in staying]), 60)
            sigterm_at = time.monotonic()
            os.kill(leaving.pid, signal.SIGTERM)
            done, back_at = await until_all_back(clients, connected, leaving, sigterm_at + STEP_DEADLINE_S)
            if not leaving.reap():
                await leaving.stop()
            exit_s = leaving.exited_at - sigterm_at if leaving.exited_at is not None else None
            result["steps"].append(
                {
                    "instance": leaving.name,
                    "sigterm_at": round(sigterm_at, 3),
                    "surge_ready_s": round(sigterm_at - step_started - HEARD_S, 2),
                    "exit_s": _round(exit_s, 2),
                    "exit_code": leaving.exit_code,
                    "all_back_s": round(back_at - sigterm_at, 2) if done else None,
                    "step_s": round(back_at - step_started, 2),
                }
            )
            log(f"{name}: {leaving.name} replaced; exit {exit_s} s, all back {done} after {back_at - sigterm_at:.1f} s")
            if not done:
                result["error"] = f"{leaving.name}: not every client back within {STEP_DEADLINE_S:.0f} s"
                break
        rollout_s = time.monotonic() - rollout_started
        await asyncio.sleep(args.after)
        feed.stop.set()
        await feed_task
        settle_until = time.monotonic() + SETTLE_MAX_S
        last, still = -1, 0
        while time.monotonic() < settle_until and still < 4:
            total = sum(item["received"] for item in await clients.ask("progress", 60))
            still = still + 1 if total == last else 0
            last = total
            await asyncio.sleep(0.5)
        finished = await clients.ask("finish", 120)
        result.update(summarize(finished, feed, rollout_s))
    except (RuntimeError, TimeoutError, OSError, EOFError) as error:
        result["error"] = repr(error)[:500]
        log(f"{name}: error {error!r}")
    finally:
        if feed is not None:
            feed.stop.set()
        if feed_task is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(feed_task, 40)
        if clients is not None:
            clients.stop()
        for instance in (*old, *new):
            await instance.stop()
        await cleanup_amqp(exchange, [instance.queue_name for instance in (*old, *new)])
    return result


def summarize(finished: list[dict[str, Any]], feed: FeedProcess, rollout_s: float) -> dict[str, Any]:
    users = [user for item in finished for user in item["users"]]
    gaps = [back - ended for user in users for ended, back, _ in user["gaps"]]
    recovered = Counter(bool(was) for user in users for _, _, was in user["gaps"])
    refusals: Counter[str] = sum((Counter(item["refusals"]) for item in finished), Counter())
    # Whether any of a user's resumes was refused: its missing events were then told (`recovered: false`).
    for user in users:
        user["recovered"] = all(was for _, _, was in user["gaps"]) if user["gaps"] else None
    return {
        "rollout_s": round(rollout_s, 2),
        "reconnects": len(gaps),
        "users_moved_more_than_once": sum(1 for user in users if len(user["gaps"]) > 1),
        "recovered_true": recovered[True],
        "recovered_false": recovered[False],
        "gap_s_p50": _round(percentile(gaps, 0.50), 3),
        "gap_s_p99": _round(percentile(gaps, 0.99), 3),
        "gap_s_max": _round(max(gaps, default=None), 3),
        "refused_503": refusals.get("http 503", 0),
        "refusals": dict(refusals),
        **feed.report(),
        **delivery_counts(users, feed),
    }


def goals(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    on, plain = report["phases"].get("resume", {}), report["phases"].get("plain", {})
    ratio = report.get("rollout_ratio")
    exits = [step["exit_s"] for step in on.get("steps", []) if step.get("exit_s") is not None]
    every_exit = len(exits) == FLEET
    return [
        (
            "every client resumed with `recovered: true`",
            f"{on.get('recovered_true')} of {on.get('reconnects')} reconnects",
            on.get("reconnects", 0) > 0 and on.get("recovered_false") == 0,
        ),
        ("0 events missing", f"{on.get('missing')} of {_confirmed(on)} confirmed", on.get("missing") == 0),
        ("0 events doubled", str(on.get("doubled")), on.get("doubled") == 0),
        (
            "each user's events in order",
            f"{on.get('users_out_of_order')} users out of order",
            on.get("users_out_of_order") == 0,
        ),
        (
            "rollout time beside the plain rollout's",
            f"{on.get('rollout_s')} s against {plain.get('rollout_s')} s ({ratio}x)" if ratio else "n/a",
            None,
        ),
        (
            f"each old instance exits within NOTIFIER_SHUTDOWN_TIMEOUT_S ({SHUTDOWN_TIMEOUT_S:g} s)",
            f"slowest {max(exits):.1f} s" if exits else "n/a",
            every_exit and max(exits) <= SHUTDOWN_TIMEOUT_S,
        ),
    ]


def _confirmed(phase: dict[str, Any]) -> int | None:
    """The feed's events RabbitMQ confirmed: what *missing* is counted against."""
    published, failed = phase.get("events_published"), phase.get("events_not_confirmed")
    return published - failed if isinstance(published, int) and isinstance(failed, int) else None


def render(report: dict[str, Any]) -> str:
    on, plain = report["phases"].get("resume", {}), report["phases"].get("plain", {})
    info = report["machine"]
    rows = [
        ("clients", "connected"),
        ("whole rollout, s (first surge to last client back)", "rollout_s"),
        ("reconnects (a client moved; some move twice)", "reconnects"),
        ("`recovered: true` / `false`", None),
        ("gap per reconnect p50 / p99 / max, s", None),
        ("handshakes refused with 503", "refused_503"),
        ("events published", "events_published"),
        ("of them confirmed by RabbitMQ within 30 s (the ones checked)", "events_confirmed"),
        ("not confirmed (left out of missing), by reason", "feed_errors"),
        ("publish to RabbitMQ's confirm p50 / p99 / max, s", None),
        ("events missing", "missing"),
        ("events delivered twice", "doubled"),
        ("users with events out of order", "users_out_of_order"),
        ("old instances' exit after SIGTERM, s", None),
    ]

    def cell(phase: dict[str, Any], key: str | None, title: str) -> str:
        if key == "feed_errors":
            errors = phase.get("feed_errors") or {}
            reasons = ", ".join(f"{reason}: {count:,}" for reason, count in errors.items())
            return f"{phase.get('events_not_confirmed', 0):,}" + (f" ({reasons})" if reasons else "")
        if key is not None:
            value = _confirmed(phase) if key == "events_confirmed" else phase.get(key)
            return f"{value:,}" if isinstance(value, int) else str(value)
        if title.startswith("`recovered"):
            return f"{phase.get('recovered_true')} / {phase.get('recovered_false')}" if phase.get("resume") else "-"
        if title.startswith("gap"):
            return f"{phase.get('gap_s_p50')} / {phase.get('gap_s_p99')} / {phase.get('gap_s_max')}"
        if title.startswith("publish"):
            return f"{phase.get('confirm_s_p50')} / {phase.get('confirm_s_p99')} / {phase.get('confirm_s_max')}"
        return ", ".join(str(step.get("exit_s")) for step in phase.get("steps", []))

    lines = [
        f"# Fleet rollout: {FLEET} instances, each replaced in turn (maxSurge 1, maxUnavailable 0)",
        "",
        f"Run {report['started']}, commit {report['commit']}{report['dirty_note']}. Machine: "
        f"{info.get('cpu_model', '?')}, {info.get('cpus', '?')} CPUs, {info.get('memory_gib', '?')} GiB, "
        f"{info.get('python', '')}; RabbitMQ {report['rabbitmq']}. {report['clients']:,} clients in "
        f"{report['processes']} processes, a feed of {report['rate']:g} events/s over their personal topics, "
        f"NOTIFIER_SHUTDOWN_TIMEOUT_S {SHUTDOWN_TIMEOUT_S:g} s ({SHUTDOWN_TIMEOUT_NOTE}). Both rollouts in one run.",
        "",
        "| | resume on | resume off (plain reconnect) |",
        "|---|---|---|",
    ]
    lines += [f"| {title} | {cell(on, key, title)} | {cell(plain, key, title)} |" for title, key in rows]
    lines += ["", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for goal in report["goals"]:
        met = {True: "yes", False: "**no**", None: "-"}[goal["met"]]
        lines.append(f"| {goal['goal']} | {goal['measured']} | {met} |")
    for name in ("resume", "plain"):
        if report["phases"].get(name, {}).get("error"):
            lines += ["", f"{name}: error: {report['phases'][name]['error']}"]
    return "\n".join(lines) + "\n"


async def run_all(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    commit, dirty = git_commit()
    info = machine()
    report: dict[str, Any] = {
        "mode": "smoke" if args.smoke else "full",
        "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "commit": commit,
        "dirty_note": dirty,
        "machine": info,
        "rabbitmq": info.get("rabbitmq", "?"),
        "clients": args.clients,
        "processes": args.processes,
        "rate": args.rate,
        "phases": {},
    }
    for name, _title in PHASES:
        if name in args.phases:
            await wait_broker_quiet()
            report["phases"][name] = await run_phase(name, name == "resume", args, workdir)
    on, plain = report["phases"].get("resume", {}), report["phases"].get("plain", {})
    if on.get("rollout_s") and plain.get("rollout_s"):
        report["rollout_ratio"] = round(on["rollout_s"] / plain["rollout_s"], 3)
    report["goals"] = [{"goal": goal, "measured": measured, "met": met} for goal, measured, met in goals(report)]
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet_rollout", description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, help="clients over the fleet (default 15000; smoke 300)")
    parser.add_argument("--processes", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--rate", type=float, default=1000.0, help="feed, events/s over all users (default 1000)")
    parser.add_argument("--warm", type=float, default=5.0, help="seconds of feed before the rollout (default 5)")
    parser.add_argument("--after", type=float, default=5.0, help="seconds of feed after it (default 5)")
    parser.add_argument("--phases", nargs="+", default=[name for name, _ in PHASES], choices=[n for n, _ in PHASES])
    parser.add_argument("--smoke", action="store_true", help="300 clients: a quick check that it all runs")
    parser.add_argument("--out", type=Path, help="where fleet_rollout.{md,json} go (default bench/results)")
    parser.add_argument("--keep-logs", type=Path, help="copy the instances' logs into this directory")
    args = parser.parse_args(argv)
    if args.clients is None:
        args.clients = 300 if args.smoke else 15_000
    if args.smoke:
        args.rate = min(args.rate, 100.0)
        args.warm = args.after = 2.0
    with tempfile.TemporaryDirectory(prefix="fleet-rollout-") as tmp:
        report = asyncio.run(run_all(args, Path(tmp)))
        if args.keep_logs is not None:
            args.keep_logs.mkdir(parents=True, exist_ok=True)
            for path in Path(tmp).glob("*.log"):
                (args.keep_logs / path.name).write_bytes(path.read_bytes())
    out = args.out or (RESULTS / "smoke" if args.smoke else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "fleet_rollout.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "fleet_rollout.md").write_text(render(report))
    print(render(report))
    return 0 if all(goal["met"] is not False for goal in report["goals"]) else 1


if __name__ == "__main__":
    sys.exit(main())
