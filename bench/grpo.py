"""GRPO step: prlm's step (shared-prefix rollouts + prefix-shared log-prob
passes) against stock TRL GRPOTrainer, same model, data, batch, lengths, beta
and seed, on the real-data recipe's prompts (git-commit-subject, bm25, k=4).

Each side runs in its own subprocess so that its peak RSS is its own.
Run one side alone: python -m bench.grpo --side prlm --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

DATA = "../shared/data/git-commit-subject"
SIDES = {"stock-trl": dict(rollout="trl", prefix_sharing=False),
         "prlm": dict(rollout="shared-prefix", prefix_sharing=True)}


def recipe(quick: bool) -> dict:
    """The CPU real-data recipe's step shape (configs/cpu-commit-subject.yaml)."""
    return dict(task="commit-subject", data=DATA, limit=16, retriever="bm25", k=4, max_prompt_tokens=512,
                prompts_per_step=2, num_generations=4, max_completion_length=32 if quick else 96,
                temperature=0.9, learning_rate=5e-6, beta=0.0, w_pers=0.0, sft_steps=0, seed=0,
                report_to="none")


def run_side(side: str, steps: int, quick: bool) -> dict:
    """Train `steps` GRPO steps in this process; per-step times and lengths from the step log."""
    from prlm.training.config import TrainConfig
    from prlm.training.grpo import train_grpo

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(**recipe(quick), **SIDES[side], out=out, max_steps=steps, save_steps=10_000)
        train_grpo(cfg)
        rows = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    return {"step_s": [r["step_time_s"] for r in rows],
            "completion_tokens_mean": [r.get("completions/mean_length") for r in rows],
            "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def run(quick: bool = False, steps: int | None = None) -> dict:
    """Both sides, each in a subprocess; the first step of each is a warm-up and not counted."""
    steps = steps or (2 if quick else 4)
    results = {}
    for side in SIDES:
        cmd = [sys.executable, "-m", "bench.grpo", "--side", side, "--steps", str(steps)] + (["--quick"] if quick else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
        if done.returncode != 0:
            raise RuntimeError(f"GRPO bench side {side} failed:\n{done.stderr[-3000:]}")
        results[side] = json.loads(done.stdout.strip().splitlines()[-1])
        timed = results[side]["step_s"][1:] or results[side]["step_s"]
        results[side]["median_step_s"] = statistics.median(timed)
    results["speedup"] = results["stock-trl"]["median_step_s"] / results["prlm"]["median_step_s"]
    results["config"] = {**recipe(quick), "steps": steps, "timed_steps": "all but the first"}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=sorted(SIDES), help="run one side in this process and print its JSON")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.steps or 4, args.quick)))
    else:
        print(json.dumps(run(args.quick, args.steps), indent=2))


if __name__ == "__main__":
    main()
