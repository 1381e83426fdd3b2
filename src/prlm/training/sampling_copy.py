"""A lighter copy of the policy for the rollouts, and the loss's correction for sampling from it.

On this CPU (AVX-512 with BF16 and VNNI) a bfloat16 or int8 matrix product
runs about twice as fast as a float32 one, and decoding streams half or a
quarter of the weight bytes. The rollout may therefore sample from a copy of
the policy in one of those types, refreshed after every optimizer step, while
the loss is computed with the float32 policy. The copy's distribution is not
the policy's, so each token's policy-gradient term is weighted by the
importance ratio policy / copy, truncated or masked as TRL weights vLLM's
samples (`vllm_importance_sampling_mode`: token_truncate, token_mask,
sequence_truncate, sequence_mask; bounds `vllm_importance_sampling_clip_min`
and `_clip_max`).

TRL computes that ratio from an extra forward pass of the policy over every
completion; here it comes from the loss's own log-prob pass, which already
holds the policy's log-probs (one update per batch: the policy of the loss is
the policy that was copied). `importance_weighted` returns log-probs whose
value is unchanged and whose gradient is scaled by the ratio, so TRL's loss
(ratio 1 in value) gets exactly the gradient of its importance-weighted loss.
That holds for the clipped-ratio losses (grpo, dapo, dr_grpo, bnpo) without
a KL term: `TrainConfig` refuses `beta > 0` with a copy.
"""

from __future__ import annotations

import copy
import math

import torch

SAMPLING_COPIES = ("off", "bf16", "int8")
CORRECTION_MODES = ("token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "none")


class SamplingCopy:
    """The rollout's copy of the policy: made on first use, refreshed when the optimizer step count moves."""

    def __init__(self, kind: str):
        if kind not in SAMPLING_COPIES[1:]:
            raise ValueError(f"sampling copy must be one of {SAMPLING_COPIES[1:]}, got '{kind}'")
        self.kind = kind
        self.model = None
        self.made_at_step: int | None = None

    def of(self, policy, step: int):
        """The copy of `policy` as it is after `step` optimizer steps."""
        if self.model is not None and step == self.made_at_step:
            return self.model
        if self.kind == "bf16" and self.model is not None:
            with torch.no_grad():
                for mine, theirs in zip(self.model.parameters(), policy.parameters(), strict=True):
                    mine.copy_(theirs)
        else:  # the first copy, or int8 (quantized weights are made anew)
            self.model = _int8_copy(policy) if self.kind == "int8" else _bf16_copy(policy)
        self.made_at_step = step
        return self.model


def drop_forward_patches(model) -> list[tuple[torch.nn.Module, object]]:
    """Make `model` run its class's forward again; returns the patches removed, for `restore_forward_patches`.

    TRL (`add_fused_lm_head`) and accelerate (mixed precision: bf16 autocast)
    replace a model's `forward` by an instance attribute, a closure over the
    original model's bound forward. Under PEFT, TRL patches the wrapped base
    model rather than the wrapper, so both are looked at.
    """
    removed = []
    for module in _patchable(model):
        patch = module.__dict__.pop("forward", None)
        if patch is not None:
            removed.append((module, patch))
    return removed


def restore_forward_patches(removed: list[tuple[torch.nn.Module, object]]) -> None:
    for module, patch in removed:
        module.forward = patch


def _patchable(model) -> list[torch.nn.Module]:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return [model] if base is model else [model, base]


def _detached_copy(policy):
    """A deep copy whose forward is its own: a deep copy keeps a forward
    patch's closure (`drop_forward_patches`), so the copy would run the policy itself."""
    model = copy.deepcopy(policy).eval()
    drop_forward_patches(model)
    return model


def _bf16_copy(policy):
    model = _detached_copy(policy)
    # Parameters only: buffers such as RoPE's inverse frequencies stay float32 (bfloat16 would shift positions).
    for parameter in model.parameters():
        parameter.requires_grad_(False)
        parameter.data = parameter.data.to(torch.bfloat16)
    return model


def _int8_copy(policy):
    model = _detached_copy(policy)
    if hasattr(model, "merge_and_unload"):  # PEFT: quantize the merged weights, not the adapters apart
        model = model.merge_and_unload()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)


def importance_ratio(policy_logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor, mode: str,
                     clip_min: float | None, clip_max: float | None) -> torch.Tensor:
    """TRL's importance-sampling weights (B, T) or (B, 1) of samples drawn from `sampling_logps`' model."""
    diff = torch.nan_to_num((policy_logps - sampling_logps) * mask, nan=0.0)
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max)
    low = -math.inf if clip_min is None else clip_min
    high = math.inf if clip_max is None else clip_max
    return ratio.masked_fill((ratio < low) | (ratio > high), 0.0)


def importance_weighted(logps: torch.Tensor, sampling_logps: torch.Tensor, mask: torch.Tensor, mode: str,
                        clip_min: float | None, clip_max: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-probs equal to `logps` in value whose gradient is scaled by the importance ratio; and the ratio."""
    fixed = logps.detach()
    ratio = importance_ratio(fixed, sampling_logps.to(fixed.dtype), mask, mode, clip_min, clip_max)
    return fixed + ratio * (logps - fixed), ratio
