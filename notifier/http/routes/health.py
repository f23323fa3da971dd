from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive and serving HTTP."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    """Ready to take clients: connected to the broker and not shutting down."""
    node = request.app.state.node
    if node.ready:
        return JSONResponse({"status": "ready"})
    return JSONResponse({"status": "unavailable", "broker_connected": node.broker.ready}, status_code=503)
