"""The prefix-shared GRPO step computes TRL's objective: same log-probs, loss and gradients."""

import pytest
import torch
from trl.trainer.utils import add_fused_lm_head

from prlm.models import load_policy
from prlm.training.config import TrainConfig
from prlm.training.prefix_sharing import prefix_shared_logps
from trainer_helpers import PROMPTS, grad_close, grads, trainer_and_batch


def _batch(tok, prompts, completions_per_prompt, completion_len):
    """Left-padded prompts repeated per group + right-padded completions, as TRL lays them out."""
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    gen = torch.Generator().manual_seed(0)
    rows = enc["input_ids"].repeat_interleave(completions_per_prompt, dim=0)
    prompt_mask = enc["attention_mask"].repeat_interleave(completions_per_prompt, dim=0)
    completions = torch.randint(10, 1000, (rows.size(0), completion_len), generator=gen)
    completion_mask = torch.ones_like(completions)
    completion_mask[1, 3:] = 0  # one short completion, padded after its end
    completion_mask[-1, 1:] = 0
    return torch.cat([rows, completions], 1), torch.cat([prompt_mask, completion_mask], 1)


@pytest.mark.parametrize("policy", ["peaked_llama_dir", "peaked_gqa_llama_dir"])
def test_logps_entropies_and_grads_equal_full_rows(policy, request):
    model, tok = load_policy(request.getfixturevalue(policy))
    add_fused_lm_head(model, temperature=0.7, outputs=("log_probs", "entropy"))
    input_ids, mask = _batch(tok, PROMPTS, 3, 6)
    weights = torch.randn(input_ids.size(0), 6, generator=torch.Generator().manual_seed(1))

    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :-6] = -100
    stock = model(input_ids=input_ids, attention_mask=mask, labels=labels, fused_lm_head=True)
    stock_logps, stock_entropy = stock.log_probs[:, -6:], stock.entropy[:, -6:]
    (stock_logps * weights).sum().backward()
    stock_grads = grads(model)
    model.zero_grad()

    logps, entropy = prefix_shared_logps(model, input_ids, mask, 6, temperature=0.7, compute_entropy=True)
    (logps * weights).sum().backward()
    shared_grads = grads(model)

    # The model is peaked enough for the check to bite: its distributions are far from uniform.
    assert stock_entropy[mask[:, -6:].bool()].mean() < 0.5 * torch.log(torch.tensor(float(len(tok))))
    assert torch.allclose(logps, stock_logps, atol=1e-4, rtol=1e-5)
    assert torch.allclose(entropy, stock_entropy, atol=1e-4, rtol=1e-5)
    assert (logps[1, 3:] == 0).all()  # masked completion positions stay zero, as TRL's
    assert stock_grads.keys() == shared_grads.keys()
    for name, grad in stock_grads.items():
        assert grad_close(shared_grads[name], grad), name


@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_trainer_loss_and_grads_match_stock_trl(peaked_llama_dir, tmp_path, beta, monkeypatch):
    import prlm.training.prefix_sharing as sharing_module

    shared_calls = []
    original = sharing_module.prefix_shared_logps
    monkeypatch.setattr(sharing_module, "prefix_shared_logps",
                        lambda *a, **k: shared_calls.append(1) or original(*a, **k))
    trainer, inputs = trainer_and_batch(peaked_llama_dir, tmp_path, beta=beta)
    assert inputs["completion_ids"].size(0) == 6
    # The groups are not in torch.unique's sorted order, so a wrong group owner cannot go unseen.
    _, owner = torch.unique(torch.cat([inputs["prompt_ids"], inputs["prompt_mask"]], 1), dim=0, return_inverse=True)
    assert owner.tolist() != sorted(owner.tolist())

    def loss_andgrads(sharing):
        trainer.prefix_sharing = sharing
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.detach(), grads(trainer.model)

    stock_loss, stock_grads = loss_andgrads(False)
    calls_before = len(shared_calls)
    shared_loss, shared_grads = loss_andgrads(True)
    assert len(shared_calls) > calls_before  # the shared path ran, not TRL's fallback
    assert torch.allclose(shared_loss, stock_loss, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in stock_grads.values())
    for name, grad in stock_grads.items():
        assert grad_close(shared_grads[name], grad), name


def test_auto_shares_prefixes_on_the_cpu_only(tmp_path):
    base = dict(task="synthetic", data=str(tmp_path), out=str(tmp_path / "run"), w_pers=0.0)
    assert TrainConfig(**base).uses_prefix_sharing
    assert not TrainConfig(**base, use_cpu=False).uses_prefix_sharing
    assert TrainConfig(**base, use_cpu=False, prefix_sharing="on").uses_prefix_sharing
    assert not TrainConfig(**base, prefix_sharing="off").uses_prefix_sharing
    with pytest.raises(Exception, match="prefix_sharing"):
        TrainConfig(**base, prefix_sharing="yes")
