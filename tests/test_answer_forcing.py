"""Budget forcing in evaluation: a reasoning that never reaches <answer> gets one."""

import json

from tests.helpers import write_lamp

from prlm.pipeline import EvalConfig, run_eval


class ScriptedGenerator:
    """First call: q0 answers properly, the others run out inside <think>. Later calls: the forced answer."""

    def __init__(self):
        self.calls = []

    def generate(self, prompts, params, progress=True, desc=""):
        self.calls.append((list(prompts), params))
        if len(self.calls) == 1:
            return [[" short reasoning</think>\n<answer>gold-like title</answer>"]] + [
                [" reasoning that goes on and on"] for _ in prompts[1:]]
        return [["forced title</answer>"] for _ in prompts]


def _eval(tmp_path, policy_tokenizer, tokens):
    data = write_lamp(tmp_path / "data")
    gen = ScriptedGenerator()
    cfg = EvalConfig(task="LaMP-4", data=str(data), split="dev", method="prlm", retriever="bm25", k=1,
                     out=str(tmp_path / f"run{tokens}"), force_answer_tokens=tokens)
    summary = run_eval(cfg, progress=False, generator=gen, tokenizer=policy_tokenizer)
    rows = [json.loads(line) for line in (tmp_path / f"run{tokens}" / "predictions.jsonl").read_text().splitlines()]
    return summary, rows, gen


def test_forced_answers_close_the_reasoning(tmp_path, policy_tokenizer):
    summary, rows, gen = _eval(tmp_path, policy_tokenizer, 8)
    assert [r["answer"] for r in rows] == ["gold-like title"] + ["forced title"] * 3
    assert [r["forced_answer"] for r in rows] == [False, True, True, True]
    assert summary["format_rate"] == 0.25 and summary["forced_answers"] == 3  # the first pass is what is rated
    forced_prompts, params = gen.calls[1]
    assert len(forced_prompts) == 3 and forced_prompts[0].endswith("on and on</think>\n<answer>")
    assert params.max_new_tokens == 8 and params.temperature == 0.0
    assert rows[1]["completion"].endswith("</think>\n<answer>forced title</answer>")


def test_forcing_off_leaves_answers_empty(tmp_path, policy_tokenizer):
    summary, rows, gen = _eval(tmp_path, policy_tokenizer, 0)
    assert len(gen.calls) == 1 and [r["answer"] for r in rows][1:] == ["", "", ""]
    assert summary["forced_answers"] == 0


class EmptyAnswerGenerator(ScriptedGenerator):
    """First pass: every completion closes its reasoning but leaves the answer empty."""

    def generate(self, prompts, params, progress=True, desc=""):
        self.calls.append((list(prompts), params))
        if len(self.calls) == 1:
            return [[" reasoning</think>\n<answer></answer>"] for _ in prompts]
        return [["forced title</answer>"] for _ in prompts]


def test_an_empty_answer_section_is_replaced_not_followed(tmp_path, policy_tokenizer):
    data = write_lamp(tmp_path / "data")
    gen = EmptyAnswerGenerator()
    cfg = EvalConfig(task="LaMP-4", data=str(data), split="dev", method="prlm", retriever="bm25", k=1,
                     out=str(tmp_path / "run"), force_answer_tokens=8)
    run_eval(cfg, progress=False, generator=gen, tokenizer=policy_tokenizer)
    rows = [json.loads(line) for line in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [r["answer"] for r in rows] == ["forced title"] * len(rows)
    assert rows[0]["completion"] == " reasoning</think>\n<answer>forced title</answer>"
    assert gen.calls[1][0][0].endswith("reasoning</think>\n<answer>")
