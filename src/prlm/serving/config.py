"""ServeConfig: every option of `prlm serve`, with its help text and checks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prlm import PrlmError
from prlm.options import check_choice, opt
from prlm.prompts import MAX_PROMPT_TOKENS

# Where `make demo` leaves its trained policy; `--model auto` serves it when present.
TRAINED_DEFAULT = "runs/demo/train/final"
BASE_MODEL = "smollm2-135m"
NO_MODEL = "none"


@dataclass
class ServeConfig:
    model: str = opt("auto", f"Policy: 'auto' (the trained PrLM checkpoint {TRAINED_DEFAULT} when it exists, "
                             f"else the base model {BASE_MODEL}), a local folder, a model name, or 'none' "
                             f"(profiles only: generate answers 503).")
    db: str = opt("profiles.sqlite", "Database of users and profiles: a SQLite file (created when missing, "
                                     "rollback journal, mode 0600) or a PostgreSQL URL "
                                     "postgresql://user@host:5432/dbname (for several API processes or machines on "
                                     "one database).")
    host: str = opt("127.0.0.1", "Address to listen on.")
    port: int = opt(8000, "Port to listen on.")
    admin_token_file: str = opt("", "File holding the admin token (else env PRLM_ADMIN_TOKEN; there is no default).")
    method: str = opt("prlm", "Prompt style: prlm (reasoning then answer), rag, or no-profile.")
    retriever: str = opt("bm25", "Default retriever when a request names none.")
    allowed_retrievers: str = opt("none,random,recency,bm25,bm25s,dense", "Comma-separated retrievers a request may "
                                                                          "ask for.")
    k: int = opt(4, "Default number of profile entries retrieved.")
    max_k: int = opt(16, "Largest k a request may ask for.")
    backend: str = opt("hf", "Generation backend: hf (transformers), vllm, or auto.")
    device: str = opt("auto", "Device: cpu, cuda, or auto.")
    max_prompt_tokens: int = opt(MAX_PROMPT_TOKENS, "Token limit of a prompt (entries share what the input leaves).")
    max_new_tokens: int = opt(96, "Tokens generated at most per answer.")
    temperature: float = opt(0.0, "0 for greedy decoding.")
    seed: int = opt(0, "Seed for sampling and random retrieval.")
    max_batch: int = opt(8, "Most generation requests run in one batch.")
    batch_window_ms: float = opt(20.0, "How long the first request of a batch waits for others to join it.")
    max_queue: int = opt(256, "Generation requests waiting at most; beyond it requests get 429.")
    max_queue_per_user: int = opt(8, "Generation requests one user may have waiting; beyond it they get 429.")
    max_body_bytes: int = opt(65536, "Largest request body accepted (413 beyond).")
    max_entry_chars: int = opt(8000, "Longest value of one entry field.")
    max_entries_per_user: int = opt(2000, "Most profile entries one user may hold.")
    max_entries_per_request: int = opt(100, "Most entries one add request may carry.")
    max_input_chars: int = opt(8000, "Longest generation input.")
    index_cache_mb: int = opt(1024, "Memory (MB, estimated) kept over all users' retrieval indexes: entries, what "
                                    "BM25 derives from them, dense embeddings (least recently used go first).")
    max_embed_per_request: int = opt(256, "Most profile entries one dense request embeds; a larger index is built "
                                          "over several requests (429 with Retry-After until it is complete).")
    max_inflight_per_user: int = opt(8, "Requests one user may have in progress at once (429 beyond): a user's "
                                        "requests cannot fill the worker threads that everyone shares.")
    rate_per_user: float = opt(0.0, "Requests per second one user may send on average (429 with Retry-After "
                                    "beyond); 0: no limit.")
    rate_burst: int = opt(60, "Requests one user may send at once above the average rate (with --rate-per-user).")
    token_ttl_days: float = opt(0.0, "Days a user token works after it is issued (then 401: the admin issues a "
                                     "new one); 0: no expiry.")
    audit_log: str = opt("", "File to append the audit log to, one JSON object a line (user creation and "
                             "deletion, token rotation, refused tokens, 403s, limits, admin token reloads).")
    metrics_token_file: str = opt("", "File holding a token that GET /metrics must carry (Bearer); empty: "
                                      "/metrics is public.")
    header_timeout_s: float = opt(10.0, "Seconds a client may take to send its request line and headers; the "
                                        "connection is closed beyond (slow clients cannot hold connections).")
    max_connections: int = opt(512, "Open connections at most; requests beyond get 503 at once.")
    tls_cert: str = opt("", "PEM certificate file: serve HTTPS (with --tls-key) and send Strict-Transport-Security.")
    tls_key: str = opt("", "PEM private key file of --tls-cert.")
    ready_check_interval_s: float = opt(5.0, "Seconds between database integrity checks; /readyz answers from "
                                             "the last one (it runs at start-up, then at most this often).")
    body_timeout_s: float = opt(10.0, "Seconds a client may take to send its request body (408 beyond).")
    keep_alive_s: float = opt(5.0, "Seconds an idle keep-alive connection stays open.")
    log_level: str = opt("info", "uvicorn log level: critical, error, warning, info, debug.")

    def __post_init__(self):
        from prlm.prompts import PROMPT_METHODS
        from prlm.retrieval import METHODS

        check_choice("method", self.method, PROMPT_METHODS)
        check_choice("backend", self.backend, ("auto", "hf", "vllm"))
        check_choice("log_level", self.log_level, ("critical", "error", "warning", "info", "debug"))
        for name in self.retrievers:
            check_choice("allowed_retrievers item", name, METHODS)
        check_choice("retriever", self.retriever, self.retrievers)
        if not self.db:
            raise PrlmError("db is required: pass --db profiles.sqlite")
        if not 0 <= self.port <= 65535:
            raise PrlmError(f"port must be in 0..65535, got {self.port}")
        for name in ("max_k", "max_prompt_tokens", "max_new_tokens", "max_batch", "max_queue", "max_body_bytes",
                     "max_entry_chars", "max_entries_per_user", "max_entries_per_request", "max_input_chars",
                     "max_queue_per_user", "index_cache_mb", "max_embed_per_request",
                     "max_inflight_per_user", "rate_burst", "max_connections"):
            if getattr(self, name) < 1:
                raise PrlmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0 <= self.k <= self.max_k:
            raise PrlmError(f"k must be in 0..max_k ({self.max_k}), got {self.k}")
        if self.temperature < 0:
            raise PrlmError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        for name in ("ready_check_interval_s", "body_timeout_s", "keep_alive_s", "header_timeout_s"):
            if getattr(self, name) <= 0:
                raise PrlmError(f"{name} must be > 0 seconds, got {getattr(self, name)}")
        if self.batch_window_ms < 0:
            raise PrlmError(f"batch_window_ms must be >= 0, got {self.batch_window_ms}")
        for name in ("rate_per_user", "token_ttl_days"):
            if getattr(self, name) < 0:
                raise PrlmError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        for name in ("admin_token_file", "metrics_token_file", "tls_cert", "tls_key"):
            if getattr(self, name) and not Path(getattr(self, name)).is_file():
                raise PrlmError(f"{name} '{getattr(self, name)}' not found")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise PrlmError("tls_cert and tls_key go together: pass both or neither")

    @property
    def retrievers(self) -> tuple[str, ...]:
        return tuple(x.strip() for x in self.allowed_retrievers.split(",") if x.strip())

    def resolved_model(self) -> str:
        """The policy to load: `auto` prefers the trained checkpoint."""
        if self.model != "auto":
            return self.model
        return TRAINED_DEFAULT if (Path(TRAINED_DEFAULT) / "config.json").is_file() else BASE_MODEL
