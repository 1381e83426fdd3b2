"""Prefix-shared log-prob passes: the GRPO training step computed once per prompt.

In a GRPO batch the G completions of a group share one prompt, and on
personalized prompts (profile entries + input) the prompt is most of the
tokens. TRL's `_get_per_token_logps_and_entropies` runs every row in full,
so the prompt goes through the model (forward and backward) G times, and on
CPU its fused LM head projects every position, prompt included, onto the
49k-token vocabulary.

`PrefixSharingGRPOTrainer` overrides only that method: each distinct prompt of
a chunk is run once with the KV cache on, the cache is indexed out to the
rows that share it (indexing is differentiable, so gradients from every
completion flow back into the one prompt pass), the completions run on top
of it, and only the completion positions go through the LM head (TRL's own
chunked kernel). Positions, masks and labels are the ones TRL builds, so the
objective is the same; `tests/test_prefix_sharing.py` checks loss and
gradients against the stock computation.

Whatever this path does not cover (several processes, DeepSpeed, gradient
checkpointing, multimodal inputs, MoE aux losses) falls back to TRL's code.
"""

from __future__ import annotations

import torch
from trl import GRPOTrainer
from trl.kernels import ChunkedLogProbFunction

from prlm.training.prefix_attention import GQA_SDPA_NAME, attention_implementation
from prlm.training.sampling_copy import importance_weighted

_LM_HEAD_CHUNK = 4096  # rows per LM-head tile: bounds the (rows x vocab) logits held at once


def _backbone(causal_lm):
    return getattr(causal_lm, causal_lm.base_model_prefix)


def _logit_scale(config) -> float:
    # Mirror TRL's fused head for the models it rescales; SmolLM2 / Llama have none.
    for name in ("logit_scale", "output_multiplier", "lm_head_multiplier"):
        value = getattr(config, name, None)
        if value is not None:
            return value
    if getattr(config, "logits_scaling", None) is not None:
        return 1 / config.logits_scaling
    return 1.0


def prefix_shared_logps(causal_lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, logits_to_keep: int,
                        temperature: float = 1.0, compute_entropy: bool = False):
    """Per-token log-probs (and entropies) of the last `logits_to_keep` tokens of each row.

    Rows whose prompt part (tokens and mask) is identical share one prompt pass.
    Returns tensors of shape (rows, logits_to_keep), zero where the completion
    mask is zero, like TRL's fused head.
    """
    prompt_len = input_ids.size(1) - logits_to_keep
    prompt_part = torch.cat([input_ids[:, :prompt_len], attention_mask[:, :prompt_len]], dim=1)
    distinct, owner = torch.unique(prompt_part, dim=0, return_inverse=True)
    backbone = _backbone(causal_lm)

    # Key/value heads unrepeated in the attention kernel (see `sdpa_gqa`): same values, fewer copies.
    with attention_implementation(causal_lm, GQA_SDPA_NAME, replacing=("sdpa",)):
        prompt_out = backbone(input_ids=distinct[:, :prompt_len], attention_mask=distinct[:, prompt_len:],
                              use_cache=True)
        cache = prompt_out.past_key_values
        cache.batch_select_indices(owner)
        # No position_ids: like TRL's pass, positions count from 0 over the padded row.
        completion_out = backbone(input_ids=input_ids[:, prompt_len:], attention_mask=attention_mask,
                                  past_key_values=cache, use_cache=True)

    # Completion token j is predicted by the hidden state just before it.
    hidden = torch.cat([prompt_out.last_hidden_state[owner, -1:], completion_out.last_hidden_state[:, :-1]], dim=1)
    labels = input_ids[:, prompt_len:]
    keep = attention_mask[:, prompt_len:].bool()
    head = causal_lm.get_output_embeddings()
    config = causal_lm.config.get_text_config()
    wanted = ("log_probs", "entropy") if compute_entropy else ("log_probs",)
    log_probs, entropy, *_ = ChunkedLogProbFunction.apply(
        hidden[keep], head.weight, head.bias, labels[keep], temperature, _LM_HEAD_CHUNK,
        getattr(config, "final_logit_softcapping", None), _logit_scale(config), wanted)
    # masked_scatter keeps an all-masked chunk connected to the graph (a differentiable zero).
    log_probs = log_probs.new_zeros(keep.shape).masked_scatter(keep, log_probs)
    if compute_entropy:
        entropy = entropy.new_zeros(keep.shape).masked_scatter(keep, entropy)
    return log_probs, entropy


class PrefixSharingGRPOTrainer(GRPOTrainer):
    """TRL's GRPOTrainer with the prompt of each group computed once in the log-prob passes.

    With `sampling_correction` on (the rollout samples from a lighter copy of
    the policy), the loss's log-prob pass also weights each token by the
    importance ratio policy / copy, with TRL's modes and bounds
    (`sampling_copy.importance_weighted`).
    """

    prefix_sharing = True  # set False to run TRL's own pass (the equivalence test and the bench do)
    sampling_correction = False  # set True by build_trainer when the rollout samples from a copy
    _sampling_logps = None  # the copy's log-probs of the micro-batch whose loss is being computed

    def _prefix_sharing_applies(self, causal_lm, compute_aux_loss: bool, extra: dict) -> bool:
        return (self.prefix_sharing
                and self.accelerator.num_processes == 1
                and not self.is_deepspeed_enabled
                # the KV cache is off under activation checkpointing
                and not getattr(_backbone(causal_lm), "gradient_checkpointing", False)
                and not compute_aux_loss
                and all(value is None for value in extra.values()))

    def _compute_loss(self, model, inputs):
        # TRL hands the rollout's log-probs to the loss as `sampling_per_token_logps`; keep them for the pass below.
        self._sampling_logps = inputs.get("sampling_per_token_logps") if self.sampling_correction else None
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._sampling_logps = None

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size=None,
                                           compute_entropy=False, compute_aux_loss=False, **extra):
        logps, entropies, aux = self._logps_and_entropies(model, input_ids, attention_mask, logits_to_keep,
                                                          batch_size, compute_entropy, compute_aux_loss, **extra)
        if self._sampling_logps is not None and torch.is_grad_enabled():
            logps = self._importance_weighted(logps, attention_mask[:, -logits_to_keep:])
        return logps, entropies, aux

    def _importance_weighted(self, logps: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
        args = self.args
        logps, ratio = importance_weighted(logps, self._sampling_logps, completion_mask,
                                           args.vllm_importance_sampling_mode, args.vllm_importance_sampling_clip_min,
                                           args.vllm_importance_sampling_clip_max)
        # TRL's metric names for the same weights on vLLM's samples.
        ratio = ratio.expand_as(completion_mask)[completion_mask.bool()]
        metrics = self._metrics["train"]
        metrics["sampling/importance_sampling_ratio/min"].append(ratio.min().item())
        metrics["sampling/importance_sampling_ratio/mean"].append(ratio.mean().item())
        metrics["sampling/importance_sampling_ratio/max"].append(ratio.max().item())
        return logps

    def _logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy,
                             compute_aux_loss, **extra):
        causal_lm = self.accelerator.unwrap_model(model)
        if hasattr(causal_lm, "get_base_model"):  # PEFT: LoRA layers live inside the base model's modules
            causal_lm = causal_lm.get_base_model()
        if not self._prefix_sharing_applies(causal_lm, compute_aux_loss, extra):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss,
                **extra)
        batch_size = batch_size or input_ids.size(0)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            rows = slice(start, start + batch_size)
            with self.accelerator.autocast():
                logps, entropy = prefix_shared_logps(causal_lm, input_ids[rows], attention_mask[rows],
                                                     logits_to_keep, self.temperature, compute_entropy)
            all_logps.append(logps)
            all_entropies.append(entropy)
        entropies = torch.cat(all_entropies) if compute_entropy else None
        return torch.cat(all_logps), entropies, None
