import pytest

from helpers import R1_DISTILL_TEMPLATE, lamp4_questions
from prlm import PrlmError
from prlm.answers import parse_completion
from prlm.data import get_task
from prlm.prompts import build_prompt, count_tokens

TASK = get_task("LaMP-4")


def _long_profile(n=6, words=400):
    return [{"id": str(i), "title": f"Title {i}", "text": " ".join(f"word{i}x{j}" for j in range(words)),
             "date": "2020-01-01"} for i in range(n)]


@pytest.mark.parametrize("method", ["no-profile", "rag", "prlm"])
@pytest.mark.parametrize("limit", [200, 512, 1024])
def test_prompt_never_exceeds_budget(policy_tokenizer, method, limit):
    text = "Generate a headline for the following article: " + "news " * 50
    prompt = build_prompt(TASK, text, _long_profile(), method, policy_tokenizer, max_prompt_tokens=limit)
    assert prompt.num_tokens == count_tokens(policy_tokenizer, prompt.text) <= limit
    if method != "no-profile" and limit >= 512:
        assert prompt.entries_used == 6
        assert all(f"Title {i}" in prompt.user for i in range(6))


def test_entries_share_budget_and_unused_budget_carries(policy_tokenizer):
    profile = _long_profile(n=3, words=300)
    profile[0]["text"] = "short text"  # leaves most of its share to the next entries
    prompt = build_prompt(TASK, "Generate a headline for the following article: x", profile, "rag",
                          policy_tokenizer, max_prompt_tokens=400)
    assert "short text" in prompt.user
    kept = [prompt.user.count(f"word{i}x") for i in (1, 2)]
    # Entry 1 gets its own share plus entry 0's leftover, so it keeps more than entry 2.
    assert kept[0] > kept[1] > 0
    assert prompt.num_tokens <= 400


def test_overlong_input_is_cut_to_half_the_budget(policy_tokenizer):
    text = "Generate a headline for the following article: " + "long " * 2000
    prompt = build_prompt(TASK, text, _long_profile(2), "rag", policy_tokenizer, max_prompt_tokens=300)
    assert prompt.num_tokens <= 300
    with pytest.raises(PrlmError, match="raise it"):
        build_prompt(TASK, text, [], "prlm", policy_tokenizer, max_prompt_tokens=20)


def test_styles_differ_as_documented(policy_tokenizer):
    questions, _ = lamp4_questions(n=1)
    q = questions[0]
    none = build_prompt(TASK, q["input"], q["profile"][:2], "no-profile", policy_tokenizer)
    rag = build_prompt(TASK, q["input"], q["profile"][:2], "rag", policy_tokenizer)
    prlm = build_prompt(TASK, q["input"], q["profile"][:2], "prlm", policy_tokenizer)
    assert "is the headline for" not in none.user and none.entries_used == 0
    assert '"River news 0" is the headline for' in rag.user and ", and " in rag.user
    assert "<think>" in prlm.user and prlm.text.endswith("<think>") and prlm.prefill == "<think>"
    assert rag.text.endswith("assistant\n")  # the chat template's generation prompt


@pytest.fixture
def r1_tokenizer(policy_tokenizer):
    import copy

    tok = copy.deepcopy(policy_tokenizer)
    tok.chat_template = R1_DISTILL_TEMPLATE
    return tok


def test_template_that_opens_think_gets_no_second_one(r1_tokenizer, policy_tokenizer):
    from prlm.prompts import render_chat

    text = render_chat(r1_tokenizer, "Write a headline.", "<think>")
    assert text.endswith("<｜Assistant｜><think>\n") and text.count("<think>") == 1
    # A template that does not open it gets the pre-fill, once.
    plain = render_chat(policy_tokenizer, "Write a headline.", "<think>")
    assert plain.endswith("assistant\n<think>") and plain.count("<think>") == 1
    prompt = build_prompt(TASK, "Generate a headline for the following article: Rain.",
                          [{"id": "1", "title": "Storm", "text": "A storm came.", "date": "2020"}], "prlm",
                          r1_tokenizer, 256)
    assert prompt.text.endswith("<｜Assistant｜><think>\n") and prompt.prefill == "<think>"
    assert prompt.text.count("<think>") == prompt.user.count("<think>") + 1  # the instruction's example + one
    # The completion continues inside the reasoning the template opened.
    parsed = parse_completion("The user is terse.</think>\n<answer>Rain falls</answer>", "prlm", TASK,
                              prefill=prompt.prefill)
    assert parsed.reasoning == "The user is terse." and parsed.answer == "Rain falls"


def test_answer_only_wording_prefills_up_to_the_answer(policy_tokenizer, r1_tokenizer):
    """The ablation without reasoning: prlm's own user prompt, the reply pre-filled with an empty reasoning."""
    questions, _ = lamp4_questions(n=1)
    q = questions[0]
    prlm = build_prompt(TASK, q["input"], q["profile"][:2], "prlm", policy_tokenizer)
    bare = build_prompt(TASK, q["input"], q["profile"][:2], "prlm", policy_tokenizer, style="prlm-answer-only")
    assert bare.user == prlm.user and bare.prefill == "<think></think>\n<answer>"
    assert bare.text == prlm.text + "</think>\n<answer>"
    assert parse_completion("Rain falls</answer>", "prlm", TASK, prefill=bare.prefill).answer == "Rain falls"
    # a template that opens the reasoning itself gets the rest of the pre-fill, not a second <think>
    r1 = build_prompt(TASK, q["input"], q["profile"][:2], "prlm", r1_tokenizer, style="prlm-answer-only")
    assert r1.text.split("<｜Assistant｜>")[1] == "<think>\n</think>\n<answer>"
