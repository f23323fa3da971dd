"""Prometheus metrics, read from the instance's `Stats` and gauges at scrape time, so the hot path only bumps ints.

Each app has its own registry (no process-wide state), so several apps can run in one process.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from notifier.cluster.handover import DESCRIBE, DESCRIBE_BATCH, HAND_OVER, HAND_OVER_BATCH, WHERE
from notifier.formats import closecodes

if TYPE_CHECKING:
    from notifier.instance.node import Node

CLOSE_REASONS = {reason.code: reason.reason for reason in closecodes.ALL}
HANDOVER_KINDS = (DESCRIBE_BATCH, HAND_OVER_BATCH, DESCRIBE, HAND_OVER, WHERE)
STREAM_COMMAND_RESULTS = ("accepted", "forwarded", "rate_limited", "too_big", "unavailable", "unknown_stream")


class NodeCollector(Collector):
    def __init__(self, node: Node) -> None:
        self._node = node

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        node = self._node
        hub = node.hub
        stats = node.stats
        connections = GaugeMetricFamily(
            "notifier_connections", "Open connections (WebSockets and HTTP streams)", labels=["transport"]
        )
        streams = sum(session.transport == "sse" for session in node.sessions)
        connections.add_metric(["websocket"], len(node.sessions) - streams)
        connections.add_metric(["sse"], streams)
        yield connections
        yield GaugeMetricFamily(
            "notifier_subscriptions",
            "Subscriptions held by open connections",
            value=sum(len(session.topics) for session in node.sessions),
        )
        yield GaugeMetricFamily(
            "notifier_sessions_parked",
            "Sessions whose connection dropped, kept for a resume",
            value=node.directory.parked_count,
        )
        yield GaugeMetricFamily("notifier_topics_bound", "Topics bound at the broker", value=len(hub.bound_topics))
        yield GaugeMetricFamily(
            "notifier_broker_connected",
            "1 while events reach this instance: connected to RabbitMQ and its topics routed here",
            value=int(node.broker.ready),
        )
        yield CounterMetricFamily(
            "notifier_routing_gaps",
            "Times routing was rebuilt on a new queue (its node lost), with events possibly lost meanwhile",
            value=node.broker.routing_gaps,
        )
        yield CounterMetricFamily(
            "notifier_resyncs_sent", "resync frames sent to clients after a gap in routing", value=stats.resyncs_sent
        )
        yield CounterMetricFamily(
            "notifier_broker_reconnects", "Times the broker connection was restored", value=node.broker.reconnects
        )
        yield CounterMetricFamily("notifier_events_consumed", "Events taken from the broker", value=stats.events_in)
        yield CounterMetricFamily(
            "notifier_events_delivered", "Event frames handed to clients' send queues", value=stats.frames_out
        )
        yield CounterMetricFamily(
            "notifier_events_dropped",
            "Event frames discarded from the queues of slow clients that were closed",
            value=stats.frames_dropped,
        )
        yield CounterMetricFamily(
            "notifier_redeliveries_dropped",
            "Events RabbitMQ delivered again after a channel closed that were already handed to clients",
            value=node.broker.redeliveries_dropped,
        )
        yield CounterMetricFamily(
            "notifier_events_dead_lettered",
            "Broker messages rejected to the dead-letter queue",
            value=node.broker.dead_lettered,
        )
        closes = CounterMetricFamily(
            "notifier_connections_closed",
            "Connections closed by the server, by close code and transport",
            labels=["code", "reason", "transport"],
        )
        for code, count in sorted(stats.closes_by_code.items()):
            streams = stats.sse_closes_by_code[code]
            if count - streams:
                closes.add_metric([str(code), CLOSE_REASONS.get(code, ""), "websocket"], count - streams)
            if streams:
                closes.add_metric([str(code), CLOSE_REASONS.get(code, ""), "sse"], streams)
        yield closes
        commands = CounterMetricFamily(
            "notifier_stream_commands",
            "Commands for HTTP streams (POST and DELETE /sse/<key>) answered here, by result",
            labels=["result"],
        )
        for result in STREAM_COMMAND_RESULTS:  # each from zero, so a rate over them is there from the start
            commands.add_metric([result], stats.stream_commands[result])
        yield commands
        resumes = CounterMetricFamily(
            "notifier_resumes",
            "Sign-ins that asked to resume a session, by outcome: recovered (every missed event follows the "
            "welcome) or not_recovered (a fresh session: the client resyncs)",
            labels=["outcome"],
        )
        for outcome in ("recovered", "not_recovered"):
            resumes.add_metric([outcome], stats.resumes[outcome])
        yield resumes
        requests_sent, sessions_asked = node.handover_requests
        handover_requests = CounterMetricFamily(
            "notifier_handover_requests",
            "Control-plane requests sent to take sessions over from other instances, by command kind (a batch "
            "counts once)",
            labels=["kind"],
        )
        handover_sessions = CounterMetricFamily(
            "notifier_handover_sessions_asked",
            "Sessions those requests asked for, by command kind (divided by the requests: sessions per round trip)",
            labels=["kind"],
        )
        for kind in HANDOVER_KINDS:  # each from zero, so a rate over them is there from the start
            handover_requests.add_metric([kind], requests_sent.get(kind, 0))
            if kind != WHERE:
                handover_sessions.add_metric([kind], sessions_asked.get(kind, 0))
        yield handover_requests
        yield handover_sessions
        published = CounterMetricFamily(
            "notifier_publish_requests", "POST /api/publish answers, by HTTP status", labels=["status"]
        )
        for status, count in sorted(stats.publish_results.items()):
            published.add_metric([str(status)], count)
        yield published
        proxied = CounterMetricFamily(
            "notifier_proxy_requests",
            "Requests to the application's connect and subscribe proxies, by result",
            labels=["proxy", "result"],
        )
        for (proxy, result), count in sorted(stats.proxy_requests.items()):
            proxied.add_metric([proxy, result], count)
        yield proxied
        in_flight = GaugeMetricFamily(
            "notifier_proxy_requests_in_flight",
            "Requests to the application's proxies waiting for their answer",
            labels=["proxy"],
        )
        for bounded in (node.proxies.connect, node.proxies.subscribe):
            if bounded is not None:
                in_flight.add_metric([bounded.name], bounded.in_flight)
        yield in_flight
        latency = stats.latency
        yield HistogramMetricFamily(
            "notifier_delivery_latency_seconds",
            "From the publisher's timestamp (timestamp_in_ms header, else AMQP timestamp) to hand-off to clients",
            buckets=latency.cumulative(),
            sum_value=latency.total_s,
        )
        yield HistogramMetricFamily(
            "notifier_event_loop_lag_seconds",
            "How much later than due the event loop ran a probe scheduled every 0.5 s",
            buckets=stats.loop_lag.cumulative(),
            sum_value=stats.loop_lag.total_s,
        )


def build_registry(node: Node) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=True)
    registry.register(NodeCollector(node))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
