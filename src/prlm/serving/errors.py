"""Exception handlers: every client mistake is a 4xx with a one-line `detail`."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from prlm.serving.schemas import SafeJSONResponse
from prlm.serving.store import StoreError


async def _http_error(request: Request, exc: StarletteHTTPException):
    return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


async def _invalid(request: Request, exc: RequestValidationError):
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return SafeJSONResponse({"detail": "malformed JSON body"}, status_code=400)
    parts = []
    for e in errors[:5]:
        where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
        parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
    return SafeJSONResponse({"detail": "; ".join(parts)}, status_code=422)


async def _store_error(request: Request, exc: StoreError):
    headers = {"Retry-After": "5"} if exc.status == 503 else None
    return SafeJSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)


def add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(StoreError, _store_error)
