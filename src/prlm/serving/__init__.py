"""Serving: a personalized generation API over a durable per-user profile store.

Modules: `config` (ServeConfig), `store` (the ProfileStore interface and its
SQLite implementation), `auth` (tokens), `index` (per-user retrieval indexes,
rebuilt when a profile changes), `batcher` (generation requests batched across
users), `engine` (retrieval, prompt, generation and parsing: the evaluation
code, not copies), `app` (FastAPI), `metrics`, `loadtest` and `faulttest`.
"""
