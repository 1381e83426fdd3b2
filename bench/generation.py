"""Generation: evaluation (greedy) and GRPO rollouts (sampled), fp32.

* Evaluation: prlm's batched `HFGenerator` against LaMP's loop (tokenise one
  prompt, `model.generate(**inputs, max_new_tokens=...)`, decode), on the
  same prompts, greedy, the same `max_new_tokens`. Outputs compared one by one.
* Rollouts: `sample_shared_prefix` (each prompt prefilled once, its KV cache
  shared by the G samples) against HF `generate(num_return_sequences=G)`.
  Samples differ between the two, so tokens/s is the figure to compare.

Prompts: dev questions of git-commit-subject, bm25 top-k entries, prlm's
prompt builder with a token budget.
"""

from __future__ import annotations

import time

from bench.common import (
    DEFAULT_DATA,
    add_size_options,
    choose_sizes,
    comparison,
    load_examples,
    measurement,
    time_runs,
)

FULL = {"policy": "smollm2-135m", "eval_examples": 16, "eval_batch_size": 8, "max_new_tokens": 32,
        "max_prompt_tokens": 384, "style": "rag", "rollout_prompts": 2, "group_size": 8,
        "rollout_max_new_tokens": 32, "temperature": 0.9, "reasoning_max_new_tokens": 96}
QUICK = {**FULL, "eval_examples": 4, "eval_batch_size": 4, "max_new_tokens": 8, "max_prompt_tokens": 256,
         "rollout_prompts": 1, "group_size": 4, "rollout_max_new_tokens": 8,
         "reasoning_max_new_tokens": 8}
HELP = {"policy": "policy model: 'smollm2-135m' (embedded), a local folder or a Hugging Face id",
        "eval_examples": "dev questions generated for (evaluation comparison)",
        "eval_batch_size": "prompts per batch of the batched backend",
        "max_new_tokens": "tokens generated per evaluation example",
        "max_prompt_tokens": "prompt token budget (entries cut to fit)",
        "style": "prompt style: rag, prlm or no-profile",
        "rollout_prompts": "distinct prompts per rollout batch", "group_size": "completions per prompt (GRPO's G)",
        "rollout_max_new_tokens": "tokens sampled per completion at most",
        "temperature": "rollout sampling temperature",
        "reasoning_max_new_tokens": "tokens generated per example with the reasoning (prlm) prompt, as `prlm eval "
                                    "--method prlm` runs it (0 = skip that comparison)"}
EVAL_TARGET = 4.0


def add_arguments(parser) -> None:
    add_size_options(parser, FULL, QUICK, HELP)


def run(quick: bool, args=None) -> dict:
    import torch

    from prlm.models import load_policy

    sizes = choose_sizes(args, FULL, QUICK, quick)
    repeats = getattr(args, "repeats", None) or (1 if quick else 3)
    sizes["repeats"] = repeats
    model, tokenizer = load_policy(sizes["policy"], device="cpu", dtype="float32")
    prompts = build_prompts(tokenizer, sizes, getattr(args, "data", None) or DEFAULT_DATA)
    sizes["prompt_tokens_mean"] = round(sum(len(tokenizer(p, add_special_tokens=False)["input_ids"])
                                            for p in prompts) / len(prompts), 1)
    torch.manual_seed(0)
    evaluation = evaluation_comparison(model, tokenizer, prompts, sizes, repeats)
    comparisons = [evaluation]
    if sizes["reasoning_max_new_tokens"]:
        reasoning_prompts = build_prompts(tokenizer, {**sizes, "style": "prlm"},
                                          getattr(args, "data", None) or DEFAULT_DATA)
        comparisons.append(evaluation_comparison(
            model, tokenizer, reasoning_prompts, {**sizes, "max_new_tokens": sizes["reasoning_max_new_tokens"]},
            repeats, name="evaluation generation, greedy, reasoning prompt"))
    comparisons.append(rollout_comparison(model, tokenizer, prompts[:sizes["rollout_prompts"]], sizes, repeats))
    prefill = prefill_seconds(model, tokenizer, prompts, sizes["eval_batch_size"])
    return {"title": "Generation", "sizes": sizes, "comparisons": comparisons,
            "profile": {"evaluation, the prompts' forward passes alone (prefill)": prefill},
            "notes": [] if evaluation["target_met"] else [evaluation_note(evaluation, prefill)]}


def build_prompts(tokenizer, sizes: dict, data_dir) -> list[str]:
    from prlm.prompts import build_prompt
    from prlm.retrieval import make_retriever

    task, examples = load_examples(data_dir, ["dev"])
    retriever = make_retriever("bm25", task)
    prompts = []
    for ex in examples[:sizes["eval_examples"]]:
        entries, _ = retriever(ex.input, ex.profile, 4)
        prompts.append(build_prompt(task, ex.input, entries, sizes["style"], tokenizer,
                                    sizes["max_prompt_tokens"]).text)
    return prompts


# --- evaluation --------------------------------------------------------------

def greedy_kwargs(tokenizer) -> dict:
    return dict(do_sample=False, temperature=None, top_p=None, top_k=None, pad_token_id=tokenizer.pad_token_id)


def one_at_a_time(model, tokenizer, prompts, max_new_tokens: int) -> list[str]:
    """LaMP's generation loop: one prompt per `generate` call."""
    import torch

    outputs = []
    for prompt in prompts:
        inputs = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, **greedy_kwargs(tokenizer))
        outputs.append(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return outputs


def batched(model, tokenizer, prompts, max_new_tokens: int, batch_size: int) -> list[str]:
    from prlm.generation import HFGenerator, SamplingParams

    generator = HFGenerator(model, tokenizer, batch_size=batch_size)
    return [c[0] for c in generator.generate(prompts, SamplingParams(max_new_tokens=max_new_tokens), progress=False)]


def evaluation_comparison(model, tokenizer, prompts, sizes: dict, repeats: int,
                          name: str = "evaluation generation, greedy") -> dict:
    n, new = len(prompts), sizes["max_new_tokens"]
    base_times, base_out = time_runs(lambda: one_at_a_time(model, tokenizer, prompts, new), repeats)
    cand_times, cand_out = time_runs(lambda: batched(model, tokenizer, prompts, new, sizes["eval_batch_size"]),
                                     repeats)
    base_tokens, cand_tokens = output_tokens(tokenizer, base_out), output_tokens(tokenizer, cand_out)
    baseline = with_tokens(measurement("model.generate, one example at a time (LaMP)", base_times, n, "examples/s"),
                           base_tokens)
    candidate = with_tokens(measurement(f"prlm HFGenerator, batches of {sizes['eval_batch_size']}", cand_times, n,
                                        "examples/s"), cand_tokens)
    identical = sum(a == b for a, b in zip(base_out, cand_out))
    return comparison(f"{name} ({new} new tokens)", baseline, candidate, target=EVAL_TARGET,
                      checks={"examples": n, "identical_outputs": identical,
                              "differing": [{"example": i, "one_at_a_time": a, "batched": b}
                                            for i, (a, b) in enumerate(zip(base_out, cand_out)) if a != b][:5]})


def output_tokens(tokenizer, texts) -> int:
    """Generated tokens, counted by re-tokenising the output texts (the same count for equal outputs)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def with_tokens(side: dict, tokens: int) -> dict:
    return {**side, "tokens": tokens, "tokens_per_s": tokens / side["median_s"] if side["median_s"] else None}


def prefill_seconds(model, tokenizer, prompts, batch_size: int) -> dict:
    """Seconds of the prompts' forward passes alone, one at a time and batched: the part of
    generation that batching cannot shorten much where a forward is compute-bound (a CPU)."""
    import torch

    def forward(batch_size: int) -> float:
        tokenizer.padding_side = "left"
        start = time.perf_counter()
        with torch.inference_mode():
            for i in range(0, len(prompts), batch_size):
                enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                model(**enc)
        return time.perf_counter() - start

    return {"one_at_a_time_s": round(forward(1), 4), "batched_s": round(forward(batch_size), 4),
            "batch_size": batch_size}


def evaluation_note(evaluation: dict, prefill: dict) -> str:
    base = evaluation["baseline"]["median_s"]
    return (f"Evaluation generation below its target ({evaluation['ratio']:.3g}x): the prompts' forward passes "
            f"take {prefill['one_at_a_time_s']:.3g} s of the one-at-a-time median {base:.3g} s, and batched "
            f"{prefill['batched_s']:.3g} s: batching removes decoding overhead but not prefill compute, so on this "
            f"machine the ratio cannot exceed about {base / max(prefill['batched_s'], 1e-9):.3g}x at these prompt "
            "lengths. Reaching 4x needs hardware where a batch's forward costs about as much as one example's "
            "(a GPU), shorter prompts, or many more new tokens per prompt.")


# --- rollouts ----------------------------------------------------------------

def hf_rollouts(model, tokenizer, prompts, sizes: dict) -> int:
    """HF generate with num_return_sequences: returns the sampled tokens (up to the first EOS, included)."""
    import torch

    tokenizer.padding_side = "left"
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=True, num_return_sequences=sizes["group_size"],
                             max_new_tokens=sizes["rollout_max_new_tokens"], temperature=sizes["temperature"],
                             top_p=1.0, top_k=0, pad_token_id=tokenizer.pad_token_id)
    completions = out[:, enc["input_ids"].shape[1]:].tolist()
    return sum(_length_to_eos(c, tokenizer.eos_token_id) for c in completions)


def _length_to_eos(ids: list[int], eos: int) -> int:
    return ids.index(eos) + 1 if eos in ids else len(ids)


def shared_prefix_rollouts(model, tokenizer, prompts, sizes: dict) -> int:
    import torch

    from prlm.training.rollout import sample_shared_prefix

    tokenizer.padding_side = "left"
    _, completions, _ = sample_shared_prefix(
        model, tokenizer, prompts, [sizes["group_size"]] * len(prompts), sizes["rollout_max_new_tokens"],
        temperature=sizes["temperature"], eos_token_ids=(tokenizer.eos_token_id,),
        generator=torch.Generator().manual_seed(0))
    return sum(len(c) for c in completions)


def rollout_comparison(model, tokenizer, prompts, sizes: dict, repeats: int) -> dict:
    n = len(prompts) * sizes["group_size"]
    base_times, base_tokens = time_runs(lambda: hf_rollouts(model, tokenizer, prompts, sizes), repeats)
    cand_times, cand_tokens = time_runs(lambda: shared_prefix_rollouts(model, tokenizer, prompts, sizes), repeats)
    return comparison(
        f"GRPO rollouts, sampled ({len(prompts)} prompts x G={sizes['group_size']})",
        with_tokens(measurement("HF generate(num_return_sequences=G)", base_times, n, "completions/s"),
                    base_tokens),
        with_tokens(measurement("prlm sample_shared_prefix (prompt prefilled once)", cand_times, n,
                                "completions/s"), cand_tokens),
        note="samples differ between the two; tokens (last repetition) and tokens/s are the comparable figures")
