"""The browser client at `/static/notifier.js`, the demo page at `/` (setting `demo_page`), and the routes the
demo page uses in dev mode only: minting a token for any user and publishing an event without an API key."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.exceptions import HTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

from notifier.connection.auth import mint_token
from notifier.formats.grants import validate_patterns, validate_user
from notifier.formats.topics import InvalidTopic
from notifier.http.errors import ApiError
from notifier.http.routes.publish import publish_request, read_json_object
from notifier.limits.origins import same_origin
from notifier.settings import Settings

STATIC_DIR = Path(__file__).resolve().parent.parent.parent / "static"
# Files any frontend may load, from any origin (a module script from another origin needs CORS).
CLIENT_FILES = frozenset({"notifier.js", "notifier.d.ts"})
# The demo page's own files. Nothing else in STATIC_DIR is served: package.json and README.md there make the
# client an npm package, and are no assets of the service.
DEMO_FILES = frozenset({"index.html", "demo.js", "demo.css"})
DEV_TOKEN_TTL_S = (10, 24 * 3600)
TYPESCRIPT_MEDIA_TYPE = "text/plain; charset=utf-8"
BODY_OVERHEAD_BYTES = 1024


class NotifierStatic(StaticFiles):
    """`/static`: the browser client always; the demo page's files only when the demo page is on; nothing else."""

    def __init__(self, *, demo_page: bool) -> None:
        super().__init__(directory=STATIC_DIR)
        self._demo_page = demo_page

    async def get_response(self, path: str, scope: Scope) -> Any:
        if path not in CLIENT_FILES and not (self._demo_page and path in DEMO_FILES):
            raise HTTPException(status_code=404)
        response = await super().get_response(path, scope)
        if path in CLIENT_FILES:
            response.headers["Access-Control-Allow-Origin"] = "*"
        if path.endswith(".d.ts") and response.status_code == 200:
            # The system's MIME table calls .ts a Qt translation or an MPEG stream; these are TypeScript text.
            response.headers["Content-Type"] = TYPESCRIPT_MEDIA_TYPE
        return response


def static_files(settings: Settings) -> StaticFiles:
    return NotifierStatic(demo_page=settings.demo_page)


def build_router(settings: Settings, *, dev: bool) -> APIRouter:
    """The demo page at `/` when `settings.demo_page`; `/dev/token` and `/dev/publish` only when `dev`."""
    router = APIRouter()
    if settings.demo_page:

        @router.get("/", include_in_schema=False)
        async def demo_page() -> FileResponse:
            return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})

        @router.get("/demo/config", include_in_schema=False)
        async def demo_config(request: Request) -> dict[str, bool]:
            """Tells the page whether it can mint tokens itself (dev mode) or needs one pasted in."""
            return {"dev": bool(request.app.state.dev)}

    if dev:
        router.add_api_route("/dev/token", dev_token, methods=["POST"], include_in_schema=False)
        router.add_api_route("/dev/publish", dev_publish, methods=["POST"], status_code=202, include_in_schema=False)
    return router


def refuse_cross_site(request: Request) -> None:
    """The dev routes mint tokens and publish without a key, so only the server's own page may call them.

    A JSON body cannot come from another site without a CORS preflight, which these routes never grant; and a
    browser's `Origin` or `Sec-Fetch-Site` that names another site is refused outright.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "unsupported_media_type", "send the body as Content-Type: application/json")
    origin = request.headers.get("origin")
    if origin is not None and not same_origin(origin, request.headers.get("host")):
        raise ApiError(403, "cross_site", "dev routes answer only the server's own pages")
    if request.headers.get("sec-fetch-site", "same-origin") not in ("same-origin", "none"):
        raise ApiError(403, "cross_site", "dev routes answer only the server's own pages")


async def dev_token(request: Request) -> JSONResponse:
    """Dev mode only: `{"user", "topics"?, "ttl_s"?}` → a token signed with the dev secret."""
    refuse_cross_site(request)
    settings: Settings = request.app.state.node.settings
    payload = await read_json_object(request, 16 * 1024)
    try:
        user = validate_user(payload.get("user"))
    except InvalidTopic as error:
        raise ApiError(422, "bad_request", f"'user': {error}") from None
    topics = payload.get("topics", [])
    if not isinstance(topics, list) or len(topics) > settings.max_token_patterns:
        raise ApiError(422, "bad_request", f"'topics' must be a list of at most {settings.max_token_patterns} patterns")
    try:
        patterns = list(validate_patterns(topics, settings.max_token_patterns))
    except InvalidTopic as error:
        raise ApiError(422, "invalid_topic", f"'topics': {error}") from None
    ttl_s = payload.get("ttl_s", 3600)
    low, high = DEV_TOKEN_TTL_S
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not low <= ttl_s <= high:
        raise ApiError(422, "bad_request", f"'ttl_s' must be a number of seconds from {low} to {high}")
    if not settings.jwt_secret:
        raise ApiError(503, "unavailable", "dev tokens need NOTIFIER_JWT_SECRET (notifier dev generates one)")
    token = mint_token(settings.jwt_secret, user, topics=patterns, ttl_s=ttl_s)
    return JSONResponse({"token": token, "user": user, "topics": patterns, "expires": int(time.time() + ttl_s)})


async def dev_publish(request: Request) -> JSONResponse:
    """Dev mode only: `{"topic", "data"}` published through the broker, as `POST /api/publish` does."""
    refuse_cross_site(request)
    return await publish_request(request, request.app.state.node)
