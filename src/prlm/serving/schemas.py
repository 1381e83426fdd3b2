"""The API's wire format: request and response bodies, id patterns, and the JSON response class."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StrictInt, field_validator

USER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ENTRY_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$"


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


class UserDeleted(BaseModel):
    user_id: str
    entries_erased: int


class Me(BaseModel):
    user_id: str | None
    role: str


class AddEntries(_Strict):
    task: str = Field(description="Task name; its entry fields are listed by GET /v1/tasks.")
    entries: list[dict[str, Any]] = Field(min_length=1,
                                          description="Entries with the task's fields (and an optional id).")


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
    k: StrictInt | None = Field(None, description="Entries retrieved (default: the server's); a JSON integer.")


class Hit(BaseModel):
    id: str
    score: float


class Timings(BaseModel):
    """Whole milliseconds the request took, as one total: any per-stage figure lets a client subtract its
    way to retrieval time, a side channel on profiles (and on other users' activity). Stage times go to
    /metrics, summed over all users."""

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
