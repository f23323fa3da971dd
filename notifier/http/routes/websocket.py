"""The client endpoint `/ws`, served as plain ASGI in front of the FastAPI app (and `GET /sse`, the HTTP stream,
the same way: notifier/http/routes/stream.py).

A WebSocket's ASGI call lasts as long as the connection, and everything on its call stack lives that long too:
FastAPI's middleware, router and dependency layers would keep a dozen coroutine frames, three exit stacks and
a copy of the scope for every idle client. Here the only layers are the admission gate and the node's serve.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from notifier.connection.senders import RAW_SEND_SCOPE_KEY
from notifier.http.routes.stream import STREAM_PATH
from notifier.instance.node import Node

WEBSOCKET_PATH = "/ws"


def route_path(scope: Scope) -> str:
    """The request's path below the app's root path."""
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        return path[len(root_path) :]
    return path


def websocket_endpoint(node: Node) -> ASGIApp:
    """The ASGI app serving one client WebSocket with `node`."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        # Nothing wraps `send` here: it is the server's own, which the fast write path looks for.
        scope[RAW_SEND_SCOPE_KEY] = send
        await node.serve(WebSocket(scope, receive, send))

    return serve


class NotifierApp(FastAPI):
    """The FastAPI app, with `/ws` WebSockets handed straight to `websocket_entry` and `GET /sse` HTTP streams to
    `stream_entry` (see the module docstring)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.websocket_entry: ASGIApp | None = None
        self.stream_entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            entry = self.websocket_entry
            path = WEBSOCKET_PATH
        else:
            entry = self.stream_entry if kind == "http" and scope["method"] == "GET" else None
            path = STREAM_PATH
        if entry is not None and route_path(scope) == path:
            await entry(scope, receive, send)
            return
        await super().__call__(scope, receive, send)
