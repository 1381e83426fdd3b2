"""Bearer tokens: one admin token (from the environment or a file), one token per user.

Tokens are 256-bit random strings, so a plain SHA-256 is enough to store them:
there is nothing to brute-force that a slow hash would protect. Only hashes
are stored; comparisons against the admin token are constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prlm import PrlmError

ADMIN_ENV = "PRLM_ADMIN_TOKEN"
MIN_ADMIN_TOKEN_CHARS = 16
# A random token of 16+ characters has many distinct ones (secrets.token_urlsafe(32): about 30 of 43);
# fewer than this means a typed or patterned one ("aaaaaaaaaaaaaaaa", "1234567812345678").
MIN_ADMIN_TOKEN_DISTINCT = 10
USER_TOKEN_PREFIX = "prlm_u_"
TOKEN_CHARS = re.compile(r"[!-~]+", re.ASCII)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_user_token() -> str:
    return USER_TOKEN_PREFIX + secrets.token_urlsafe(32)


def load_admin_token(token_file: str = "", what: str = "admin") -> str:
    """The `what` token from `token_file`, else (admin only) from $PRLM_ADMIN_TOKEN; never a default."""
    if token_file:
        token = _read_token_file(Path(token_file), what)
        source = f"{what} token file '{token_file}'"
    else:
        token = os.environ.get(ADMIN_ENV, "").strip()
        source = f"${ADMIN_ENV}"
        if not token:
            raise PrlmError(f"no admin token: set {ADMIN_ENV} or pass --admin-token-file FILE "
                            f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > admin.token)")
    if len(token) < MIN_ADMIN_TOKEN_CHARS:
        raise PrlmError(f"the {what} token from {source} is shorter than {MIN_ADMIN_TOKEN_CHARS} characters; use a "
                        "random one")
    if not TOKEN_CHARS.fullmatch(token):
        # A header carries printable ASCII: a token with anything else (a byte-order mark, a space, a second
        # line) could never be sent, and the server would start and then refuse its own admin.
        raise PrlmError(f"the {what} token from {source} holds a character other than printable ASCII "
                        "(a byte-order mark, a space or a second line?); write the token alone on one line")
    if len(set(token)) < MIN_ADMIN_TOKEN_DISTINCT:
        raise PrlmError(f"the {what} token from {source} has only {len(set(token))} distinct characters; "
                        f"use a random one (python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    if token.startswith(USER_TOKEN_PREFIX):
        raise PrlmError(f"the {what} token from {source} must not start with '{USER_TOKEN_PREFIX}' (user tokens do)")
    return token


def _read_token_file(path: Path, what: str) -> str:
    """The token in `path`, which only its owner may read; every problem is one PrlmError line."""
    if not path.is_file():
        raise PrlmError(f"{what} token file '{path}' not found")
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise PrlmError(f"{what} token file '{path}' can be read by others (mode {mode:04o}); "
                        f"run: chmod 600 '{path}'")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise PrlmError(f"{what} token file '{path}' cannot be read: {err.strerror or err}") from None
    try:
        return raw.decode("utf-8").strip()  # the newline an editor or `echo` leaves; nothing else is dropped
    except UnicodeDecodeError:
        raise PrlmError(f"{what} token file '{path}' is not UTF-8 text; write the token as plain text") from None


class Authenticator:
    """Maps a bearer token to ('admin', None) or ('user', user_id), or None.

    `token_ttl_s` (0: none) makes a user token stop working that long after it was issued."""

    def __init__(self, admin_token: str, store, token_ttl_s: float = 0.0):
        self._admin_hash = hash_token(admin_token)
        self.store, self.token_ttl_s = store, token_ttl_s

    def set_admin_token(self, admin_token: str) -> None:
        self._admin_hash = hash_token(admin_token)  # one assignment: a request sees the old or the new hash

    def identify(self, token: str) -> tuple[str, str | None] | None:
        digest = hash_token(token)
        if hmac.compare_digest(digest, self._admin_hash):
            return "admin", None
        issued_after = None
        if self.token_ttl_s:
            issued_after = (datetime.now(UTC) - timedelta(seconds=self.token_ttl_s)).isoformat(timespec="seconds")
        user = self.store.user_for_token_hash(digest, issued_after=issued_after)
        return ("user", user) if user is not None else None
