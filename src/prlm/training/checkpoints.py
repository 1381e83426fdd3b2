"""Training checkpoints, one home for `prlm train` and `prlm sft`: TRL's `checkpoint-N` folders under
OUT/checkpoints (weights, optimizer, data position, RNG), which one to resume from, and the refusal to train
over them without --resume (a second run would interleave its steps with the first's)."""

from __future__ import annotations

from pathlib import Path

from prlm import PrlmError


def last_checkpoint(out: str | Path) -> Path | None:
    """The complete checkpoint of the highest step under OUT/checkpoints (one TRL finished writing), if any."""
    folder = Path(out) / "checkpoints"
    done = [p for p in folder.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
    return max(done, key=checkpoint_step, default=None)


def checkpoint_step(checkpoint: Path) -> int:
    """The optimizer step a TRL `checkpoint-N` folder was saved at."""
    return int(checkpoint.name.split("-")[-1])


def checkpoint_to_resume(out: str | Path, resume: bool) -> Path | None:
    """The last complete checkpoint to continue from when `resume`; refuses to train over checkpoints
    without it. --resume without a checkpoint starts afresh (a background job may be (re)started blindly)."""
    checkpoint = last_checkpoint(out)
    if checkpoint is not None and not resume:
        raise PrlmError(f"'{out}' already holds checkpoints: pass --resume to continue, or choose another --out")
    return checkpoint if resume else None
