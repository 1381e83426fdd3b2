"""Running the sweep: each retriever ranks the split once, every cell is a stage
(prlm.stages) that evaluates from that ranking, consecutive cells of one model
share its loaded weights, and the report is rewritten at the end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import yaml

from prlm import PrlmError
from prlm.io import claim_output_dir
from prlm.stages import Stage, fingerprint, run_stages
from prlm.sweep.grid import Cell, SweepConfig, eval_options, sweep_cells
from prlm.sweep.report import write_sweep_report


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
    from prlm.retrieval import make_retriever, retrieve_split, save_rankings

    task = get_task(cfg.task)
    dataset = load_split(cfg.data, cfg.split, task, limit=cfg.limit or None, require_golds=True)
    retriever = make_retriever(retriever_name, task, seed=cfg.seed, encoder=cfg.encoder)
    save_rankings(retrieval_file(cfg, retriever_name), retrieve_split(retriever, dataset.examples, depth))


def load_ranked_retriever(cfg: SweepConfig, retriever_name: str):
    from prlm.data import get_task
    from prlm.retrieval import ranked_retriever

    return ranked_retriever(get_task(cfg.task), retriever_name, retrieval_file(cfg, retriever_name))


# --- stages --------------------------------------------------------------------

def build_sweep_stages(cfg: SweepConfig, check_models: bool = True) -> list[Stage]:
    """The sweep's stages, every cell validated; `check_models=False` leaves the trained models to the caller
    (`prlm check` says which earlier stage makes them)."""
    from prlm.pipeline import EvalConfig

    cells = sweep_cells(cfg)
    if check_models:
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
        trained_here = cell.method == "sft" and cfg.sft is not None
        if trained_here:
            deps.append("train-sft")  # the model is made by that stage: its fingerprint stands for the weights
        stage_config = {**opts, "model_stamp": None if trained_here else model_stamp(cell.model)}
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
    from prlm.pipeline import EvalConfig, run_eval

    generator, tokenizer = slot.get(cell.model)
    retriever = load_ranked_retriever(cfg, cell.retriever) if cell.k else None
    run_eval(EvalConfig(**opts), progress=False, generator=generator, tokenizer=tokenizer, retriever=retriever)


def run_sweep(cfg: SweepConfig, report_only: bool = False, into: str | None = None, command: str = "",
              log=print) -> dict[str, str]:
    """Evaluate what is not done yet (nothing with report_only), then write the report."""
    out = claim_output_dir(cfg.out, "prlm sweep", "out")
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
           "started": datetime.fromtimestamp(started, tz=UTC).isoformat(timespec="seconds"),
           "wall_time_s": round(time.time() - started, 1), "threads": torch.get_num_threads(),
           "ran": sorted(n for n, s in status.items() if s == "ran")}
    with open(out / "commands.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
