"""Dataclass configs, one per stage, loadable from YAML with CLI overrides.

Every field carries its help text in `metadata["help"]`; `__post_init__`
checks values and says how to fix them. `add_config_args` turns a config
class into argparse options (`--k 8`), `config_from_args` merges
defaults < YAML file (`--config`) < command-line flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from prlm import PrlmError


def opt(default: Any, help: str, **kwargs) -> Any:
    """A config field with its help text."""
    return field(default=default, metadata={"help": help, **kwargs})


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise PrlmError(f"{name}='{value}' is not valid; use one of: {', '.join(map(str, choices))}")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, value: str) -> None:
    """A device string torch understands (checked here, before any model loads)."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise PrlmError(f"{name}='{value}' is not a device; use auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps")


@dataclass
class GenerationConfig:
    model: str = opt("smollm2-135m", "Policy model: 'smollm2-135m' (embedded), a local folder or a Hugging Face id.")
    backend: str = opt("auto", "Generation backend: 'hf' (transformers), 'vllm', or 'auto' (vLLM when installed and a GPU is present).")
    device: str = opt("auto", "Device for the model: 'cpu', 'cuda', 'cuda:1', or 'auto' (CUDA when available).")
    batch_size: int = opt(8, "Prompts per generation batch.")
    max_prompt_tokens: int = opt(1024, "Token limit of a prompt; profile entries share what the input leaves.")
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
class ProfileDataConfig:
    """The questions a stage reads and the profile entries each one sees;
    shared by evaluation, reward-model pairs and training."""

    task: str = opt("commit-subject", "Task name from the task table (LaMP-4, LaMP-5, LaMP-7, commit-subject, synthetic).")
    data: str = opt("", "Dataset folder in LaMP's layout ({split}_questions.json and {split}_outputs.json).")
    split: str = opt("dev", "Split to read: train, dev or test.")
    retriever: str = opt("bm25", "Profile retriever: none, random, recency, bm25, bm25s, dense.")
    k: int = opt(4, "Profile entries retrieved per question.")
    encoder: str = opt("minilm", "Encoder for dense retrieval: 'minilm' (embedded), a local folder or a Hugging Face id.")
    limit: int = opt(0, "Use only the first N questions of the split (0 = all).")
    allow_empty_profiles: bool = opt(False, "Accept questions whose profile is empty.")

    def __post_init__(self):
        from prlm.data.lamp import SPLITS
        from prlm.data.tasks import get_task
        from prlm.retrieval import METHODS

        get_task(self.task)
        check_choice("split", self.split, SPLITS)
        check_choice("retriever", self.retriever, METHODS)
        if not self.data:
            raise PrlmError("data is required: pass --data DIR (a folder in LaMP's layout)")
        if self.k < 0:
            raise PrlmError(f"k must be >= 0, got {self.k}")
        if self.limit < 0:
            raise PrlmError(f"limit must be >= 0 (0 = all), got {self.limit}")


@dataclass
class EvalConfig(GenerationConfig, ProfileDataConfig):
    split: str = opt("dev", "Split to evaluate: train, dev or test.")
    method: str = opt("rag", "no-profile (input only), rag (retrieved entries + input), prlm (reasoning prompt).")
    out: str = opt("", "Run folder to write (predictions.jsonl, summary.json, summary.md).")
    force_answer_tokens: int = opt(32, "prlm only: when a completion stops without an <answer>, close the reasoning (`</think>\n<answer>`) and generate up to N more tokens for the answer (budget forcing); 0 = off. The recorded format rate counts the first pass only.")
    predict_only: bool = opt(False, "Write predictions only (predictions.jsonl, lamp_predictions.json for a LaMP submission), no metrics: for a split whose gold outputs are withheld (LaMP's test set). Golds are neither needed nor scored.")
    allow_task_mismatch: bool = opt(False, "Run even when the data say they belong to another task (the outputs file's `task` field, or the instruction the inputs start with).")

    def __post_init__(self):
        GenerationConfig.__post_init__(self)
        ProfileDataConfig.__post_init__(self)
        from prlm.prompts import PROMPT_METHODS as STYLES

        check_choice("method", self.method, STYLES)
        if not self.out:
            raise PrlmError("out is required: pass --out runs/NAME")
        if self.force_answer_tokens < 0:
            raise PrlmError(f"force_answer_tokens must be >= 0 (0 = off), got {self.force_answer_tokens}")
        if self.method == "no-profile":
            # The input alone: nothing is retrieved, whatever the flags say.
            self.retriever, self.k = "none", 0


# --- YAML + command line -----------------------------------------------------

def _arg_type(tp: Any):
    if tp in (int, "int"):
        return int
    if tp in (float, "float"):
        return float
    return str


def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per field; unset flags stay absent so YAML values win over defaults."""
    parser.add_argument("--config", help="YAML file with any of the options below; flags override it.")
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        tp = hints[f.name]
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: {f.default})")
        if tp is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", **kwargs)
        else:
            parser.add_argument(flag, type=_arg_type(tp), **kwargs)


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PrlmError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise PrlmError(f"{path}: not valid YAML ({err})") from None
    if not isinstance(data, dict):
        raise PrlmError(f"{path}: expected a mapping of option: value")
    return data


def build_config(cls: type, values: dict, source: str = "options") -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise PrlmError(f"{source}: unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**values)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    values = dict(vars(args))
    path = values.pop("config", None)
    for key in [k for k in values if k not in {f.name for f in dataclasses.fields(cls)}]:
        values.pop(key)
    merged = {**(load_yaml(path) if path else {}), **values}
    return build_config(cls, merged, source=path or "options")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
