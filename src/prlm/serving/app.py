"""The FastAPI application: profile endpoints, generation, health, metrics, the web page.

Access rules: the admin token provisions users and issues their tokens and
nothing else; a user token reads and writes only its own profile and
generates only for itself (403 for any other user id in the path, whether or
not that user exists). Every client mistake is a 4xx with a one-line `detail`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any, Callable

from fastapi import Depends, FastAPI, HTTPException, Path as PathParam, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from prlm import PrlmError, __version__
from prlm.data.tasks import TASKS, get_task
from prlm.serving.auth import Authenticator, hash_token, new_user_token
from prlm.serving.batcher import Batcher, QueueFull
from prlm.serving.config import NO_MODEL, ServeConfig
from prlm.serving.engine import Engine
from prlm.serving.metrics import CONTENT_TYPE_LATEST, Metrics, method_label
from prlm.serving.store import ProfileStore, StoreError

log = logging.getLogger("prlm.serve")

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENTRY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"
STATIC = Path(__file__).parent / "static"
DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)


class SafeJSONResponse(JSONResponse):
    """JSON with non-ASCII escaped: a lone surrogate a client sent (and an error echoes) still encodes."""

    def render(self, content) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


# --- request and response bodies ---------------------------------------------

class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an unknown field is a client mistake, not ignored


class NewUser(_Strict):
    user_id: str = Field(pattern=USER_ID_PATTERN, description="Letters, digits, '_', '.', '-'; at most 64. "
                                                             "Case does not matter: ids are stored in lower case.")

    @field_validator("user_id")
    @classmethod
    def _lower(cls, value: str) -> str:
        return normal_user_id(value)


def normal_user_id(user_id: str) -> str:
    """User ids are case-insensitive: 'alice' and 'ALICE' are one user (stored and compared in lower case)."""
    return user_id.lower()


class UserToken(BaseModel):
    user_id: str
    token: str = Field(description="Shown once; only its hash is stored.")


class Me(BaseModel):
    user_id: str | None
    role: str


class AddEntries(_Strict):
    task: str = Field(description="Task name; its entry fields are listed by GET /v1/tasks.")
    entries: list[dict[str, Any]] = Field(min_length=1, description="Entries with the task's fields (and an optional id).")


class EntriesAdded(BaseModel):
    user_id: str
    task: str
    ids: list[str]
    version: int


class EntryList(BaseModel):
    user_id: str
    version: int
    entries: list[dict[str, Any]]


class EntryDeleted(BaseModel):
    user_id: str
    deleted: str
    version: int


class GenerateRequest(_Strict):
    task: str
    input: str = Field(min_length=1, description="The text to write for, e.g. the article to title.")
    retriever: str | None = Field(None, description="Retriever (default: the server's).")
    k: int | None = Field(None, description="Entries retrieved (default: the server's).")


class Hit(BaseModel):
    id: str
    score: float


class Timings(BaseModel):
    """Whole milliseconds of what the client waited for; no per-stage figure that depends on the
    profile (retrieval time is a side channel): those go to /metrics, summed over all users."""

    queue_ms: int
    generation_ms: int
    total_ms: int


class GenerateResponse(BaseModel):
    user_id: str
    task: str
    answer: str
    reasoning: str
    retrieved: list[Hit]
    retriever: str
    k: int
    method: str
    model: str
    batch_size: int
    prompt_tokens: int
    timings: Timings


# --- the application ------------------------------------------------------------

@dataclass
class Principal:
    role: str  # 'admin' or 'user'
    user_id: str | None


class ServerState:
    def __init__(self, cfg: ServeConfig, store: ProfileStore, authenticator: Authenticator, model_name: str):
        self.cfg, self.store, self.auth, self.model_name = cfg, store, authenticator, model_name
        self.engine: Engine | None = None
        self.load_error: str | None = None
        self.metrics = Metrics()
        self.batcher = Batcher(self._run_batch, cfg.max_batch, cfg.batch_window_ms / 1000, cfg.max_queue,
                               on_batch=self.metrics.observe_batch, max_per_owner=cfg.max_queue_per_user,
                               on_drop=self.metrics.dropped.inc)
        self.metrics.gauge("prlm_generate_queue_waiting", "Generation requests waiting for an answer.",
                           lambda: self.batcher.waiting)
        self.metrics.gauge("prlm_ready", "1 once the model is loaded.", lambda: int(self.engine is not None))
        self._db_status: tuple[float, str] | None = None  # (monotonic time of the check, result)
        self._db_check_lock = threading.Lock()

    def db_status(self) -> str:
        """The store's integrity check, run at most every `ready_check_interval_s`: readiness probes
        (anonymous, frequent) read the cached answer and never queue behind a check of their own."""
        cached = self._db_status
        fresh = cached is not None and time.monotonic() - cached[0] < self.cfg.ready_check_interval_s
        if fresh:
            return cached[1]
        if not self._db_check_lock.acquire(blocking=cached is None):
            return cached[1]  # another request is checking right now
        try:
            try:
                result = self.store.check()
            except Exception as err:  # a check must answer, not raise: readiness reports the cause
                log.warning("database check failed: %s: %s", type(err).__name__, err)
                result = f"check failed: {type(err).__name__}: {err}"
            self._db_status = (time.monotonic(), result)
            return result
        finally:
            self._db_check_lock.release()

    def _run_batch(self, batch):
        return self.engine.run_batch(batch)

    def set_generator(self, generator, tokenizer) -> None:
        c = self.cfg
        self.engine = Engine(self.store, generator, tokenizer, c.method, c.max_prompt_tokens, c.max_new_tokens,
                             temperature=c.temperature, seed=c.seed, index_max_entries=c.index_cache_entries)

    def load_model(self) -> None:
        """Runs on a background thread: profile endpoints work while the model loads."""
        from prlm.generation import make_generator

        try:
            generator, tokenizer = make_generator(self.model_name, self.cfg.backend, self.cfg.device, self.cfg.max_batch)
        except Exception as err:  # reported by /readyz and every generate request
            log.exception("loading the model '%s' failed", self.model_name)
            self.load_error = f"{type(err).__name__}: {err}"
            return
        self.set_generator(generator, tokenizer)
        log.info("model '%s' loaded; ready", self.model_name)


class _Measure:
    """Pure ASGI, outermost: times every request into the metrics, adds the security headers to every
    answer, and tells a client that left from a server error.

    A client that disconnects before its answer (mid-upload, or while its generation waits) is counted
    as a disconnect and logged in one line, never as a 5xx. An exception that escapes the app is logged
    once with its traceback and answered 500 here (nothing outside re-raises it).
    """

    def __init__(self, app, metrics: Metrics, route_of: Callable[[dict], str], page_csp: str):
        self.app, self.metrics, self.route_of, self.page_csp = app, metrics, route_of, page_csp

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        status, complete, left = None, False, False

        async def watched_receive():
            nonlocal left
            message = await receive()
            if message["type"] == "http.disconnect" and not complete:
                left = True
            return message

        async def guarded_send(message):
            nonlocal status, complete
            if message["type"] == "http.response.start":
                status = message["status"]
                message = {**message, "headers": _with_security_headers(message.get("headers", []), scope["path"],
                                                                          self.page_csp)}
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                complete = True
            await send(message)

        try:
            await self.app(scope, watched_receive, guarded_send)
        except Exception:
            if left:  # the app tripped over the client's absence (e.g. reading a body that never came)
                status = None
            else:  # the route template, not the raw path: a client cannot write lines into the log
                log.exception("unhandled error on %s %s", method_label(scope["method"]), self.route_of(scope))
                if status is None:
                    await _send_json(guarded_send, 500, "internal error; the server log has the details")
                status = 500
        route, method = self.route_of(scope), scope["method"]
        if left:  # whatever the app sent after that went nowhere (uvicorn drops it)
            self.metrics.observe_disconnect(method, route)
            log.info("client left before its answer: %s %s", method_label(method), route)
            return
        if status is None:  # the app returned without answering a client that is still there: a server bug
            log.error("no response returned for %s %s", method_label(method), route)
            await _send_json(guarded_send, 500, "internal error; the server log has the details")
            status = 500
        self.metrics.observe_request(method, route, status, time.perf_counter() - started)


# Every answer: nothing is sniffed, framed, cached or sent on as a referrer. API answers carry tokens and
# profile text, so no cache may keep them; the page gets its own CSP (see `page_csp`).
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"


def _with_security_headers(headers, path: str, page_csp: str) -> list:
    have = {name.lower() for name, _ in headers}
    out = list(headers)
    for name, value in SECURITY_HEADERS:
        if name not in have:
            out.append((name, value))
    if b"content-security-policy" not in have:
        out.append((b"content-security-policy", (page_csp if path == "/" else API_CSP).encode("latin-1")))
    return out


def page_csp(html: str) -> str:
    """The page's CSP: its one inline script and style allowed by hash, requests to this origin only."""
    def hashes(tag: str) -> str:
        blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S)
        return " ".join("'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'"
                        for b in blocks) or "'none'"

    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class _BodyLimit:
    """Pure ASGI: refuses bodies over `limit` bytes with 413 before any parsing, chunked ones included,
    and bodies that take longer than `timeout_s` to arrive (a client trickling bytes) with 408."""

    def __init__(self, app, limit: int, timeout_s: float):
        self.app, self.limit, self.timeout_s = app, limit, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = _header(scope, b"content-length")
        if length is not None:
            if not length.isdigit():
                return await _send_json(send, 400, "invalid Content-Length header")
            if int(length) > self.limit:
                return await _send_json(send, 413, f"request body over {self.limit} bytes")
        chunks, size, more = [], 0, True
        deadline = time.monotonic() + self.timeout_s
        while more:
            try:
                message = await asyncio.wait_for(receive(), max(deadline - time.monotonic(), 0))
            except TimeoutError:
                return await _send_json(send, 408, f"request body not received within {self.timeout_s:g} s",
                                        close=True)
            if message["type"] == "http.disconnect":
                return None  # the client left; nothing to answer (the measuring middleware counts it)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _send_json(send, 413, f"request body over {self.limit} bytes")
            chunks.append(chunk)
            more = message.get("more_body", False)
        body, sent = b"".join(chunks), False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def _header(scope, name: bytes) -> bytes | None:
    values = [v for k, v in scope["headers"] if k.lower() == name]
    return values[0] if values else None


async def _send_json(send, status: int, detail: str, headers: list | None = None, close: bool = False):
    body = json.dumps({"detail": detail}).encode()
    extra = list(headers or []) + ([(b"connection", b"close")] if close else [])
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


class _Authenticate:
    """Pure ASGI: every /v1/ request but the task table must carry a known bearer token (401 otherwise),
    checked before its body is parsed. Two Authorization headers are refused (400): proxies and this
    server could otherwise read different ones."""

    PUBLIC = {"/v1/tasks"}

    def __init__(self, app, state: ServerState):
        self.app, self.state = app, state

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].startswith("/v1/") or scope["path"] in self.PUBLIC:
            return await self.app(scope, receive, send)
        headers = [v for k, v in scope["headers"] if k.lower() == b"authorization"]
        if len(headers) > 1:
            return await _send_json(send, 400, "send one Authorization header, not several")
        header = headers[0].decode("latin-1") if headers else ""
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return await _send_401(send, "missing bearer token: send the header 'Authorization: Bearer TOKEN'")
        try:
            ident = await run_in_threadpool(self.state.auth.identify, token.strip())
        except StoreError as err:  # e.g. the database is unreadable: 503 with the cause
            return await _send_json(send, err.status, str(err), headers=_retry_after(err))
        if ident is None:
            return await _send_401(send, "unknown or revoked token")
        scope.setdefault("state", {})["principal"] = Principal(*ident)
        return await self.app(scope, receive, send)


def _retry_after(err: StoreError) -> list:
    return [(b"retry-after", b"5")] if err.status == 503 else []


async def _send_401(send, detail: str):
    await _send_json(send, 401, detail, headers=[(b"www-authenticate", b"Bearer")])


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


def create_app(cfg: ServeConfig, store: ProfileStore, admin_token: str, generator=None, tokenizer=None,
               model_name: str | None = None) -> FastAPI:
    """The app; with `generator` and `tokenizer` given it is ready at once, else the model loads at start-up."""
    state = ServerState(cfg, store, Authenticator(admin_token, store), model_name or cfg.resolved_model())
    if generator is not None:
        state.set_generator(generator, tokenizer)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.db_status)  # the integrity check at start-up; then from the cache
        await state.batcher.start()
        if state.engine is None and state.model_name != NO_MODEL:
            threading.Thread(target=state.load_model, name="prlm-load-model", daemon=True).start()
        yield
        await state.batcher.stop()

    app = FastAPI(title="prlm serving", version=__version__, lifespan=lifespan,
                  description="Personalized generation (PrLM) over per-user profiles.",
                  docs_url=None, redoc_url=None, default_response_class=SafeJSONResponse)  # the docs UI loads scripts from a CDN; the schema is /openapi.json
    app.state.prlm = state
    bearer = HTTPBearer(auto_error=False, description="The admin token or a user token.")

    # --- errors: every client mistake is a 4xx with a one-line detail ---------------

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return SafeJSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return SafeJSONResponse({"detail": "malformed JSON body"}, status_code=400)
        parts = []
        for e in errors[:5]:
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid"))
        return SafeJSONResponse({"detail": "; ".join(parts)}, status_code=422)

    @app.exception_handler(StoreError)
    async def _store_error(request: Request, exc: StoreError):
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        return SafeJSONResponse({"detail": str(exc)}, status_code=exc.status, headers=headers)

    def route_template(scope) -> str:
        """The matched route's template; answers given before routing (401, 413) are matched here."""
        route = scope.get("route")
        if route is not None:
            return route.path
        for candidate in app.router.routes:
            if candidate.matches(scope)[0] != Match.NONE:
                return candidate.path
        return "unmatched"

    # --- access ----------------------------------------------------------------------

    def principal(request: Request, _cred: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Principal:
        found = getattr(request.state, "principal", None)
        if found is None:  # _Authenticate guards every /v1/ route; this is a second lock on the door
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        return found

    def admin(p: Principal = Depends(principal)) -> Principal:
        if p.role != "admin":
            raise HTTPException(403, "this needs the admin token")
        return p

    def owner(user_id: str = PathParam(pattern=USER_ID_PATTERN), p: Principal = Depends(principal)) -> str:
        if p.role == "admin":
            raise HTTPException(403, "the admin token does not read or write profiles; use the user's token")
        user_id = normal_user_id(user_id)
        if p.user_id != user_id:
            raise HTTPException(403, "a user token reaches only its own user id")
        return user_id

    def task_or_422(name: str):
        try:
            return get_task(name)
        except PrlmError as err:
            raise HTTPException(422, str(err)) from None

    # --- users (admin) ---------------------------------------------------------------

    @app.post("/v1/users", status_code=201, response_model=UserToken, tags=["users"],
              summary="Create a user and issue their token (admin)")
    def create_user(body: NewUser, _: Principal = Depends(admin)):
        token = new_user_token()
        store.create_user(body.user_id, hash_token(token))
        return UserToken(user_id=body.user_id, token=token)

    @app.post("/v1/users/{user_id}/token", response_model=UserToken, tags=["users"],
              summary="Issue a new token for a user; the old one stops working (admin)")
    def rotate_token(user_id: str = PathParam(pattern=USER_ID_PATTERN), _: Principal = Depends(admin)):
        user_id = normal_user_id(user_id)
        token = new_user_token()
        store.set_token_hash(user_id, hash_token(token))
        return UserToken(user_id=user_id, token=token)

    @app.get("/v1/me", response_model=Me, tags=["users"], summary="Who the token belongs to")
    def me(p: Principal = Depends(principal)):
        return Me(user_id=p.user_id, role=p.role)

    @app.get("/v1/tasks", tags=["profiles"], summary="Tasks and the fields their profile entries carry (public)")
    def tasks():
        return {"tasks": [{"name": t.name, "entry_fields": list(t.entry_fields), "output_name": t.output_name,
                           "input_prefix": t.input_prefix} for t in TASKS.values()]}

    # --- profiles (the user's own token) ----------------------------------------------

    def check_entries(task, entries: list[dict]) -> list[dict]:
        if len(entries) > cfg.max_entries_per_request:
            raise HTTPException(422, f"at most {cfg.max_entries_per_request} entries per request, got {len(entries)}")
        allowed = set(task.entry_fields)
        out = []
        for i, entry in enumerate(entries):
            keys = set(entry) - {"id"}
            missing, unknown = sorted(allowed - keys), sorted(keys - allowed)
            if missing or unknown:
                raise HTTPException(422, f"entries[{i}]: " + "; ".join(
                    ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                    + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []))
                    + f" (task {task.name} entries carry: {', '.join(task.entry_fields)}, and an optional id)")
            for name, value in entry.items():
                if not isinstance(value, str):
                    raise HTTPException(422, f"entries[{i}].{name}: must be a string")
                try:
                    value.encode("utf-8")
                except UnicodeEncodeError:  # a lone surrogate from a \udXXX escape: not text the store can keep
                    raise HTTPException(422, f"entries[{i}].{name}: not valid Unicode text (lone surrogate)") from None
                if len(value) > cfg.max_entry_chars:
                    raise HTTPException(422, f"entries[{i}].{name}: {len(value)} characters, over the limit of {cfg.max_entry_chars}")
            if "id" in entry:
                if not re.fullmatch(ENTRY_ID_PATTERN, entry["id"]):
                    raise HTTPException(422, f"entries[{i}].id: use letters, digits, '_', '.', ':', '-' (at most 64)")
            if "date" in entry:
                try:
                    if not DATE_PATTERN.fullmatch(entry["date"]):  # fromisoformat also takes 2024-W01-1
                        raise ValueError
                    date.fromisoformat(entry["date"])
                except ValueError:
                    raise HTTPException(422, f"entries[{i}].date: '{entry['date'][:20]}' is not a date YYYY-MM-DD") from None
            out.append(dict(entry))
        return out

    @app.post("/v1/users/{user_id}/entries", status_code=201, response_model=EntriesAdded, tags=["profiles"],
              summary="Add profile entries (all or none); answered once committed")
    def add_entries(body: AddEntries, user_id: str = Depends(owner)):
        task = task_or_422(body.task)
        entries = check_entries(task, body.entries)
        ids, version = store.add_entries(user_id, task.name, entries, cfg.max_entries_per_user)
        return EntriesAdded(user_id=user_id, task=task.name, ids=ids, version=version)

    @app.get("/v1/users/{user_id}/entries", response_model=EntryList, tags=["profiles"],
             summary="List profile entries, optionally of one task")
    def list_entries(user_id: str = Depends(owner), task: str | None = Query(None)):
        name = task_or_422(task).name if task is not None else None
        version = store.version(user_id)
        return EntryList(user_id=user_id, version=version, entries=store.list_entries(user_id, name))

    @app.delete("/v1/users/{user_id}/entries/{entry_id}", response_model=EntryDeleted, tags=["profiles"],
                summary="Delete one profile entry")
    def delete_entry(entry_id: str = PathParam(pattern=ENTRY_ID_PATTERN), user_id: str = Depends(owner)):
        version = store.delete_entry(user_id, entry_id)
        if state.engine is not None:  # nothing derived from the deleted entry stays in memory
            state.engine.index.refresh(user_id)
        return EntryDeleted(user_id=user_id, deleted=entry_id, version=version)

    # --- generation ----------------------------------------------------------------------

    @app.post("/v1/users/{user_id}/generate", response_model=GenerateResponse, tags=["generation"],
              summary="Retrieve from this user's entries, run the policy, return answer and reasoning")
    async def generate(request: Request, body: GenerateRequest, user_id: str = Depends(owner)):
        started = time.perf_counter()
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
            timings=Timings(queue_ms=round(info.queue_ms), generation_ms=round(info.batch_ms), total_ms=round(total)))

    # --- operations -------------------------------------------------------------------

    @app.get("/healthz", tags=["operations"], summary="Liveness: the process answers")
    def healthz():
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Readiness: model loaded, database intact, batcher running")
    def readyz():
        db = state.db_status()
        problems = []
        if state.engine is None and state.model_name != NO_MODEL:
            problems.append(f"model failed to load: {state.load_error}" if state.load_error else "model loading")
        if db != "ok":
            problems.append(f"database: {db}")
        if store.write_problem is not None:  # read-only or full since the last check: known at once
            problems.append(f"database writes fail: {store.write_problem}")
        if not state.batcher.running:
            problems.append("batcher stopped")
        body = {"ready": not problems, "model": state.model_name, "db": db, "problems": problems}
        return SafeJSONResponse(body, status_code=200 if not problems else 503)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["operations"], summary="Prometheus metrics")
    def metrics():
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    page = (STATIC / "index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return HTMLResponse(page)

    # The last added is the outermost: metrics see every answer (413 and 401 included),
    # the body limit runs before authentication, authentication before any parsing.
    app.add_middleware(_Authenticate, state=state)
    app.add_middleware(_BodyLimit, limit=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    app.add_middleware(_Measure, metrics=state.metrics, route_of=route_template, page_csp=page_csp(page))
    return app


def serve(cfg: ServeConfig) -> None:
    """`prlm serve`: open the store, check the admin token, run uvicorn until stopped."""
    import uvicorn

    from prlm.serving.auth import load_admin_token
    from prlm.serving.store import open_store

    admin_token = load_admin_token(cfg.admin_token_file)
    model = cfg.resolved_model()
    if model != NO_MODEL and model.startswith(("/", ".", "~")) and not Path(model).expanduser().is_dir():
        raise PrlmError(f"model folder '{model}' not found")
    logging.basicConfig(level=cfg.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    store = open_store(cfg.db)  # every problem with the database is one PrlmError line (exit code 2)
    try:
        store.startup_check()
    except PrlmError:
        store.close()
        raise
    log.info("profiles in %s; %s", store.describe(), "no model: generate answers 503" if model == NO_MODEL
             else f"model '{model}' loads in the background (/readyz says when it is ready)")
    app = create_app(cfg, store, admin_token, model_name=model)
    try:
        uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                    timeout_keep_alive=cfg.keep_alive_s)
    finally:
        store.close()
