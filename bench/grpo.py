"""GRPO step: prlm's step (shared-prefix rollouts + prefix-shared log-prob
passes) against stock TRL GRPOTrainer with the same model, data, batch,
lengths, beta and seed, on the CPU real-data recipe's prompts
(git-commit-subject train questions, bm25, k=4, 512-token prompts).

Each side trains in its own subprocess so that its peak RSS is its own; the
first step of each side is a warm-up and is not timed. With the same seed both
sides sample the same tokens (both draw with torch.multinomial from the same
probabilities), so they do the same work, except that prlm's rollout ends a
completion right after `</answer>` (stop_at_answer, as evaluation does) where
TRL's runs on to EOS; the mean completion length is recorded to show it.
Both prompts' groups decode as one batch on both sides. A second, in-process profile times the two parts of a
step that prlm replaces: the rollout and the policy's forward + backward.

One side alone: python -m bench.grpo --side prlm --steps 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import (
    DEFAULT_DATA,
    add_size_options,
    choose_sizes,
    comparison,
    matmul_gflops,
    measurement,
    policy_shape,
    weight_stream_gbs,
)

SIDES = {"stock-trl": dict(rollout="trl", prefix_sharing="off"),
         "prlm": dict(rollout="shared-prefix", prefix_sharing="on")}
FULL = {"grpo_policy": "smollm2-135m", "grpo_device": "cpu", "grpo_steps": 4, "grpo_prompts": 2, "grpo_group": 4,
        "grpo_completion_tokens": 96, "grpo_prompt_tokens": 512, "grpo_beta": 0.0}
QUICK = {**FULL, "grpo_steps": 2, "grpo_completion_tokens": 16, "grpo_prompt_tokens": 256}
HELP = {"grpo_policy": "policy: 'smollm2-135m' (embedded), a local folder or a Hugging Face id",
        "grpo_device": "cpu (fp32) or cuda (bf16 autocast, as the GPU recipe)",
        "grpo_steps": "GRPO steps per side (the first is a warm-up, not timed)",
        "grpo_prompts": "distinct prompts per step", "grpo_group": "completions per prompt (G)",
        "grpo_completion_tokens": "max completion tokens", "grpo_prompt_tokens": "prompt token budget",
        "grpo_beta": "KL coefficient (0 = no reference model, the recipe's value)"}
TARGET = 3.5  # issue 13 (2.0 before)


def add_arguments(parser) -> None:
    add_size_options(parser, FULL, QUICK, HELP)


def train_config(sizes: dict, data: str, side: str, out: str):
    from prlm.training.config import TrainConfig

    return TrainConfig(task="commit-subject", data=data, limit=8 * sizes["grpo_prompts"], retriever="bm25", k=4,
                       max_prompt_tokens=sizes["grpo_prompt_tokens"], prompts_per_step=sizes["grpo_prompts"],
                       num_generations=sizes["grpo_group"], max_completion_length=sizes["grpo_completion_tokens"],
                       beta=sizes["grpo_beta"], temperature=0.9, learning_rate=5e-6, w_pers=0.0, sft_steps=0,
                       seed=0, report_to="none", out=out, max_steps=sizes["grpo_steps"], save_steps=10_000,
                       model=sizes["grpo_policy"], use_cpu=sizes["grpo_device"] == "cpu",
                       # the throughput section's lever side may turn these on; the recipe's CPU run has neither
                       bf16=sizes.get("grpo_bf16", sizes["grpo_device"] != "cpu"),
                       sampling_copy=sizes.get("grpo_sampling_copy", "off"), **SIDES[side])


def run_side(side: str, sizes: dict, data: str) -> dict:
    """Train in this process; per-step wall times and completion lengths from the step log."""
    from prlm.training.grpo import train_grpo

    with tempfile.TemporaryDirectory() as out:
        train_grpo(train_config(sizes, data, side, out))
        rows = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    return {"step_s": [r["step_time_s"] for r in rows],
            "completion_tokens_mean": [r.get("completions/mean_length") for r in rows],
            "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def side_in_subprocess(side: str, sizes: dict, data: str) -> dict:
    cmd = [sys.executable, "-m", "bench.grpo", "--side", side, "--sizes", json.dumps(sizes), "--data", data]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    if done.returncode != 0:
        raise RuntimeError(f"GRPO bench side {side} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def profile_parts(sizes: dict, data: str, repeats: int) -> dict:
    """Median seconds of a rollout and of the policy's forward + backward, stock vs prlm, on one batch."""
    import statistics

    import torch
    from trl.trainer.utils import add_fused_lm_head

    from prlm.models import load_policy
    from prlm.training.grpo import training_rows
    from prlm.training.prefix_sharing import prefix_shared_logps
    from prlm.training.rollout import sample_shared_prefix

    device = sizes["grpo_device"]
    model, tok = load_policy(sizes["grpo_policy"], device=device)
    rows = training_rows(train_config(sizes, data, "prlm", "unused"), tok)
    prompts, group, new = [r["prompt"] for r in rows[:sizes["grpo_prompts"]]], sizes["grpo_group"], sizes[
        "grpo_completion_tokens"]
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    times = {}
    with torch.inference_mode():  # first calls pay one-off costs (allocations, kernel selection): not timed
        model.generate(**enc, do_sample=False, max_new_tokens=2)

    def timed(name, work):
        runs = []
        for _ in range(repeats):
            model.zero_grad()
            start = time.perf_counter()
            work()
            if device != "cpu":
                torch.cuda.synchronize()
            runs.append(time.perf_counter() - start)
        times[name] = round(statistics.median(runs), 3)

    # Rollouts run to the full length (no EOS) so both sides decode the same number of tokens.
    timed("rollout, HF generate(num_return_sequences=G)", lambda: model.generate(
        **enc, do_sample=True, temperature=0.9, num_return_sequences=group, max_new_tokens=new, min_new_tokens=new))
    timed("rollout, shared prefix", lambda: sample_shared_prefix(
        model, tok, prompts, [group] * len(prompts), new, temperature=0.9, eos_token_ids=(-1,)))
    rows_total = len(prompts) * group
    ids = torch.cat([enc["input_ids"].repeat_interleave(group, 0),
                     torch.randint(100, 10_000, (rows_total, new), device=device)], 1)
    mask = torch.cat([enc["attention_mask"].repeat_interleave(group, 0),
                      torch.ones(rows_total, new, dtype=torch.long, device=device)], 1)
    add_fused_lm_head(model, temperature=0.9, outputs=("log_probs", "entropy"))
    model.train()
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :-new] = -100
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device != "cpu")

    def stock_pass():
        with autocast:
            model(input_ids=ids, attention_mask=mask, labels=labels,
                  fused_lm_head=True).log_probs[:, -new:].sum().backward()

    def shared_pass():
        with autocast:
            prefix_shared_logps(model, ids, mask, new, 0.9, True)[0].sum().backward()
    timed("policy forward + backward, TRL (every row in full)", stock_pass)
    timed("policy forward + backward, prefix-shared", shared_pass)
    prompt_tokens = int(enc["attention_mask"].sum())
    return times, against_limits(times, policy_shape(model), prompt_tokens, rows_total, new, device)


def against_limits(times: dict, shape: dict, prompt_tokens: int, rows: int, new: int, device: str) -> dict:
    """Each part of prlm's step next to the least time this machine's limits allow for its work.

    Rollout: `new` decoding steps, each streaming every fp32 weight once, plus
    the prefill of the distinct prompts (2 FLOPs per body parameter per token).
    Forward + backward (prefix-shared): 6 FLOPs per body parameter per token
    (prompts once, every completion token) plus the LM head on the completion
    positions only. Measured now, next to the parts, since the machine is shared.
    """
    if device != "cpu":
        return {"note": "limits are measured on the CPU only"}
    gflops, gbs = matmul_gflops(), weight_stream_gbs(round(shape["weight_bytes"] / 2**20))
    decode_s = new * shape["weight_bytes"] / (gbs * 1e9)
    prefill_s = 2 * shape["body_params"] * prompt_tokens / (gflops * 1e9)
    train_flops = 6 * shape["body_params"] * (prompt_tokens + rows * new) + 6 * shape["head_params"] * rows * new
    train_s = train_flops / (gflops * 1e9)
    rollout, train = times["rollout, shared prefix"], times["policy forward + backward, prefix-shared"]
    return {"fp32 matmul GFLOP/s (measured now)": round(gflops, 1),
            "fp32 weight streaming GB/s (measured now)": round(gbs, 2),
            "rollout: bound s (decode steps x weights / GB/s + prefill FLOPs / "
            "GFLOP/s)": round(decode_s + prefill_s, 3),
            "rollout: measured s / bound": round(rollout / (decode_s + prefill_s), 2),
            "rollout: decoding's share of the bound": round(decode_s / (decode_s + prefill_s), 2),
            "forward + backward: bound s (model FLOPs / GFLOP/s)": round(train_s, 3),
            "forward + backward: measured s / bound": round(train / train_s, 2),
            "forward + backward: achieved GFLOP/s": round(train_flops / train / 1e9, 1)}


def run(quick: bool, args=None) -> dict:
    sizes = choose_sizes(args, FULL, QUICK, quick)
    data = getattr(args, "data", None) or str(DEFAULT_DATA)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    sides = {side: side_in_subprocess(side, sizes, data) for side in SIDES}
    measured = {side: measurement(side, r["step_s"][1:] or r["step_s"], 1, "steps/s",
                                  peak_rss_gb=r["peak_rss_gb"], completion_tokens_mean=r["completion_tokens_mean"])
                for side, r in sides.items()}
    step = comparison("GRPO step (seconds per step)", measured["stock-trl"], measured["prlm"], target=TARGET)
    rss = {f"peak RSS of the {side} training process, GB": r["peak_rss_gb"] for side, r in sides.items()}
    rss.update({f"mean completion tokens per step, {side}": r["completion_tokens_mean"] for side, r in sides.items()})
    parts, limits = profile_parts(sizes, data, repeats)
    notes = [] if step["target_met"] else [
        f"GRPO step target not met: {step['ratio']:.2f}x. Where the time goes is in the profile of the parts above."]
    return {"title": "GRPO step", "sizes": {**sizes, "repeats (parts profile)": repeats}, "comparisons": [step],
            "profile": {"memory and work": rss, "the parts prlm replaces, median seconds": parts,
                        "prlm's parts against this machine's limits (fp32, torch's threads)": limits},
            "notes": notes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", choices=sorted(SIDES), required=True, help="run one side and print its JSON")
    parser.add_argument("--sizes", default=json.dumps(FULL), help="JSON of the section's sizes")
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    args = parser.parse_args()
    print(json.dumps(run_side(args.side, json.loads(args.sizes), args.data)))


if __name__ == "__main__":
    main()
