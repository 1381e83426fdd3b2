"""Operations: liveness, readiness (model, database, batcher) and the Prometheus metrics."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse, Response

from prlm.serving.access import get_state
from prlm.serving.config import NO_MODEL
from prlm.serving.metrics import CONTENT_TYPE_LATEST
from prlm.serving.schemas import SafeJSONResponse
from prlm.serving.state import ServerState

router = APIRouter(tags=["operations"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz():
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: model loaded, database intact, batcher running")
def readyz(state: ServerState = Depends(get_state)):
    db = state.db_status()
    problems = []
    if state.engine is None and state.model_name != NO_MODEL:
        problems.append(f"model failed to load: {state.load_error}" if state.load_error else "model loading")
    if db != "ok":
        problems.append(f"database: {db}")
    if state.store.write_problem is not None:  # read-only or full since the last check: known at once
        problems.append(f"database writes fail: {state.store.write_problem}")
    if not state.batcher.running:
        problems.append("batcher stopped")
    body = {"ready": not problems, "model": state.model_name, "db": db, "problems": problems}
    return SafeJSONResponse(body, status_code=200 if not problems else 503)


@router.get("/metrics", response_class=PlainTextResponse, summary="Prometheus metrics")
def metrics(state: ServerState = Depends(get_state)):
    return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
