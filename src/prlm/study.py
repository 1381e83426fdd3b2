"""`prlm run CONFIG`: the whole study on one dataset, stage by stage.

Stages: data -> retrieval -> rm-pairs -> rm-train -> train -> eval-no-profile,
eval-rag, eval-prlm (eval-warmup-only) -> report.

The retrieval stage ranks each split once (`out/retrieval/rankings/SPLIT.jsonl`,
as the sweep does); the pairs, training and evaluation stages that retrieve as
the study does read those rankings instead of retrieving again, and depend on
that stage (see `StudyRanking`).

The protocol: every evaluation of a recipe is on `eval_split` (dev, or train),
where its choices are made; the test split is evaluated only by the explicit
final step, `prlm run CONFIG --final`, which reuses the trained models and
writes `out/final-test/` (and, with `results_data`, records under `results/`).
Each stage records a fingerprint of its config (and of the stages it depends
on) in `out/stages/NAME.json` when it finishes; a rerun skips every stage
whose fingerprint is unchanged, so a crashed study resumes where it stopped,
and a changed option reruns what depends on it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

import yaml

from prlm import PrlmError
from prlm.io import check_output_dir, claim_output_dir
from prlm.options import check_choice, load_config, opt
from prlm.prompts import MAX_PROMPT_TOKENS
from prlm.stages import Stage, run_stages

RM_SOURCES = ("style", "paper")
# Tasks where the style reward model was measured better on dev (and so is their study's default).
STYLE_MEASURED_TASKS = ("commit-subject",)
# The reward model measured better on git dev, rm-minilm-context-inputcopy (results/reward-model/README.md):
# own-vs-no-profile 0.818 [0.727, 0.894] on held-out users, where the same recipe without input-copy pairs
# had 0.470; own-vs-other-user 0.797. These are configs/rm-style-pairs-commit-inputcopy.yaml and
# configs/rm-train-minilm-context-inputcopy.yaml without their paths, seed, device and the pairs' k (the
# study's: k follows train.context_entries, 4 here); `rm.style_pairs` and `rm.train` override them.
STYLE_PAIRS_RECIPE = MappingProxyType(dict(
    kinds="own-vs-other-user,preamble,sign-off,casing,input-copy", source="questions+profiles", max_per_user=8,
    users="rm-train,validation", negatives="same-group", variant="train"))
STYLE_TRAIN_RECIPE = MappingProxyType(dict(
    backbone="minilm", role="reward", max_length=96, context_entries=4,
    kind_weights="own-vs-other-user=1,preamble=0.34,sign-off=0.34,casing=0.34,input-copy=0.34", batch_size=16,
    eval_batch_size=64, learning_rate=5e-5, epochs=2, val_fraction=0.1, held_out_share=0.45))
# Keys of the pair and training sections that the study sets itself.
_STUDY_OWNED = {"pairs": ("task", "data", "out"), "style_pairs": ("task", "data", "out"), "train": ("pairs", "out")}


@dataclass
class RewardModelSection:
    """The `rm:` section of a study: checked key by key when the recipe loads (then by `check_reward_model`),
    used as a mapping."""

    source: str = opt("", "Pairs the reward model trains on: 'style' (`prlm rm style-pairs`: each user's real "
                      "outputs against other users' and against form changes, no generation) or 'paper' (`prlm rm "
                      "pairs`: the policy's answers with and without the profile). Empty = the task's default: "
                      "'style' on commit-subject, where its reward model was measured better on dev "
                      "(results/reward-model/README.md), 'paper' on LaMP and synthetic, where style pairs were "
                      "never measured.")
    pairs: dict = opt(None, "Options of `prlm rm pairs`, with source: paper (task, data and out are the study's; "
                      "split, the model and generation default to the study's).",
                      section="prlm.reward.pairs:PairsConfig")
    style_pairs: dict = opt(None, "Options of `prlm rm style-pairs`, with source: style, over the measured recipe "
                            "(prlm.study.STYLE_PAIRS_RECIPE; task, data and out are the study's; split, seed and k "
                            "default to train, the study's seed and train.context_entries).",
                            section="prlm.reward.style_pairs:StylePairsConfig")
    train: dict = opt(None, "Options of `prlm rm train` (pairs and out are the study's); with source: style over the "
                      "measured recipe (prlm.study.STYLE_TRAIN_RECIPE).",
                      section="prlm.reward.model:RewardTrainConfig")
    model: str = opt("", "A reward model trained earlier (its checkpoint folder), reused instead of training one.")


def default_rm_source(task: str) -> str:
    """The pair source of a study that names none: 'style' where its reward model was measured better on dev,
    'paper' (the paper's pairs) where style pairs were never measured."""
    from prlm.data.tasks import get_task

    return "style" if get_task(task).name in STYLE_MEASURED_TASKS else "paper"


def check_reward_model(task: str, rm: dict) -> dict:
    """The `rm:` section with its source resolved (the task's default when unset); refused, with how to fix it,
    when a key does not fit that source or is the study's."""
    rm = {key: value for key, value in rm.items() if value is not None}  # an empty YAML section is unset
    source = rm.get("source") or default_rm_source(task)
    check_choice("rm.source", source, RM_SOURCES)
    own, other = ("style_pairs", "pairs") if source == "style" else ("pairs", "style_pairs")
    if other in rm:
        other_source = "paper" if source == "style" else "style"
        why = f"'{source}'" if rm.get("source") else f"'{source}' (the default on {task})"
        raise PrlmError(f"rm.{other} holds options of source: {other_source}, but rm.source is {why}: move them "
                        f"to rm.{own}, or set rm.source: {other_source}")
    for section, keys in _STUDY_OWNED.items():
        taken = sorted(set(rm.get(section) or {}) & set(keys))
        if taken:
            raise PrlmError(f"rm.{section}.{taken[0]} is set by the study (from its own {taken[0]}); drop it")
    if source == "style":
        entries = int({**STYLE_TRAIN_RECIPE, **(rm.get("train") or {})}["context_entries"])
        k = int((rm.get("style_pairs") or {}).get("k", entries))
        if k < entries:
            raise PrlmError(f"rm.style_pairs.k={k} is below rm.train.context_entries={entries}: the reward model "
                            f"would train on fewer past outputs than GRPO gives it; set k to {entries} or more")
    return {**rm, "source": source}


@dataclass
class StudyConfig:
    out: str = opt("", "Folder of the study: data/, retrieval/, rm/, train/, eval/, report.md.")
    task: str = opt("synthetic", "Task name from the task table.")
    data: str = opt("", "Dataset folder in LaMP's layout; empty with `synthetic` set = out/data.")
    synthetic: dict = opt(None, "Options of the synthetic task (see `prlm data synth --help`); set to generate the "
                                "data.",
                          section="prlm.data.synthetic:SyntheticConfig")
    model: str = opt("smollm2-135m", "Policy model for every method.")
    retriever: str = opt("bm25", "Profile retriever for every method.")
    k: int = opt(4, "Profile entries retrieved per question.")
    max_prompt_tokens: int = opt(MAX_PROMPT_TOKENS, "Token limit of every prompt.")
    eval_split: str = opt("dev", "Split the methods are evaluated on while the recipe is chosen: dev (or train). "
                          "The test split is evaluated only by the final step, `prlm run CONFIG --final`.")
    checkpoint: str = opt("final", "Policy evaluated as prlm: 'final' (the last GRPO step, fixed in advance) or "
                          "'dev-best' (the step best on the dev subset, needs train.dev_eval_steps > 0).")
    results_data: str = opt("", "Dataset name under which compact records of every evaluation are kept in "
                            "results/DATA/SPLIT/METHOD/ for `prlm report` (empty = keep none).")
    limit: int = opt(0, "Evaluate the first N questions only (0 = all).", renamed_from="eval_limit")
    max_new_tokens: int = opt(32, "Answer length of no-profile and rag.", renamed_from="eval_max_new_tokens")
    prlm_max_new_tokens: int = opt(96, "Completion length of prlm (reasoning + answer).")
    batch_size: int = opt(8, "Generation batch size in evaluation and pair building.")
    baselines: list = opt(("no-profile", "rag"), "Baselines evaluated with the base model (no-profile, rag); [] when "
                          "they were evaluated on their own (`prlm eval`), so a new recipe does not redo them.")
    eval_warmup_only: bool = opt(False, "Also evaluate the policy after the supervised warm-up alone (before GRPO), "
                                 "to show what GRPO adds.")
    seed: int = opt(0, "Seed of every stage.")
    rm: dict = opt(None, "Reward model: {source: style, style_pairs: {...StylePairsConfig}, train: "
                         "{...RewardTrainConfig}}, {source: paper, pairs: {...PairsConfig}, train: {...}}, or "
                         "{model: CHECKPOINT} to reuse one; source defaults to the task's (style on commit-subject, "
                         "paper elsewhere); train.w_pers 0 skips it.",
                   section="prlm.study:RewardModelSection")
    train: dict = opt(None, "GRPO training options (see `prlm train --help`).",
                      section="prlm.training.config:TrainConfig")

    def __post_init__(self):
        from prlm.data.lamp import SPLITS
        from prlm.data.tasks import get_task

        if not self.out:
            raise PrlmError("out is required in the study config (the study folder)")
        get_task(self.task)
        if self.eval_split == "test":
            raise PrlmError("eval_split: test is not allowed: choices are made on dev, and the test split is "
                            "evaluated once, by the final step: set eval_split: dev and run `prlm run CONFIG --final`")
        check_choice("eval_split", self.eval_split, tuple(s for s in SPLITS if s != "test"))
        check_choice("checkpoint", self.checkpoint, ("final", "dev-best"))
        self.baselines = list(self.baselines or [])
        for name in self.baselines:
            check_choice("baselines", name, ("no-profile", "rag"))
        if self.checkpoint == "dev-best" and not int(dict(self.train or {}).get("dev_eval_steps", 0)):
            raise PrlmError("checkpoint: dev-best needs train.dev_eval_steps > 0 (the dev evaluations that choose it)")
        self.rm = check_reward_model(self.task, dict(self.rm or {}))
        self.train = dict(self.train or {})
        if not self.data:
            if self.synthetic is None:
                raise PrlmError("set `data` (a dataset folder) or `synthetic` (options of the synthetic task)")
            self.data = str(Path(self.out) / "data")

    @property
    def uses_reward_model(self) -> bool:
        return float(self.train.get("w_pers", 0.1)) > 0


def load_study_config(path: str, overrides: list[str] = ()) -> StudyConfig:
    """YAML plus `key=value` overrides; dotted keys reach sections (train.max_steps=5)."""
    return load_config(StudyConfig, path, overrides)


def build_stages(cfg: StudyConfig, final: bool = False, command: str = "", recipe: str = "") -> list[Stage]:
    """The study's stages; `final` evaluates the test split with the models the dev runs chose."""
    out = Path(cfg.out)
    split = "test" if final else cfg.eval_split
    evals = out / ("final-test" if final else "eval")
    prefix = "final-" if final else "eval-"
    ranking = StudyRanking(cfg)
    methods = _eval_methods(cfg)
    eval_stages = {name: _eval_stage(cfg, split, evals, prefix, name, method_opts, ranking)
                   for name, method_opts in methods.items()}  # every evaluation validated before any stage runs
    stages = [_data_stage(cfg)]
    # Baselines first: their results come early and do not wait for training.
    for name in ("no-profile", "rag"):
        if name in cfg.baselines:
            stages.append(eval_stages[name])
        else:
            del methods[name]

    rm_stages, train_cfg = _reward_model_stages(cfg, ranking)
    train = _train_stage(cfg, train_cfg, ["data"] + (["rm-train"] if rm_stages else []), ranking)
    stages += rm_stages + [train, eval_stages["prlm"]]
    if cfg.eval_warmup_only and int(train.config.get("sft_steps", 0)) > 0:
        methods["warmup-only"] = dict(methods["prlm"], model=str(out / "train" / "sft-model"))
        stages.append(_eval_stage(cfg, split, evals, prefix, "warmup-only", methods["warmup-only"], ranking))
    eval_names = [f"{prefix}{n}" for n in methods]
    if cfg.results_data:
        stages.append(_results_stage(cfg, methods, evals, command, recipe, eval_names))
    stages.append(_report_stage(cfg, evals, list(methods), f"{'final-' if final else ''}report", eval_names))
    stages.insert(1, _retrieval_stage(cfg, ranking))  # after the data; built last, when its readers are known
    return stages


def _shared_options(cfg: StudyConfig) -> dict:
    """The options every stage from retrieval to training agrees on."""
    return dict(task=cfg.task, data=cfg.data, retriever=cfg.retriever, k=cfg.k, seed=cfg.seed)


def _data_stage(cfg: StudyConfig) -> Stage:
    """The dataset: generated, or checked when it is given."""
    if cfg.synthetic is not None:
        def make_data():
            from prlm.data.synthetic import write_synthetic

            write_synthetic(cfg.data, **cfg.synthetic)
        return Stage("data", {"synthetic": cfg.synthetic, "data": cfg.data}, make_data)
    return Stage("data", {"data": cfg.data, "task": cfg.task}, lambda: _check_data(cfg))


def _retrieval_stage(cfg: StudyConfig, ranking: StudyRanking) -> Stage:
    """Each split ranked once, as deep as the stages that read the ranking need (built after them)."""
    depth = ranking.depth
    return Stage("retrieval", {**_shared_options(cfg), "depth": depth},
                 lambda: _record_retrieval(cfg, Path(cfg.out) / "retrieval", depth), deps=["data"])


def _eval_methods(cfg: StudyConfig) -> dict[str, dict]:
    """Each method's own evaluation options: the baselines with the base model, prlm with the trained policy."""
    trained = str(Path(cfg.out) / "train" / ("best" if cfg.checkpoint == "dev-best" else "final"))
    return {
        "no-profile": dict(method="no-profile", model=cfg.model, max_new_tokens=cfg.max_new_tokens),
        "rag": dict(method="rag", model=cfg.model, retriever=cfg.retriever, k=cfg.k,
                    max_new_tokens=cfg.max_new_tokens),
        "prlm": dict(method="prlm", model=trained, retriever=cfg.retriever, k=cfg.k,
                     max_new_tokens=cfg.prlm_max_new_tokens),
    }


def _eval_stage(cfg: StudyConfig, split: str, evals: Path, prefix: str, name: str, method_opts: dict,
                ranking: StudyRanking) -> Stage:
    """One method evaluated on `split` into evals/NAME; the trained policies wait for training."""
    from prlm.pipeline import EvalConfig

    opts = {**dict(task=cfg.task, data=cfg.data, split=split, limit=cfg.limit, seed=cfg.seed,
                   max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size),
            **method_opts, "out": str(evals / name)}
    eval_cfg = EvalConfig(**opts)

    def evaluate():
        from prlm.pipeline import run_eval

        run_eval(EvalConfig(**opts), retriever=ranking.retriever(eval_cfg))
    deps = ["train"] if name in ("prlm", "warmup-only") else ["data"]
    return ranking.serve(Stage(f"{prefix}{name}", opts, evaluate, deps=deps), eval_cfg)


def _reward_model_stages(cfg: StudyConfig, ranking: StudyRanking) -> tuple[list[Stage], dict]:
    """The reward model's stages (none when it is reused or not used) and the training options that point at it."""
    train_cfg = dict(cfg.train)
    if not cfg.uses_reward_model:
        train_cfg["w_pers"] = 0.0
        return [], train_cfg
    if cfg.rm.get("model"):
        rm_dir = Path(cfg.rm["model"])  # a reward model trained earlier: reuse it (checked when training starts)
        train_cfg.setdefault("reward_model", str(rm_dir))
        return [], train_cfg
    from prlm.reward.model import RewardTrainConfig, train_reward_model

    style = cfg.rm["source"] == "style"
    pairs_file = Path(cfg.out) / "rm" / ("style-pairs.jsonl" if style else "pairs.jsonl")
    rm_dir = Path(cfg.out) / "rm" / "model"
    rm_opts = {**dict(pairs=str(pairs_file), out=str(rm_dir), seed=cfg.seed, overwrite=True),
               **(STYLE_TRAIN_RECIPE if style else {}), **cfg.rm.get("train", {})}
    rm_cfg = RewardTrainConfig(**rm_opts)  # validate before any stage runs
    pairs = _style_pairs_stage(cfg, pairs_file, rm_cfg) if style else _paper_pairs_stage(cfg, pairs_file, ranking)
    train_cfg.setdefault("reward_model", str(rm_dir))
    return [pairs, Stage("rm-train", rm_opts, lambda: train_reward_model(RewardTrainConfig(**rm_opts)),
                         deps=["rm-pairs"])], train_cfg


def _paper_pairs_stage(cfg: StudyConfig, pairs_file: Path, ranking: StudyRanking) -> Stage:
    """The paper's pairs: the policy answers each training question with the profile (chosen) and without it."""
    from prlm.reward.pairs import PairsConfig, build_pairs

    pairs_opts = {**dict(_shared_options(cfg), model=cfg.model, max_prompt_tokens=cfg.max_prompt_tokens,
                         batch_size=cfg.batch_size, max_new_tokens=cfg.max_new_tokens, split="train",
                         out=str(pairs_file)), **cfg.rm.get("pairs", {})}
    pairs_cfg = PairsConfig(**pairs_opts)

    def make_pairs():
        build_pairs(PairsConfig(**pairs_opts), retriever=ranking.retriever(pairs_cfg))
    return ranking.serve(Stage("rm-pairs", pairs_opts, make_pairs, deps=["data"]), pairs_cfg)


def _style_pairs_stage(cfg: StudyConfig, pairs_file: Path, rm_cfg) -> Stage:
    """Style pairs from the users' real outputs (no generation), made with the user partition the reward model
    trains with, so `users` picks the users it trains and chooses its epoch on. They rank past outputs by their
    own BM25, whatever the study's retriever, so they do not read the study's ranking."""
    from prlm.reward.style_pairs import StylePairsConfig, build_style_pairs

    study = dict(task=cfg.task, data=cfg.data, split="train", seed=cfg.seed, k=rm_cfg.context_entries,
                 out=str(pairs_file))
    opts = {**STYLE_PAIRS_RECIPE, **study, **cfg.rm.get("style_pairs", {})}
    StylePairsConfig(**opts)  # validate before any stage runs
    partition = rm_cfg.partition
    return Stage("rm-pairs", {**opts, "partition": partition.as_dict()},
                 lambda: build_style_pairs(StylePairsConfig(**opts), partition), deps=["data"])


def _train_stage(cfg: StudyConfig, train_cfg: dict, deps: list[str], ranking: StudyRanking) -> Stage:
    """GRPO training of the policy; a rerun after a crash resumes from the last checkpoint."""
    from prlm.training.config import TrainConfig

    train_opts = {**dict(_shared_options(cfg), model=cfg.model, max_prompt_tokens=cfg.max_prompt_tokens,
                         out=str(Path(cfg.out) / "train")), **train_cfg}
    checked = TrainConfig(**train_opts)  # validate before any stage runs

    def train_policy():
        from prlm.training.checkpoints import last_checkpoint
        from prlm.training.grpo import train_grpo

        resume = last_checkpoint(train_opts["out"]) is not None  # a crashed run continues
        train_grpo(TrainConfig(**{**train_opts, "resume": resume}), retriever=ranking.retriever(checked))
    return ranking.serve(Stage("train", train_opts, train_policy, deps=deps), checked)


def _report_stage(cfg: StudyConfig, evals: Path, methods: list[str], name: str, deps: list[str]) -> Stage:
    """report.md in `evals` with the paired comparisons of the methods evaluated."""
    def report():
        from prlm.report import write_report

        comparisons = [(a, b) for a, b in (("no-profile", "rag"), ("rag", "prlm"), ("no-profile", "prlm"),
                                           ("warmup-only", "prlm")) if a in methods and b in methods]
        print(write_report(evals, {n: evals / n for n in methods}, comparisons,
                           train_log=Path(cfg.out) / "train" / "train_log.jsonl"))
    return Stage(name, {"version": 2}, report, deps=deps)


def _results_stage(cfg: StudyConfig, methods: dict, evals: Path, command: str, recipe: str,
                   deps: list[str]) -> Stage:
    """Compact records of every evaluation in results/, for `prlm report` (the run folders stay out of git)."""
    trained = {"prlm", "warmup-only"}

    def keep():
        from prlm.results import add_curve, add_record

        if (Path(cfg.out) / "train" / "train_log.jsonl").is_file():
            add_curve(Path(cfg.out) / "train", "results", cfg.results_data, "prlm")

        for name in methods:
            train_summary = Path(cfg.out) / "train" / "train_summary.json"
            chosen = name == "prlm" and cfg.checkpoint == "dev-best"
            selection = (f"the GRPO checkpoint best on the first {cfg.train.get('dev_eval_limit', 40)} dev questions "
                         "(train/best.json)") if chosen else ""
            add_record(evals / name, "results", cfg.results_data, name, "dev" if chosen else "fixed in advance",
                       command, recipe=recipe, selection=selection,
                       train_summary=train_summary if name in trained and train_summary.is_file() else None)
    return Stage(f"results-{evals.name}", {"data": cfg.results_data, "command": command}, keep, deps=deps)


def _check_data(cfg: StudyConfig) -> None:
    from prlm.data import load_split

    for split in ("train", cfg.eval_split):
        load_split(cfg.data, split, cfg.task, require_golds=True)


def ranking_encoder() -> str:
    """The encoder the study ranks with (dense retrieval): the stages' default, as the study sets none."""
    from prlm.retrieval import ProfileDataConfig

    return ProfileDataConfig.encoder


class StudyRanking:
    """Each split's ranking by the study's retriever, computed once by the retrieval stage and read by every
    stage that retrieves as it does: the same data, task, retriever, encoder and seed (a stage that sets its own
    retriever, say, retrieves by itself). Those stages depend on the retrieval stage, so a new ranking reruns them;
    the ranking goes as deep as the largest k among them. Retrievers sort stably, so the top k of the ranking are
    the entries the stage's own retriever would return."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.readers: dict[str, int] = {}
        """Stage name -> the k it reads."""

    @property
    def folder(self) -> Path:
        return Path(self.cfg.out) / "retrieval" / "rankings"

    @property
    def depth(self) -> int:
        return max([self.cfg.k, *self.readers.values()])

    def reads(self, stage_cfg) -> bool:
        """Whether a stage with this config (a ProfileDataConfig) retrieves as the study ranks."""
        cfg = self.cfg
        # `none` retrieves nothing: there is nothing to store (and no-profile evaluations use it).
        return (stage_cfg.retriever == cfg.retriever != "none" and stage_cfg.task == cfg.task
                and stage_cfg.data == cfg.data and stage_cfg.seed == cfg.seed
                and stage_cfg.encoder == ranking_encoder())

    def serve(self, stage: Stage, stage_cfg) -> Stage:
        """`stage`, depending on the retrieval stage when it reads the ranking."""
        if self.reads(stage_cfg):
            stage.deps.append("retrieval")
            self.readers[stage.name] = stage_cfg.k
        return stage

    def retriever(self, stage_cfg):
        """A `RankedRetriever` over every split's ranking for a stage that reads it, else None (it retrieves)."""
        from prlm.data import get_task
        from prlm.retrieval import ranked_retriever

        if not self.reads(stage_cfg):
            return None
        return ranked_retriever(get_task(self.cfg.task), self.cfg.retriever, *sorted(self.folder.glob("*.jsonl")))


def _record_retrieval(cfg: StudyConfig, folder: Path, depth: int) -> None:
    """Each split's ranking, `depth` deep (rankings/SPLIT.jsonl, read by the later stages), and what each
    question retrieves, for inspection (SPLIT.jsonl: the top k ids and scores)."""
    from prlm.data import SPLITS, get_task, load_split
    from prlm.data.lamp import split_files
    from prlm.io import atomic_write_jsonl
    from prlm.retrieval import make_retriever, retrieve_split, save_rankings

    task = get_task(cfg.task)
    retriever = make_retriever(cfg.retriever, task, seed=cfg.seed, encoder=ranking_encoder())
    for split in SPLITS:
        try:
            split_files(cfg.data, split)
        except PrlmError:
            continue  # a dataset may lack a split (e.g. LaMP's hidden test golds)
        dataset = load_split(cfg.data, split, task)
        rows = retrieve_split(retriever, dataset.examples, depth)
        save_rankings(folder / "rankings" / f"{split}.jsonl", rows)
        atomic_write_jsonl(folder / f"{split}.jsonl", [
            {"id": ex.id, "user_id": ex.user_id,
             "retrieved": [{"id": entry_id, "score": score} for entry_id, score in row["ranking"][:cfg.k]]}
            for ex, row in zip(dataset.examples, rows)])


def check_data_folder(cfg: StudyConfig) -> None:
    """With `synthetic` set, the data stage writes the synthetic set into `data`: a folder holding the user's own
    files (the obvious `--set data=MY_DATA` on a synthetic recipe) is refused, not overwritten."""
    if cfg.synthetic is not None:
        check_output_dir(cfg.data, "data", fix="set synthetic: null (--set synthetic=null) to use the folder as the "
                                              "data, or set data to a new path for the synthetic set",
                         made_by="prlm data synth")


def run_study(cfg: StudyConfig, final: bool = False, command: str = "", recipe: str = "") -> dict[str, str]:
    """Run (or resume) the study; `final` adds nothing to training and evaluates the test split once."""
    check_data_folder(cfg)
    out = claim_output_dir(cfg.out, "prlm run", "out")
    (out / "study.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    return run_stages(out, build_stages(cfg, final=final, command=command, recipe=recipe))
