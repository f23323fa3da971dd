"""`notifier serve` (one instance) stopping as an operator sees it: a real process, a real RabbitMQ."""

from __future__ import annotations

import asyncio
import signal
import time

import aiormq

from tests.support import AMQP_URL, Client, bindings_of
from tests.support_workers import StartService, connect_user, instance_queues

# Enough bindings that RabbitMQ needs well over the 0.5 s the stop waits for it to remove them.
BINDINGS = 6000


async def bind_many(queue: str, exchange: str, count: int) -> None:
    """What thousands of users would have left on the queue, bound straight at RabbitMQ (pipelined)."""
    connection = await aiormq.connect(AMQP_URL)
    try:
        channel = await connection.channel()
        for number in range(count - 1):
            await channel.queue_bind(queue, exchange, routing_key=f"user.many{number}", nowait=True)
        await channel.queue_bind(queue, exchange, routing_key="user.last")  # answered after all the others
    finally:
        await connection.close()


async def test_a_stopping_instance_leaves_at_once_and_rabbitmq_then_drops_its_queue_and_bindings(
    start_service: StartService,
) -> None:
    service = await start_service("--workers", "1", NOTIFIER_SHUTDOWN_TIMEOUT_S="10")
    (queue,) = await service.wait_for_queues(1)
    opened: list[Client] = []
    client = await connect_user(service, "leaving", opened)
    await bind_many(queue, service.exchange, BINDINGS)
    assert len((await asyncio.to_thread(bindings_of, service.exchange))[queue]) > BINDINGS

    stop_requested = time.monotonic()
    service.process.send_signal(signal.SIGTERM)
    await client.expect_close(1012, timeout=5)
    exit_code = await service.process.wait(10)
    stopped_in = time.monotonic() - stop_requested
    assert exit_code == 0, service.process.logs()
    # It sent the delete and left, without waiting out RabbitMQ's removal of every binding.
    assert stopped_in < 4, stopped_in
    events = [entry["event"] for entry in service.log()]
    assert "broker_queue_delete_sent" in events
    assert events[-1] == f"Finished server process [{service.process.pid}]"  # its log was written out whole

    # RabbitMQ finishes the deletion on its own.
    deadline = time.monotonic() + 30
    while queue in await asyncio.to_thread(instance_queues, service.exchange):
        assert time.monotonic() < deadline, "the queue outlived its instance"
        await asyncio.sleep(0.5)
    assert queue not in await asyncio.to_thread(bindings_of, service.exchange)
