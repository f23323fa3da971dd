"""Running the app under uvicorn, with our own graceful drain and the open-files limit raised."""

from __future__ import annotations

import gc
import resource
import socket
import time
from pathlib import Path

import structlog
import uvicorn

from notifier.instance.node import Node
from notifier.runtime.app import create_app
from notifier.runtime.uvicorn_protocols import forget_captured_signals, protocol_classes
from notifier.settings import Settings

log = structlog.get_logger("notifier.server")

# New container objects between two collections of the youngest generation (Python's default is 700).
GC_YOUNG_THRESHOLD = 20_000

# File descriptors kept for the broker connection, logs and listening sockets.
RESERVED_FDS = 64


def raise_open_files_limit() -> int:
    """Raise the soft open-files limit to the hard limit; return how many connections that leaves room for."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1_048_576
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as error:
            log.warning("open_files_limit_not_raised", soft=soft, hard=hard, error=str(error))
    return max(0, soft - RESERVED_FDS)


class NotifierServer(uvicorn.Server):
    """uvicorn's server, but on shutdown the node drains first: it stops consuming, flushes what each
    client was handed and closes it with 1012, before uvicorn closes whatever is left."""

    def __init__(self, config: uvicorn.Config, node: Node) -> None:
        super().__init__(config)
        self._node = node

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        started = time.monotonic()
        for server in self.servers:
            server.close()  # no new connections while draining
        await self._node.drain()
        drained = time.monotonic()
        await super().shutdown(sockets)
        log.info(
            "stopped",
            drain_s=round(drained - started, 3),
            server_close_s=round(time.monotonic() - drained, 3),
        )
        # A drained stop is a clean exit: exit 0 instead of uvicorn re-raising the signal (status -15/143).
        forget_captured_signals(self)


def build_server(settings: Settings, *, dev: bool = False, metrics_dir: Path | None = None) -> NotifierServer:
    app = create_app(settings, dev=dev, metrics_dir=metrics_dir)
    http_protocol, websocket_protocol = protocol_classes(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        http=http_protocol,
        ws=websocket_protocol,
        ws_max_size=settings.max_frame_bytes,
        ws_per_message_deflate=False,  # compressing per receiver would undo encoding each event once
        # The client address (for the per-address limits) comes from X-Forwarded-For only behind these.
        proxy_headers=bool(settings.forwarded_allow_ips),
        forwarded_allow_ips=settings.forwarded_allow_ips or None,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Our drain has closed every WebSocket by the time uvicorn waits; this bounds stray HTTP requests.
        timeout_graceful_shutdown=1,
        backlog=settings.listen_backlog,
    )
    return NotifierServer(config, app.state.node)


def serve(
    settings: Settings, *, dev: bool = False, sock: socket.socket | None = None, metrics_dir: Path | None = None
) -> None:
    """Run one instance until SIGTERM or SIGINT; on `sock` if given (already bound and listening), else on
    NOTIFIER_HOST:NOTIFIER_PORT. `metrics_dir`: the workers' shared metrics directory, if a worker."""
    capacity = raise_open_files_limit()
    log.info(
        "starting",
        host=settings.host,
        port=settings.port,
        broker=settings.amqp_url.split("@")[-1] if "@" in settings.amqp_url else settings.amqp_url,
        max_connections=settings.max_connections,
        open_files_capacity=capacity,
    )
    if capacity < settings.max_connections:
        log.warning(
            "open_files_below_max_connections", open_files_capacity=capacity, max_connections=settings.max_connections
        )
    server = build_server(settings, dev=dev, metrics_dir=metrics_dir)
    # Everything built so far lives as long as the process: keep it out of the garbage collector's full passes,
    # which otherwise walk it again and again while thousands of clients connect. And each connect allocates
    # some 150 container objects: at the default threshold (700) the collector would run every few connects.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    server.run(sockets=[sock] if sock is not None else None)
