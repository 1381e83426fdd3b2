"""PersonalizationReward: TRL's reward signature, answer extraction, penalties, lazy loading, pickling, GRPO."""

from __future__ import annotations

import math
import pickle

import pytest

from prlm import PrlmError
from prlm.reward.degenerate import degenerate_reason
from prlm.reward.personalization import PersonalizationReward
from test_reward_model import make_tiny_rm


@pytest.fixture(scope="module")
def rm_path(tmp_path_factory):
    return make_tiny_rm(tmp_path_factory.mktemp("prm") / "rm")


def test_signature_strings_and_chat_messages(rm_path):
    reward = PersonalizationReward(rm_path)
    assert reward.__name__ == "personalization"
    completions = ["reasoning</think><answer>fix the parser</answer>",
                   [{"role": "assistant", "content": "reasoning</think><answer>fix the parser</answer>"}]]
    out = reward(["p1", [{"role": "user", "content": "p2"}]], completions, input=["a commit body"] * 2)
    assert isinstance(out, list) and len(out) == 2 and all(isinstance(x, float) for x in out)
    assert 0 < out[0] < 1 and out[0] == pytest.approx(out[1])
    # the reward is the sigmoid of the model's score of (input, extracted answer) only
    raw = reward.model.score(["a commit body"], ["fix the parser"])[0]
    assert out[0] == pytest.approx(1 / (1 + math.exp(-raw)))


def test_only_the_answer_is_scored(rm_path):
    reward = PersonalizationReward(rm_path)
    a = reward(["p"], ["short</think><answer>fix the parser</answer>"], input=["x"])
    b = reward(["p"], ["a very different reasoning text</think><answer>fix the parser</answer>"], input=["x"])
    assert a == pytest.approx(b)
    plain = PersonalizationReward(rm_path, method="rag", prefill="")
    assert plain(["p"], ["fix the parser"], input=["x"]) == pytest.approx(a)


@pytest.mark.parametrize("completion, reason", [
    ("no closing tag, reasoning only", "empty"),
    ("</think><answer></answer>", "empty"),
    ("</think><answer>...</answer>", "no letters or digits"),
    ("</think><answer><think>fix it</answer>", "<think> inside the answer"),
    ("</think><answer>Reply with the subject line only.</answer>", "parrots the prompt's instructions"),
    ("</think><answer>The user ... The text is about ...</answer>", "parrots the prompt's instructions"),
])
def test_degenerate_answers_get_the_penalty(rm_path, completion, reason):
    reward = PersonalizationReward(rm_path, penalty=-0.5)
    answers, reasons = reward.extract([completion])
    assert reasons == [reason]
    assert reward(["p"], [completion], input=["x"]) == [-0.5]


def test_ordinary_answers_are_not_penalized():
    for answer in ("fix the parser", "user: add --text option", "Update README", "t0: speed up"):
        assert degenerate_reason(answer) == "", answer


@pytest.mark.parametrize("answer", ["title", "text", "user", "then", "the subject line", "headline",
                                    "Update the user guide text", "Then write tests", "the title only"])
def test_ordinary_words_of_the_instructions_are_not_parroting(answer):
    # Before issue 14 any answer contained word for word in an instruction was penalized ("title" is in
    # "Reply with the title only."): real subject lines use these words.
    assert degenerate_reason(answer) == ""


@pytest.mark.parametrize("answer", ["Reply with the subject line only.", "reply with the headline only",
                                    "The user ... The text is about ...",
                                    "Then write the subject line this user would write inside",
                                    "Then write the subject line this user would write",  # six words or more copied
                                    "Sure. Reply with the title only."])  # contains a template phrase
def test_template_phrases_are_parroting(answer):
    assert degenerate_reason(answer) == "parrots the prompt's instructions"


@pytest.mark.parametrize("answer", ["The user's closest past subject is \"fix x\"", "The commit fixes the parser",
                                    "This commit message adds a test", "The new text is about the parser",
                                    "the user would write: fix"])
def test_talking_about_the_task_is_degenerate(answer):
    # What prlm-rl-only learnt once the template itself was refused (issue 23): 89 of 108 answers began so.
    assert degenerate_reason(answer) == "talks about the task instead of answering"


@pytest.mark.parametrize("answer", ["BUG: fix the user cache", "Update the commit-graph docs", "commit: fix x",
                                    "users: the commit list is sorted", "Thecommit typo"])
def test_subjects_that_mention_users_or_commits_are_answers(answer):
    assert degenerate_reason(answer) == ""


def test_the_degenerate_check_reads_the_scored_answer(rm_path):
    """The first <answer> is the one parse_completion extracts and the model scores; the check reads the same."""
    reward = PersonalizationReward(rm_path, penalty=-0.5)
    bad_first = "</think><answer><think>fix it</answer> more <answer>fix it</answer>"
    good_first = "</think><answer>fix it</answer> more <answer><think>fix it</answer>"
    assert reward.extract([bad_first])[1] == ["<think> inside the answer"]
    answers, reasons = reward.extract([good_first])
    assert answers == ["fix it"] and reasons == [""]


def test_lazy_loading_and_pickling(rm_path):
    reward = PersonalizationReward(rm_path, device="cpu")
    assert reward._rm is None  # nothing loaded at construction
    first = reward(["p"], ["</think><answer>fix</answer>"], input=["x"])
    assert reward._rm is not None and next(reward._rm.model.parameters()).device.type == "cpu"
    blob = pickle.dumps(reward)
    assert len(blob) < 10_000  # the weights are not pickled
    clone = pickle.loads(blob)
    assert clone._rm is None and clone.__name__ == "personalization"
    assert clone(["p"], ["</think><answer>fix</answer>"], input=["x"]) == pytest.approx(first)
    missing = PersonalizationReward("/nonexistent/checkpoint")  # constructing never loads
    with pytest.raises(PrlmError, match="not a reward model checkpoint"):
        missing(["p"], ["</think><answer>fix</answer>"], input=["x"])


def test_input_column_errors(rm_path):
    reward = PersonalizationReward(rm_path)
    with pytest.raises(PrlmError, match="column 'input' \\(columns passed: query\\)"):
        reward(["p"], ["x"], query=["q"])
    custom = PersonalizationReward(rm_path, input_key="query", name="pers")
    assert custom.__name__ == "pers" and len(custom(["p"], ["</think><answer>a</answer>"], query=["q"])) == 1
    with pytest.raises(PrlmError, match="has 1 values for 2 completions"):
        reward(["p", "p"], ["a", "b"], input=["only one"])


def test_context_column_for_a_context_model(tmp_path):
    path = make_tiny_rm(tmp_path / "rm", context_entries=2)
    reward = PersonalizationReward(path, method="rag", prefill="")
    out = reward(["p"], ["fix it"], input=["x"], context=[["entry one", "entry two"]])
    assert 0 < out[0] < 1
    with pytest.raises(PrlmError, match="in a 'context' column"):
        reward(["p"], ["fix it"], input=["x"])


def test_a_grpo_step_calls_the_reward(rm_path, tiny_llama_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    calls = []

    class Counting(PersonalizationReward):
        def __call__(self, prompts, completions, **kwargs):
            calls.append((list(prompts), list(completions), sorted(kwargs)))
            return super().__call__(prompts, completions, **kwargs)

    # rag style: the tiny random policy never closes <think>, its raw text is scored as the answer
    reward = Counting(rm_path, method="rag", prefill="")
    data = Dataset.from_dict({"prompt": ["Write a subject line: fix the parser", "Write a subject line: add docs"],
                              "input": ["fix the parser crash on empty input", "add docs for the new option"]})
    args = GRPOConfig(output_dir=str(tmp_path / "grpo"), use_cpu=True, bf16=False, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=4, max_steps=1, report_to=[], logging_steps=1,
                      save_strategy="no")
    trainer = GRPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir), reward_funcs=[reward],
                          args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(tiny_llama_dir, padding_side="left"))
    trainer.train()
    assert calls, "GRPOTrainer never called the reward"
    prompts, completions, columns = calls[0]
    assert len(prompts) == len(completions) == 2 and "input" in columns
    logged = {k for entry in trainer.state.log_history for k in entry}
    assert "rewards/personalization/mean" in logged
