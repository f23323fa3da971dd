"""The running service of one instance: wires broker, hub, token verifier and sessions, and owns
their start, connection limits and graceful drain."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Coroutine
from typing import Any

import structlog
from starlette.websockets import WebSocket

from notifier import closecodes
from notifier.auth import TokenVerifier
from notifier.broker import Broker, create_broker
from notifier.hub import Hub
from notifier.origins import OriginPolicy
from notifier.session import Session
from notifier.settings import Settings

log = structlog.get_logger("notifier.node")

BROKER_RETRY_MAX_S = 10.0


class Node:
    """Everything one instance runs; built by `create_app`, started and stopped by its lifespan."""

    def __init__(self, settings: Settings, broker: Broker | None = None) -> None:
        self.settings = settings
        self.broker = broker or create_broker(settings)
        self.hub = Hub(self.broker)
        self.verifier = TokenVerifier(settings)
        self.origins = OriginPolicy(settings.allowed_origins)
        self.sessions: set[Session] = set()
        self.closes_by_code: Counter[int] = Counter()
        self.publish_results: Counter[int] = Counter()
        self.frames_dropped = 0
        self._connections_per_user: Counter[str] = Counter()
        self._accepting = True
        self._connect_task: asyncio.Task[None] | None = None
        self._stop_deadline = 0.0

    @property
    def ready(self) -> bool:
        return self._accepting and self.broker.ready

    async def start(self) -> None:
        """Connect to the broker; if it is not reachable yet, keep trying in the background (not ready)."""
        try:
            await self.broker.connect(self.hub.deliver)
        except Exception as error:  # noqa: BLE001 - any failure to connect is retried, and logged
            log.warning("broker_connect_failed", error=repr(error))
            self._connect_task = asyncio.create_task(self._connect_until_up())

    async def _connect_until_up(self) -> None:
        delay = 0.5
        while True:
            await asyncio.sleep(delay)
            try:
                await self.broker.connect(self.hub.deliver)
                return
            except Exception as error:  # noqa: BLE001
                log.warning("broker_connect_failed", error=repr(error), retry_in_s=delay)
                delay = min(delay * 2, BROKER_RETRY_MAX_S)

    async def drain(self) -> None:
        """Graceful stop: take no new events or clients, flush what was handed off, close clients with 1012.

        The whole stop, `stop()`'s broker close included, fits in NOTIFIER_SHUTDOWN_TIMEOUT_S.
        """
        if not self._accepting:
            return
        self._accepting = False
        self._stop_deadline = time.monotonic() + self.settings.shutdown_timeout_s
        if self._connect_task is not None:
            self._connect_task.cancel()
        await self._within_deadline(self.broker.stop_consuming(), "stop_consuming")
        log.info("draining", connections=len(self.sessions))
        for session in tuple(self.sessions):
            session.close(closecodes.SHUTDOWN)
        # Keep a moment of the budget for closing the broker connection.
        flush_deadline = self._stop_deadline - min(1.0, self.settings.shutdown_timeout_s / 4)
        while self.sessions and time.monotonic() < flush_deadline:
            await asyncio.sleep(0.05)
        if self.sessions:
            log.warning("drain_timeout", connections=len(self.sessions))

    async def stop(self) -> None:
        await self.drain()
        await self._within_deadline(self.broker.close(), "broker_close")

    async def _within_deadline(self, step: Coroutine[Any, Any, None], name: str) -> None:
        remaining = max(0.1, self._stop_deadline - time.monotonic())
        try:
            await asyncio.wait_for(step, remaining)
        except TimeoutError:
            log.warning("shutdown_step_timed_out", step=name)

    # Connections.

    async def serve(self, websocket: WebSocket) -> None:
        """Serve one WebSocket from handshake to close."""
        origin = websocket.headers.get("origin")
        if not self.origins.allows(origin):
            log.info("origin_refused", origin=origin[:200] if origin else None)
            await self.origins.refuse(websocket)
            return
        if not self._accepting:
            await websocket.accept()
            await websocket.close(closecodes.SHUTDOWN.code, closecodes.SHUTDOWN.reason)
            return
        await websocket.accept()
        session = Session(self, websocket)
        self.sessions.add(session)
        await session.run(websocket.query_params.get("token"))

    def at_capacity(self) -> bool:
        return len(self.sessions) > self.settings.max_connections

    def admit_user(self, user: str) -> bool:
        """Count one more connection for `user`, unless that would pass the per-user limit."""
        if self._connections_per_user[user] >= self.settings.max_connections_per_user:
            return False
        self._connections_per_user[user] += 1
        return True

    async def forget(self, session: Session) -> None:
        """Release everything a finished session held.

        The connection stops counting against its user and the connection limit first: its unbinds may wait
        for the broker, and a user who comes straight back must not be refused for a connection that is gone.
        """
        if session.identity is not None:
            user = session.identity.user
            self._connections_per_user[user] -= 1
            if self._connections_per_user[user] <= 0:
                del self._connections_per_user[user]
        self.sessions.discard(session)
        for topic in tuple(session.topics):
            await self.hub.unsubscribe(session, topic)
        session.topics.clear()
