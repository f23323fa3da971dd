"""The control plane with instances as separate processes: presence stays answered within a second while one
instance hangs (SIGSTOP), counting only those that answered, and commands still reach the others."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from typing import Any

import httpx
import pytest
import websockets

from tests.processes import StartNotifier, notifier_env
from tests.support import API_KEY, free_port, receive_json, token_for, wait_until

pytestmark = pytest.mark.rabbitmq

AUTH = {"Authorization": f"Bearer {API_KEY}"}


async def test_presence_is_bounded_while_an_instance_hangs(exchange: str, start_notifier: StartNotifier) -> None:
    ports = [free_port() for _ in range(3)]
    async with contextlib.AsyncExitStack() as stack:
        processes = []
        for n, port in enumerate(ports):
            env = notifier_env(port, exchange, NOTIFIER_INSTANCE_ID=f"p{n}")
            processes.append(await start_notifier("serve", env=env, port=port))
        http = await stack.enter_async_context(
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports[0]}", timeout=5, headers=AUTH)
        )

        async def alice_on(port: int) -> Any:
            ws = await stack.enter_async_context(
                websockets.connect(f"ws://127.0.0.1:{port}/ws?token={token_for('alice')}")
            )
            assert (await receive_json(ws))["type"] == "welcome"
            return ws

        on_hanging, on_healthy = await alice_on(ports[1]), await alice_on(ports[2])

        async def presence() -> tuple[dict[str, Any], float]:
            started = time.monotonic()
            response = await http.get("/api/presence", params={"user": "alice"})
            assert response.status_code == 200, response.text
            return response.json(), time.monotonic() - started

        async def all_three_answer() -> bool:
            return bool((await presence())[0]["instances"] == 3)

        await wait_until(all_three_answer, 10, interval=0.2)
        answer, _ = await presence()
        assert answer == {"user": "alice", "online": True, "connections": 2, "instances": 3}

        processes[1].send_signal(signal.SIGSTOP)
        try:
            # Right after the hang the others still expect it: the answer waits for the bound, never longer.
            for _ in range(3):
                answer, elapsed = await presence()
                assert elapsed < 1.0, elapsed
                assert answer == {"user": "alice", "online": True, "connections": 1, "instances": 2}
            # Commands still reach the instances that run.
            response = await http.post("/api/disconnect", json={"user": "alice"})
            assert response.status_code == 202
            with contextlib.suppress(websockets.ConnectionClosed):
                await asyncio.wait_for(on_healthy.recv(), 2)
            assert on_healthy.close_code == 4503
        finally:
            processes[1].send_signal(signal.SIGCONT)

        # Back from the hang: the disconnect that waited in its queue is still within its time to live.
        with contextlib.suppress(websockets.ConnectionClosed):
            await asyncio.wait_for(on_hanging.recv(), 5)
        assert on_hanging.close_code == 4503
        await wait_until(all_three_answer, 10, interval=0.2)
