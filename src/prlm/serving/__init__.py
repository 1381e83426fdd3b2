"""Serving: a personalized generation API over a durable per-user profile store.

Modules: `config` (ServeConfig), `store` (the ProfileStore interface and its
SQLite implementation), `pgstore` (PostgreSQL), `storage` (`open_store`: the
store a `--db` value names), `auth` (tokens), `batcher` (generation requests
batched across users), `engine` (retrieval, prompt, generation and parsing:
the evaluation code, not copies; per-user retrieval indexes, rebuilt when a
profile changes), `metrics`, and the FastAPI application: `app` (create_app,
`prlm serve`) built from `state` (ServerState), `middleware` (pure ASGI),
`access` (dependencies: state, principal, admin, owner), `schemas` (bodies),
`errors` (exception handlers) and `routes` (one router an area).
The load and fault test scripts are developer tools in `tools/` at the
repository root.
"""
