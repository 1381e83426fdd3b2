"""`prlm sweep CONFIG`: robustness of the methods across retrievers and k.

Every (retriever, k) cell of the grid evaluates `rag` and `prlm`;
`no-profile` is evaluated once (it reads no profile). The main cell (bm25,
k=4 by default) also evaluates the supervised baseline `sft` and any extra
checkpoints (ablations) with the reasoning prompt. Each retriever ranks the
split once (`retrieval/NAME.jsonl`, top max(ks)) and every cell reads that
ranking. Cells are stages of `prlm run`'s mechanism: a rerun skips every cell
whose config, model files and retrieval are unchanged. The report
(`report.md`, `cells.csv`, `plots/`) is rewritten from the run folders at
the end of every sweep.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

from prlm import PrlmError
from prlm.options import check_choice, load_config, opt
from prlm.study import Stage, fingerprint, run_stages

GRID_METHODS = ("rag", "prlm")
SWEEP_METHODS = ("no-profile",) + GRID_METHODS
SWEEP_RETRIEVERS = ("random", "recency", "bm25", "bm25s", "dense")


@dataclass
class SweepConfig:
    out: str = opt("", "Folder of the sweep: retrieval/, cells/, sft/, report.md, cells.csv, plots/.")
    task: str = opt("commit-subject", "Task name from the task table.")
    data: str = opt("", "Dataset folder in LaMP's layout.")
    split: str = opt("dev", "Split every cell is evaluated on: dev while choices are made; test only with final: true.")
    final: bool = opt(False, "This sweep is the protocol's final confirmation on the test split (set it together with "
                             "split: test, once, after every choice was made on dev).")
    limit: int = opt(0, "Evaluate the first N questions only (0 = all); for a reduced sweep on a CPU.")
    methods: list = opt(SWEEP_METHODS, "Methods of the grid: no-profile (once), rag and prlm (every cell).")
    retrievers: list = opt(("random", "recency", "bm25", "dense"), "Retrievers of the grid.")
    ks: list = opt((1, 2, 4, 8), "Numbers of retrieved entries of the grid.")
    max_cells: int = opt(0, "Evaluate at most N grid cells, the main cell first, then retriever by retriever (0 = all).")
    main_retriever: str = opt("bm25", "Retriever of the main cell (where sft and extra_models are evaluated).")
    main_k: int = opt(4, "k of the main cell.")
    model: str = opt("smollm2-135m", "Base policy of no-profile and rag (and the start of sft).")
    prlm_model: str = opt("", "Trained PrLM policy (e.g. runs/commit-subject/train/final from `prlm run`).")
    sft: dict = opt(None, "Train the sft baseline in the sweep with these `prlm sft` options (e.g. {epochs: 1}); "
                          "retriever, k, model and prompt length follow the main cell.",
                    section="prlm.training.sft:SFTConfig")
    sft_model: str = opt("", "Or evaluate an sft model trained earlier (`prlm sft`); empty with sft unset = no sft.")
    extra_models: dict[str, str] = opt(None, "Extra trained policies evaluated with the prlm prompt in the main cell, "
                                   "name: folder (e.g. {prlm-no-pers: runs/no-pers/final}).")
    max_prompt_tokens: int = opt(512, "Token limit of every prompt.")
    max_new_tokens: int = opt(32, "Answer length of no-profile, rag and sft.")
    prlm_max_new_tokens: int = opt(96, "Completion length of prlm and extra models (reasoning + answer).")
    force_answer_tokens: int = opt(32, "prlm: tokens for a forced answer when the reasoning runs out (0 = off).")
    batch_size: int = opt(8, "Generation batch size.")
    encoder: str = opt("minilm", "Encoder of dense retrieval.")
    backend: str = opt("auto", "Generation backend: hf, vllm or auto.")
    device: str = opt("auto", "Device: cpu, cuda or auto.")
    seed: int = opt(0, "Seed of random retrieval, generation, sft training and the bootstraps.")
    bootstrap_samples: int = opt(1000, "Resamples of every bootstrap (intervals, paired comparisons, spreads).")

    def __post_init__(self):
        from prlm.data.lamp import SPLITS
        from prlm.data.tasks import get_task

        if not self.out:
            raise PrlmError("out is required in the sweep config (the sweep folder)")
        if not self.data:
            raise PrlmError("data is required in the sweep config (a dataset folder in LaMP's layout)")
        get_task(self.task)
        check_choice("split", self.split, SPLITS)
        if (self.split == "test") != self.final:
            raise PrlmError("split: test goes with final: true and only with it: choices are made on dev, and the "
                            "test split is evaluated once, as the final step (--set split=test --set final=true)")
        self.methods, self.retrievers = list(self.methods or []), list(self.retrievers or [])
        self.ks = [int(k) for k in self.ks or []]
        if not self.methods:
            raise PrlmError(f"methods is empty; list some of {', '.join(SWEEP_METHODS)}")
        for method in self.methods:
            check_choice("method", method, SWEEP_METHODS)
        for retriever in self.retrievers + [self.main_retriever]:
            check_choice("retriever", retriever, SWEEP_RETRIEVERS)
        if any(k < 1 for k in self.ks) or self.main_k < 1:
            raise PrlmError(f"every k must be at least 1 (no-profile is the k=0 baseline), got {self.ks}")
        if any(m in GRID_METHODS for m in self.methods) and not (self.retrievers and self.ks):
            raise PrlmError("rag and prlm need at least one retriever and one k: set retrievers and ks")
        if "prlm" in self.methods and not self.prlm_model:
            raise PrlmError("prlm_model is required when methods include prlm: the trained policy folder, "
                            "e.g. runs/commit-subject/train/final (from `prlm run configs/cpu-commit-subject.yaml`)")
        if self.sft is not None and self.sft_model:
            raise PrlmError("set either sft (train the baseline here) or sft_model (reuse one), not both")
        self.extra_models = dict(self.extra_models or {})
        clash = set(self.extra_models) & set(SWEEP_METHODS + ("sft",))
        if clash:
            raise PrlmError(f"extra_models names {sorted(clash)} clash with the methods; name them e.g. prlm-no-pers")
        for name in ("limit", "max_cells"):
            if getattr(self, name) < 0:
                raise PrlmError(f"{name} must be >= 0 (0 = all), got {getattr(self, name)}")
        if self.bootstrap_samples < 100:
            raise PrlmError(f"bootstrap_samples must be at least 100, got {self.bootstrap_samples}")

    @property
    def main_cell(self) -> tuple[str, int]:
        return self.main_retriever, self.main_k

    @property
    def has_sft(self) -> bool:
        return self.sft is not None or bool(self.sft_model)

    def grid(self) -> list[tuple[str, int]]:
        """The (retriever, k) cells evaluated, the main cell first."""
        cells = [(r, k) for r in self.retrievers for k in self.ks]
        main = [self.main_cell] if (self.main_cell in cells or self.has_sft or self.extra_models) else []
        ordered = main + [c for c in cells if c != self.main_cell]
        return ordered[:self.max_cells] if self.max_cells else ordered


def load_sweep_config(path: str, overrides: list[str] = ()) -> SweepConfig:
    return load_config(SweepConfig, path, overrides)


# --- cells -------------------------------------------------------------------

@dataclass(frozen=True)
class Cell:
    """One evaluation: a method (or named model) with a retriever and k."""

    method: str
    retriever: str
    k: int
    style: str
    """The prompt: no-profile, rag or prlm."""
    model: str

    @property
    def name(self) -> str:
        return f"{self.method}/{self.retriever}-k{self.k}"

    def folder(self, out: Path) -> Path:
        return out / "cells" / self.method / f"{self.retriever}-k{self.k}"


def sweep_cells(cfg: SweepConfig) -> list[Cell]:
    """Every evaluation of the sweep, grouped by model so each loads once."""
    cells = []
    if "no-profile" in cfg.methods:
        cells.append(Cell("no-profile", "none", 0, "no-profile", cfg.model))
    grid = cfg.grid()
    if "rag" in cfg.methods:
        cells += [Cell("rag", r, k, "rag", cfg.model) for r, k in grid]
    main_r, main_k = cfg.main_cell
    if cfg.has_sft and cfg.main_cell in grid:
        cells.append(Cell("sft", main_r, main_k, "rag", cfg.sft_model or str(Path(cfg.out) / "sft" / "final")))
    if "prlm" in cfg.methods:
        cells += [Cell("prlm", r, k, "prlm", cfg.prlm_model) for r, k in grid]
    if cfg.main_cell in grid:
        cells += [Cell(name, main_r, main_k, "prlm", str(path)) for name, path in cfg.extra_models.items()]
    return cells


def eval_options(cfg: SweepConfig, cell: Cell) -> dict:
    reasoning = cell.style == "prlm"
    return dict(task=cfg.task, data=cfg.data, split=cfg.split, limit=cfg.limit, method=cell.style,
                retriever=cell.retriever if cell.k else "none", k=cell.k, encoder=cfg.encoder, model=cell.model,
                max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size, backend=cfg.backend,
                device=cfg.device, seed=cfg.seed,
                max_new_tokens=cfg.prlm_max_new_tokens if reasoning else cfg.max_new_tokens,
                force_answer_tokens=cfg.force_answer_tokens if reasoning else 0,
                out=str(cell.folder(Path(cfg.out))))


def model_stamp(model: str) -> str:
    """Changes when a local model's files change, so a retrained checkpoint reruns its cells."""
    folder = Path(model)
    if not folder.is_dir():
        return model  # a name resolved by prlm.models (embedded or hub): its name is its identity
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    return fingerprint([(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files])


class ModelSlot:
    """Keeps the last loaded model, so consecutive cells of one model load it once."""

    def __init__(self, cfg: SweepConfig):
        self.cfg, self.name, self.loaded = cfg, None, None

    def get(self, model: str):
        from prlm.generation import make_generator

        if model != self.name:
            self.loaded = None  # free the previous model before loading the next
            self.loaded = make_generator(model, self.cfg.backend, self.cfg.device, self.cfg.batch_size)
            self.name = model
        return self.loaded


# --- retrieval -----------------------------------------------------------------

def retrieval_file(cfg: SweepConfig, retriever: str) -> Path:
    return Path(cfg.out) / "retrieval" / f"{retriever}.jsonl"


def rank_split(cfg: SweepConfig, retriever_name: str, depth: int) -> None:
    """Rank every question's profile once, top `depth`, with scores."""
    from prlm.data import get_task, load_split
    from prlm.io import atomic_write_jsonl
    from prlm.retrieval import DenseRetriever, make_retriever, ranking_key

    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None, require_golds=True)
    retriever = make_retriever(retriever_name, task, seed=cfg.seed, encoder=cfg.encoder)
    if isinstance(retriever, DenseRetriever):
        retriever.prepare([ex.input for ex in dataset.examples], [ex.profile for ex in dataset.examples])
    rows = []
    for ex in dataset.examples:
        entries, scores = retriever(ex.input, ex.profile, depth)
        rows.append({"id": ex.id, "key": ranking_key(ex.input, ex.profile),
                     "ranking": [[e["id"], round(s, 6)] for e, s in zip(entries, scores)]})
    atomic_write_jsonl(retrieval_file(cfg, retriever_name), rows)


def load_ranked_retriever(cfg: SweepConfig, retriever_name: str):
    from prlm.data import get_task
    from prlm.io import read_jsonl
    from prlm.retrieval import RankedRetriever

    rows = read_jsonl(retrieval_file(cfg, retriever_name))
    return RankedRetriever(get_task(cfg.task), retriever_name,
                           {r["key"]: [(i, s) for i, s in r["ranking"]] for r in rows})


# --- stages --------------------------------------------------------------------

def build_sweep_stages(cfg: SweepConfig) -> list[Stage]:
    from prlm.pipeline import EvalConfig

    cells = sweep_cells(cfg)
    _check_models_exist(cfg, cells)
    stages = [Stage("data", {"data": cfg.data, "task": cfg.task, "split": cfg.split, "limit": cfg.limit},
                    lambda: _check_data(cfg))]
    used = list(dict.fromkeys(c.retriever for c in cells if c.k))
    depth = max([c.k for c in cells] + [1])
    for name in used:
        stages.append(Stage(f"retrieval-{name}", {"retriever": name, "depth": depth, "seed": cfg.seed,
                                                  "encoder": cfg.encoder if name == "dense" else None},
                            lambda name=name: rank_split(cfg, name, depth), deps=["data"]))
    if cfg.sft is not None and any(c.method == "sft" for c in cells):
        stages.append(_sft_stage(cfg))
    slot = ModelSlot(cfg)
    for cell in cells:
        opts = eval_options(cfg, cell)
        EvalConfig(**opts)  # validate every cell before the first one runs
        deps = ["data"] + ([f"retrieval-{cell.retriever}"] if cell.k else [])
        if cell.method == "sft" and cfg.sft is not None:
            deps.append("train-sft")
        stage_config = {**opts, "model_stamp": None if cell.method == "sft" and cfg.sft is not None else model_stamp(cell.model)}
        stages.append(Stage(f"eval-{cell.method}-{cell.retriever}-k{cell.k}", stage_config,
                            lambda cell=cell, opts=opts: _evaluate(cfg, cell, opts, slot), deps=deps))
    return stages


def _check_models_exist(cfg: SweepConfig, cells: list[Cell]) -> None:
    """A missing checkpoint fails now, with how to make it, not hours into the sweep."""
    missing = {c.method: c.model for c in cells if ("/" in c.model or c.model.startswith("."))
               and not Path(c.model).exists() and not (c.method == "sft" and cfg.sft is not None)}
    if missing:
        raise PrlmError("trained model(s) not found: " + ", ".join(f"{m} = {p}" for m, p in missing.items())
                        + ". Train them first (prlm: `prlm run configs/cpu-commit-subject.yaml`; ablations: "
                        "`prlm train --config configs/train-commit-no-pers.yaml` etc.), or drop them from "
                        "the sweep config (e.g. --set extra_models={})")


def _check_data(cfg: SweepConfig) -> None:
    from prlm.data import load_split

    splits = [cfg.split] + (["train"] if cfg.sft is not None else [])
    for split in splits:
        load_split(cfg.data, split, cfg.task, require_golds=True)


def _sft_stage(cfg: SweepConfig) -> Stage:
    from prlm.training.sft import SFTConfig

    folder = Path(cfg.out) / "sft"
    opts = {**dict(task=cfg.task, data=cfg.data, retriever=cfg.main_retriever, k=cfg.main_k, encoder=cfg.encoder,
                   model=cfg.model, max_prompt_tokens=cfg.max_prompt_tokens, seed=cfg.seed), **cfg.sft,
            "out": str(folder)}
    SFTConfig(**opts)

    def train():
        from prlm.training.sft import train_sft

        shutil.rmtree(folder, ignore_errors=True)  # a changed config or a crash: start again
        train_sft(SFTConfig(**opts))
    return Stage("train-sft", {**opts, "base_stamp": model_stamp(cfg.model)}, train, deps=["data"])


def _evaluate(cfg: SweepConfig, cell: Cell, opts: dict, slot: ModelSlot) -> None:
    from prlm.pipeline import EvalConfig
    from prlm.pipeline import run_eval

    generator, tokenizer = slot.get(cell.model)
    retriever = load_ranked_retriever(cfg, cell.retriever) if cell.k else None
    run_eval(EvalConfig(**opts), progress=False, generator=generator, tokenizer=tokenizer, retriever=retriever)


def run_sweep(cfg: SweepConfig, report_only: bool = False, into: str | None = None, command: str = "",
              log=print) -> dict[str, str]:
    """Evaluate what is not done yet (nothing with report_only), then write the report."""
    from prlm.sweep_report import write_sweep_report

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "sweep.yaml").write_text(yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False))
    started = time.time()
    status = {} if report_only else run_stages(out, build_sweep_stages(cfg), log=log)
    _record_invocation(out, command, started, status, report_only)
    write_sweep_report(cfg, into=into)
    return status


def _record_invocation(out: Path, command: str, started: float, status: dict, report_only: bool) -> None:
    """Every sweep command with its wall time, for the report's list of commands."""
    import torch

    row = {"command": command or "run_sweep()", "report_only": report_only,
           "started": datetime.fromtimestamp(started, tz=timezone.utc).isoformat(timespec="seconds"),
           "wall_time_s": round(time.time() - started, 1), "threads": torch.get_num_threads(),
           "ran": sorted(n for n, s in status.items() if s == "ran")}
    with open(out / "commands.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
