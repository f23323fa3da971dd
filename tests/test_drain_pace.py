"""SIGTERM's close of every client, paced while another instance can take them: clients reach the others at a
pace those can sign them in, rather than all in the same second (NOTIFIER_DRAIN_CLOSE_RATE)."""

from __future__ import annotations

import asyncio
import time

import pytest

from notifier.formats import closecodes
from tests.support import Client, ConnectClient, RunningServer, StartServer, wait_until

pytestmark = pytest.mark.rabbitmq

CLIENTS = 100


async def close_times(clients: list[Client]) -> list[float]:
    """When each client saw its connection closed (monotonic), once all were; each must have got 1012."""

    async def closed(client: Client) -> float:
        await client.ws.wait_closed()
        assert client.ws.close_code == closecodes.SHUTDOWN.code, client.ws.close_code
        return time.monotonic()

    return sorted(await asyncio.wait_for(asyncio.gather(*(closed(client) for client in clients)), 20))


async def clients_of(running: RunningServer, connect: ConnectClient) -> list[Client]:
    return [await connect(running, f"pace{n}") for n in range(CLIENTS)]


async def stop_beside_a_peer(start_server: StartServer, connect: ConnectClient, **settings: float) -> list[float]:
    """Stop an instance with these settings, holding CLIENTS clients, while a peer is alive; the close times."""
    leaving = await start_server(**settings)
    peer = await start_server()
    await wait_until(lambda: peer.node.ready and leaving.node._hand_over.others_alive(), 5)  # type: ignore[union-attr]
    clients = await clients_of(leaving, connect)
    stopping = asyncio.create_task(leaving.stop())
    times = await close_times(clients)
    await stopping
    return times


async def test_with_a_peer_alive_the_closes_are_spread_at_the_close_rate(
    start_server: StartServer, connect: ConnectClient
) -> None:
    times = await stop_beside_a_peer(start_server, connect, drain_close_rate=100, shutdown_timeout_s=8)
    # 100 at 100 a second: about one second from the first close to the last, in slices every 50 ms.
    assert times[-1] - times[0] >= 0.8, times[-1] - times[0]
    assert times[CLIENTS // 2] - times[0] >= 0.35  # spread, not a burst at either end


async def test_the_rate_is_raised_to_close_everyone_within_70_percent_of_the_shutdown_timeout(
    start_server: StartServer, connect: ConnectClient
) -> None:
    times = await stop_beside_a_peer(start_server, connect, drain_close_rate=10, shutdown_timeout_s=3)
    # At 10 a second they would take 10 s; all are closed within 70 % of the 3 s timeout (2.1 s), spread over it.
    assert 1.4 <= times[-1] - times[0] < 2.5, times[-1] - times[0]


async def test_with_no_peer_every_client_is_closed_at_once(start_server: StartServer, connect: ConnectClient) -> None:
    alone = await start_server(drain_close_rate=100, shutdown_timeout_s=8)
    clients = await clients_of(alone, connect)
    stopping = asyncio.create_task(alone.stop())
    times = await close_times(clients)
    await stopping
    # No one to reconnect to: spreading the closes would only delay the stop (paced, they would take 1 s).
    assert times[-1] - times[0] < 0.5, times[-1] - times[0]
