"""The bottom floor of every config: fields with help, YAML files, `--set` overrides, validation.

Each stage keeps its own dataclass config beside its code (as TRL keeps `grpo_config.py` beside
`grpo_trainer.py`); this module holds only what they share and imports nothing of the stages.

A value reaches a config from three places, later ones winning: the field's default, a YAML file
(`--config FILE`, or the recipe of `prlm run`/`prlm sweep`), the command line (`--k 8`, or
`--set train.max_steps=5`). Every value is checked before any work starts (`build_config`):

- its key must be a field (a typo names the nearest valid key);
- its type must be the field's type, as pydantic reads the annotation in its lax mode (so "4" is 4
  and "5e-6", which YAML 1.1 reads as a string, is 5e-06, but "four", 2.5 for an int, or a list for
  a number are refused);
- a field whose metadata names a `section` class (the `train:` of a study) is checked the same
  way, key by key, against that class, however deep;
- then the dataclass is built, and its `__post_init__` checks ranges and choices.

A mistake raises `PrlmError` with one line that names the key; the CLI prints it and exits 2.
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import dataclasses
import difflib
import functools
import importlib
import re
import typing
from dataclasses import field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from prlm import PrlmError


def opt(default: Any, help: str, **metadata) -> Any:
    """A config field with its help text.

    `section=Class` (or "module:Class") makes the field a nested mapping checked key by key against Class;
    `renamed_from="old"` turns the old key into a hint ('it was renamed ...') instead of an unknown option."""
    if isinstance(default, (list, dict, set)):
        raise TypeError("mutable defaults are shared between instances: use a tuple or None")
    return field(default=default, metadata={"help": help, **metadata})


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if value not in choices:
        raise PrlmError(f"{name}='{value}' is not valid; use one of: {', '.join(map(str, choices))}")


_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


def check_device(name: str, value: str) -> None:
    """A device string torch understands (checked here, before any model loads)."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise PrlmError(f"{name}='{value}' is not a device; use auto, cpu, cuda, cuda:N (e.g. cuda:1) or mps")


_INPUT_CHECKS = contextvars.ContextVar("prlm_input_checks", default=True)


def checks_inputs() -> bool:
    """Whether a config's `__post_init__` should look at the files it reads (a model folder, an earlier run's
    config); false only inside `without_input_checks`."""
    return _INPUT_CHECKS.get()


@contextlib.contextmanager
def without_input_checks():
    """Build configs without looking at the files they read: `prlm check` looks them up itself, and says
    which earlier stage makes one that is not there yet."""
    token = _INPUT_CHECKS.set(False)
    try:
        yield
    finally:
        _INPUT_CHECKS.reset(token)


# --- shared bases ----------------------------------------------------------------
# Fields that several stage configs have, with one name, one default and one help text.

@dataclasses.dataclass
class TrainerOptions:
    """What every config that drives a transformers Trainer (GRPO, the sft baseline) passes to it."""

    seed: int = opt(0, "Seed of sampling, shuffling and initialisation.")
    use_cpu: bool = opt(True, "Train on the CPU even when a GPU is present.")
    bf16: bool = opt(False, "bf16 mixed precision (GPUs; 2.5x slower on this CPU).")
    gradient_checkpointing: bool = opt(False, "Recompute activations in the backward pass: less memory, more time.")


# --- checking values -------------------------------------------------------------

def build_config(cls: type, values: dict, source: str = "options") -> Any:
    """`cls(**values)` once every key and value has been checked against `cls`'s fields."""
    return cls(**check_values(cls, values, source))


def check_values(cls: type, values: Any, source: str, prefix: str = "") -> dict:
    """The values with types coerced (lax pydantic), sections checked recursively; raises on the first mistake."""
    where = prefix.rstrip(".") or "the config"
    if not isinstance(values, dict):
        raise PrlmError(f"{source}: {where} must be a mapping of option: value, got {_show(values)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = _type_hints(cls)
    checked = {}
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in fields:
            raise PrlmError(f"{source}: unknown option '{name}'{_hint(key, fields)}")
        section = fields[key].metadata.get("section")
        if section is not None and value is not None:
            checked[key] = check_values(resolve_class(section), value, source, prefix=f"{name}.")
        else:
            checked[key] = _check_type(name, value, hints[key], source)
    return checked


def resolve_class(section: type | str) -> type:
    """A section's class, or 'module:Class' imported now: a high-level config names the configs of the
    stages it runs without importing them (and their torch) when its module loads."""
    if isinstance(section, str):
        module, _, name = section.partition(":")
        return getattr(importlib.import_module(module), name)
    return section


def _hint(key: str, fields: dict) -> str:
    renamed = {f.metadata["renamed_from"]: name for name, f in fields.items() if f.metadata.get("renamed_from")}
    if key in renamed:
        return f": it was renamed '{renamed[key]}'"
    near = difflib.get_close_matches(str(key), list(fields), n=1, cutoff=0.6)
    if near:
        return f" (did you mean '{near[0]}'?)"
    return f"; known: {', '.join(sorted(fields))}"


@functools.cache
def _type_hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


@functools.cache
def _adapter(tp: Any) -> pydantic.TypeAdapter:
    return pydantic.TypeAdapter(tp)


def _check_type(name: str, value: Any, tp: Any, source: str) -> Any:
    if value is None:
        return None  # None is how a config says "not set" (sections, optional paths)
    if isinstance(value, bool) and tp in (int, float):
        raise PrlmError(f"{source}: {name} must be {_type_name(tp)}, got {value!r}")  # lax mode would read 1
    try:
        return _adapter(tp).validate_python(value)
    except pydantic.ValidationError:
        raise PrlmError(f"{source}: {name} must be {_type_name(tp)}, got {_show(value)}") from None


def _type_name(tp: Any) -> str:
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string",
             list: "a list", dict: "a mapping", tuple: "a list"}
    return names.get(typing.get_origin(tp) or tp, str(tp))


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# --- YAML files and overrides ----------------------------------------------------

def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise PrlmError(f"config file '{path}' not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise PrlmError(f"{path}: not valid YAML ({_yaml_problem(err)})") from None
    if not isinstance(data, dict):
        raise PrlmError(f"{path}: expected a mapping of option: value")
    return data


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line of a YAML error: its problem and where (PyYAML's message spans several lines)."""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    mark = getattr(err, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark else problem


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Set `key=value` items (values parsed as YAML) in `values`; dotted keys reach sections."""
    for item in overrides:
        if "=" not in item:
            raise PrlmError(f"override '{item}' must look like key=value (e.g. train.max_steps=5)")
        key, raw = item.split("=", 1)
        target = values
        *parents, leaf = key.split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
            if target is None:
                target = values[parent] = {}
            if not isinstance(target, dict):
                raise PrlmError(f"override '{item}': '{parent}' is not a section")
        try:
            target[leaf] = yaml.safe_load(raw)
        except yaml.YAMLError as err:
            raise PrlmError(f"override '{item}': the value is not valid YAML ({_yaml_problem(err)})") from None
    return values


def load_config(cls: type, path: str, overrides: list[str] = ()) -> Any:
    """A YAML recipe plus `--set key=value` overrides, checked and built as `cls`."""
    return build_config(cls, apply_overrides(load_yaml(path), list(overrides)), source=path)


# --- argparse --------------------------------------------------------------------

def _parse_bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{text}'")


def _comma_list(text: str) -> list[str]:
    return [item.strip() for item in text.split(",")]


def add_config_args(parser: argparse.ArgumentParser, cls: type) -> None:
    """One `--flag` per field; unset flags stay absent so YAML values win over defaults.
    Flags arrive as text and are typed by `build_config`, like YAML values."""
    parser.add_argument("--config", help="YAML file with any of the options below; flags override it.")
    hints = _type_hints(cls)
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=f"{f.metadata.get('help', '')} (default: "
                                                                   f"{f.default})")
        if hints[f.name] is bool:
            parser.add_argument(flag, type=_parse_bool, nargs="?", const=True, metavar="BOOL", **kwargs)
        elif typing.get_origin(hints[f.name]) in (list, tuple) or hints[f.name] in (list, tuple):
            parser.add_argument(flag, type=_comma_list, metavar="A,B,...", **kwargs)
        else:
            parser.add_argument(flag, **kwargs)


def config_from_args(cls: type, args: argparse.Namespace) -> Any:
    """Defaults < YAML file (`--config`) < command-line flags, checked and built as `cls`."""
    values = dict(vars(args))
    path = values.pop("config", None)
    names = {f.name for f in dataclasses.fields(cls)}
    flags = {key: value for key, value in values.items() if key in names}
    merged = {**(load_yaml(path) if path else {}), **flags}
    return build_config(cls, merged, source=path or "options")


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)
