"""`create_app(settings)`: builds one instance's whole service; no module-level state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from notifier.broker import Broker
from notifier.errors import install_error_handlers
from notifier.group_metrics import scrape_registry
from notifier.metrics import build_registry
from notifier.node import Node
from notifier.routes import demo, health, metrics, publish, websocket
from notifier.settings import Settings
from notifier.wire import CaptureRawSend


def create_app(
    settings: Settings, broker: Broker | None = None, *, dev: bool = False, metrics_dir: Path | None = None
) -> FastAPI:
    """Build the ASGI app; the broker connects when the app starts and drains when it stops.

    `dev` adds the development-only routes of `notifier dev` (never on in `notifier serve`). `metrics_dir` is
    the supervisor's shared directory when this app is one of several workers: `/metrics` then reports them all.
    """
    node = Node(settings, broker)
    registry, group = scrape_registry(build_registry(node), metrics_dir)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await node.start()
        publisher = asyncio.create_task(group.publish_forever()) if group is not None else None
        try:
            yield
        finally:
            if publisher is not None:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            await node.stop()

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
    return app
