"""Runs that chain the stages: data -> retrieval -> prompts -> generation -> evaluation."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

from prlm import PrlmError
from prlm.data import get_task, load_split
from prlm.evaluation import environment, meteor_status, score_predictions, write_run
from prlm.generation import GenerationConfig, SamplingParams, make_generator
from prlm.io import check_output_dir
from prlm.prompts import build_prompt, first_answer_start, parse_completion
from prlm.options import check_choice, opt
from prlm.retrieval import DenseRetriever, ProfileDataConfig, make_retriever
from prlm.reward.format import has_reasoning_format



@dataclass
class EvalConfig(GenerationConfig, ProfileDataConfig):
    split: str = opt("dev", "Split to evaluate: train, dev or test.")
    method: str = opt("rag", "no-profile (input only), rag (retrieved entries + input), prlm (reasoning prompt).")
    out: str = opt("", "Run folder to write (predictions.jsonl, summary.json, summary.md).")
    force_answer_tokens: int = opt(32, "prlm only: when a completion stops without an <answer>, close the reasoning (`</think>\n<answer>`) and generate up to N more tokens for the answer (budget forcing); 0 = off. The recorded format rate counts the first pass only.")
    predict_only: bool = opt(False, "Write predictions only (predictions.jsonl, lamp_predictions.json for a LaMP submission), no metrics: for a split whose gold outputs are withheld (LaMP's test set). Golds are neither needed nor scored.")
    allow_task_mismatch: bool = opt(False, "Run even when the data say they belong to another task (the outputs file's `task` field, or the instruction the inputs start with).")

    def __post_init__(self):
        GenerationConfig.__post_init__(self)
        ProfileDataConfig.__post_init__(self)
        from prlm.prompts import STYLES

        check_choice("method", self.method, STYLES)
        if not self.out:
            raise PrlmError("out is required: pass --out runs/NAME")
        if self.force_answer_tokens < 0:
            raise PrlmError(f"force_answer_tokens must be >= 0 (0 = off), got {self.force_answer_tokens}")
        if self.method == "no-profile":
            # The input alone: nothing is retrieved, whatever the flags say.
            self.retriever, self.k = "none", 0

def run_eval(cfg: EvalConfig, progress: bool = True, generator=None, tokenizer=None, retriever=None) -> dict:
    """Evaluate one method on one split and write its run folder; returns the summary.

    `generator`/`tokenizer` may be passed to reuse a loaded model across runs,
    `retriever` to reuse retrievals computed once (e.g. `RankedRetriever`).
    """
    started = time.time()
    check_output_dir(cfg.out)  # before any model loads: a bad --out would otherwise fail after generation
    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None,
                         allow_empty_profiles=cfg.allow_empty_profiles, require_golds=not cfg.predict_only,
                         allow_task_mismatch=cfg.allow_task_mismatch)
    if cfg.predict_only:
        for ex in dataset.examples:
            ex.gold = None  # a submission never looks at golds, even when the folder has them
    if not dataset.examples:
        raise PrlmError(f"split '{cfg.split}' of '{cfg.data}' has no questions")
    if retriever is None:
        retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    if isinstance(retriever, DenseRetriever):
        retriever.prepare([ex.input for ex in dataset.examples], [ex.profile for ex in dataset.examples])
    if generator is None:
        generator, tokenizer = make_generator(cfg.model, cfg.backend, cfg.device, cfg.batch_size)

    retrieved, prompts = [], []
    for ex in dataset.examples:
        entries, scores = retriever(ex.input, ex.profile, cfg.k)
        retrieved.append([{"id": e["id"], "score": round(s, 6)} for e, s in zip(entries, scores)])
        prompts.append(build_prompt(task, ex.input, entries, cfg.method, tokenizer, cfg.max_prompt_tokens))

    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, stop=["</answer>"] if cfg.method == "prlm" else [])
    completions = [c[0] for c in generator.generate([p.text for p in prompts], params, progress=progress,
                                                    desc=f"{cfg.method} on {cfg.split}")]
    formatted = [has_reasoning_format(c, p.prefill) for c, p in zip(completions, prompts)]
    parsed = [parse_completion(c, cfg.method, task, prefill=p.prefill) for c, p in zip(completions, prompts)]
    forced = set()
    if cfg.method == "prlm" and cfg.force_answer_tokens:
        forced = {i for i, result in enumerate(parsed) if not result.answer}
        completions = force_answers(generator, prompts, completions, sorted(forced), cfg, progress)
        parsed = [parse_completion(c, cfg.method, task, prefill=p.prefill) for c, p in zip(completions, prompts)]
    per_example, means = ({ex.id: {} for ex in dataset.examples}, {}) if cfg.predict_only else score_predictions(
        {ex.id: r.answer for ex, r in zip(dataset.examples, parsed)}, {ex.id: ex.gold for ex in dataset.examples})
    rows = []
    for index, (ex, hits, prompt, completion, result) in enumerate(
            zip(dataset.examples, retrieved, prompts, completions, parsed)):
        rows.append({
            "id": ex.id, "user_id": ex.user_id, "retrieved": hits[:prompt.entries_used],
            "prompt": prompt.user, "prompt_tokens": prompt.num_tokens, "completion": completion,
            "reasoning": result.reasoning, "answer": result.answer, "gold": ex.gold,
            "metrics": per_example[ex.id],
            **({"format_ok": formatted[index], "forced_answer": index in forced} if cfg.method == "prlm" else {}),
        })
    summary = {
        "name": Path(cfg.out).name,
        **({"format_rate": sum(formatted) / len(rows), "forced_answers": len(forced)} if cfg.method == "prlm" else {}),
        "task": task.name,
        "data": str(cfg.data),
        "split": cfg.split,
        "predict_only": cfg.predict_only,
        "n": len(rows),
        "metrics": means,
        "empty_answers": sum(not r["answer"] for r in rows),
        "config": asdict(cfg),
        "notes": [note for note in [meteor_status()] if note],
        "environment": environment(),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 1),
    }
    write_run(cfg.out, rows, summary, task.name)
    return summary


ANSWER_FORCING = "</think>\n<answer>"


def force_answers(generator, prompts, completions: list[str], todo: list[int], cfg: EvalConfig,
                  progress: bool) -> list[str]:
    """Budget forcing: completions `todo` gave no answer (they ran out of tokens
    in the reasoning, say); each gets its reasoning closed and the answer tag
    opened, and the model writes the answer, greedily."""
    if not todo:
        return completions
    heads = [_forcing_head(completions[i]) for i in todo]
    params = SamplingParams(max_new_tokens=cfg.force_answer_tokens, temperature=0.0, seed=cfg.seed,
                            stop=["</answer>"])
    tails = generator.generate([prompts[i].text + head for i, head in zip(todo, heads)], params, progress=progress,
                               desc="forcing answers")
    completions = list(completions)
    for i, head, tail in zip(todo, heads, tails):
        completions[i] = head + tail[0]
    return completions


def _forcing_head(completion: str) -> str:
    """The completion up to where its answer must start, with the answer tag opened.

    An answer section that came out empty (`<answer></answer>`) is cut away first: the parser
    reads the first `<answer>`, so a second one appended after it would never be read."""
    start = first_answer_start(completion)
    if start != -1:
        completion = completion[:start].rstrip()
    return completion + ("\n<answer>" if "</think>" in completion.lower() else ANSWER_FORCING)


def rescore_run(path: str | Path) -> dict:
    """Re-extract answers from the recorded completions with the current parser
    and recompute the metrics, without generating again."""
    from prlm.evaluation import load_run
    from prlm.prompts import prefill_for

    summary, rows = load_run(path)
    method, task = summary["config"]["method"], get_task(summary["task"])
    prefill = prefill_for(method)
    for row in rows:
        parsed = parse_completion(row["completion"], method, task, prefill=prefill)
        row["reasoning"], row["answer"] = parsed.reasoning, parsed.answer
    # A predict-only run has no golds: its answers are re-extracted, nothing is scored.
    per_example, means = ({r["id"]: {} for r in rows}, {}) if summary.get("predict_only") else score_predictions(
        {r["id"]: r["answer"] for r in rows}, {r["id"]: r["gold"] for r in rows})
    for row in rows:
        row["metrics"] = per_example[row["id"]]
    summary["metrics"], summary["empty_answers"] = means, sum(not r["answer"] for r in rows)
    if method == "prlm":
        summary["format_rate"] = sum(has_reasoning_format(r["completion"], prefill) for r in rows) / len(rows)
    summary["rescored"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    write_run(path, rows, summary, task.name)
    return summary
