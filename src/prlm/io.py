"""Atomic file writes, JSONL helpers and output-folder checks: nothing is ever
left half-written, files get the modes the user's umask gives (so datasets and
run folders can be shared on a cluster), and an output folder that cannot be
written, or that holds files prlm did not make, is refused before any work starts."""

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


# A prlm output folder holds this file: the only folders a command writes into are those it made
# (or that are empty), so a path that points at the user's own files is refused instead of overwritten.
OUTPUT_MARKER = ".prlm-output.json"
# Folders made before the marker existed are recognised by what prlm writes first in them: a run or study
# folder by these names, a dataset by its meta.json (which says which command made it).
_LEGACY_SIGNS = ("stages", "summary.json", "train_config.json", "checkpoints", "train_log.jsonl", "study.yaml",
                 "prlm_rm_config.json")
_LEGACY_DATA = {"prlm data synth": ("generator", "prlm.data.synthetic"),
                "prlm data from-git": ("source", "git log --no-merges")}


def folder_maker(path: str | Path) -> str | None:
    """Which prlm command made the folder ('' when it is new or empty, 'prlm' for a run folder made before the
    marker), or None when it holds files prlm did not make."""
    path = Path(path).expanduser()
    if not path.is_dir():
        return None if path.exists() else ""
    names = {entry.name for entry in path.iterdir()}
    if not names:
        return ""
    if OUTPUT_MARKER in names:
        return str(_read_json_or_empty(path / OUTPUT_MARKER).get("made_by", "prlm"))
    if names & set(_LEGACY_SIGNS):
        return "prlm"
    meta = _read_json_or_empty(path / "meta.json") if "meta.json" in names else {}
    return next((maker for maker, (key, value) in _LEGACY_DATA.items() if meta.get(key) == value), None)


def _read_json_or_empty(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def check_not_users_folder(path: str | Path, option: str = "--out", fix: str = "", made_by: str = "") -> None:
    """Refuse a folder that holds files prlm did not make, or, with `made_by`, that another command made (a
    dataset from `from-git` is no place for the synthetic set): they would be overwritten. `fix` says what to do."""
    from prlm import PrlmError

    maker = folder_maker(path)
    if maker is None:
        raise PrlmError(f"{option} '{path}' holds files prlm did not make (no {OUTPUT_MARKER}), which would be "
                        f"overwritten; {fix or 'choose a new or empty folder'}")
    if made_by and maker and maker != made_by and not (maker == "prlm" and made_by not in _LEGACY_DATA):
        raise PrlmError(f"{option} '{path}' was made by `{maker}`, which `{made_by}` would overwrite; "
                        f"{fix or 'choose a new or empty folder'}")


def check_output_dir(path: str | Path, option: str = "--out", fix: str = "", made_by: str = "") -> None:
    """Refuse an output folder that cannot be made or written, or that holds the user's own files, before any
    work starts (otherwise the failure comes at the first write, after the whole generation or training).
    Writability is tried with a temporary file (permissions lie as root, and /proc or /sys refuse files
    whatever they say); nothing is left behind."""
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
    what = "folder" if existing == path else f"nearest existing folder '{existing}'"
    if not os.access(existing, os.W_OK | os.X_OK) or not _can_create_file(existing):
        raise PrlmError(f"{option} '{path}': the {what} is not writable by this user; "
                        "choose a writable path or fix its permissions")
    check_not_users_folder(path, option, fix, made_by)


def _can_create_file(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".prlm-write-test."):
            return True
    except OSError:
        return False


def claim_output_dir(path: str | Path, made_by: str, option: str = "--out", fix: str = "") -> Path:
    """The output folder, checked (`check_output_dir`), created, and marked as prlm's so that later runs
    may write into it again. Call it when the work starts writing, after the inputs were checked."""
    check_output_dir(path, option, fix, made_by)
    path = Path(path).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    marker = path / OUTPUT_MARKER
    if not marker.is_file():
        from datetime import UTC, datetime

        atomic_write_json(marker, {"made_by": made_by, "created": datetime.now(UTC).isoformat(timespec="seconds")})
    return path
