from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.exceptions import HTTPException

from notifier.observability.metrics import render

router = APIRouter()


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    """Prometheus exposition of this instance's metrics (see docs/metrics.md); on NOTIFIER_METRICS_PORT instead
    when that is set."""
    if request.app.state.node.settings.metrics_port:
        raise HTTPException(status_code=404)
    return Response(render(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST)
