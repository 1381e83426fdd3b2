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


def test_groups_share_the_prompt_and_logprobs_match_the_model(tiny_llama_dir):
    model, tok = load_policy(tiny_llama_dir)
    gen = torch.Generator().manual_seed(0)
    prompt_ids, completions, logprobs = sample_shared_prefix(model, tok, PROMPTS, [3, 2], 5, temperature=1.0,
                                                             eos_token_ids=(-1,), generator=gen)
    assert len(completions) == 5 and prompt_ids[0] == prompt_ids[2] != prompt_ids[3]
    assert len({tuple(c) for c in completions[:3]}) > 1  # samples differ within a group
    # The recorded log-probs are the model's own for the sampled tokens (no padding, no cache).
    full = torch.tensor([prompt_ids[3] + completions[3]])
    with torch.no_grad():
        logits = model(full).logits[0, len(prompt_ids[3]) - 1:-1].float()
    expected = logits.log_softmax(-1).gather(-1, torch.tensor(completions[3])[:, None]).squeeze(-1)
    assert torch.allclose(expected, torch.tensor(logprobs[3]), atol=1e-4)


def test_top_p_keeps_the_smallest_set_over_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = torch.isfinite(_filter_logits(logits, top_k=0, top_p=0.7))
    assert kept.tolist() == [[True, True, False, False]]
    assert torch.isfinite(_filter_logits(logits, top_k=1, top_p=1.0)).sum() == 1
