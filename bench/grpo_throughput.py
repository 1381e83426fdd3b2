"""GRPO throughput at the study's shape (4 prompts x G=8, 96-token cap,
512-token prompts): completions per second of whole GRPO steps with today's
code against the code at an earlier commit (default `72f066f`, issue 27's
baseline), checked out beside in a git worktree and run by its own
`bench.grpo --side prlm`; both sides train the same recipe (the embedded
policy, bm25 k=4, stop at `</answer>`, same seed), each in its own
subprocess, the first step of each a warm-up.

A third side runs today's code with the two levers that the recipe does not
turn on (yet: the GRPO study decides on dev whether they learn as well):
bf16 autocast in the forward + backward and a bf16 sampling copy.

Then the parts of today's step against this machine's limits at that shape
(rollout to the full length; prefix-shared forward + backward), the rollout
sampled from the lighter copies of the policy (bf16, int8), and the
forward + backward under bf16 autocast.

Stock TRL is not run at 4 x 8: its 2 x 4 step already peaks at 14.7 GB
(section grpo), and four times the rows do not fit this machine's 24 GiB.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    DEFAULT_DATA,
    REPO_ROOT,
    BenchError,
    add_size_options,
    choose_sizes,
    comparison,
    measurement,
    policy_shape,
)
from bench.grpo import FULL as GRPO_FULL
from bench.grpo import against_limits, side_in_subprocess

FULL = {"throughput_steps": 3, "throughput_prompts": 4, "throughput_group": 8, "throughput_completion_tokens": 96,
        "throughput_prompt_tokens": 512, "baseline_ref": "72f066f"}
QUICK = {**FULL, "throughput_steps": 2, "throughput_prompts": 2, "throughput_group": 2,
         "throughput_completion_tokens": 8, "throughput_prompt_tokens": 256}
HELP = {"throughput_steps": "GRPO steps per side (the first is a warm-up, not timed)",
        "throughput_prompts": "distinct prompts per step", "throughput_group": "completions per prompt (G)",
        "throughput_completion_tokens": "max completion tokens", "throughput_prompt_tokens": "prompt token budget",
        "baseline_ref": "git commit whose code is the baseline"}
TARGET = 2.0  # issue 27


def add_arguments(parser) -> None:
    add_size_options(parser, FULL, QUICK, HELP)


def grpo_sizes(sizes: dict) -> dict:
    """This section's sizes in the terms of `bench.grpo` (whose side runner both sides use)."""
    return {**GRPO_FULL, **{f"grpo_{key.removeprefix('throughput_')}": value for key, value in sizes.items()
                            if key.startswith("throughput_")}}


def baseline_side(sizes: dict, data: str) -> dict:
    """The baseline commit's own `bench.grpo --side prlm`, run from a worktree of that commit."""
    ref = sizes["baseline_ref"]
    with tempfile.TemporaryDirectory() as parent:
        tree = Path(parent) / "baseline"
        made = subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "add", "--detach", str(tree), ref],
                              capture_output=True, text=True)
        if made.returncode != 0:
            raise BenchError(f"cannot check out {ref} beside: {made.stderr.strip()}")
        try:
            cmd = [sys.executable, "-m", "bench.grpo", "--side", "prlm", "--sizes", json.dumps(grpo_sizes(sizes)),
                   "--data", data]
            env = {**os.environ, "TQDM_DISABLE": "1", "PYTHONPATH": f"{tree / 'src'}:{tree}"}
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=tree, env=env)
            if done.returncode != 0:
                raise RuntimeError(f"baseline side at {ref} failed:\n{done.stderr[-3000:]}")
            return json.loads(done.stdout.strip().splitlines()[-1])
        finally:
            subprocess.run(["git", "-C", str(REPO_ROOT), "worktree", "remove", "--force", str(tree)],
                           capture_output=True)


def parts(sizes: dict, data: str, repeats: int) -> dict:
    """Median seconds of today's rollout (fp32 policy, bf16 and int8 copies) and forward + backward."""
    import torch

    from bench.grpo import train_config
    from prlm.models import load_policy
    from prlm.training.grpo import training_rows
    from prlm.training.prefix_sharing import prefix_shared_logps
    from prlm.training.rollout import sample_shared_prefix
    from prlm.training.sampling_copy import SamplingCopy

    model, tok = load_policy(sizes["grpo_policy"], device="cpu")
    rows = training_rows(train_config(sizes, data, "prlm", "unused"), tok)
    prompts, group, new = [r["prompt"] for r in rows[:sizes["grpo_prompts"]]], sizes["grpo_group"], sizes[
        "grpo_completion_tokens"]
    times = {}

    def timed(name, work):
        work()  # one-off costs (allocations, kernel selection, the stop table) are not timed
        runs = []
        for _ in range(repeats):
            model.zero_grad()
            start = time.perf_counter()
            work()
            runs.append(time.perf_counter() - start)
        times[name] = round(statistics.median(runs), 3)

    def rollout(sampler):  # to the full length (no EOS), as the bound assumes
        return lambda: sample_shared_prefix(sampler, tok, prompts, [group] * len(prompts), new, temperature=0.9,
                                            eos_token_ids=(-1,))

    timed("rollout, shared prefix", rollout(model))
    for kind in ("bf16", "int8"):
        timed(f"rollout, shared prefix, {kind} copy", rollout(SamplingCopy(kind).of(model, 0)))
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    total = len(prompts) * group
    ids = torch.cat([enc["input_ids"].repeat_interleave(group, 0), torch.randint(100, 10_000, (total, new))], 1)
    mask = torch.cat([enc["attention_mask"].repeat_interleave(group, 0), torch.ones(total, new, dtype=torch.long)],
                     1)
    model.train()
    timed("policy forward + backward, prefix-shared",
          lambda: prefix_shared_logps(model, ids, mask, new, 0.9, True)[0].sum().backward())

    def bf16_pass():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logps = prefix_shared_logps(model, ids, mask, new, 0.9, True)[0]
        logps.sum().backward()
    timed("policy forward + backward, prefix-shared, bf16 autocast", bf16_pass)
    limits = against_limits(times, policy_shape(model), int(enc["attention_mask"].sum()), total, new, "cpu")
    return times, limits


def run(quick: bool, args=None) -> dict:
    sizes = choose_sizes(args, FULL, QUICK, quick)
    data = getattr(args, "data", None) or str(DEFAULT_DATA)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    side_sizes = grpo_sizes(sizes)
    completions = side_sizes["grpo_prompts"] * side_sizes["grpo_group"]
    levers = {**side_sizes, "grpo_bf16": True, "grpo_sampling_copy": "bf16"}
    sides = {"baseline": baseline_side(sizes, data), "today": side_in_subprocess("prlm", side_sizes, data),
             "levers": side_in_subprocess("prlm", levers, data)}
    labels = {"baseline": f"prlm at {sizes['baseline_ref']}", "today": "prlm today (the recipe: fp32)",
              "levers": "prlm today, bf16 autocast + bf16 sampling copy"}
    measured = {name: measurement(labels[name], r["step_s"][1:] or r["step_s"], completions, "completions/s",
                                  peak_rss_gb=r["peak_rss_gb"], completion_tokens_mean=r["completion_tokens_mean"])
                for name, r in sides.items()}
    shape = f"{side_sizes['grpo_prompts']} x {side_sizes['grpo_group']}, {side_sizes['grpo_completion_tokens']} tokens"
    step = comparison(f"GRPO throughput ({shape})", measured["baseline"], measured["today"], target=TARGET)
    with_levers = comparison(f"GRPO throughput ({shape}), with the levers the recipe does not turn on",
                             measured["baseline"], measured["levers"], target=TARGET)
    times, limits = parts(side_sizes, data, repeats)
    line = (f"GRPO throughput ({shape}): {measured['today']['rate']:.3g} completions/s against "
            f"{measured['baseline']['rate']:.3g} at {sizes['baseline_ref']}: **{step['ratio']:.2f} x**")
    notes = [line, f"With bf16 autocast and a bf16 sampling copy (not the recipe's settings): "
                   f"{measured['levers']['rate']:.3g} completions/s, **{with_levers['ratio']:.2f} x**"]
    if not step["target_met"]:
        notes.append(f"Throughput target ({TARGET}x) not met: where the time goes is in the parts below.")
    return {"title": "GRPO throughput", "sizes": {**sizes, "repeats (parts)": repeats},
            "comparisons": [step, with_levers],
            "profile": {"today's parts, median seconds": times,
                        "today's parts against this machine's limits (fp32, torch's threads)": limits},
            "notes": notes}
