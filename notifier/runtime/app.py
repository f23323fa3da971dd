"""`create_app(settings)`: builds one instance's whole service; no module-level state."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from notifier import __version__
from notifier.broker import Broker
from notifier.cluster.control import create_control_plane
from notifier.http import commands
from notifier.http.bodies import RequestBodies
from notifier.http.errors import install_error_handlers
from notifier.http.publisher import EventPublisher
from notifier.http.routes import demo, docs, health, metrics, publish, server_api, stream
from notifier.http.routes.websocket import NotifierApp, websocket_endpoint
from notifier.http.stream_commands import StreamCommands
from notifier.instance.node import Node
from notifier.limits.gate import AdmissionGate
from notifier.logs import configure_logging
from notifier.observability.group_metrics import scrape_registry
from notifier.observability.metrics import build_registry
from notifier.observability.metrics_port import MetricsEndpoint
from notifier.runtime.asyncio_signals import drain_before_server_stops
from notifier.settings import Settings


def create_app(
    settings: Settings | None = None,
    broker: Broker | None = None,
    *,
    dev: bool = False,
    metrics_dir: Path | None = None,
) -> FastAPI:
    """Build the ASGI app; the broker connects when the app starts and drains when it stops.

    With no `settings` they are read from the NOTIFIER_* environment and logging is set up from them, so any
    ASGI server can build the app itself: `uvicorn --factory notifier.app:create_app`.

    `dev` adds the development-only routes of `notifier dev` (never on in `notifier serve`). `metrics_dir` is
    the supervisor's shared directory when this app is one of several workers: `/metrics` then reports them all.
    """
    # Built by an ASGI server from the environment (not by `notifier serve`): that server stops on its own terms.
    foreign_server = settings is None
    if settings is None:
        settings = settings_from_environment()
    node = Node(settings, broker)
    # The control plane rides on the broker's connection and acts on the node's connections.
    control = create_control_plane(settings, node.broker)
    commands.install(control, node)
    if not settings.uses_memory_broker:  # with one in-process instance there is nobody to hand sessions to
        node.attach_control(control)

    registry, group = scrape_registry(build_registry(node), metrics_dir)
    metrics_endpoint = (
        MetricsEndpoint(settings.host, settings.metrics_port, registry) if settings.metrics_port else None
    )

    bodies = RequestBodies(settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if metrics_endpoint is not None:
            await metrics_endpoint.start()
        await node.start()
        await control.start()
        await bodies.start()
        publisher = asyncio.create_task(group.publish_forever()) if group is not None else None
        undo_signals = drain_before_server_stops(node.drain) if foreign_server else None
        try:
            yield
        finally:
            if undo_signals is not None:
                undo_signals()
            if publisher is not None:
                publisher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await publisher
            await control.stop()
            await node.stop()
            await bodies.close()
            if metrics_endpoint is not None:
                await metrics_endpoint.stop()

    app = NotifierApp(title="notifier", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.node = node
    app.state.control = control
    app.state.publisher = EventPublisher(node.broker, settings)
    app.state.bodies = bodies
    app.state.metrics_registry = registry
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
    app.include_router(demo.build_router(settings, dev=dev))
    app.mount("/static", demo.static_files(settings), name="static")
    app.state.dev = dev
    gate = AdmissionGate(
        websocket_endpoint(node), settings=settings, authenticated=lambda: node.admission.authenticated
    )
    app.websocket_entry = gate
    if settings.sse_enabled:  # else /sse and /sse/<key> are not routes: 404
        app.stream_entry = stream.stream_endpoint(node, gate)
        app.state.stream_commands = StreamCommands(node, control)
        app.include_router(stream.router)
    return app


def settings_from_environment() -> Settings:
    """NOTIFIER_* settings for an app an ASGI server builds; a server cannot start without a token key."""
    settings = Settings()
    settings.require_token_key()
    configure_logging(settings.log_format, settings.log_level)
    return settings
