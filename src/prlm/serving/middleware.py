"""Pure ASGI middleware: metrics and security headers, the body limit, authentication; the page's CSP."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import re
import time
from collections.abc import Callable, Sequence

from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match

from prlm.serving.metrics import Metrics, method_label
from prlm.serving.state import Principal, ServerState
from prlm.serving.store import StoreError

log = logging.getLogger("prlm.serve")


class Measure:
    """Pure ASGI, outermost: times every request into the metrics, adds the security headers to every
    answer, and tells a client that left from a server error.

    A client that disconnects before its answer (mid-upload, or while its generation waits) is counted
    as a disconnect and logged in one line, never as a 5xx. An exception that escapes the app is logged
    once with its traceback and answered 500 here (nothing outside re-raises it).
    """

    def __init__(self, app, metrics: Metrics, route_of: Callable[[dict], str], page_csp: str, hsts: bool = False):
        self.app, self.metrics, self.route_of, self.page_csp = app, metrics, route_of, page_csp
        self.extra = [HSTS] if hsts else []

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
                                                                          self.page_csp) + self.extra}
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


def route_template(routes: Sequence[BaseRoute], scope) -> str:
    """The matched route's template; answers given before routing (401, 413) are matched here."""
    route = scope.get("route")
    if route is not None:
        return route.path
    for candidate in routes:
        if candidate.matches(scope)[0] != Match.NONE:
            return candidate.path
    return "unmatched"


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
# Served over TLS (--tls-cert): browsers keep to HTTPS for this host for a year.
HSTS = (b"strict-transport-security", b"max-age=31536000")
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


class BodyLimit:
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


class Authenticate:
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
            self.state.audit.record("auth.refused", "anonymous", status=401, client=client_host(scope))
            return await _send_401(send, "unknown, expired or revoked token")
        who = Principal(*ident)
        scope.setdefault("state", {})["principal"] = who
        if who.user_id is None:  # the admin provisions; the per-user limits are for users
            return await self.app(scope, receive, send)
        refused = self.state.limits.admit(who.user_id)
        if refused is not None:
            why, wait = refused
            self.state.audit.record("limit.refused", who.user_id, status=429, client=client_host(scope), detail=why)
            return await _send_json(send, 429, why, headers=[(b"retry-after", str(wait).encode())])
        try:
            return await self.app(scope, receive, send)
        finally:
            self.state.limits.release(who.user_id)


def client_host(scope) -> str | None:
    client = scope.get("client")
    return client[0] if client else None


def _retry_after(err: StoreError) -> list:
    return [(b"retry-after", b"5")] if err.status == 503 else []


async def _send_401(send, detail: str):
    await _send_json(send, 401, detail, headers=[(b"www-authenticate", b"Bearer")])
