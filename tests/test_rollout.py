import pytest
import torch

from prlm.models import load_policy
from prlm.training.rollout import _filter_logits, _group_consecutive, sample_shared_prefix

PROMPTS = ["hello there", "a much longer prompt with more words in it"]


def test_group_consecutive_copies():
    assert _group_consecutive(["a", "a", "b", "b", "a"]) == (["a", "b", "a"], [2, 2, 1])


def test_near_zero_temperature_equals_greedy_generate(tiny_llama_dir):
    model, tok = load_policy(tiny_llama_dir)
    _, completions, _ = sample_shared_prefix(model, tok, PROMPTS, [1, 1], 8, temperature=1e-6, eos_token_ids=(-1,))
    enc = tok(PROMPTS, return_tensors="pt", padding=True, add_special_tokens=False)
    greedy = model.generate(**enc, max_new_tokens=8, do_sample=False)[:, enc["input_ids"].shape[1]:].tolist()
    assert completions == greedy


@pytest.mark.parametrize("policy", ["peaked_llama_dir", "peaked_gqa_llama_dir"])
def test_groups_share_the_prompt_and_logprobs_match_the_model(policy, request):
    model, tok = load_policy(request.getfixturevalue(policy))
    gen = torch.Generator().manual_seed(0)
    prompts = [PROMPTS[0], PROMPTS[1], "three words here"]
    prompt_ids, completions, logprobs = sample_shared_prefix(model, tok, prompts, [3, 2, 2], 5, temperature=1.0,
                                                             eos_token_ids=(-1,), generator=gen)
    assert len(completions) == 7
    assert [tok.decode(p) for p in prompt_ids] == [prompts[0]] * 3 + [prompts[1]] * 2 + [prompts[2]] * 2
    assert len({tuple(c) for c in completions[:3]}) > 1  # samples differ within a group
    # Every completion's recorded log-probs are the model's own for its sampled tokens, computed here on the
    # unpadded prompt without a cache; the short prompts were left-padded in the rollout's batch.
    for row in range(7):
        full = torch.tensor([prompt_ids[row] + completions[row]])
        with torch.no_grad():
            logits = model(full).logits[0, len(prompt_ids[row]) - 1:-1].float()
        expected = logits.log_softmax(-1).gather(-1, torch.tensor(completions[row])[:, None]).squeeze(-1)
        assert torch.allclose(expected, torch.tensor(logprobs[row]), atol=1e-3), row


def test_top_p_keeps_the_smallest_set_over_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_filter_logits(logits, top_k=0, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_filter_logits(logits, top_k=1, top_p=1.0)).sum() == 1


def test_a_stop_string_ends_each_completion_right_after_it(tiny_llama_dir):
    model, tok = load_policy(tiny_llama_dir)
    greedy = dict(temperature=1e-6, eos_token_ids=(-1,))
    _, full, full_logps = sample_shared_prefix(model, tok, PROMPTS, [1, 1], 10, **greedy)
    stop = tok.decode(full[0][3:5])  # a two-token piece of the first completion
    _, cut, cut_logps = sample_shared_prefix(model, tok, PROMPTS, [1, 1], 10, stop_strings=(stop,), **greedy)
    for whole, short, whole_logps, short_logps in zip(full, cut, full_logps, cut_logps):
        ends = [i + 1 for i in range(len(whole)) if stop in tok.decode(whole[:i + 1])]
        assert short == whole[:ends[0] if ends else len(whole)]
        assert short_logps == whole_logps[:len(short)]
    assert len(cut[0]) < len(full[0]) == 10  # the stop string ended it mid-budget


def _own_logprobs(model, prompt_ids, completion, temperature):
    """The model's log-probs (at `temperature`) of `completion` after the unpadded prompt, without a cache."""
    full = torch.tensor([prompt_ids + completion])
    with torch.no_grad():
        logits = model(full).logits[0, len(prompt_ids) - 1:-1].float() / temperature
    return logits.log_softmax(-1).gather(-1, torch.tensor(completion)[:, None]).squeeze(-1)


def test_rows_that_end_leave_the_batch_and_the_rest_decode_on(peaked_gqa_llama_dir):
    """Rows end at different steps (an EOS set of a seventh of the vocabulary); those left are unaffected."""
    model, tok = load_policy(peaked_gqa_llama_dir)
    eos = tuple(range(0, len(tok), 7))
    prompts = [PROMPTS[0], PROMPTS[1], "three words here"]
    prompt_ids, completions, logprobs = sample_shared_prefix(
        model, tok, prompts, [3, 3, 2], 12, temperature=2.0, eos_token_ids=eos,
        generator=torch.Generator().manual_seed(3))
    lengths = [len(c) for c in completions]
    assert min(lengths) < 6 and max(lengths) > 8  # some rows ended early, others decoded long after
    for row, completion in enumerate(completions):
        ended = completion[-1] in eos
        assert ended or len(completion) == 12
        assert not any(token in eos for token in completion[:-1])  # nothing is kept after a row's EOS
        assert torch.allclose(_own_logprobs(model, prompt_ids[row], completion, 2.0), torch.tensor(logprobs[row]),
                              atol=1e-3), row


def test_sampling_draws_each_token_at_its_probability():
    from prlm.training.rollout import _sample

    probs = torch.tensor([[0.1, 0.0, 0.6, 0.3]]).repeat(20_000, 1)
    drawn = _sample(probs, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=4).float() / len(drawn)
    assert frequencies[1] == 0  # a token of probability 0 is never drawn
    assert torch.allclose(frequencies, probs[0], atol=0.01)
