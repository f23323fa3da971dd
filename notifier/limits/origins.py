"""The Origin check that keeps other sites' pages from opening sockets with a user's credentials."""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket


def same_origin(origin: str, host: str | None) -> bool:
    """True when the page's Origin names the host (and port) the request was sent to, as `Host` says."""
    if not host:
        return False
    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(netloc) and netloc.lower() == host.strip().lower()


class OriginPolicy:
    """Which pages may open a socket: a page served from the same host and port as the socket (its Origin's
    host equals the request's `Host`), and pages from the origins listed in NOTIFIER_ALLOWED_ORIGINS.

    Browsers always send `Origin`; a request without one is not a browser page and cannot be hijacked.
    `*` in the list allows every origin (for development only).
    """

    def __init__(self, allowed: list[str]) -> None:
        self._allow_all = "*" in allowed
        self._allowed = frozenset(origin.rstrip("/").lower() for origin in allowed)

    def allows(self, origin: str | None, host: str | None = None) -> bool:
        if origin is None or self._allow_all:
            return True
        return origin.rstrip("/").lower() in self._allowed or same_origin(origin, host)

    async def refuse(self, websocket: WebSocket) -> None:
        """Answer the handshake with HTTP 403 and a JSON body saying why."""
        body = {
            "error": "origin_not_allowed",
            "message": "this Origin is neither the server's own nor on NOTIFIER_ALLOWED_ORIGINS",
        }
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(body, status_code=403))
        else:
            await websocket.close(code=1008)
