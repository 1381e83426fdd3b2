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
