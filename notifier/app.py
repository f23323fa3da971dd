"""`create_app(settings)`: builds one instance's whole service; no module-level state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from notifier.admission import AdmissionGate
from notifier.broker import Broker
from notifier.errors import install_error_handlers
from notifier.metrics import build_registry
from notifier.metrics_port import MetricsEndpoint
from notifier.node import Node
from notifier.routes import demo, health, metrics, publish, websocket
from notifier.settings import Settings
from notifier.wire import CaptureRawSend


def create_app(settings: Settings, broker: Broker | None = None, *, dev: bool = False) -> FastAPI:
    """Build the ASGI app; the broker connects when the app starts and drains when it stops.

    `dev` adds the development-only routes of `notifier dev` (never on in `notifier serve`).
    """
    node = Node(settings, broker)

    registry = build_registry(node)
    metrics_endpoint = (
        MetricsEndpoint(settings.host, settings.metrics_port, registry) if settings.metrics_port else None
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if metrics_endpoint is not None:
            await metrics_endpoint.start()
        await node.start()
        try:
            yield
        finally:
            await node.stop()
            if metrics_endpoint is not None:
                await metrics_endpoint.stop()

    app = FastAPI(title="notifier", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.node = node
    app.state.metrics_registry = registry
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(publish.router)
    app.include_router(websocket.router)
    app.include_router(demo.build_router(settings, dev=dev))
    app.mount("/static", demo.static_files(settings), name="static")
    app.state.dev = dev
    app.add_middleware(CaptureRawSend)
    app.add_middleware(AdmissionGate, settings=settings, authenticated=lambda: node.authenticated_connections)
    return app
