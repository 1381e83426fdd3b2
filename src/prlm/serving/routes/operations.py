"""Operations: liveness, readiness (model, database, batcher) and the Prometheus metrics."""

from __future__ import annotations

import hmac

from fastapi import APIRouter, Depends, Request
from fastapi.responses import PlainTextResponse, Response

from prlm.serving.access import get_state
from prlm.serving.auth import hash_token
from prlm.serving.config import NO_MODEL
from prlm.serving.metrics import CONTENT_TYPE_LATEST
from prlm.serving.middleware import client_host
from prlm.serving.schemas import SafeJSONResponse
from prlm.serving.state import ServerState

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz():
    # async: answered on the event loop, never queued behind requests that hold the worker threads
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, database intact, batcher running")
def readyz(state: ServerState = Depends(get_state)):
    db = state.db_status()
    problems = []
    if state.engine is None and state.model_name != NO_MODEL:
        problems.append(f"model failed to load: {state.load_error}" if state.load_error else "model loading")
    if db != "ok":
        problems.append(f"database: {db}")
    if state.store.unreachable is not None:  # a failed connection: known at once, not at the next check
        problems.append(state.store.unreachable)
    if state.store.write_problem is not None:  # read-only or full since the last check: known at once
        problems.append(f"database writes fail: {state.store.write_problem}")
    if not state.batcher.running:
        problems.append("batcher stopped")
    body = {"ready": not problems, "model": state.model_name, "db": db, "problems": problems}
    return SafeJSONResponse(body, status_code=200 if not problems else 503)


@router.get("/metrics", response_class=PlainTextResponse,
            summary="Prometheus metrics (with --metrics-token-file: that token as Bearer)")
def metrics(request: Request, state: ServerState = Depends(get_state)):
    if state.metrics_token is not None and not _carries(request, state.metrics_token):
        state.audit.record("metrics.refused", "anonymous", status=401, client=client_host(request.scope))
        return SafeJSONResponse({"detail": "/metrics needs its token: send 'Authorization: Bearer TOKEN'"},
                                status_code=401, headers={"WWW-Authenticate": "Bearer"})
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)


def _carries(request: Request, token: str) -> bool:
    scheme, _, sent = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(hash_token(sent.strip()), hash_token(token))
