"""Stages with skip-if-done, the mechanism under `prlm run` and `prlm sweep`.

Each stage records a fingerprint of its config (and of the stages it depends
on) in `OUT/stages/NAME.json` when it finishes; a rerun skips every stage whose
fingerprint is unchanged, so a crashed run resumes where it stopped, and a
changed option reruns what depends on it. It knows nothing of what the stages do.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from prlm.io import atomic_write_json


def fingerprint(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class Stage:
    name: str
    config: dict
    run: Callable[[], None]
    deps: list[str] = field(default_factory=list)


def run_stages(out: Path, stages: list[Stage], log=print) -> dict[str, str]:
    """Run stages in order, skipping those whose fingerprint is recorded; returns what each did."""
    prints, status = {}, {}
    for stage in stages:
        prints[stage.name] = fingerprint({"config": stage.config, "deps": [prints[d] for d in stage.deps]})
        marker = out / "stages" / f"{stage.name}.json"
        if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == prints[stage.name]:
            log(f"[{stage.name}] done earlier with the same config: skipped")
            status[stage.name] = "skipped"
            continue
        log(f"[{stage.name}] running")
        started = time.time()
        stage.run()
        atomic_write_json(marker, {"fingerprint": prints[stage.name], "config": stage.config,
                                   "wall_time_s": round(time.time() - started, 1)})
        status[stage.name] = "ran"
    return status
