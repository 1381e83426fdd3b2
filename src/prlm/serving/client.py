"""A small blocking JSON client (standard library only) for the load and fault tests.

It refuses any host that is not a loopback address: these tests only ever
send traffic to a server on this machine.
"""

from __future__ import annotations

import http.client
import ipaddress
import json
import socket
from urllib.parse import urlsplit

from prlm import PrlmError


def loopback_url(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise PrlmError(f"url '{url}' must look like http://127.0.0.1:8000")
    host = parts.hostname
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise PrlmError(f"url '{url}' is not a loopback address; these tests only target this machine (127.0.0.1, "
                        "::1)")
    return host, parts.port or 80


class Client:
    """One keep-alive connection; reconnects after a failure."""

    def __init__(self, url: str, token: str = "", timeout: float = 120.0):
        self.host, self.port = loopback_url(url)
        self.token, self.timeout = token, timeout
        self._conn: http.client.HTTPConnection | None = None

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def request(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict | str]:
        """(status, parsed JSON or text); raises OSError/http.client errors when the server is unreachable."""
        headers = {}
        token = self.token if token is None else token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        reused = self._conn is not None
        try:
            response, raw = self._send(method, path, data, headers)
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            # The server closes a keep-alive connection left idle (uvicorn: after 5 s). A read is
            # safe to send again on a fresh one; a write is not (it may have landed), so it raises.
            if not (reused and method in ("GET", "HEAD")):
                raise
            response, raw = self._send(method, path, data, headers)
        text = raw.decode("utf-8", errors="replace")
        if response.getheader("content-type", "").startswith("application/json"):
            return response.status, json.loads(text)
        return response.status, text


    def _send(self, method: str, path: str, data, headers):
        if self._conn is None:
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        try:
            self._conn.request(method, path, body=data, headers=headers)
            response = self._conn.getresponse()
            return response, response.read()
        except (OSError, http.client.HTTPException):
            self.close()  # the next request opens a fresh connection
            raise


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
