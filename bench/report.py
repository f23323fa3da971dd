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
    ("CPU s per 100k deliveries (broadcast 1k)", lambda r: _get(r, "broadcast_1k", "burst", "cpu_s_per_100k"), False),
]


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

Systems:

{notes}

{detail_tables(report)}

Whole run: {report["seconds"]} s.
"""


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
