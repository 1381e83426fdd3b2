"""Generation backends: batched transformers (default), vLLM when available.

`generator.generate(prompts, params)` takes fully rendered prompt texts (chat
template and pre-fill included) and returns, per prompt, a list of
`params.n` completions (the text after the prompt).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from prlm import PrlmError
from prlm.options import check_choice, check_device, opt
from prlm.prompts import MAX_PROMPT_TOKENS


@dataclass
class GenerationConfig:
    model: str = opt("smollm2-135m", "Policy model: 'smollm2-135m' (embedded), a local folder or a Hugging Face id.")
    backend: str = opt("auto", "Generation backend: 'hf' (transformers), 'vllm', or 'auto' (vLLM when installed and a "
                               "GPU is present).")
    device: str = opt("auto", "Device for the model: 'cpu', 'cuda', 'cuda:1', or 'auto' (CUDA when available).")
    batch_size: int = opt(8, "Prompts per generation batch.")
    max_prompt_tokens: int = opt(MAX_PROMPT_TOKENS, "Token limit of a prompt; profile entries share what the input "
                                                    "leaves.")
    max_new_tokens: int = opt(32, "Tokens generated at most per answer (raise it for the reasoning prompt).")
    temperature: float = opt(0.0, "0 for greedy decoding (evaluation); > 0 samples.")
    top_p: float = opt(1.0, "Nucleus sampling mass when temperature > 0.")
    seed: int = opt(0, "Seed for sampling and random retrieval.")

    def __post_init__(self):
        check_choice("backend", self.backend, ("auto", "hf", "vllm"))
        check_device("device", self.device)
        for name in ("batch_size", "max_prompt_tokens", "max_new_tokens"):
            if getattr(self, name) < 1:
                raise PrlmError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.temperature < 0:
            raise PrlmError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise PrlmError(f"top_p must be in (0, 1], got {self.top_p}")


@dataclass
class SamplingParams:
    max_new_tokens: int = 32
    temperature: float = 0.0
    """0 means greedy decoding."""
    top_p: float = 1.0
    n: int = 1
    """Completions per prompt (GRPO's group size)."""
    seed: int = 0
    stop: list[str] = field(default_factory=list)
    """Strings that end a completion (kept in the text)."""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise PrlmError(f"device '{device}' requested but CUDA is not available; use --device cpu")
    return device


def vllm_available() -> bool:
    import importlib.util

    import torch

    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def _cut_at_stop(text: str, stop: Sequence[str]) -> str:
    cut = len(text)
    for s in stop:
        pos = text.find(s)
        if pos != -1:
            cut = min(cut, pos + len(s))
    return text[:cut]


class HFGenerator:
    """Batched `model.generate` with left padding; prompts are sorted by length
    so that each batch pads little, and results come back in input order."""

    def __init__(self, model, tokenizer, batch_size: int = 8):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        tokenizer.padding_side = "left"

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = True, desc: str = "generating"
    ) -> list[list[str]]:
        import torch
        from tqdm.auto import tqdm

        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda i: -lengths[i])
        results: list[list[str]] = [[] for _ in prompts]
        gen_kwargs = dict(max_new_tokens=params.max_new_tokens, num_return_sequences=params.n,
                          pad_token_id=self.tokenizer.pad_token_id)
        if params.greedy:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            gen_kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0)
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.tokenizer)
        device = self.model.device
        torch.manual_seed(params.seed)
        bar = tqdm(total=len(prompts), desc=desc, unit="ex", disable=not progress)
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            enc = self.tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True,
                                 add_special_tokens=False).to(device)
            with torch.inference_mode():
                out = self.model.generate(**enc, **gen_kwargs)
            new_tokens = out[:, enc["input_ids"].shape[1]:]
            texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
            for j, i in enumerate(batch):
                results[i] = [_cut_at_stop(t, params.stop) for t in texts[j * params.n:(j + 1) * params.n]]
            bar.update(len(batch))
        bar.close()
        return results


class VLLMGenerator:
    """vLLM offline inference; same interface as HFGenerator."""

    def __init__(self, model_path: str, gpu_memory_utilization: float = 0.5, max_model_len: int = 4096):
        from vllm import LLM

        self.llm = LLM(model=model_path, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len)

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = True, desc: str = "generating"
    ) -> list[list[str]]:
        from vllm import SamplingParams as VParams

        vparams = VParams(n=params.n, temperature=params.temperature, top_p=params.top_p,
                          max_tokens=params.max_new_tokens, seed=params.seed,
                          stop=list(params.stop) or None, include_stop_str_in_output=True)
        outputs = self.llm.generate(list(prompts), vparams, use_tqdm=progress)
        return [[c.text for c in o.outputs] for o in outputs]


def make_generator(model_name: str, backend: str = "auto", device: str = "auto", batch_size: int = 8):
    """Load the policy and wrap it in the chosen backend; returns (generator, tokenizer)."""
    from prlm.models import load_policy, load_tokenizer, resolve_policy_path

    if backend == "vllm" or (backend == "auto" and vllm_available()):
        if not vllm_available():
            raise PrlmError("backend 'vllm' needs the vllm package and a CUDA GPU; use --backend hf")
        return VLLMGenerator(resolve_policy_path(model_name)), load_tokenizer(model_name)
    model, tokenizer = load_policy(model_name, device=resolve_device(device))
    model.eval()
    return HFGenerator(model, tokenizer, batch_size=batch_size), tokenizer
