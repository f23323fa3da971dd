"""`GET /metrics` on an internal port of its own (NOTIFIER_METRICS_PORT), so the port browsers reach need not
expose it. A deliberately tiny HTTP server: one request per connection, its head bounded in size and time."""

from __future__ import annotations

import asyncio
import contextlib

import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

from notifier.observability.metrics import render

log = structlog.get_logger("notifier.metrics_port")

REQUEST_HEAD_LIMIT = 8 * 1024
REQUEST_TIMEOUT_S = 5.0


class MetricsEndpoint:
    """Serves the registry's Prometheus exposition at `/metrics` on `host:port`; anything else is a JSON 404."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry) -> None:
        self._host = host
        self._port = port
        self._registry = registry
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self._host, self._port, limit=REQUEST_HEAD_LIMIT)
        log.info("metrics_listening", host=self._host, port=self._port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 1.0)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"GET" and path == b"/metrics":
                self._respond(writer, b"200 OK", CONTENT_TYPE_LATEST, render(self._registry))
            else:
                body = orjson.dumps({"error": "not_found", "message": "only GET /metrics is served here"})
                self._respond(writer, b"404 Not Found", "application/json", body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass  # a client that does not send a request in time, or too much of one, is hung up on
        finally:
            writer.close()

    @staticmethod
    def _respond(writer: asyncio.StreamWriter, status: bytes, content_type: str, body: bytes) -> None:
        head = (
            b"HTTP/1.1 "
            + status
            + b"\r\nContent-Type: "
            + content_type.encode()
            + b"\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n"
        )
        writer.write(head + body)
