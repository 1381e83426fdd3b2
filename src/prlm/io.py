"""Atomic file writes, JSONL helpers and output-folder checks: nothing is ever
left half-written, files get the modes the user's umask gives (so datasets and
run folders can be shared on a cluster), and an output folder that cannot be
written is refused before any work starts."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask can
    only be read by setting it, which races with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write to a temporary file beside `path`, then rename it into place.

    mkstemp creates the file 0600 whatever the umask; it gets 0666 & ~umask
    (0644 with the usual umask 022), as `open()` would have made it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | Path, obj: Any, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")


def atomic_write_jsonl(path: str | Path, rows: Iterable[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                from prlm import PrlmError

                raise PrlmError(f"{path}: line {number}: not valid JSON ({err.msg})") from None
    return rows


def check_output_dir(path: str | Path, option: str = "--out") -> None:
    """Refuse an output folder that cannot be made or written, before any work starts
    (otherwise the failure comes at the first write, after the whole generation or
    training). Creates nothing."""
    from prlm import PrlmError

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise PrlmError(f"{option} '{path}' is an existing file, not a folder; choose a folder path "
                        "(it is created when missing)")
    existing = path
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise PrlmError(f"{option} '{path}': '{existing}' is a file, so no folder can be made under it; "
                        "choose another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "folder" if existing == path else f"nearest existing folder '{existing}'"
        raise PrlmError(f"{option} '{path}': the {what} is not writable by this user; "
                        "choose a writable path or fix its permissions")
