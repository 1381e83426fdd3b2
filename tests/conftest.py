"""Shared fixtures for the whole test suite.

The embedded SmolLM2 conversion is cached in the real prlm cache
(``~/.cache/prlm`` or ``$PRLM_CACHE``) and reused across runs; tests do not
redirect it, except the conversion-caching tests that monkeypatch PRLM_CACHE.
"""

from __future__ import annotations

import os

import pytest

# Set before anything imports huggingface_hub (it reads these at import time);
# the autouse fixture below re-asserts it for the whole session.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session", autouse=True)
def _hf_offline():
    """No test ever reaches the Hugging Face hub."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield
    if old is None:
        os.environ.pop("HF_HUB_OFFLINE", None)
    else:
        os.environ["HF_HUB_OFFLINE"] = old


@pytest.fixture(scope="session")
def policy_tokenizer():
    """The real SmolLM2 tokenizer (left padding, pad = eos, ChatML chat template).

    The first use ever converts the embedded GGUF into the prlm cache (~20 s).
    """
    from prlm.models import load_tokenizer

    return load_tokenizer("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, policy_tokenizer):
    """A tiny random LlamaForCausalLM with the real SmolLM2 tokenizer, as a folder path.

    Loads with ``prlm.models.load_policy(path)``; fast enough for any unit test.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = policy_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    out = tmp_path_factory.mktemp("tiny_llama")
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


def make_peaked_llama(folder, tok, attention_heads: int = 2, kv_heads: int = 2) -> str:
    """A tiny llama whose outputs depend visibly on what it attends to and where; saved in `folder`.

    The random tiny model's next-token distributions are near-uniform and its
    attention near-flat, so a dropped mask, positions off by one or another
    group's prompt move its entropies less than any tolerance (1e-4 at most,
    measured). Here the LM head is scaled up (peaked distributions) and the
    query/key projections too (attention that discriminates, so RoPE
    positions matter): the same defects move log-probs and entropies by 0.7
    or more. `kv_heads` below `attention_heads` makes it grouped-query, as
    SmolLM2 is (9 query heads over 3 key/value heads).
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=attention_heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=2048, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(8.0)
            layer.self_attn.k_proj.weight.mul_(8.0)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def peaked_llama_dir(tmp_path_factory, policy_tokenizer):
    """A tiny llama whose outputs depend visibly on what it attends to (see `make_peaked_llama`), as a folder."""
    return make_peaked_llama(tmp_path_factory.mktemp("peaked_llama"), policy_tokenizer)


@pytest.fixture(scope="module")
def peaked_gqa_llama_dir(tmp_path_factory, policy_tokenizer):
    """`peaked_llama_dir` with grouped-query attention: 4 query heads over 2 key/value heads."""
    return make_peaked_llama(tmp_path_factory.mktemp("peaked_gqa_llama"), policy_tokenizer, attention_heads=4,
                             kv_heads=2)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A synthetic-task data folder: 4 users, 2 profile entries each, 2/1/1 questions per user in train/dev/test."""
    from prlm.data.synthetic import write_synthetic

    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(folder, num_users=4, profile_size=2, questions_per_user=(2, 1, 1))
    return str(folder)
