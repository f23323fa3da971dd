"""`/openapi.json` with the API-key scheme, and the interactive API docs at `/docs`, served from the
`swagger-ui-bundle-v2` package (no CDN). Neither exposes a setting or a key: only the routes' shapes."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

ASSETS_PATH = "/docs/assets"


def install_openapi(app: FastAPI) -> None:
    """Generate /openapi.json once, with the Bearer API key as a security scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
            schemes["apiKey"] = {
                "type": "http",
                "scheme": "bearer",
                "description": "one of NOTIFIER_API_KEYS",
            }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def build_router() -> tuple[APIRouter, StaticFiles | None]:
    """The `/docs` page and its assets; none when the Swagger UI package is not installed."""
    router = APIRouter()
    try:
        import swagger_ui_bundle
    except ImportError:
        return router, None

    @router.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="notifier API",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
        )

    return router, StaticFiles(directory=swagger_ui_bundle.swagger_ui_path)
