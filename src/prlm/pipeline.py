"""Runs that chain the stages: data -> retrieval -> prompts -> generation -> evaluation."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from prlm import PrlmError
from prlm.answers import (
    ANSWER_CLOSE,
    REASONING_METHOD,
    forcing_head,
    has_reasoning_format,
    parse_completion,
    prefill_for,
    stop_strings,
)
from prlm.data import get_task, load_split
from prlm.evaluation import (
    ROUGE_HELP,
    check_rouge_choice,
    environment,
    lamp_aggregate,
    lamp_aggregation_note,
    meteor_status,
    score_predictions,
    write_run,
)
from prlm.generation import GenerationConfig, SamplingParams, make_generator
from prlm.io import claim_output_dir
from prlm.options import check_choice, opt
from prlm.prompts import PROMPT_METHODS, PROMPT_STYLE_HELP, build_prompts, check_prompt_style
from prlm.retrieval import ProfileDataConfig, make_retriever, retrieve_each


@dataclass
class EvalConfig(GenerationConfig, ProfileDataConfig):
    split: str = opt("dev", "Split to evaluate: train, dev or test.")
    method: str = opt("rag", "no-profile (input only), rag (retrieved entries + input), prlm (reasoning prompt).")
    prompt: str = opt("prlm", PROMPT_STYLE_HELP)
    rouge: str = opt("rouge-score", ROUGE_HELP)
    out: str = opt("", "Run folder to write (predictions.jsonl, summary.json, summary.md).")
    force_answer_tokens: int = opt(32, "prlm only: when a completion stops without an <answer>, close the reasoning "
                                       "(`</think>\n<answer>`) and generate up to N more tokens for the answer "
                                       "(budget forcing); 0 = off. The recorded format rate counts the first pass "
                                       "only.")
    predict_only: bool = opt(False, "Write predictions only (predictions.jsonl, lamp_predictions.json for a LaMP "
                                    "submission), no metrics: for a split whose gold outputs are withheld (LaMP's "
                                    "test set). Golds are neither needed nor scored.")
    allow_task_mismatch: bool = opt(False, "Run even when the data say they belong to another task (the outputs "
                                           "file's `task` field, or the instruction the inputs start with).")
    lamp_aggregation: bool = opt(False, "Also report LaMP's number (summary.json `lamp_aggregation`): the median of "
                                        "1,000 bootstrap means of ROUGE-1 and ROUGE-L, as LaMP's evaluator reports "
                                        "it, with a fixed seed; `metrics` stay the plain means.")
    allow_partial: bool = opt(False, "With predict_only and limit: write a submission of the first N questions on "
                                     "purpose (LaMP's evaluator refuses one whose ids differ from the golds').")

    def __post_init__(self):
        GenerationConfig.__post_init__(self)
        ProfileDataConfig.__post_init__(self)
        check_choice("method", self.method, PROMPT_METHODS)
        check_prompt_style(self.prompt)
        check_rouge_choice("rouge", self.rouge)
        if not self.out:
            raise PrlmError("out is required: pass --out runs/NAME")
        if self.predict_only and self.limit and not self.allow_partial:
            raise PrlmError(f"--predict-only with --limit {self.limit} writes a submission of {self.limit} questions "
                            "only, which LaMP's evaluator refuses (its ids must match the golds'): drop --limit, or "
                            "pass --allow-partial to write a partial file on purpose")
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
    claim_output_dir(cfg.out, "prlm eval")  # before any model loads: a bad --out would otherwise fail after generation
    task = get_task(cfg.task)
    examples = _questions(cfg, task)
    if retriever is None:
        retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=cfg.encoder)
    hits = retrieve_each(retriever, examples, cfg.k)
    if generator is None:
        generator, tokenizer = make_generator(cfg.model, cfg.backend, cfg.device, cfg.batch_size)
    prompts = build_prompts(task, examples, hits, cfg.method, tokenizer, cfg.max_prompt_tokens, cfg.prompt)
    completions, formatted, parsed, forced = _answer(cfg, task, generator, prompts, progress)
    per_example, means = ({ex.id: {} for ex in examples}, {}) if cfg.predict_only else score_predictions(
        {ex.id: r.answer for ex, r in zip(examples, parsed)}, {ex.id: ex.gold for ex in examples}, how=cfg.rouge,
        seed=cfg.seed)
    reasons = cfg.method == REASONING_METHOD
    rows = []
    for index, (ex, (entries, scores), prompt, completion, result) in enumerate(
            zip(examples, hits, prompts, completions, parsed)):
        used = prompt.entries_used  # the entries the token budget left in the prompt
        rows.append({
            "id": ex.id, "user_id": ex.user_id,
            "retrieved": [{"id": e["id"], "score": round(s, 6)} for e, s in zip(entries[:used], scores[:used])],
            "prompt": prompt.user, "prompt_tokens": prompt.num_tokens, "completion": completion,
            "reasoning": result.reasoning, "answer": result.answer, "gold": ex.gold,
            "metrics": per_example[ex.id],
            **({"format_ok": formatted[index], "forced_answer": index in forced} if reasons else {}),
        })
    notes = [note for note in [meteor_status()] if note]
    lamp = None
    if cfg.lamp_aggregation and not cfg.predict_only:
        lamp = lamp_aggregate(per_example, seed=cfg.seed)
        notes.append(lamp_aggregation_note(lamp, seed=cfg.seed))
    summary = {
        "name": Path(cfg.out).name,
        **({"format_rate": sum(formatted) / len(rows), "forced_answers": len(forced)} if reasons else {}),
        "task": task.name,
        "data": str(cfg.data),
        "split": cfg.split,
        "predict_only": cfg.predict_only,
        "n": len(rows),
        "metrics": means,
        **({"lamp_aggregation": lamp} if lamp else {}),
        "empty_answers": sum(not r["answer"] for r in rows),
        "config": asdict(cfg),
        "notes": notes,
        "environment": environment(),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - started, 1),
    }
    write_run(cfg.out, rows, summary, task.name)
    return summary


def _questions(cfg: EvalConfig, task) -> list:
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None,
                         allow_empty_profiles=cfg.allow_empty_profiles, require_golds=not cfg.predict_only,
                         allow_task_mismatch=cfg.allow_task_mismatch)
    if cfg.predict_only:
        for ex in dataset.examples:
            ex.gold = None  # a submission never looks at golds, even when the folder has them
    if not dataset.examples:
        raise PrlmError(f"split '{cfg.split}' of '{cfg.data}' has no questions")
    return dataset.examples


def _answer(cfg: EvalConfig, task, generator, prompts, progress: bool) -> tuple[list[str], list[bool], list, set]:
    """(completions, format check of the first pass, parsed answers, indices whose answer was forced)."""
    params = SamplingParams(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                            seed=cfg.seed, stop=stop_strings(cfg.method))
    completions = [c[0] for c in generator.generate([p.text for p in prompts], params, progress=progress,
                                                    desc=f"{cfg.method} on {cfg.split}")]
    formatted = [has_reasoning_format(c, p.prefill) for c, p in zip(completions, prompts)]
    parsed = [parse_completion(c, cfg.method, task, prefill=p.prefill) for c, p in zip(completions, prompts)]
    forced = set()
    if cfg.method == REASONING_METHOD and cfg.force_answer_tokens:
        forced = {i for i, result in enumerate(parsed) if not result.answer}
        completions = force_answers(generator, prompts, completions, sorted(forced), cfg, progress)
        parsed = [parse_completion(c, cfg.method, task, prefill=p.prefill) for c, p in zip(completions, prompts)]
    return completions, formatted, parsed, forced


def force_answers(generator, prompts, completions: list[str], todo: list[int], cfg: EvalConfig,
                  progress: bool) -> list[str]:
    """Budget forcing: completions `todo` gave no answer (they ran out of tokens
    in the reasoning, say); each gets its reasoning closed and the answer tag
    opened (`answers.forcing_head`), and the model writes the answer, greedily."""
    if not todo:
        return completions
    heads = [forcing_head(completions[i]) for i in todo]
    params = SamplingParams(max_new_tokens=cfg.force_answer_tokens, temperature=0.0, seed=cfg.seed,
                            stop=[ANSWER_CLOSE])
    tails = generator.generate([prompts[i].text + head for i, head in zip(todo, heads)], params, progress=progress,
                               desc="forcing answers")
    completions = list(completions)
    for i, head, tail in zip(todo, heads, tails):
        completions[i] = head + tail[0]
    return completions


def rescore_run(path: str | Path) -> dict:
    """Re-extract answers from the recorded completions with the current parser
    and recompute the metrics, without generating again."""
    from prlm.evaluation import load_run

    summary, rows = load_run(path)
    method, task = summary["config"]["method"], get_task(summary["task"])
    prefill = prefill_for(method, summary["config"].get("prompt", "prlm"))
    for row in rows:
        parsed = parse_completion(row["completion"], method, task, prefill=prefill)
        row["reasoning"], row["answer"] = parsed.reasoning, parsed.answer
    # A predict-only run has no golds: its answers are re-extracted, nothing is scored.
    how, seed = summary["config"].get("rouge", "rouge-score"), summary["config"].get("seed", 0)
    per_example, means = ({r["id"]: {} for r in rows}, {}) if summary.get("predict_only") else score_predictions(
        {r["id"]: r["answer"] for r in rows}, {r["id"]: r["gold"] for r in rows}, how=how, seed=seed)
    for row in rows:
        row["metrics"] = per_example[row["id"]]
    summary["metrics"], summary["empty_answers"] = means, sum(not r["answer"] for r in rows)
    if method == REASONING_METHOD:
        summary["format_rate"] = sum(has_reasoning_format(r["completion"], prefill) for r in rows) / len(rows)
    summary["rescored"] = datetime.now(UTC).isoformat(timespec="seconds")
    write_run(path, rows, summary, task.name)
    return summary
