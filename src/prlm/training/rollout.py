"""Shared-prefix rollouts: a faster generation step for GRPO, plugged into TRL
through its `rollout_func` hook.

In a GRPO group the G completions share one prompt. `model.generate` with
`num_return_sequences` copies the prompt G times and prefills every copy; on
personalized prompts (profile entries + input) the prompt is most of the
tokens. Here each distinct prompt is prefilled once, its KV cache is repeated
for the G samples, and the decode loop samples with the trainer's
temperature / top-p / top-k, stopping at EOS or, when asked, right after a
stop string (`</answer>`, as evaluation stops), so that no decoding step is
spent on text the rewards never read.
"""

from __future__ import annotations

import torch


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

    All prompts' groups decode as one batch. Returns (prompt_ids,
    completion_ids, logprobs), one entry per completion, completions in prompt
    order; a completion ends with its EOS token if it produced one, or with
    the token that completed a stop string.
    """
    device = model.device
    enc = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    mask = enc["attention_mask"]
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=enc["input_ids"], attention_mask=mask, position_ids=positions, use_cache=True)
    repeats = torch.tensor(counts, device=device)
    cache = out.past_key_values
    cache.batch_select_indices(torch.arange(len(prompts), device=device).repeat_interleave(repeats))
    logits = out.logits[:, -1, :].float().repeat_interleave(repeats, dim=0)
    mask = mask.repeat_interleave(repeats, dim=0)
    next_pos = positions[:, -1:].repeat_interleave(repeats, dim=0) + 1

    n = logits.shape[0]
    eos = torch.tensor(list(eos_token_ids) or [tokenizer.eos_token_id], device=device)
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    stop = _StopStrings(tokenizer, stop_strings, n)
    # Finished rows keep decoding (the batch stays whole) on a real token id; their output is cut away.
    filler = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    tokens, token_logps = [], []
    for step in range(max_new_tokens):
        scaled = _filter_logits(logits / max(temperature, 1e-6), top_k, top_p)
        logp = scaled.log_softmax(-1)
        token = torch.multinomial(logp.exp(), 1, generator=generator).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, filler), token)
        tokens.append(token)
        token_logps.append(logp.gather(-1, token[:, None]).squeeze(-1))
        finished |= torch.isin(token, eos) | stop.update(token, finished, step)
        if finished.all():
            break
        mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=device)], dim=-1)
        out = model(input_ids=token[:, None], attention_mask=mask, position_ids=next_pos,
                    past_key_values=cache, use_cache=True)
        cache, next_pos = out.past_key_values, next_pos + 1
        logits = out.logits[:, -1, :].float()

    sampled = torch.stack(tokens, dim=1).tolist()
    logps = torch.stack(token_logps, dim=1).tolist()
    prompt_rows = [ids[m.bool()].tolist() for ids, m in zip(enc["input_ids"], enc["attention_mask"])]
    prompt_ids, completion_ids, logprobs = [], [], []
    eos_set = set(eos.tolist())
    for row, (seq, lp) in enumerate(zip(sampled, logps)):
        cut = min(next((i + 1 for i, t in enumerate(seq) if t in eos_set), len(seq)), stop.cut[row])
        prompt_ids.append(prompt_rows[_owner(row, counts)])
        completion_ids.append(seq[:cut])
        logprobs.append(lp[:cut])
    return prompt_ids, completion_ids, logprobs


class _StopStrings:
    """Which rows have just completed a stop string, read from the decoded tail of each row.

    A stop string may span several tokens and be tokenized in more than one
    way, so the text is checked rather than token ids; only the last few
    tokens are decoded at each step (cheap next to a decoding step).
    """

    def __init__(self, tokenizer, stop_strings: tuple[str, ...], rows: int):
        self.tokenizer, self.stop_strings = tokenizer, tuple(s for s in stop_strings if s)
        ids = [tokenizer(s, add_special_tokens=False)["input_ids"] for s in self.stop_strings]
        self.window = 2 * max((len(i) for i in ids), default=0) + 2
        self.history: list[list[int]] = [[] for _ in range(rows)]
        self.cut = [10**9] * rows  # completion length once a stop string ends it

    def update(self, token: torch.Tensor, finished: torch.Tensor, step: int) -> torch.Tensor:
        stopped = torch.zeros_like(finished)
        if not self.stop_strings:
            return stopped
        for row, (value, done) in enumerate(zip(token.tolist(), finished.tolist())):
            if done:
                continue
            tail = self.history[row]
            tail.append(value)
            del tail[:-self.window]
            text = self.tokenizer.decode(tail, skip_special_tokens=False)
            if any(s in text for s in self.stop_strings):
                stopped[row] = True
                self.cut[row] = step + 1
        return stopped


def _owner(row: int, counts: list[int]) -> int:
    for index, count in enumerate(counts):
        if row < count:
            return index
        row -= count
    raise IndexError(row)


class SharedPrefixRollout:
    """TRL `rollout_func`: `(prompts, trainer) -> {prompt_ids, completion_ids, logprobs}`."""

    def __init__(self, stop_strings: tuple[str, ...] = ()):
        self.stop_strings = tuple(stop_strings)

    def __call__(self, prompts: list, trainer) -> dict:
        if not isinstance(prompts[0], str):
            raise TypeError("SharedPrefixRollout needs text prompts (prlm renders the chat template itself)")
        unique, counts = _group_consecutive(prompts)
        model = trainer.accelerator.unwrap_model(trainer.model)
        was_training = model.training
        model.eval()
        args = trainer.args
        try:
            prompt_ids, completion_ids, logprobs = sample_shared_prefix(
                model, trainer.processing_class, unique, counts, args.max_completion_length,
                temperature=args.temperature, top_p=args.top_p, top_k=args.top_k or 0,
                eos_token_ids=tuple(trainer.eos_token_ids), stop_strings=self.stop_strings,
            )
        finally:
            model.train(was_training)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}
