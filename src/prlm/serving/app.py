"""The FastAPI application: built from the state, the middleware and the routers; and `prlm serve`.

The routes live in `prlm.serving.routes` (one router an area), access rules in `access`, the ASGI
middleware (metrics, security headers, body limit, authentication) in `middleware`, the bodies in
`schemas`. Every client mistake is a 4xx with a one-line `detail` (`errors`).
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from prlm import PrlmError, __version__
from prlm.serving.auth import Authenticator
from prlm.serving.config import NO_MODEL, ServeConfig
from prlm.serving.errors import add_error_handlers
from prlm.serving.middleware import Authenticate, BodyLimit, Measure, page_csp, route_template
from prlm.serving.protocol import header_timeout_protocol
from prlm.serving.routes import ROUTERS
from prlm.serving.routes.page import load_page
from prlm.serving.schemas import SafeJSONResponse
from prlm.serving.state import ServerState
from prlm.serving.store import ProfileStore

log = logging.getLogger("prlm.serve")


@asynccontextmanager
async def _lifespan(app: FastAPI):
    state: ServerState = app.state.prlm
    await run_in_threadpool(state.db_status)  # the integrity check at start-up; then from the cache
    await state.batcher.start()
    if state.engine is None and state.model_name != NO_MODEL:
        threading.Thread(target=state.load_model, name="prlm-load-model", daemon=True).start()
    yield
    await state.batcher.stop()
    state.audit.close()


def create_app(cfg: ServeConfig, store: ProfileStore, admin_token: str, generator=None, tokenizer=None,
               model_name: str | None = None) -> FastAPI:
    """The app; with `generator` and `tokenizer` given it is ready at once, else the model loads at start-up."""
    authenticator = Authenticator(admin_token, store, token_ttl_s=cfg.token_ttl_days * 86400)
    state = ServerState(cfg, store, authenticator, model_name or cfg.resolved_model())
    if generator is not None:
        state.set_generator(generator, tokenizer)
    # The docs UI loads scripts from a CDN; the schema is /openapi.json.
    app = FastAPI(title="prlm serving", version=__version__, lifespan=_lifespan,
                  description="Personalized generation (PrLM) over per-user profiles.",
                  docs_url=None, redoc_url=None, default_response_class=SafeJSONResponse)
    app.state.prlm = state
    app.state.page = load_page()
    add_error_handlers(app)
    # FastAPI keeps an included router as one branch of app.router.routes; the metrics label answers given
    # before routing (401, 413) by the flat list of routes, the schema's first, in the order they match.
    routes = list(app.router.routes)
    for router in ROUTERS:
        app.include_router(router)
        routes += router.routes
    # The last added is the outermost: metrics see every answer (413 and 401 included),
    # the body limit runs before authentication, authentication before any parsing.
    app.add_middleware(Authenticate, state=state)
    app.add_middleware(BodyLimit, limit=cfg.max_body_bytes, timeout_s=cfg.body_timeout_s)
    app.add_middleware(Measure, metrics=state.metrics, route_of=partial(route_template, routes),
                       page_csp=page_csp(app.state.page), hsts=bool(cfg.tls_cert))
    return app


def serve(cfg: ServeConfig) -> None:
    """`prlm serve`: open the store, check the admin token, run uvicorn until stopped."""
    import uvicorn

    from prlm.serving.auth import load_admin_token
    from prlm.serving.storage import open_store

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
    # SIGHUP rereads the admin token file (uvicorn handles only SIGINT and SIGTERM).
    signal.signal(signal.SIGHUP, lambda *_: app.state.prlm.reload_admin_token())
    try:
        uvicorn.run(app, **uvicorn_options(cfg))
    finally:
        store.close()


def uvicorn_options(cfg: ServeConfig) -> dict:
    """How `prlm serve` listens: slow clients cut (request head deadline, idle keep-alive, connection cap),
    TLS when a certificate is given."""
    options = dict(host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=False,
                   timeout_keep_alive=cfg.keep_alive_s, http=header_timeout_protocol(cfg.header_timeout_s),
                   limit_concurrency=cfg.max_connections)
    if cfg.tls_cert:
        options.update(ssl_certfile=cfg.tls_cert, ssl_keyfile=cfg.tls_key)
    return options
