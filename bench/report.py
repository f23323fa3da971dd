"""Writes a run's report: latest.json (everything), latest.md (tables with ratios to notifier), latency.png."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

BASE = "notifier"


def _get(results: dict[str, Any], *path: str) -> Any:
    value: Any = results
    for key in path:
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def _latency_at(results: dict[str, Any], scenario: str, rate: float, key: str) -> Any:
    for step in _get(results, scenario, "latency") or []:
        if step["rate_events_per_s"] == rate:
            return None if step.get("overloaded") else step[key]
    return None


# (column title, getter, higher is better)
COLUMNS: list[tuple[str, Any, bool]] = [
    ("broadcast 500: deliveries/s", lambda r: _get(r, "broadcast_500", "burst", "deliveries_per_s"), True),
    ("broadcast 1k: deliveries/s", lambda r: _get(r, "broadcast_1k", "burst", "deliveries_per_s"), True),
    ("broadcast 5k: deliveries/s", lambda r: _get(r, "broadcast_5k", "burst", "deliveries_per_s"), True),
    ("unicast 1k: deliveries/s", lambda r: _get(r, "unicast_1k", "burst", "deliveries_per_s"), True),
    ("mixed 1k: deliveries/s", lambda r: _get(r, "mixed_1k", "burst", "deliveries_per_s"), True),
    ("p99 ms, 20 ev/s to 1k", lambda r: _latency_at(r, "broadcast_1k", 20, "p99_ms"), False),
    ("connect+auth/s (idle run)", lambda r: _get(r, "idle_10k", "connect", "per_s"), True),
    ("KiB per idle connection", lambda r: _get(r, "idle_10k", "kib_per_connection"), False),
]

# Server CPU seconds per 100k deliveries during each delivery scenario's burst.
CPU_SCENARIOS = ["broadcast_500", "broadcast_1k", "broadcast_5k", "unicast_1k", "mixed_1k"]

# The goals for notifier, each checked against this run's own numbers.
STORM_GOAL_USERS = 10_000
RESTART_GOAL_CLIENTS = 15_000
STORM_GOAL_RATIO = 2.0
RESTART_GOAL_RATIO = 2.0
IDLE_GOAL_KIB = 24.0
UNICAST_GOAL_RATIO = 1.5


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.3g}"
    return str(value)


def _cell(value: Any, base: Any) -> str:
    text = _fmt(value)
    if value is None or base in (None, 0) or not isinstance(value, (int, float)):
        return text
    return f"{text} ({value / base:.2f}x)"


def summary_table(report: dict[str, Any]) -> str:
    systems = report["systems"]
    base = systems.get(BASE, {}).get("results", {})
    head = "| system | " + " | ".join(f"{title} {'↑' if up else '↓'}" for title, _, up in COLUMNS) + " |"
    rows = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for entry in systems.values():
        results = entry.get("results", {})
        cells = [_cell(getter(results), getter(base)) for _, getter, _ in COLUMNS]
        rows.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def cpu_table(report: dict[str, Any]) -> str:
    systems = report["systems"]
    base = systems.get(BASE, {}).get("results", {})
    present = [name for name in CPU_SCENARIOS if any(name in entry.get("results", {}) for entry in systems.values())]
    if not present:
        return ""
    rows = ["| system | " + " | ".join(f"{name} ↓" for name in present) + " |", "|" + "---|" * (len(present) + 1)]
    for entry in systems.values():
        results = entry.get("results", {})
        if not any(_get(results, name, "burst", "cpu_s_per_100k") is not None for name in present):
            continue
        cells = [
            _cell(_get(results, name, "burst", "cpu_s_per_100k"), _get(base, name, "burst", "cpu_s_per_100k"))
            for name in present
        ]
        rows.append(f"| {entry['label']} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _verdict(met: bool | None) -> str:
    # None: this run did not measure it, or not at the goal's size.
    return "not measured" if met is None else ("**met**" if met else "**NOT met**")


def _size_note(measured: int, goal: int) -> str:
    return "" if measured == goal else f" (measured at {measured:,}; the goal is at {goal:,})"


def goals(report: dict[str, Any]) -> list[tuple[str, str, bool | None]]:
    """(goal, what this run measured, met) for each of the issue's goals; None when the run did not measure it."""
    systems = report["systems"]

    def results(name: str) -> dict[str, Any]:
        return dict(systems.get(name, {}).get("results", {}))

    rows: list[tuple[str, str, bool | None]] = []
    storm = report.get("storm") or {}
    sizes = storm.get("sizes") or []
    users = STORM_GOAL_USERS if STORM_GOAL_USERS in sizes else max(sizes, default=0)
    mine = storm.get("systems", {}).get(BASE, {}).get(str(users), {})
    theirs = storm.get("systems", {}).get("websockets", {}).get(str(users), {})
    for key, title in (
        ("connect", "connect at once"),
        ("reconnect", "drop + reconnect at once"),
        ("reconnect_2s", "drop + reconnect 2 s later"),
    ):
        goal = f"storm {title}, {STORM_GOAL_USERS:,} users: no refusals, time ≤ {STORM_GOAL_RATIO:g}x websockets"
        item, base = mine.get(key), theirs.get(key)
        if not item or not base:
            rows.append((goal, "-", None))
            continue
        ratio = item["seconds"] / base["seconds"] if base["seconds"] else float("inf")
        measured = (
            f"{item['refused']:,} of {item['welcomed'] + item['refused']:,} refused; {item['seconds']:.1f} s vs "
            f"{base['seconds']:.1f} s ({ratio:.2f}x){_size_note(users, STORM_GOAL_USERS)}"
        )
        met = item["refused"] == 0 and ratio <= STORM_GOAL_RATIO
        rows.append((goal, measured, met if users == STORM_GOAL_USERS else None))

    kib = _get(results(BASE), "idle_10k", "kib_per_connection")
    clients = _get(results(BASE), "idle_10k", "clients") or 0
    rows.append(
        (
            f"KiB per idle connection ≤ {IDLE_GOAL_KIB:g}",
            "-" if kib is None else f"{kib:.1f} KiB over {clients:,} idle clients",
            None if kib is None else kib <= IDLE_GOAL_KIB,
        )
    )

    unicast = _get(results(BASE), "unicast_1k", "burst", "deliveries_per_s")
    alone = _get(results("aio-pika"), "unicast_1k", "burst", "deliveries_per_s")
    if unicast is None or not alone:
        rows.append((f"unicast deliveries/s ≥ {UNICAST_GOAL_RATIO:g}x aio-pika alone", "-", None))
    else:
        rows.append(
            (
                f"unicast deliveries/s ≥ {UNICAST_GOAL_RATIO:g}x aio-pika alone",
                f"{unicast:,.0f} vs {alone:,.0f} ({unicast / alone:.2f}x)",
                unicast / alone >= UNICAST_GOAL_RATIO,
            )
        )

    memory = _get(results("notifier-memory"), "idle_10k", "connect", "per_s")
    naive = _get(results("fastapi-naive"), "idle_10k", "connect", "per_s")
    goal = "connect+auth/s with the in-memory broker ≥ naive FastAPI loop"
    if memory is None or not naive:
        rows.append((goal, "-", None))
    else:
        rows.append((goal, f"{memory:,.0f}/s vs {naive:,.0f}/s ({memory / naive:.2f}x)", memory >= naive))

    restart = storm.get("restart") or {}
    count = restart.get("clients") or 0
    mine, theirs = restart.get("systems", {}).get(BASE, {}), restart.get("systems", {}).get("websockets", {})
    goal = f"restart, {RESTART_GOAL_CLIENTS:,} clients: all back in ≤ {RESTART_GOAL_RATIO:g}x websockets' time"
    if "held" not in mine or not theirs.get("all_back_s"):
        rows.append((goal, "-", None))
    else:
        back, base_back = mine.get("last_back_s") or float("inf"), theirs["all_back_s"]
        everyone = mine["all_back_s"] is not None and mine["welcomed"] == mine["held"] == count
        measured = (
            f"{mine['welcomed']:,} of {count:,} back after {back:.1f} s vs {base_back:.1f} s "
            f"({back / base_back:.2f}x){_size_note(count, RESTART_GOAL_CLIENTS)}"
        )
        met = everyone and back / base_back <= RESTART_GOAL_RATIO
        rows.append((goal, measured, met if count == RESTART_GOAL_CLIENTS else None))
    return rows


def goals_table(report: dict[str, Any]) -> str:
    rows = ["| goal | this run | verdict |", "|---|---|---|"]
    rows += [f"| {goal} | {measured} | {_verdict(met)} |" for goal, measured, met in goals(report)]
    return "\n".join(rows)


def detail_tables(report: dict[str, Any]) -> str:
    parts = []
    burst_rows = [
        "| system | scenario | clients | events | deliveries/s | events/s | publisher ev/s | CPU s/100k "
        "| client core busy | delivered / expected | complete |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    latency_rows = [
        "| system | scenario | clients | ev/s | offered deliveries/s | p50 ms | p99 ms | max ms "
        "| delivered / expected |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    connect_rows = [
        "| system | scenario | clients | connected | seconds | connect+auth+subscribe/s | KiB/conn |",
        "|---|---|---|---|---|---|---|",
    ]
    errors = []
    for name, entry in report["systems"].items():
        results = entry.get("results", {})
        if "error" in results:
            errors.append(f"- {name}: {results['error']}")
            continue
        for scenario, result in results.items():
            if "error" in result:
                errors.append(f"- {name} / {scenario}: {result['error']}")
            burst = result.get("burst")
            if burst:
                bound = " (publisher-bound)" if burst.get("publisher_bound") else ""
                burst_rows.append(
                    f"| {name} | {scenario} | {result.get('clients', '-')} | {burst['events']} "
                    f"| {_fmt(burst['deliveries_per_s'])}{bound} | {_fmt(burst.get('events_per_s'))} "
                    f"| {_fmt(burst['publish_per_s'])} | {_fmt(burst.get('cpu_s_per_100k'))} "
                    f"| {_fmt(burst.get('client_cpu_share'))} | {burst['delivered']} / {burst['expected']} "
                    f"| {'yes' if burst['complete'] else 'NO'} |"
                )
            for step in result.get("latency", []):
                over = " (overloaded)" if step.get("overloaded") else ""
                latency_rows.append(
                    f"| {name} | {scenario} | {result['clients']} | {_fmt(step['rate_events_per_s'])}{over} "
                    f"| {_fmt(step['offered_deliveries_per_s'])} | {_fmt(step['p50_ms'])} | {_fmt(step['p99_ms'])} "
                    f"| {_fmt(step['max_ms'])} | {step['delivered']} / {step['expected']} |"
                )
            connect = result.get("connect")
            if connect:
                connect_rows.append(
                    f"| {name} | {scenario} | {connect['clients']} | {connect['connected']} "
                    f"| {_fmt(connect['seconds'])} | {_fmt(connect['per_s'])} "
                    f"| {_fmt(result.get('kib_per_connection'))} |"
                )
    parts.append("### Saturation (a burst published as fast as possible; first to last delivery)\n")
    parts.append("\n".join(burst_rows))
    parts.append("\n### Latency at fixed rates (publish stamp to client receive)\n")
    parts.append("\n".join(latency_rows))
    parts.append("\n### Connections\n")
    parts.append("\n".join(connect_rows))
    if errors:
        parts.append("\n### Errors\n")
        parts.append("\n".join(errors))
    return "\n".join(parts)


def markdown(report: dict[str, Any]) -> str:
    machine = report["machine"]
    packages = ", ".join(f"{name} {version}" for name, version in machine["packages"].items())
    notes = "\n".join(f"- **{entry['label']}**: {entry['note']}" for entry in report["systems"].values())
    return f"""# notifier benchmark ({report["mode"]} run, {report["started"]})

Machine: {machine["cpu_model"]}, {machine["cpus"]} CPUs, {machine["memory_gib"]} GiB, Linux {machine["kernel"]},
Python {machine["python"]}, RabbitMQ {machine["rabbitmq"] or "?"}. Packages: {packages}.

CPU sharing: {report["cpu_sharing"]}.

Events: ~{report["event_bytes"]}-byte JSON data `{{"t": <publish time ns>, "pad": ...}}`, published to RabbitMQ by a
separate aio-pika process. Each cell: value (ratio to notifier). ↑ higher is better, ↓ lower is better.
The machine is shared and noisy: compare ratios within this run, not absolute numbers across runs.

{summary_table(report)}

CPU seconds of the server process per 100k deliveries, during each scenario's burst (ratio to notifier):

{cpu_table(report)}

## Goals

Each goal of the scale issue, checked against this run's own numbers (storm and restart below). A goal this
run did not measure, or measured at another size than the goal's, is "not measured".

{goals_table(report)}

Systems:

{notes}

{detail_tables(report)}
{storm_part(report)}
Whole run: {report["seconds"]} s.
"""


def storm_part(report: dict[str, Any]) -> str:
    storm = report.get("storm")
    if not storm:
        return ""
    from bench.storm import storm_sections

    lines = [
        "",
        "## Reconnect storms and a restart",
        "",
        f"Run {storm['started']}, {storm.get('seconds', '?')} s. {storm['cpu_sharing']}.",
        "",
        *storm_sections(storm, heading="###"),
    ]
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    panels = [("broadcast_1k", "broadcast, 1,000 clients"), ("unicast_1k", "unicast, 1,000 clients")]
    figure, axes = plt.subplots(1, len(panels), figsize=(13, 5))
    for axis, (scenario, title) in zip(axes, panels, strict=True):
        for number, (name, entry) in enumerate(report["systems"].items()):
            steps = _get(entry.get("results", {}), scenario, "latency") or []
            points = [step for step in steps if step.get("p99_ms") is not None and not math.isnan(step["p99_ms"])]
            if not points:
                continue
            color = f"C{number}"
            x = [step["offered_deliveries_per_s"] for step in points]
            axis.plot(x, [step["p99_ms"] for step in points], "o-", color=color, label=f"{name} p99")
            axis.plot(x, [step["p50_ms"] for step in points], "s--", color=color, alpha=0.6, label=f"{name} p50")
            for step in points:
                if step.get("overloaded"):
                    axis.annotate("overloaded", (step["offered_deliveries_per_s"], step["p99_ms"]), fontsize=7)
        axis.set_title(title)
        axis.set_xlabel("offered deliveries per second")
        axis.set_ylabel("publish → client latency, ms (log)")
        axis.set_yscale("log")
        axis.grid(True, which="both", alpha=0.3)
        if axis.get_legend_handles_labels()[0]:
            axis.legend(fontsize=7)
    figure.suptitle(f"Latency percentiles against load ({report['started']})")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True


def write_report(report: dict[str, Any], out: Path) -> list[Path]:
    json_path = out / "latest.json"
    json_path.write_text(json.dumps(report, indent=1, default=str) + "\n")
    md_path = out / "latest.md"
    md_path.write_text(markdown(report))
    paths = [json_path, md_path]
    png_path = out / "latency.png"
    if plot(report, png_path):
        paths.append(png_path)
    return paths
