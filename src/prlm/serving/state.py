"""What every request shares: the server's state (store, engine, batcher, metrics) and who is calling."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from prlm import PrlmError
from prlm.serving.audit import AuditLog
from prlm.serving.auth import Authenticator, load_admin_token
from prlm.serving.batcher import Batcher
from prlm.serving.config import ServeConfig
from prlm.serving.engine import Engine
from prlm.serving.limits import UserLimits
from prlm.serving.metrics import Metrics
from prlm.serving.store import ProfileStore

log = logging.getLogger("prlm.serve")


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
        self.limits = UserLimits(cfg.rate_per_user, cfg.rate_burst, cfg.max_inflight_per_user)
        self.audit = AuditLog(cfg.audit_log)
        self.metrics_token = load_admin_token(cfg.metrics_token_file, what="metrics") \
            if cfg.metrics_token_file else None
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
                             temperature=c.temperature, seed=c.seed, index_max_bytes=c.index_cache_mb << 20,
                             max_embed_per_request=c.max_embed_per_request)

    def reload_admin_token(self) -> None:
        """SIGHUP: read the admin token file again; the new token works at once and the old one stops.
        A file that fails the start-up checks keeps the old token (logged, audited)."""
        source = self.cfg.admin_token_file
        if not source:
            log.warning("SIGHUP: the admin token comes from $PRLM_ADMIN_TOKEN, which a running process cannot "
                        "reread; use --admin-token-file to rotate it without a restart")
            self.audit.record("admin_token.reload", "operator", status=400, detail="no token file")
            return
        try:
            self.auth.set_admin_token(load_admin_token(source))
        except PrlmError as err:
            log.error("SIGHUP: the admin token was not reloaded, the old one still works: %s", err)
            self.audit.record("admin_token.reload", "operator", status=400, detail=str(err))
            return
        log.info("SIGHUP: admin token reloaded from %s", source)
        self.audit.record("admin_token.reload", "operator", status=200)

    def load_model(self) -> None:
        """Runs on a background thread: profile endpoints work while the model loads."""
        from prlm.generation import make_generator

        try:
            generator, tokenizer = make_generator(self.model_name, self.cfg.backend, self.cfg.device,
                                                  self.cfg.max_batch)
        except Exception as err:  # reported by /readyz and every generate request
            log.exception("loading the model '%s' failed", self.model_name)
            self.load_error = f"{type(err).__name__}: {err}"
            return
        self.set_generator(generator, tokenizer)
        log.info("model '%s' loaded; ready", self.model_name)
