"""The sweep's grid: its config, and the cells it evaluates with their options.

What the run (prlm.sweep.run) evaluates and the report (prlm.sweep.report)
reads back; it imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prlm import PrlmError
from prlm.options import check_choice, load_config, opt
from prlm.prompts import MAX_PROMPT_TOKENS

GRID_METHODS = ("rag", "prlm")
SWEEP_METHODS = ("no-profile",) + GRID_METHODS
SWEEP_RETRIEVERS = ("random", "recency", "bm25", "bm25s", "dense")


@dataclass
class SweepConfig:
    out: str = opt("", "Folder of the sweep: retrieval/, cells/, sft/, report.md, cells.csv, plots/.")
    task: str = opt("commit-subject", "Task name from the task table.")
    data: str = opt("", "Dataset folder in LaMP's layout.")
    split: str = opt("dev", "Split every cell is evaluated on: dev while choices are made; test only with final: "
                            "true.")
    final: bool = opt(False, "This sweep is the protocol's final confirmation on the test split (set it together with "
                             "split: test, once, after every choice was made on dev).")
    limit: int = opt(0, "Evaluate the first N questions only (0 = all); for a reduced sweep on a CPU.")
    methods: list = opt(SWEEP_METHODS, "Methods of the grid: no-profile (once), rag and prlm (every cell).")
    retrievers: list = opt(("random", "recency", "bm25", "dense"), "Retrievers of the grid.")
    ks: list = opt((1, 2, 4, 8), "Numbers of retrieved entries of the grid.")
    max_cells: int = opt(0, "Evaluate at most N grid cells, the main cell first, then retriever by retriever (0 = "
                            "all).")
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
    max_prompt_tokens: int = opt(MAX_PROMPT_TOKENS, "Token limit of every prompt.")
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
    prompt: str
    """The prompt method it is asked with: no-profile, rag or prlm."""
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
    reasoning = cell.prompt == "prlm"
    return dict(task=cfg.task, data=cfg.data, split=cfg.split, limit=cfg.limit, method=cell.prompt,
                retriever=cell.retriever if cell.k else "none", k=cell.k, encoder=cfg.encoder, model=cell.model,
                max_prompt_tokens=cfg.max_prompt_tokens, batch_size=cfg.batch_size, backend=cfg.backend,
                device=cfg.device, seed=cfg.seed,
                max_new_tokens=cfg.prlm_max_new_tokens if reasoning else cfg.max_new_tokens,
                force_answer_tokens=cfg.force_answer_tokens if reasoning else 0,
                out=str(cell.folder(Path(cfg.out))))
