"""Shared-prefix rollouts: a faster generation step for GRPO, plugged into TRL
through its `rollout_func` hook.

In a GRPO group the G completions share one prompt. `model.generate` with
`num_return_sequences` copies the prompt G times and prefills every copy; on
personalized prompts (profile entries + input) the prompt is most of the
tokens. Here each distinct prompt is prefilled once, its keys and values are
kept once for the G samples (`prefix_attention.SharedPrefixKV`), rows leave
the batch as they end, and the decode loop samples with the trainer's
temperature / top-p / top-k, stopping at EOS or, when asked, right after a
stop string (`</answer>`, as evaluation stops), so that no decoding step is
spent on text the rewards never read.
"""

from __future__ import annotations

import weakref

import torch

from prlm.training.prefix_attention import ATTENTION_NAME, SharedPrefixKV, attention_implementation
from prlm.training.sampling_copy import SamplingCopy


def _group_consecutive(prompts: list) -> tuple[list, list[int]]:
    """TRL repeats each prompt G times in a row: (distinct prompts, copies of each)."""
    unique, counts = [], []
    for prompt in prompts:
        if unique and prompt == unique[-1]:
            counts[-1] += 1
        else:
            unique.append(prompt)
            counts.append(1)
    return unique, counts


def _filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    if top_k and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) > top_p  # keep the token that crosses top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


@torch.inference_mode()
def sample_shared_prefix(model, tokenizer, prompts: list[str], counts: list[int], max_new_tokens: int,
                         temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
                         eos_token_ids: tuple[int, ...] = (), generator: torch.Generator | None = None,
                         stop_strings: tuple[str, ...] = ()):
    """Sample counts[i] completions of prompts[i], prefilling each prompt once.

    All prompts' groups decode as one batch over the prompts' keys and values
    held once (`SharedPrefixKV`); rows that end leave the batch. Returns
    (prompt_ids, completion_ids, logprobs), one entry per completion,
    completions in prompt order; a completion ends with its EOS token if it
    produced one, or with the token that completed a stop string.
    """
    device = model.device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    # logits_to_keep=1: only the last position's next-token logits are read.
    out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True,
                logits_to_keep=1)
    repeats = torch.tensor(counts, device=device)
    kv = SharedPrefixKV(out.past_key_values, mask, counts, max_new_tokens)
    logits = out.logits[:, -1, :].float().repeat_interleave(repeats, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(repeats, dim=0) + 1

    n = logits.shape[0]
    eos = torch.tensor(list(eos_token_ids) or [tokenizer.eos_token_id], device=device)
    tokens = torch.zeros((n, max_new_tokens), dtype=torch.long, device=device)
    token_logps = torch.zeros((n, max_new_tokens), dtype=torch.float32, device=device)
    lengths = torch.full((n,), max_new_tokens, dtype=torch.long, device=device)
    stop = _StopStrings(tokenizer, stop_strings, logits.shape[-1])
    active = torch.arange(n, device=device)  # original row of each row still decoding
    with attention_implementation(model, ATTENTION_NAME):
        for step in range(max_new_tokens):
            scaled = _filter_logits(logits / max(temperature, 1e-6), top_k, top_p)
            logp = scaled.log_softmax(-1)
            token = _sample(logp.exp(), generator)
            tokens[active, step] = token
            token_logps[active, step] = logp.gather(-1, token[:, None]).squeeze(-1)
            ended = torch.isin(token, eos) | stop.ended(tokens, active, step)
            lengths[active[ended]] = step + 1
            if step + 1 == max_new_tokens or ended.all():
                break
            if ended.any():
                still = (~ended).nonzero().squeeze(-1)
                kv.keep(still)
                active, token, next_pos = active[still], token[still], next_pos[still]
            out = model(input_ids=token[:, None], position_ids=next_pos, use_cache=False, shared_prefix=kv)
            kv.advance()
            next_pos = next_pos + 1
            logits = out.logits[:, -1, :].float()

    prompt_rows = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    owners = torch.arange(len(prompts)).repeat_interleave(repeats.cpu()).tolist()
    lengths = lengths.tolist()
    completion_ids = [row[:length] for row, length in zip(tokens.tolist(), lengths)]
    logprobs = [row[:length] for row, length in zip(token_logps.tolist(), lengths)]
    return [prompt_rows[owner] for owner in owners], completion_ids, logprobs


def _sample(probs: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One token per row drawn from `probs` (rows summing to 1) by inverting the cumulative distribution.

    One uniform number per row: `torch.multinomial` draws an exponential
    number per vocabulary entry (49k per row), which at 32 rows costs more
    than the rest of the sampling. A token of probability 0 is never drawn
    (its cumulative value equals its predecessor's).
    """
    cumulative = probs.cumsum(-1)
    uniform = torch.rand((probs.shape[0], 1), generator=generator, device=probs.device, dtype=probs.dtype)
    token = torch.searchsorted(cumulative, uniform * cumulative[:, -1:], right=True).squeeze(-1)
    return token.clamp_(max=probs.shape[-1] - 1)


class _StopStrings:
    """Which rows have just completed a stop string.

    A stop string may span several tokens and be tokenized in more than one
    way, so the decoded text of a row's last tokens is checked; but only for
    rows whose new token holds the stop string's last character (a lookup in
    a table over the vocabulary, made once per tokenizer), so most steps
    decode nothing.
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], vocab_size: int):
        self.tokenizer, self.stop_strings = tokenizer, tuple(s for s in stop_strings if s)
        ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in self.stop_strings]
        self.window = 2 * max((len(i) for i in ids), default=0) + 2
        self.may_end = _tokens_holding(tokenizer, frozenset(s[-1] for s in self.stop_strings), vocab_size) \
            if self.stop_strings else None

    def ended(self, tokens: torch.Tensor, active: torch.Tensor, step: int) -> torch.Tensor:
        """For each active row: did its token at `step` complete a stop string?"""
        ended = torch.zeros(len(active), dtype=torch.bool, device=active.device)
        if self.may_end is None:
            return ended
        candidates = self.may_end.to(tokens.device)[tokens[active, step]].nonzero().squeeze(-1).tolist()
        first = max(0, step + 1 - self.window)
        for index in candidates:
            text = self.tokenizer.decode(tokens[active[index], first:step + 1].tolist(), skip_special_tokens=False)
            ended[index] = any(s in text for s in self.stop_strings)
        return ended


_HOLDING_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {key: table}


def _tokens_holding(tokenizer, characters: frozenset, vocab_size: int) -> torch.Tensor:
    """Boolean table over token ids: does the token's text hold one of `characters`?

    A token decoding to U+FFFD (part of a multi-byte character) counts too,
    since the character may be completed by it.
    """
    tables = _HOLDING_CACHE.setdefault(tokenizer, {})
    key = (characters, vocab_size)
    if key not in tables:
        texts = tokenizer.batch_decode([[i] for i in range(min(len(tokenizer), vocab_size))],
                                       skip_special_tokens=False)
        wanted = characters | {"\ufffd"}
        table = torch.zeros(vocab_size, dtype=torch.bool)
        table[:len(texts)] = torch.tensor([any(c in text for c in wanted) for text in texts])
        tables[key] = table
    return tables[key]


class SharedPrefixRollout:
    """TRL `rollout_func`: `(prompts, trainer) -> {prompt_ids, completion_ids, logprobs}`.

    With `sampling_copy` ('bf16' or 'int8') the completions are sampled from
    a lighter copy of the policy, refreshed after every optimizer step; the
    log-probs returned are the copy's, which the trainer's loss corrects for
    (`sampling_copy.importance_weighted`).
    """

    def __init__(self, stop_strings: tuple[str, ...] = (), sampling_copy: str = "off"):
        self.stop_strings = tuple(stop_strings)
        self.copy = SamplingCopy(sampling_copy) if sampling_copy != "off" else None

    def __call__(self, prompts: list, trainer) -> dict:
        if not isinstance(prompts[0], str):
            raise TypeError("SharedPrefixRollout needs text prompts (prlm renders the chat template itself)")
        unique, counts = _group_consecutive(prompts)
        model = trainer.accelerator.unwrap_model(trainer.model)
        sampler = model if self.copy is None else self.copy.of(model, trainer.state.global_step)
        was_training = model.training
        model.eval()
        args = trainer.args
        try:
            prompt_ids, completion_ids, logprobs = sample_shared_prefix(
                sampler, trainer.processing_class, unique, counts, args.max_completion_length,
                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0,
                eos_token_ids=tuple(trainer.eos_token_ids), stop_strings=self.stop_strings,
            )
        finally:
            model.train(was_training)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}
