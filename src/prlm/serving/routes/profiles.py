"""Profiles: the task table (public) and a user's own entries: add (all or none), list, delete."""

from __future__ import annotations

import re
from datetime import date

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi import Path as PathParam

from prlm.data.tasks import TASKS
from prlm.serving.access import get_state, owner, task_or_422
from prlm.serving.config import ServeConfig
from prlm.serving.schemas import ENTRY_ID_PATTERN, AddEntries, EntriesAdded, EntryDeleted, EntryList
from prlm.serving.state import ServerState

DATE_PATTERN = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", re.ASCII)

router = APIRouter(tags=["profiles"])


@router.get("/v1/tasks", summary="Tasks and the fields their profile entries carry (public)")
def tasks():
    return {"tasks": [{"name": t.name, "entry_fields": list(t.entry_fields), "output_name": t.output_name,
                       "input_prefix": t.input_prefix} for t in TASKS.values()]}


def check_entries(cfg: ServeConfig, task, entries: list[dict]) -> list[dict]:
    if len(entries) > cfg.max_entries_per_request:
        raise HTTPException(422, f"at most {cfg.max_entries_per_request} entries per request, got {len(entries)}")
    allowed = set(task.entry_fields)
    out = []
    for i, entry in enumerate(entries):
        keys = set(entry) - {"id"}
        missing, unknown = sorted(allowed - keys), sorted(keys - allowed)
        if missing or unknown:
            raise HTTPException(422, f"entries[{i}]: " + "; ".join(
                ([f"missing field(s) {', '.join(missing)}"] if missing else [])
                + ([f"unknown field(s) {', '.join(unknown)}"] if unknown else []))
                + f" (task {task.name} entries carry: {', '.join(task.entry_fields)}, and an optional id)")
        for name, value in entry.items():
            _check_value(cfg, i, name, value)
        if "id" in entry:
            if not re.fullmatch(ENTRY_ID_PATTERN, entry["id"]):
                raise HTTPException(422, f"entries[{i}].id: use letters, digits, '_', '.', ':', '-' (at most 64)")
        if "date" in entry:
            try:
                if not DATE_PATTERN.fullmatch(entry["date"]):  # fromisoformat also takes 2024-W01-1
                    raise ValueError
                date.fromisoformat(entry["date"])
            except ValueError:
                raise HTTPException(422, f"entries[{i}].date: '{entry['date'][:20]}' is not a date YYYY-MM-DD"
                                    ) from None
        out.append(dict(entry))
    return out


def _check_value(cfg: ServeConfig, i: int, name: str, value) -> None:
    if not isinstance(value, str):
        raise HTTPException(422, f"entries[{i}].{name}: must be a string")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a \udXXX escape: not text the store can keep
        raise HTTPException(422, f"entries[{i}].{name}: not valid Unicode text (lone surrogate)") from None
    if len(value) > cfg.max_entry_chars:
        raise HTTPException(422, f"entries[{i}].{name}: {len(value)} characters, "
                                 f"over the limit of {cfg.max_entry_chars}")


@router.post("/v1/users/{user_id}/entries", status_code=201, response_model=EntriesAdded,
             summary="Add profile entries (all or none); answered once committed")
def add_entries(body: AddEntries, user_id: str = Depends(owner), state: ServerState = Depends(get_state)):
    task = task_or_422(body.task)
    entries = check_entries(state.cfg, task, body.entries)
    ids, version = state.store.add_entries(user_id, task.name, entries, state.cfg.max_entries_per_user)
    return EntriesAdded(user_id=user_id, task=task.name, ids=ids, version=version)


@router.get("/v1/users/{user_id}/entries", response_model=EntryList,
            summary="List profile entries, optionally of one task")
def list_entries(user_id: str = Depends(owner), task: str | None = Query(None),
                 state: ServerState = Depends(get_state)):
    name = task_or_422(task).name if task is not None else None
    version = state.store.version(user_id)
    return EntryList(user_id=user_id, version=version, entries=state.store.list_entries(user_id, name))


@router.delete("/v1/users/{user_id}/entries/{entry_id}", response_model=EntryDeleted,
               summary="Delete one profile entry")
def delete_entry(entry_id: str = PathParam(pattern=ENTRY_ID_PATTERN), user_id: str = Depends(owner),
                 state: ServerState = Depends(get_state)):
    version = state.store.delete_entry(user_id, entry_id)
    if state.engine is not None:  # nothing derived from the deleted entry stays in memory
        state.engine.index.refresh(user_id)
    state.audit.record("entry.delete", user_id, target=user_id, status=200, detail=entry_id)
    return EntryDeleted(user_id=user_id, deleted=entry_id, version=version)
