"""Generation: retrieve from the user's own entries, batch across users, return answer and reasoning."""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from prlm import PrlmError
from prlm.serving.access import get_state, owner, task_or_422
from prlm.serving.batcher import QueueFull
from prlm.serving.config import NO_MODEL
from prlm.serving.engine import IndexBuilding
from prlm.serving.schemas import GenerateRequest, GenerateResponse, Hit, Timings
from prlm.serving.state import ServerState

router = APIRouter(tags=["generation"])


@router.post("/v1/users/{user_id}/generate", response_model=GenerateResponse,
             summary="Retrieve from this user's entries, run the policy, return answer and reasoning")
async def generate(request: Request, body: GenerateRequest, user_id: str = Depends(owner),
                   state: ServerState = Depends(get_state)):
    started = time.perf_counter()
    cfg = state.cfg
    task = task_or_422(body.task)
    retriever = body.retriever or cfg.retriever
    if retriever not in cfg.retrievers:
        raise HTTPException(422, f"retriever '{retriever}' is not offered; use one of {', '.join(cfg.retrievers)}")
    k = cfg.k if body.k is None else body.k
    if not 0 <= k <= cfg.max_k:
        raise HTTPException(422, f"k must be in 0..{cfg.max_k}, got {k}")
    if len(body.input) > cfg.max_input_chars:
        raise HTTPException(422, f"input has {len(body.input)} characters, over the limit of {cfg.max_input_chars}")
    engine = state.engine
    if engine is None:
        reason = (f"the model failed to load: {state.load_error}" if state.load_error else
                  "this server runs without a model (--model none)" if state.model_name == NO_MODEL else
                  "the model is loading")
        raise HTTPException(503, f"not ready: {reason}", headers={"Retry-After": "5"})
    try:
        prepared = await run_in_threadpool(engine.retrieve, user_id, task.name, body.input, retriever, k)
    except IndexBuilding as err:  # this request embedded its share of a large index; the next goes on
        raise HTTPException(429, str(err), headers={"Retry-After": "1"}) from None
    except PrlmError as err:  # e.g. the dense encoder is not installed
        raise HTTPException(422, str(err)) from None
    state.metrics.observe_stage("retrieval", prepared.retrieval_ms / 1000)
    answered = await _unless_client_leaves(request, state.batcher.submit(prepared, owner=user_id))
    if answered is None:  # the client left: its request was dropped before generation; nobody reads this
        return Response(status_code=499)
    try:
        result, info = answered.result()
    except QueueFull as err:
        raise HTTPException(429, str(err), headers={"Retry-After": "1"}) from None
    state.metrics.observe_stage("queue", info.queue_ms / 1000)
    state.metrics.observe_stage("generation", info.batch_ms / 1000)
    total = (time.perf_counter() - started) * 1000
    return GenerateResponse(
        user_id=user_id, task=task.name, answer=result.answer, reasoning=result.reasoning,
        retrieved=[Hit(**h) for h in result.retrieved], retriever=retriever, k=k, method=cfg.method,
        model=state.model_name, batch_size=info.batch_size, prompt_tokens=result.prompt_tokens,
        timings=Timings(total_ms=round(total)))


async def _unless_client_leaves(request: Request, work) -> asyncio.Future | None:
    """Runs `work` until it ends (its finished task is returned) or the client disconnects (it is
    cancelled, so the batcher drops the request before generating, and None is returned).

    Starlette does not cancel a handler whose client left; its body is read by now, so the next
    message the server has for this request is the disconnect (or nothing until the answer is sent)."""
    async def until_disconnected():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, gone = asyncio.ensure_future(work), asyncio.ensure_future(until_disconnected())
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if task.done():
        return task
    task.cancel()
    return None
