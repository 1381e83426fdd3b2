"""Rollouts from a lighter copy of the policy: the copy, and the loss's importance weights (TRL's formula)."""

import pytest
import torch

from prlm import PrlmError
from prlm.models import load_policy
from prlm.training.config import TrainConfig
from prlm.training.sampling_copy import SamplingCopy, importance_ratio
from trainer_helpers import grad_close, grads, trainer_and_batch


def _trainer_and_batch(policy_dir, tmp_path, mode):
    return trainer_and_batch(policy_dir, tmp_path, sampling_copy="bf16", sampling_correction=mode,
                             sampling_ratio_min=0.5, sampling_ratio_max=2.0)


def _policy_logps(trainer, inputs):
    ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], 1)
    mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], 1)
    with torch.no_grad():
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask,
                                                                 inputs["completion_ids"].size(1))
    return logps


def _loss_and_grads(trainer, inputs):
    trainer.model.zero_grad()
    loss = trainer.compute_loss(trainer.model, inputs)
    loss.backward()
    return loss.detach(), grads(trainer.model)


def test_an_exact_copy_changes_nothing(peaked_llama_dir, tmp_path):
    trainer, inputs = _trainer_and_batch(peaked_llama_dir, tmp_path, "token_truncate")
    inputs["sampling_per_token_logps"] = _policy_logps(trainer, inputs)
    trainer.sampling_correction = False
    plain_loss, plain_grads = _loss_and_grads(trainer, inputs)
    trainer.sampling_correction = True
    corrected_loss, corrected_grads = _loss_and_grads(trainer, inputs)
    assert torch.allclose(corrected_loss, plain_loss, atol=1e-6)
    assert any(g.abs().sum() > 0 for g in plain_grads.values())
    for name, grad in plain_grads.items():
        assert grad_close(corrected_grads[name], grad), name


@pytest.mark.parametrize("mode", ["token_truncate", "token_mask", "sequence_truncate", "sequence_mask"])
def test_a_perturbed_copy_weights_each_token_as_trl_weights_vllm_samples(peaked_llama_dir, tmp_path, mode):
    """Gradients equal TRL's own loss with vLLM's importance weights, computed here from TRL's documented formula."""
    trainer, inputs = _trainer_and_batch(peaked_llama_dir, tmp_path, mode)
    own = _policy_logps(trainer, inputs)
    mask = inputs["completion_mask"]
    noise = torch.randn(own.shape, generator=torch.Generator().manual_seed(0)) * 0.6
    if mode.startswith("sequence"):
        noise = noise * 0.3  # sums over a sequence: keep some ratios inside the bounds
    inputs["sampling_per_token_logps"] = (own + noise) * mask
    ratio = torch.exp(((own - inputs["sampling_per_token_logps"]) * mask).sum(-1, keepdim=True)
                      if mode.startswith("sequence") else (own - inputs["sampling_per_token_logps"]) * mask)
    if mode.endswith("truncate"):
        expected = ratio.clamp(0.5, 2.0)
    else:
        expected = ratio.masked_fill((ratio < 0.5) | (ratio > 2.0), 0.0)
    assert (expected != 1).float().mean() > 0.5 and ((ratio < 0.5) | (ratio > 2.0)).any()  # the bounds bite

    trainer.sampling_correction = True
    _, corrected_grads = _loss_and_grads(trainer, inputs)
    trainer.sampling_correction = False
    _, plain_grads = _loss_and_grads(trainer, inputs)
    trainer.use_vllm, trainer.vllm_importance_sampling_correction = True, True  # TRL's own weighting
    _, trl_grads = _loss_and_grads(trainer, {**inputs, "importance_sampling_ratio": expected})
    trainer.use_vllm = False

    assert any(not grad_close(plain_grads[n], g) for n, g in trl_grads.items())  # the weights matter
    for name, grad in trl_grads.items():
        assert grad_close(corrected_grads[name], grad), name
    assert trainer._metrics["train"]["sampling/importance_sampling_ratio/max"]


def test_importance_ratio_modes_by_hand():
    policy = torch.tensor([[0.0, -1.0, -2.0]])
    sampling = torch.tensor([[0.0, 0.0, -4.0]])  # token ratios 1, e^-1, e^2
    mask = torch.tensor([[1.0, 1.0, 0.0]])  # the third token is padding
    token = importance_ratio(policy, sampling, mask, "token_truncate", 0.5, 3.0)
    assert torch.allclose(token, torch.tensor([[1.0, 0.5, 1.0]]))
    masked = importance_ratio(policy, sampling, mask, "token_mask", 0.5, 3.0)
    assert torch.allclose(masked, torch.tensor([[1.0, 0.0, 1.0]]))
    sequence = importance_ratio(policy, sampling, mask, "sequence_truncate", 0.1, 3.0)
    assert torch.allclose(sequence, torch.tensor([[torch.exp(torch.tensor(-1.0))]]))


def _lora_policy(model):
    """`model` wrapped in LoRA adapters that already matter (PEFT starts them at zero), patched as TRL's trainer
    patches a PEFT model: the fused head on the wrapped base model, not on the wrapper."""
    from peft import LoraConfig, get_peft_model
    from trl.trainer.utils import add_fused_lm_head

    policy = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    with torch.no_grad():
        for name, parameter in policy.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.5)
    add_fused_lm_head(policy.get_base_model())
    return policy


def _head_weight(policy):
    return policy.get_base_model().lm_head.weight if hasattr(policy, "get_base_model") else policy.lm_head.weight


@pytest.mark.parametrize("kind", ["bf16", "int8"])
@pytest.mark.parametrize("adapters", [False, True], ids=["full", "lora"])
def test_the_copy_follows_the_policy_after_each_step(tiny_llama_dir, kind, adapters):
    from trl.trainer.utils import add_fused_lm_head

    model, tok = load_policy(tiny_llama_dir)
    if adapters:
        model = _lora_policy(model)
    else:
        add_fused_lm_head(model)  # as TRL's trainer does: a forward that closes over the policy's own
    copy = SamplingCopy(kind)
    ids = tok(["hello there"], return_tensors="pt")["input_ids"]

    def logits(m):
        with torch.no_grad():
            return m(ids).logits.float()

    first = copy.of(model, 0)
    assert copy.of(model, 0) is first
    assert torch.allclose(logits(first), logits(model), atol=0.05)
    if kind == "bf16":
        assert {p.dtype for p in first.parameters()} == {torch.bfloat16}
        assert all(b.dtype == torch.float32 for b in first.buffers() if b.is_floating_point())
    with torch.no_grad():
        _head_weight(model).mul_(3.0)
    # Same step: not refreshed, and the copy runs its own weights (a forward patch carried into the copy would
    # run the policy's, and this would hold).
    assert not torch.allclose(logits(copy.of(model, 0)), logits(model), atol=0.05)
    assert torch.allclose(logits(copy.of(model, 1)), logits(model), atol=0.15)


def test_a_copy_needs_the_prefix_shared_pass_and_no_kl(tmp_path):
    base = dict(task="synthetic", data=str(tmp_path), out=str(tmp_path / "run"), w_pers=0.0, sampling_copy="bf16")
    assert TrainConfig(**base).corrects_sampling
    assert not TrainConfig(**base, sampling_correction="none").corrects_sampling
    with pytest.raises(PrlmError, match="beta"):
        TrainConfig(**base, beta=0.04)
    with pytest.raises(PrlmError, match="prefix"):
        TrainConfig(**base, prefix_sharing="off")
    with pytest.raises(PrlmError, match="sampling_copy"):
        TrainConfig(**{**base, "sampling_copy": "fp8"})
