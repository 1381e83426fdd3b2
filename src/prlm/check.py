"""`prlm check CONFIG`: any recipe checked as its command would check it, without running it.

A config file does not say which command reads it, so its kind is recognised: from `--kind`, an
accelerate key (`distributed_type`), a `prlm COMMAND ... FILE` line in its own comments, the one option
model (the stage's own dataclass) that has every key it sets, or its file name. Its keys and values are
then checked through that option model exactly as the command would (`prlm.options.build_config`, the
dataclass's own `__post_init__`, and for `prlm run`/`prlm sweep` every stage they build), so an option a
stage adds is covered without touching this module. The paths it reads are looked up: present, made by
an earlier stage (the config beside it whose `out` holds the path), or missing. No model is loaded.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from prlm import PrlmError
from prlm.io import check_not_users_folder, check_output_dir
from prlm.options import apply_overrides, build_config, load_yaml, resolve_class, without_input_checks


@dataclass(frozen=True)
class Kind:
    name: str
    command: str
    """How the config is run; {} is the file."""
    options: str | None
    """The option model, 'module:Class' (None: not a prlm config)."""
    out_is_folder: bool = True


KINDS = {kind.name: kind for kind in (
    Kind("study", "prlm run {}", "prlm.study:StudyConfig"),
    Kind("sweep", "prlm sweep {}", "prlm.sweep.grid:SweepConfig"),
    Kind("train", "prlm train --config {}", "prlm.training.config:TrainConfig"),
    Kind("sft", "prlm sft --config {}", "prlm.training.sft:SFTConfig"),
    Kind("eval", "prlm eval --config {}", "prlm.pipeline:EvalConfig"),
    Kind("rm-pairs", "prlm rm pairs --config {}", "prlm.reward.pairs:PairsConfig", out_is_folder=False),
    Kind("rm-style-pairs", "prlm rm style-pairs --config {}", "prlm.reward.style_pairs:StylePairsConfig",
         out_is_folder=False),
    Kind("rm-train", "prlm rm train --config {}", "prlm.reward.model:RewardTrainConfig"),
    Kind("rm-eval", "prlm rm eval --config {}", "prlm.reward.model:RMEvalConfig", out_is_folder=False),
    Kind("rm-score", "prlm rm score --config {}", "prlm.reward.personalization:ScoreConfig", out_is_folder=False),
    Kind("rm-judge-compare", "prlm rm judge-compare --config {}", "prlm.reward.judge:JudgeCompareConfig",
         out_is_folder=False),
    Kind("serve", "prlm serve --config {}", "prlm.serving.config:ServeConfig"),
    Kind("data-synth", "prlm data synth --out OUT --config {}", "prlm.data.synthetic:SyntheticConfig"),
    Kind("from-git", "prlm data from-git REPO OUT --config {}", "prlm.data.from_git:FromGitConfig"),
    Kind("accelerate", "accelerate launch --config_file {} -m prlm.cli train --config TRAIN_CONFIG", None),
)}
# The command words of each kind, as a comment would name them (`prlm rm train --config ...`).
_COMMAND_WORDS = {kind.command.split(" --")[0].split(" {}")[0].removeprefix("prlm "): name
                  for name, kind in KINDS.items() if kind.command.startswith("prlm ")}
_ACCELERATE_KEYS = {"distributed_type", "compute_environment"}
# Options that name something a command reads: a folder or file, or a model that may be a local folder.
_READ_FIELDS = ("data", "pairs", "reward_model", "no_profile_run", "a", "b", "file")
_MODEL_FIELDS = ("model", "sft_model", "prlm_model", "warmup_from")


@dataclass
class CheckResult:
    path: str
    kind: Kind
    runs: str
    """What the command would run, in words."""
    reads: list[tuple[str, str, str]] = field(default_factory=list)
    """(option, path, state): state is 'ok', 'made by `COMMAND`' or 'missing'."""
    writes: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[tuple[str, str, str]]:
        return [read for read in self.reads if read[2].startswith("missing")]

    def lines(self) -> list[str]:
        article = "an" if self.kind.name[0] in "aeiou" else "a"
        command = self.kind.command.format(self.path)
        lines = [f"{self.path}: {article} {self.kind.name} config, valid; `{command}` would run {self.runs}"]
        lines += [f"  reads {option} {path}: {state}" for option, path, state in self.reads]
        lines += [f"  writes {self.writes}"] if self.writes else []
        lines += [f"  note: {note}" for note in self.notes]
        return lines


def check_config(path: str | Path, kind: str = "", overrides: list[str] = ()) -> CheckResult:
    """Recognise, validate and describe one config file, with `--set key=value` overrides as its command takes
    them; raises PrlmError (one line) on a bad one."""
    path = str(path)
    values = apply_overrides(load_yaml(path), list(overrides))
    chosen = KINDS[kind] if kind else recognise_kind(path, values)
    if chosen.options is None:
        return _check_accelerate(path, chosen)
    checker = {"study": _check_study, "sweep": _check_sweep}.get(chosen.name, _check_single)
    with without_input_checks():  # the paths it reads are looked up below, with who makes them
        return checker(path, chosen, values)


def recognise_kind(path: str, values: dict) -> Kind:
    """The kind of a config: see the module's docstring for the order of the clues."""
    if _ACCELERATE_KEYS & set(values):
        return KINDS["accelerate"]
    named = _kind_named_in_comments(path)
    if named:
        return KINDS[named]
    fits = [k for k in KINDS.values() if k.options and set(values) <= _field_names(k)]
    if len(fits) == 1:
        return fits[0]
    by_name = _kinds_by_file_name(path, fits or [k for k in KINDS.values() if k.options])
    if by_name:
        return by_name
    if fits:
        raise PrlmError(f"{path}: its options fit several kinds ({', '.join(k.name for k in fits)}); "
                        "say which with --kind KIND")
    closest = min((k for k in KINDS.values() if k.options), key=lambda k: len(set(values) - _field_names(k)))
    return closest  # its validation names the first unknown option


def _field_names(kind: Kind) -> set[str]:
    return {f.name for f in dataclasses.fields(resolve_class(kind.options))}


def _kind_named_in_comments(path: str) -> str:
    """The kind of a `# prlm COMMAND ... FILE` line that names this very file (recipes say how they run)."""
    name = re.escape(Path(path).name)
    commands = "|".join(sorted(map(re.escape, _COMMAND_WORDS), key=len, reverse=True))
    pattern = re.compile(rf"\bprlm ({commands})\b[^\n#]*?(?:^|[\s/]){name}\b", re.MULTILINE)
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("#"):
            match = pattern.search(line)
            if match:
                return _COMMAND_WORDS[match.group(1)]
    return ""


def _kinds_by_file_name(path: str, candidates: list[Kind]) -> Kind | None:
    """The candidate whose name's words all appear in the file name, the most specific one first."""
    words = set(re.split(r"[-_.]", Path(path).stem.lower()))
    named = [k for k in candidates if set(k.name.split("-")) <= words]
    return max(named, key=lambda k: len(k.name.split("-")), default=None)


# --- one kind each ------------------------------------------------------------

def _check_single(path: str, kind: Kind, values: dict) -> CheckResult:
    cfg = build_config(resolve_class(kind.options), values, source=path)
    result = CheckResult(path, kind, _summary(cfg), writes=str(getattr(cfg, "out", "") or ""))
    skip = {"reward_model"} if float(getattr(cfg, "w_pers", 1) or 0) == 0 else set()
    _look_up_reads(result, {name: getattr(cfg, name) for name in _READ_FIELDS + _MODEL_FIELDS
                            if hasattr(cfg, name) and name not in skip})
    if result.writes and kind.out_is_folder:
        _check_out(result, result.writes)
    return result


def _check_study(path: str, kind: Kind, values: dict) -> CheckResult:
    from prlm.study import build_stages, check_data_folder

    cfg = build_config(resolve_class(kind.options), values, source=path)
    stages = build_stages(cfg, recipe=path)  # every stage's options are checked here, as `prlm run` does
    check_data_folder(cfg)
    result = CheckResult(path, kind, "the stages " + ", ".join(s.name for s in stages)
                         + " (then `--final` evaluates the test split)", writes=cfg.out)
    reads = {"model": cfg.model, "rm.model": cfg.rm.get("model") or "",
             **{f"train.{name}": value for name, value in cfg.train.items() if name in _READ_FIELDS + _MODEL_FIELDS}}
    if cfg.synthetic is None:
        reads["data"] = cfg.data
    else:
        result.notes.append(f"the data stage writes the synthetic set into {cfg.data}")
    _look_up_reads(result, reads, own_out=cfg.out)
    _check_out(result, cfg.out)
    return result


def _check_sweep(path: str, kind: Kind, values: dict) -> CheckResult:
    from prlm.sweep.grid import sweep_cells
    from prlm.sweep.run import build_sweep_stages

    cfg = build_config(resolve_class(kind.options), values, source=path)
    stages = build_sweep_stages(cfg, check_models=False)  # the models are looked up below, with who makes them
    result = CheckResult(path, kind, f"{len(stages)} stages: " + ", ".join(s.name for s in stages), writes=cfg.out)
    models = {f"{cell.method} model": cell.model for cell in sweep_cells(cfg)}
    _look_up_reads(result, {"data": cfg.data, **models}, own_out=cfg.out)
    _check_out(result, cfg.out)
    return result


def _check_accelerate(path: str, kind: Kind) -> CheckResult:
    from accelerate.commands.config.config_args import ClusterConfig

    try:
        config = ClusterConfig.from_yaml_file(path)  # accelerate's own check of its keys
    except (ValueError, TypeError, KeyError) as err:
        raise PrlmError(f"{path}: not a valid accelerate config ({str(err).splitlines()[0]})") from None
    return CheckResult(path, kind, f"{config.distributed_type} on {config.num_processes} process(es) "
                                   f"(--num_processes overrides it)")


# --- paths --------------------------------------------------------------------

def _summary(cfg) -> str:
    shown = [f"{name} {getattr(cfg, name)}" for name in ("task", "split", "method", "model", "limit", "max_steps")
             if getattr(cfg, name, None) not in (None, "")]
    return ", ".join(shown) or "with these options"


def _looks_local(value: str) -> bool:
    """A model option that names a folder rather than an embedded model or a hub id (org/name)."""
    return (value.startswith(("/", ".", "~")) or value.count("/") >= 2 or os.path.isdir(os.path.expanduser(value)))


def _look_up_reads(result: CheckResult, reads: dict, own_out: str = "") -> None:
    for option, value in reads.items():
        if not value or not isinstance(value, str):
            continue
        if option.split(".")[-1].split(" ")[-1] in _MODEL_FIELDS and not _looks_local(value):
            continue  # an embedded model or a hub id: nothing local to look up
        result.reads.append((option, value, _state(value, result.path, own_out)))


def _state(value: str, config_path: str, own_out: str) -> str:
    if Path(value).expanduser().exists():
        return "ok"
    if own_out and _under(value, own_out):
        return "not there yet: made by an earlier stage of this config"
    maker = _maker(value, config_path)
    return f"not there yet: made by `{maker}`" if maker else "missing (and no config beside this one makes it)"


def _under(path: str, folder: str) -> bool:
    path, folder = Path(os.path.normpath(path)), Path(os.path.normpath(folder))
    return path == folder or folder in path.parents


def _maker(value: str, config_path: str) -> str:
    """The command of a config beside this one whose `out` holds `value` (an earlier stage makes it)."""
    for sibling in sorted(Path(config_path).parent.glob("*.yaml")):
        if sibling.resolve() == Path(config_path).resolve():
            continue
        try:
            values = load_yaml(sibling)
        except PrlmError:
            continue  # a broken sibling is reported when it is checked itself
        out = values.get("out")
        if isinstance(out, str) and out and _under(value, out):
            try:
                return recognise_kind(str(sibling), values).command.format(str(sibling))
            except PrlmError:
                return f"the config {sibling}"
    return ""


def _check_out(result: CheckResult, out: str) -> None:
    """A folder holding the user's own files is refused (the command would refuse it); one this user cannot
    write on this machine is a note (a recipe may name another machine's path)."""
    check_not_users_folder(out, "out")
    try:
        check_output_dir(out, "out")
    except PrlmError as err:
        result.notes.append(str(err))
