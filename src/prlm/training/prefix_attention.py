"""Decoding over a shared prompt without copying its keys and values.

In a GRPO rollout the G completions of a group share one prompt. Repeating
the prompt's KV cache once per completion (`cache.batch_select_indices`)
makes every decoding step read G copies of it, and a cache that grows by
concatenation copies all of it again at every step: at 4 prompts x 8
completions of 512-token prompts that is about 0.9 GB read a step, more than
the policy's weights. Here the prompt's keys and values are kept once per
distinct prompt, each completion's own keys and values go into a buffer
allocated once, and attention runs in two parts joined in one softmax: the
queries of a group against their prompt (one matrix product per prompt), and
each row against its own completion.

The model reaches this through transformers' attention interface: during
decoding `config._attn_implementation` names `ATTENTION_NAME`, the forward
gets `shared_prefix=SharedPrefixKV(...)` as a keyword (transformers hands
model keywords down to the attention function) and no cache of its own.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTENTION_NAME = "prlm_shared_prefix"
GQA_SDPA_NAME = "prlm_sdpa_gqa"


class SharedPrefixKV:
    """Keys and values of the distinct prompts (once each) and of every active completion row.

    Rows are completions in prompt order (`counts[i]` rows for prompt i).
    Rows that finished can be dropped with `keep`, so later steps spend
    nothing on them; the rows left keep their order.
    """

    def __init__(self, prompt_cache, prompt_mask: torch.Tensor, counts: list[int], max_new_tokens: int):
        self.prompt_keys = [layer.keys for layer in prompt_cache.layers]
        self.prompt_values = [layer.values for layer in prompt_cache.layers]
        first = self.prompt_keys[0]
        # Left padding of the shorter prompts: -inf so that no query attends to it.
        self.prompt_bias = torch.zeros(prompt_mask.shape, dtype=first.dtype, device=first.device).masked_fill(
            prompt_mask == 0, float("-inf"))[:, None, :]
        rows = sum(counts)
        self.keys = [first.new_zeros(rows, k.shape[1], max_new_tokens, k.shape[3]) for k in self.prompt_keys]
        self.values = [first.new_zeros(rows, v.shape[1], max_new_tokens, v.shape[3]) for v in self.prompt_values]
        self.owner = torch.arange(len(counts), device=first.device).repeat_interleave(
            torch.tensor(counts, device=first.device))
        self.length = 0  # completion tokens stored per active row (all rows started together)
        self._segments = self._prompt_segments()
        self._layers_written = 0

    def _prompt_segments(self) -> list[tuple[int, int, int]]:
        """(prompt, first row, end row) of each prompt that still has active rows (rows stay in prompt order)."""
        prompts, sizes = torch.unique_consecutive(self.owner, return_counts=True)
        ends = sizes.cumsum(0).tolist()
        return [(p, end - size, end) for p, size, end in zip(prompts.tolist(), sizes.tolist(), ends)]

    def keep(self, rows: torch.Tensor) -> None:
        """Keep only `rows` (indices into the active rows, increasing) for the following steps."""
        n, stored = len(rows), self.length
        for buffers in (self.keys, self.values):
            for buffer in buffers:
                buffer[:n, :, :stored] = buffer[rows, :, :stored]
        self.keys = [buffer[:n] for buffer in self.keys]
        self.values = [buffer[:n] for buffer in self.values]
        self.owner = self.owner[rows]
        self._segments = self._prompt_segments()

    def advance(self) -> None:
        """One token more per row; every layer must have stored its keys (the model routed through `attend`)."""
        if self._layers_written != len(self.keys):
            raise RuntimeError(
                f"the shared-prefix attention ran in {self._layers_written} of {len(self.keys)} layers: this model "
                "does not pass its forward keywords to the attention function; use rollout: trl")
        self._layers_written = 0
        self.length += 1

    def attend(self, layer: int, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               scaling: float) -> torch.Tensor:
        """Attention output (rows, 1, heads, head_dim) of one decoding step of layer `layer`."""
        rows, heads, q_len, dim = query.shape
        if q_len != 1:
            raise ValueError("SharedPrefixKV decodes one token per row at a time")
        kv_heads = key.shape[1]
        per_kv = heads // kv_heads  # grouped-query attention: query heads per key/value head
        scaling = dim ** -0.5 if scaling is None else scaling
        t = self.length
        own_keys, own_values = self.keys[layer], self.values[layer]
        own_keys[:, :, t] = key[:, :, 0]
        own_values[:, :, t] = value[:, :, 0]
        self._layers_written += 1

        q = query.view(rows, kv_heads, per_kv, dim) * scaling
        own_scores = q @ own_keys[:, :, :t + 1].transpose(-1, -2)
        prompt_keys, prompt_values = self.prompt_keys[layer], self.prompt_values[layer]
        prompt_scores = torch.cat([
            self._grouped(q[start:end]).matmul(prompt_keys[p].transpose(-1, -2)).add(self.prompt_bias[p])
            .view(kv_heads, end - start, per_kv, -1).transpose(0, 1)
            for p, start, end in self._segments])
        weights = torch.cat([prompt_scores, own_scores], dim=-1).softmax(-1)
        prompt_weights, own_weights = weights.split([prompt_scores.shape[-1], t + 1], dim=-1)
        out = own_weights @ own_values[:, :, :t + 1]
        for p, start, end in self._segments:
            from_prompt = self._grouped(prompt_weights[start:end]) @ prompt_values[p]
            out[start:end] += from_prompt.view(kv_heads, end - start, per_kv, dim).transpose(0, 1)
        return out.reshape(rows, heads, 1, dim).transpose(1, 2)

    @staticmethod
    def _grouped(x: torch.Tensor) -> torch.Tensor:
        """(rows, kv_heads, per_kv, n) -> (kv_heads, rows * per_kv, n): one matrix product per prompt."""
        rows, kv_heads, per_kv, n = x.shape
        return x.transpose(0, 1).reshape(kv_heads, rows * per_kv, n)


def sdpa_gqa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, but the key/value heads go to the kernel as they are (`enable_gqa`).

    With a mask (any padded batch) transformers repeats each key/value head
    for its query heads on the CPU, copying the keys and values and, in the
    backward, reducing the copies again; at 4 x 8 rows over 512-token prompts
    that was about a tenth of the training step.
    """
    if kwargs.get("softcap") is not None or kwargs.get("position_bias") is not None:
        raise ValueError("prlm's GQA attention supports neither softcap nor a position bias")
    q_length, kv_length = query.shape[2], key.shape[2]
    is_causal = attention_mask is None and q_length > 1 and getattr(module, "is_causal", True)
    if is_causal and kv_length != q_length:
        raise ValueError("a causal attention over a cache needs an explicit mask")
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=attention_mask, dropout_p=dropout, scale=scaling, is_causal=is_causal,
        enable_gqa=key.shape[1] != query.shape[1])
    return out.transpose(1, 2).contiguous(), None


def _shared_prefix_or_gqa(module, query, key, value, attention_mask, scaling=None, dropout=0.0, shared_prefix=None,
                          **kwargs):
    if shared_prefix is None:  # a forward without the keyword: plain attention
        return sdpa_gqa(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    return shared_prefix.attend(module.layer_idx, query, key, value, scaling), None


AttentionInterface.register(ATTENTION_NAME, _shared_prefix_or_gqa)
AttentionInterface.register(GQA_SDPA_NAME, sdpa_gqa)
ALL_MASK_ATTENTION_FUNCTIONS.register(GQA_SDPA_NAME, sdpa_mask)  # the masks SDPA gets


@contextmanager
def attention_implementation(model, name: str, replacing: tuple[str, ...] | None = None):
    """Run `model`'s attention through the registered function `name` while the block runs.

    With `replacing`, only a model set to one of those implementations is
    switched (others, e.g. flash attention on a GPU, are left as they are).
    """
    config = model.config
    before = config._attn_implementation
    if replacing is not None and before not in replacing:
        yield
        return
    config._attn_implementation = name
    try:
        yield
    finally:
        config._attn_implementation = before
