"""A broker that holds the TCP line open but says nothing: readiness, publishes and logins stay bounded."""

from __future__ import annotations

import asyncio
import time

import httpx

from notifier.formats import closecodes
from tests.faults import CuttableProxy
from tests.support import API_KEY, ConnectClient, StartServer, amqp_url_through, token_for, wait_until

TIMEOUT_S = 3.0


async def test_a_stalled_broker_is_noticed_and_answers_stay_bounded(
    start_server: StartServer, connect: ConnectClient, proxy: CuttableProxy
) -> None:
    running = await start_server(
        amqp_url=amqp_url_through(proxy.port),
        broker_timeout_s=TIMEOUT_S,
        broker_heartbeat_s=1,
        max_pending_publishes=10,
    )
    alice = await connect(running, "alice")
    proxy.stall()
    async with httpx.AsyncClient(base_url=running.http_url, timeout=30) as http:
        messages: list[str] = []

        async def publish(number: int) -> tuple[int, float]:
            started = time.monotonic()
            response = await http.post(
                "/api/publish",
                json={"topic": "user.alice", "data": number},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            messages.append(response.json()["message"])
            return response.status_code, time.monotonic() - started

        # 60 publishes at once: 10 wait for a confirm that never comes, the rest are refused without waiting
        # (before, every one waited the whole broker timeout; the client side of 60 requests costs ~1 s here).
        results = await asyncio.gather(*(publish(number) for number in range(60)))
        durations = sorted(seconds for _, seconds in results)
        assert {status for status, _ in results} == {503}
        # Each answer says what happened: refused unsent for the cap, or sent and not confirmed in time.
        refused = [message for message in messages if "NOTIFIER_MAX_PENDING_PUBLISHES" in message]
        unconfirmed = [message for message in messages if "did not confirm every event in time" in message]
        assert len(refused) >= 50 and len(refused) + len(unconfirmed) == 60, set(messages)
        assert all(message.startswith("not sent: 10 publishes are already waiting") for message in refused)
        assert sum(1 for seconds in durations if seconds < TIMEOUT_S - 0.5) >= 50, durations
        assert durations[-1] < TIMEOUT_S + 1.5, durations

        # A login during the stall is answered within the broker timeout, not after the TCP timeout.
        started = time.monotonic()
        bob = await connect(running)
        await bob.send({"type": "auth", "token": token_for("bob")})
        await bob.expect_close(closecodes.TRY_AGAIN_LATER.code, timeout=10)
        assert time.monotonic() - started < TIMEOUT_S + 1.5

        # Heartbeats notice the silent line: not ready within a few heartbeats.
        await wait_until(lambda: not running.node.ready, timeout=10)
        assert (await http.get("/readyz")).status_code == 503
    assert await alice.request({"type": "ping", "id": 1}) == {"type": "pong", "id": 1}
    proxy.restore()
    await wait_until(lambda: running.node.ready, timeout=20)
