"""The reference for unicast: aio-pika alone consuming one queue and acking each message, no WebSockets.

It writes its running count to BENCH_STATUS (JSON) so the orchestrator can time it like a server.
Run: python -m bench.baselines.aiopika_consume
"""

from __future__ import annotations

import asyncio
import json
import os
import time

import aio_pika


async def main() -> None:
    status_path = os.environ["BENCH_STATUS"]
    state = {"count": 0, "first_ns": 0, "last_ns": 0}

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        now = time.time_ns()
        if state["count"] == 0:
            state["first_ns"] = now
        state["count"] += 1
        state["last_ns"] = now
        await message.ack()

    connection = await aio_pika.connect_robust(os.environ["BENCH_AMQP"])
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=512)
    exchange = await channel.declare_exchange(os.environ["BENCH_EXCHANGE"], aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    await queue.bind(exchange, routing_key="#")
    await queue.consume(on_message)
    with open(status_path + ".ready", "w") as ready:
        ready.write("1")
    try:
        while True:
            await asyncio.sleep(0.1)
            with open(status_path + ".tmp", "w") as out:
                json.dump(state, out)
            os.replace(status_path + ".tmp", status_path)
    finally:
        await connection.close()


if __name__ == "__main__":
    asyncio.run(main())
