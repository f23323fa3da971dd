"""How many binds and unbinds per second RabbitMQ takes from 1, 2 and 4 instances at once: the fleet-wide
ceiling of a reconnect storm. Each instance is a process running notifier's own AMQP broker code (pipelined
binds, one unbind channel) on its own queue; every instance binds then unbinds its share of distinct topics.

    .venv/bin/python -m bench.bindrate                       # 1, 2, 4 instances, 4,000 binds each round
    .venv/bin/python -m bench.bindrate --instances 1,2 --binds 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import secrets
import sys
import time
from pathlib import Path
from typing import Any

from bench.run import RESULTS_DIR, cleanup_amqp, machine
from bench.systems import AMQP_URL


def instance_main(conn: Any, exchange: str, index: int, topics: list[str]) -> None:
    conn.send(asyncio.run(_instance(conn, exchange, index, topics)))


async def _instance(conn: Any, exchange: str, index: int, topics: list[str]) -> dict[str, Any]:
    from notifier.broker.amqp import AmqpBroker
    from notifier.settings import Settings

    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        amqp_url=AMQP_URL,
        exchange=exchange,
        dead_letter_exchange=f"{exchange}.dead",
        instance_id=f"bindrate{index}",
        queue_expires_s=30,
        bind_linger_s=0,
        bind_wait_s=600,
        bind_queue_size=len(topics) + 1,
    )
    broker = AmqpBroker(settings)
    await broker.connect(lambda event: None)
    conn.send("ready")
    conn.recv()  # everyone starts together
    started = time.perf_counter()
    await asyncio.gather(*(broker.bind(topic) for topic in topics))
    bind_s = time.perf_counter() - started
    started = time.perf_counter()
    for topic in topics:
        await broker.unbind(topic)
    while broker.bindings.maybe_bound:
        await asyncio.sleep(0.01)
    unbind_s = time.perf_counter() - started
    await broker.close()
    return {"binds": len(topics), "bind_s": bind_s, "unbind_s": unbind_s, "queue": broker.queue_name}


def measure(instances: int, binds: int) -> dict[str, Any]:
    exchange = f"bench.bindrate.{secrets.token_hex(4)}"
    context = multiprocessing.get_context("spawn")
    share = binds // instances
    pipes, processes = [], []
    for index in range(instances):
        parent, child = context.Pipe()
        topics = [f"user.b{index}x{number}" for number in range(share)]
        process = context.Process(target=instance_main, args=(child, exchange, index, topics), daemon=True)
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        for pipe in pipes:
            assert pipe.recv() == "ready"
        for pipe in pipes:
            pipe.send("go")
        answers = [pipe.recv() for pipe in pipes]
    finally:
        for process in processes:
            process.join(30)
            if process.is_alive():
                process.kill()
    cleanup_amqp(exchange, [answer["queue"] for answer in answers] if "answers" in locals() else [])
    bind_s = max(answer["bind_s"] for answer in answers)
    unbind_s = max(answer["unbind_s"] for answer in answers)
    total = share * instances
    return {
        "instances": instances,
        "binds": total,
        "binds_per_s": round(total / bind_s),
        "unbinds_per_s": round(total / unbind_s),
        "per_instance_binds_per_s": round(total / bind_s / instances),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bindrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--instances", default="1,2,4", help="comma list of instance counts")
    parser.add_argument("--binds", type=int, default=4000, help="distinct topics bound per round, over all instances")
    parser.add_argument("--repeat", type=int, default=2, help="rounds per instance count; the best is reported")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "bindrate.json")
    args = parser.parse_args(argv)
    rows = []
    for instances in (int(item) for item in args.instances.split(",")):
        rounds = [measure(instances, args.binds) for _ in range(args.repeat)]
        best = dict(max(rounds, key=lambda row: row["binds_per_s"]))
        best["rounds"] = rounds
        rows.append(best)
        print(
            f"{instances} instance(s): {best['binds_per_s']} binds/s, {best['unbinds_per_s']} unbinds/s "
            f"(rounds: {[row['binds_per_s'] for row in rounds]})",
            file=sys.stderr,
        )
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
