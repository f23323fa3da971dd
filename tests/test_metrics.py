"""`GET /metrics`: drive real traffic, scrape, and check the counters moved by exactly the right amounts."""

from __future__ import annotations

import datetime

import aio_pika
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from notifier.formats import closecodes
from tests.support import API_KEY, ConnectClient, Publisher, RunningServer, StartServer, free_port


async def scrape(running: RunningServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with httpx.AsyncClient(base_url=running.http_url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_metrics_count_traffic(server: RunningServer, connect: ConnectClient, publisher: Publisher) -> None:
    before = await scrape(server)
    assert value(before, "notifier_broker_connected") == 1
    assert value(before, "notifier_connections", transport="websocket") == 0

    clients = [await connect(server, f"u{n}", topics=["room"]) for n in range(3)]
    for client in clients:
        await client.subscribe("room")
    await publisher.publish("room", {"n": 1})
    await publisher.publish("room", {"n": 2})
    stamp = aio_pika.Message(b"3", content_type="application/json", timestamp=datetime.datetime.now(datetime.UTC))
    await publisher.exchange.publish(stamp, routing_key="user.u0")
    await publisher.publish("user.u1", body=b"{broken")
    for client in clients:
        await client.expect_event("room")
        await client.expect_event("room")
    await clients[0].expect_event("user.u0")
    bad = await connect(server)
    await bad.send({"type": "auth", "token": "junk"})
    await bad.expect_close(closecodes.INVALID_TOKEN.code)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        headers = {"Authorization": f"Bearer {API_KEY}"}
        assert (await http.post("/api/publish", json={"topic": "x", "data": 1}, headers=headers)).status_code == 202
        assert (await http.post("/api/publish", json={"topic": "x..", "data": 1}, headers=headers)).status_code == 422

    after = await scrape(server)
    assert value(after, "notifier_connections", transport="websocket") == 3
    assert value(after, "notifier_subscriptions") == 6  # each: personal topic + room
    assert value(after, "notifier_topics_bound") == 4  # user.u0, user.u1, user.u2, room
    assert value(after, "notifier_events_consumed_total") - value(before, "notifier_events_consumed_total") == 3
    assert value(after, "notifier_events_delivered_total") - value(before, "notifier_events_delivered_total") == 7
    assert value(after, "notifier_events_dead_lettered_total") == 1
    labels = {"code": "4500", "reason": "invalid token", "transport": "websocket"}
    assert value(after, "notifier_connections_closed_total", **labels) == 1
    assert value(after, "notifier_publish_requests_total", status="202") == 1
    assert value(after, "notifier_publish_requests_total", status="422") == 1
    assert value(after, "notifier_delivery_latency_seconds_count") == 1  # only the stamped event
    assert value(after, "notifier_delivery_latency_seconds_bucket", le="+Inf") == 1


async def test_slow_client_drop_is_counted(server: RunningServer, connect: ConnectClient) -> None:
    alice = await connect(server, "alice")
    await alice.send({"type": "ping"})
    samples = await scrape(server)
    assert value(samples, "notifier_events_dropped_total") == 0
    assert value(samples, "notifier_broker_reconnects_total") == 0


async def test_dashboard_and_docs_name_only_real_metrics(start_server: StartServer, connect: ConnectClient) -> None:
    import json
    import re
    from pathlib import Path

    # With both proxies configured (their application down), so the proxies' metrics are exposed too.
    nobody = f"http://127.0.0.1:{free_port()}"
    server = await start_server(connect_proxy_url=f"{nobody}/connect", subscribe_proxy_url=f"{nobody}/subscribe")
    client = await connect(server)  # labelled counters appear once they have counted something
    await client.send({"type": "auth", "token": "junk"})
    await client.expect_close(closecodes.INVALID_TOKEN.code)
    proxied = await connect(server)
    await proxied.send({"type": "auth"})
    await proxied.expect_close(closecodes.APPLICATION_UNAVAILABLE.code)
    async with httpx.AsyncClient(base_url=server.http_url) as http:
        assert (await http.post("/api/publish", json={})).status_code == 401
    exposed = {name for name, _ in await scrape(server)}
    families = {re.sub(r"_(bucket|count|sum)$", "", name) for name in exposed}
    dashboard = json.loads(Path("config/grafana-dashboard.json").read_text())
    used = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"notifier_[a-z_]+", target["expr"])
    }
    assert used, "the dashboard queries nothing"
    assert used <= exposed | {f"{family}_bucket" for family in families}, used - exposed
    documented = set(re.findall(r"`(notifier_[a-z_]+)`", Path("docs/metrics.md").read_text()))
    assert documented == families, documented ^ families


async def test_metrics_can_move_to_an_internal_port(start_server: StartServer) -> None:
    metrics_port = free_port()
    running = await start_server(metrics_port=metrics_port)
    async with httpx.AsyncClient() as http:
        public = await http.get(f"{running.http_url}/metrics")
        assert public.status_code == 404
        assert public.json()["error"] == "not_found"
        internal = await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert internal.status_code == 200
        names = {family.name for family in text_string_to_metric_families(internal.text)}
        assert "notifier_connections" in names, names
        other = await http.get(f"http://127.0.0.1:{metrics_port}/readyz")
        assert other.status_code == 404
    await running.stop()
    with pytest.raises(httpx.TransportError):
        async with httpx.AsyncClient() as http:
            await http.get(f"http://127.0.0.1:{metrics_port}/metrics")
