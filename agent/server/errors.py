"""The server's errors, all one JSON shape ({"error": {"message", "type", "code"}}, as OpenAI
answers): `ApiError`, which a route raises to refuse a request, and the app's exception
handlers, which give the same shape to Starlette's own refusals (no route, a method not
allowed) and to any other exception (500, logged with its traceback under a request id,
which the answer gives instead of the exception's text).
"""
from __future__ import annotations

import logging
import uuid
from typing import Optional

from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse

log = logging.getLogger(__name__)


class ApiError(Exception):
    """A request the API refuses: status, message, OpenAI error type."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 headers: Optional[dict] = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.headers = status, message, type_, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type,
                                       "code": self.status}}, self.status, self.headers)


async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return exc.response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    kind = {404: "not_found_error", 405: "invalid_request_error"}.get(exc.status_code,
                                                                       "invalid_request_error")
    if exc.status_code == 404:
        msg = f"no route {request.url.path}"
    elif exc.status_code == 405:
        msg = (f"{request.method} is not allowed on {request.url.path} (allowed: "
               f"{(exc.headers or {}).get('Allow', '?')})")
    else:
        msg = str(exc.detail)
    return ApiError(exc.status_code, msg, kind, dict(exc.headers or {})).response()


async def _server_error(request: Request, exc: Exception) -> JSONResponse:
    """A 500 says nothing of the exception (its text may hold paths, queries, data): the
    log has it, with its traceback, under the request id the answer gives."""
    rid = uuid.uuid4().hex[:16]
    log.error("request %s %s failed (request id %s)", request.method, request.url.path, rid,
              exc_info=exc)
    resp = ApiError(500, f"internal error (request id {rid}: the server's log has the "
                    "details)", "server_error", {"X-Request-Id": rid}).response()
    return resp


HANDLERS = {ApiError: _api_error, HTTPException: _http_error, Exception: _server_error}
