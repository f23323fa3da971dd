"""The HTTP stream transport (docs/protocol.md "Browser side (HTTP stream)"), for pages behind networks that
block WebSockets: `GET /sse` opens a stream, `POST /sse/<key>` sends it a client frame, `DELETE /sse/<key>`
says goodbye, `OPTIONS` answers CORS preflights.

`GET /sse` is served as plain ASGI in front of the FastAPI app, as `/ws` is (notifier/http/routes/websocket.py
says why): a stream's request lasts as long as the stream. It passes the same origin check and admission gate
as a WebSocket; the node serves it (`Node.serve_stream`). The commands are ordinary routes.
"""

from __future__ import annotations

import structlog
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import Headers, QueryParams
from starlette.types import ASGIApp, Receive, Scope, Send

from notifier.connection.stream import send_json
from notifier.formats import closecodes, sse
from notifier.http.bodies import RequestBodies
from notifier.http.errors import ApiError
from notifier.http.stream_commands import Result, StreamCommands
from notifier.instance.node import Node
from notifier.limits.gate import AdmissionGate, client_address

log = structlog.get_logger("notifier.http")

STREAM_PATH = "/sse"
# A preflight's answer may be reused this long by the browser.
PREFLIGHT_MAX_AGE_S = 600

router = APIRouter(include_in_schema=False)

_ORIGIN_REFUSED = {
    "error": "origin_not_allowed",
    "message": "this Origin is neither the server's own nor on NOTIFIER_ALLOWED_ORIGINS",
}


def cors_headers(origin: str | None) -> list[tuple[bytes, bytes]]:
    """What lets an allowed page of another origin read the answer (with its credentials); none without Origin."""
    if origin is None:
        return []
    return [
        (b"access-control-allow-origin", origin.encode()),
        (b"access-control-allow-credentials", b"true"),
        (b"vary", b"Origin"),
    ]


def _allowed_origin(node: Node, headers: Headers) -> tuple[bool, str | None]:
    """Whether the request's Origin may use the streams, and that Origin (None: not a browser page)."""
    origin = headers.get("origin")
    if origin is not None and not (origin.isascii() and origin.isprintable()):
        return False, origin  # nothing a browser sends; and it could not be echoed in a header
    return node.origins.allows(origin, headers.get("host")), origin


def _bearer_token(value: str | None) -> str | None:
    if value is None:
        return None
    scheme, _, token = value.strip().partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def stream_endpoint(node: Node, gate: AdmissionGate) -> ASGIApp:
    """The ASGI app serving `GET /sse` with `node`, behind `gate`."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        headers = Headers(scope=scope)
        allowed, origin = _allowed_origin(node, headers)
        if not allowed:
            log.info("origin_refused", origin=origin[:200] if origin else None, transport="sse")
            await send_json(send, 403, _ORIGIN_REFUSED)
            return
        cors = cors_headers(origin)
        query = QueryParams(scope.get("query_string", b""))
        # The header wins: EventSource sends the newest one on each reconnect, the URL keeps the first.
        point = headers.get("last-event-id") if "last-event-id" in headers else query.get("last_event_id")
        resume = None
        if point is not None:
            try:
                resume = sse.parse_resume_point(point)
            except sse.BadResumePoint as bad:
                code = closecodes.PROTOCOL_VIOLATION.code
                body = {"error": "bad_request", "code": code, "message": f"Last-Event-ID: {bad}"}
                await send_json(send, 400, body, cors)
                return
        token = _bearer_token(headers.get("authorization"))
        if token is None:
            token = query.get("token")
        address = client_address(scope)
        refusal = gate.admit(address, signs_in_at_once=token is not None, transport="sse")
        if refusal is not None:
            retry = (b"retry-after", str(sse.RETRY_AFTER_S).encode())
            await send_json(send, refusal.status, {"error": refusal.error, "message": refusal.message}, [*cors, retry])
            return
        try:
            await node.serve_stream(scope, receive, send, token=token, resume=resume, headers=cors)
        finally:
            gate.leave(address)

    return serve


# The commands.


def _answer(status: int, body: object | None, cors: list[tuple[bytes, bytes]], **headers: str) -> Response:
    extra = {name.decode(): value.decode() for name, value in cors} | headers
    if body is None:
        return Response(status_code=status, headers=extra)
    return JSONResponse(body, status_code=status, headers=extra)


def _refused_origin(request: Request) -> tuple[Response | None, list[tuple[bytes, bytes]]]:
    allowed, origin = _allowed_origin(request.app.state.node, request.headers)
    if not allowed:
        return JSONResponse(_ORIGIN_REFUSED, status_code=403), []
    return None, cors_headers(origin)


_NOT_TAKEN: dict[Result, tuple[int, str, str]] = {
    "unknown_stream": (404, "unknown_stream", "no open stream has this key: reconnect the stream"),
    "too_big": (413, "frame_too_big", "the frame is over NOTIFIER_MAX_FRAME_BYTES; the stream stays open"),
    "rate_limited": (429, "rate_limited", "over NOTIFIER_CLIENT_FRAMES_PER_S: the stream is closed with 4004"),
    "unavailable": (503, "unavailable", "the instance holding the stream did not answer in time; retry"),
}


def _not_taken(result: Result, cors: list[tuple[bytes, bytes]]) -> Response:
    status, error, message = _NOT_TAKEN[result]
    headers = {"Retry-After": str(sse.RETRY_AFTER_S)} if status == 503 else {}
    return _answer(status, {"error": error, "message": message}, cors, **headers)


@router.post(STREAM_PATH + "/{key}")
async def stream_command(key: str, request: Request) -> Response:
    """One client frame of the WebSocket protocol for the stream `key`; its answer comes on the stream."""
    refused, cors = _refused_origin(request)
    if refused is not None:
        return refused
    commands: StreamCommands = request.app.state.stream_commands
    bodies: RequestBodies = request.app.state.bodies
    limit = request.app.state.node.settings.max_frame_bytes
    try:
        async with bodies.read(request, limit) as body:
            frame = body
    except ApiError as error:
        if error.status == 413:  # the session never sees it: the stream stays
            request.app.state.node.stats.stream_commands["too_big"] += 1
            return _not_taken("too_big", cors)
        headers = {name.decode(): value.decode() for name, value in cors} | (error.headers or {})
        return JSONResponse({"error": error.code, "message": error.message}, error.status, headers=headers)
    result = await commands.send_frame(key, frame)
    if result == "accepted":
        return _answer(202, {"accepted": True}, cors)
    return _not_taken(result, cors)


@router.delete(STREAM_PATH + "/{key}")
async def end_stream(key: str, request: Request) -> Response:
    """The client's goodbye: the stream's session ends as after a WebSocket close 1000 (not parked)."""
    refused, cors = _refused_origin(request)
    if refused is not None:
        return refused
    commands: StreamCommands = request.app.state.stream_commands
    result = await commands.say_goodbye(key)
    if result == "accepted":
        return _answer(204, None, cors)
    return _not_taken(result, cors)


@router.options(STREAM_PATH + "/{key}")
async def command_preflight(key: str, request: Request) -> Response:
    """CORS preflight of a command: allowed origins only."""
    return _preflight(request, "POST, DELETE", "Content-Type, Authorization")


@router.options(STREAM_PATH)
async def stream_preflight(request: Request) -> Response:
    """CORS preflight of the stream itself (a page that sends its token in `Authorization`, or `Last-Event-ID`)."""
    return _preflight(request, "GET", "Authorization, Last-Event-ID, Cache-Control")


def _preflight(request: Request, methods: str, headers: str) -> Response:
    refused, cors = _refused_origin(request)
    if refused is not None:
        return refused
    return _answer(
        204,
        None,
        cors,
        **{
            "Access-Control-Allow-Methods": methods,
            "Access-Control-Allow-Headers": headers,
            "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
        },
    )
