"""HTTP errors, always answered as JSON: `{"error": <code>, "message": <text>}`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException


class ApiError(Exception):
    """An error a caller caused or must know of; answered with `status` and `{"error": code, "message", ...}`.

    `details` adds fields to the body (for instance the `index` of a bad event in a batch); `headers` are sent
    with it (Retry-After, say)."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None, **details: object
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.details = details


def install_error_handlers(app: FastAPI) -> None:
    async def api_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, ApiError)
        body = {"error": error.code, "message": error.message, **error.details}
        return JSONResponse(body, status_code=error.status, headers=error.headers)

    async def http_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(error.status_code, "http_error")
        return JSONResponse(
            {"error": code, "message": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    async def validation_error(_: Request, error: Exception) -> JSONResponse:
        assert isinstance(error, RequestValidationError)
        return JSONResponse({"error": "bad_request", "message": str(error.errors())}, status_code=422)

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(HTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
