"""The Origin allow-list that keeps other sites' pages from opening sockets with a user's credentials."""

from __future__ import annotations

from starlette.responses import JSONResponse
from starlette.websockets import WebSocket


class OriginPolicy:
    """Browsers always send `Origin`; a request without one is not a browser page and cannot be hijacked.

    `*` in the list allows every origin (for development only).
    """

    def __init__(self, allowed: list[str]) -> None:
        self._allow_all = "*" in allowed
        self._allowed = frozenset(origin.rstrip("/").lower() for origin in allowed)

    def allows(self, origin: str | None) -> bool:
        if origin is None or self._allow_all:
            return True
        return origin.rstrip("/").lower() in self._allowed

    async def refuse(self, websocket: WebSocket) -> None:
        """Answer the handshake with HTTP 403 and a JSON body saying why."""
        body = {"error": "origin_not_allowed", "message": "this Origin is not on NOTIFIER_ALLOWED_ORIGINS"}
        if "websocket.http.response" in websocket.scope.get("extensions", {}):
            await websocket.send_denial_response(JSONResponse(body, status_code=403))
        else:
            await websocket.close(code=1008)
