"""`create_app(settings)`: builds one instance's whole service; no module-level state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from notifier import __version__, commands
from notifier.broker import Broker
from notifier.control import create_control_plane
from notifier.errors import install_error_handlers
from notifier.metrics import build_registry
from notifier.node import Node
from notifier.publisher import EventPublisher
from notifier.routes import demo, docs, health, metrics, publish, server_api, websocket
from notifier.senders import CaptureRawSend
from notifier.settings import Settings


def create_app(settings: Settings, broker: Broker | None = None, *, dev: bool = False) -> FastAPI:
    """Build the ASGI app; the broker connects when the app starts and drains when it stops.

    `dev` adds the development-only routes of `notifier dev` (never on in `notifier serve`).
    """
    node = Node(settings, broker)
    # The control plane rides on the broker's connection and acts on the node's connections.
    control = create_control_plane(settings, node.broker)
    commands.install(control, node)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await node.start()
        await control.start()
        try:
            yield
        finally:
            await control.stop()
            await node.stop()

    app = FastAPI(title="notifier", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.node = node
    app.state.control = control
    app.state.publisher = EventPublisher(node.broker, settings)
    app.state.metrics_registry = build_registry(node)
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(publish.router)
    app.include_router(server_api.router)
    docs_router, docs_assets = docs.build_router()
    app.include_router(docs_router)
    if docs_assets is not None:
        app.mount(docs.ASSETS_PATH, docs_assets, name="docs-assets")
    docs.install_openapi(app)
    app.include_router(websocket.router)
    app.include_router(demo.build_router(settings, dev=dev))
    app.mount("/static", demo.static_files(settings), name="static")
    app.state.dev = dev
    app.add_middleware(CaptureRawSend)
    return app
