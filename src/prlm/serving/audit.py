"""The audit log: one JSON object a line for every administrative and security event.

Who (`actor`: 'admin', a user id, or 'anonymous'), what (`event`, its `target` user and `status`), when
(`time`, UTC) and from where (`client`). Never a token, a token's hash or profile text: the fields are
fixed here, and the values are ids the API has already checked against its id patterns.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import UTC, datetime

log = logging.getLogger("prlm.audit")


class AuditLog:
    """Appends to `path` (created 0600); with no path the events go to the 'prlm.audit' logger only."""

    def __init__(self, path: str = ""):
        self.path = path
        self._lock = threading.Lock()
        self._file = None
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")

    def record(self, event: str, actor: str, target: str | None = None, status: int | None = None,
               client: str | None = None, detail: str | None = None) -> None:
        line = {"time": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": event, "actor": actor}
        for name, value in (("target", target), ("status", status), ("client", client), ("detail", detail)):
            if value is not None:
                line[name] = value
        text = json.dumps(line, ensure_ascii=True, separators=(",", ":"))
        log.info("%s", text)
        if self._file is not None:
            with self._lock:  # one line a write, flushed: a crash loses no acknowledged event
                self._file.write(text + "\n")
                self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
