import csv
import json
from pathlib import Path

import pytest
import yaml

from prlm import PrlmError
from prlm.cli import main
from prlm.data.synthetic import write_synthetic
from prlm.sweep import SweepConfig, build_sweep_stages, load_sweep_config, sweep_cells
from prlm.sweep.report import claim_sentence, section_markers, spreads

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """Overrides tests/conftest.py's tiny_data: three profile entries per user, not two."""
    folder = tmp_path_factory.mktemp("synth")
    write_synthetic(folder, num_users=4, profile_size=3, questions_per_user=(2, 1, 1))
    return str(folder)


def _config(tmp_path, data, model, **overrides):
    values = dict(out=str(tmp_path / "sweep"), task="synthetic", data=data, split="dev", limit=3,
                  retrievers=["recency", "bm25"], ks=[1, 2], main_retriever="bm25", main_k=2,
                  model=model, prlm_model=model, extra_models={"prlm-no-pers": model},
                  sft={"max_steps": 1, "batch_size": 2}, max_prompt_tokens=320, max_new_tokens=4,
                  prlm_max_new_tokens=6, force_answer_tokens=2, batch_size=4, backend="hf", device="cpu",
                  bootstrap_samples=200)
    values.update(overrides)
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_tiny_sweep_writes_the_report_and_resumes(tmp_path, tiny_data, tiny_llama_dir):
    config = _config(tmp_path, tiny_data, tiny_llama_dir)
    docs = tmp_path / "results.md"
    docs.write_text("# Results\n\nEarlier text.\n")
    assert main(["sweep", str(config), "--into", str(docs)]) == 0
    out = tmp_path / "sweep"
    markers = sorted(p.stem for p in (out / "stages").glob("*.json"))
    evals = [m for m in markers if m.startswith("eval-")]
    # no-profile once, rag and prlm in 2 retrievers x 2 k, sft and the extra model in the main cell
    assert len(evals) == 1 + 2 * 4 + 2 and "train-sft" in markers
    assert {"retrieval-recency", "retrieval-bm25"} <= set(markers)

    rows = list(csv.DictReader((out / "cells.csv").open()))
    assert len(rows) == len(evals)
    assert {(r["method"], r["retriever"], r["k"]) for r in rows} >= {
        ("no-profile", "none", "0"), ("sft", "bm25", "2"), ("prlm-no-pers", "bm25", "2"), ("rag", "recency", "1")}
    for row in rows:
        assert row["n"] == "3" and row["seed"] == "0" and row["version_torch"]
        assert float(row["rougeL_low"]) <= float(row["rougeL"]) <= float(row["rougeL_high"])
    sft_row = next(r for r in rows if r["method"] == "sft")
    assert sft_row["prompt"] == "rag" and sft_row["model"].endswith("sft/final")
    # sft learnt the train split's real outputs from RAG prompts of the main cell (bm25, k=2)
    from prlm.data import load_split
    golds = {ex.id: ex.gold for ex in load_split(tiny_data, "train", "synthetic").examples}
    sft_rows = [json.loads(line) for line in (out / "sft" / "train_prompts.jsonl").open()]
    assert {r["id"]: r["completion"] for r in sft_rows} == golds
    assert all("<think>" not in r["prompt"] and len(r["retrieved_ids"]) == 2 for r in sft_rows)
    summary = json.loads((out / "cells" / "rag" / "recency-k1" / "summary.json").read_text())
    assert summary["config"]["retriever"] == "recency" and summary["environment"]["versions"]["torch"]
    # each cell read the stored ranking: k=1 takes the first entry of the k=2 ranking
    ranking = {json.loads(line)["id"]: json.loads(line)["ranking"]
               for line in (out / "retrieval" / "bm25.jsonl").read_text().splitlines()}
    k1 = [json.loads(line) for line in (out / "cells" / "rag" / "bm25-k1" / "predictions.jsonl").open()]
    for row in k1:
        assert [h["id"] for h in row["retrieved"]] == [ranking[row["id"]][0][0]][:len(row["retrieved"])]

    report = (out / "report.md").read_text()
    for needed in ("## Main cell (bm25, k=2)", "## Robustness summary", "## Reading", "prlm - rag",
                   "prlm vs sft", "prlm-no-pers vs prlm", "rougeL-vs-k.png", "prlm sweep "):
        assert needed in report
    assert "robustness claim" in report
    assert "first 3 questions: limit=3" in report and "torch thread(s)" in report
    plots = sorted(p.name for p in (out / "plots").glob("*.png"))
    assert plots == ["rougeL-vs-k-bm25.png", "rougeL-vs-k-recency.png", "rougeL-vs-k.png"]
    assert (out / "plots" / "rougeL-vs-k.png").stat().st_size > 5000
    text = docs.read_text()
    begin, end = section_markers(load_sweep_config(str(config)))
    assert text.startswith("# Results\n\nEarlier text.\n") and begin in text and end in text
    assert "(img/sweep/rougeL-vs-k.png)" in text and (tmp_path / "img" / "sweep" / "rougeL-vs-k.png").is_file()

    before = {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")}
    assert main(["sweep", str(config), "--into", str(docs)]) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (out / "stages").glob("*.json")} == before  # nothing reran
    assert docs.read_text().count(begin) == 1  # the section is replaced, not appended again
    commands = [json.loads(line) for line in (out / "commands.jsonl").read_text().splitlines()]
    assert len(commands) == 2 and commands[1]["ran"] == [] and len(commands[0]["ran"]) == len(before)

    # a changed generation option reruns the cells it touches only
    assert main(["sweep", str(config), "--set", "prlm_max_new_tokens=5"]) == 0
    last = json.loads((out / "commands.jsonl").read_text().splitlines()[-1])
    assert last["ran"] == sorted(["eval-prlm-bm25-k2", "eval-prlm-bm25-k1", "eval-prlm-recency-k1",
                                  "eval-prlm-recency-k2", "eval-prlm-no-pers-bm25-k2"])


def test_reduced_sweep_and_grid_order(tmp_path, tiny_data, tiny_llama_dir):
    cfg = load_sweep_config(str(_config(tmp_path, tiny_data, tiny_llama_dir)),
                            ["max_cells=2", "retrievers=[random, recency, bm25]", "sft=null"])
    assert cfg.grid() == [("bm25", 2), ("random", 1)]
    names = [c.name for c in sweep_cells(cfg)]
    assert names == ["no-profile/none-k0", "rag/bm25-k2", "rag/random-k1", "prlm/bm25-k2", "prlm/random-k1",
                     "prlm-no-pers/bm25-k2"]
    stages = [s.name for s in build_sweep_stages(cfg)]
    assert stages[:3] == ["data", "retrieval-bm25", "retrieval-random"] and "train-sft" not in stages


def test_config_errors_say_how_to_fix(tmp_path, tiny_data):
    base = dict(out=str(tmp_path), data=tiny_data, task="synthetic")
    with pytest.raises(PrlmError, match="prlm_model is required"):
        SweepConfig(**base)
    with pytest.raises(PrlmError, match="retriever='bm42'"):
        SweepConfig(**base, prlm_model="x", retrievers=["bm42"])
    with pytest.raises(PrlmError, match="at least 1"):
        SweepConfig(**base, prlm_model="x", ks=[0, 4])
    with pytest.raises(PrlmError, match="clash"):
        SweepConfig(**base, prlm_model="x", extra_models={"rag": "x"})
    with pytest.raises(PrlmError, match="not both"):
        SweepConfig(**base, prlm_model="x", sft={}, sft_model="y")


def test_spreads_and_the_claim():
    means = {("random", 1): 0.10, ("bm25", 1): 0.30, ("random", 4): 0.20, ("bm25", 4): 0.25}
    across_r, across_k = spreads(means)
    assert across_r == pytest.approx({1: 0.20, 4: 0.05}) and across_k == pytest.approx({"random": 0.10, "bm25": 0.05})

    class Pair:
        def __init__(self, low, high):
            self.low, self.high = low, high
    up, down, unsure = Pair(0.05, 0.2), Pair(-0.2, -0.05), Pair(-0.1, 0.1)
    methods = {"rag": {}, "prlm": {}}

    def robust(r_low, r_high, k_low, k_high):
        return {"difference": {"across_retrievers": {"diff": (r_low + r_high) / 2, "low": r_low, "high": r_high},
                               "across_k": {"diff": (k_low + k_high) / 2, "low": k_low, "high": k_high}}}
    assert "claim holds" in claim_sentence(methods, [("bm25", 1, up), ("bm25", 4, up)], robust(.01, .1, .02, .2))
    # a spread difference whose interval spans zero decides nothing, whatever its point estimate
    spans = claim_sentence(methods, [("bm25", 1, up), ("bm25", 4, up)], robust(-.01, .1, .02, .2))
    assert "is not shown either way" in spans and "across retrievers is not distinguishable from" in spans
    spans_below = claim_sentence(methods, [("bm25", 1, up), ("bm25", 4, up)], robust(-.1, .01, -.05, .02))
    assert "is not shown either way" in spans_below
    assert "does not hold" in claim_sentence(methods, [("bm25", 1, up)], robust(-.2, -.01, .02, .2))
    assert "does not hold" in claim_sentence(methods, [("bm25", 1, down), ("bm25", 4, down)],
                                             robust(.01, .1, .02, .2))
    assert "not shown either way" in claim_sentence(methods, [("bm25", 1, unsure), ("bm25", 4, up)],
                                                    robust(.01, .1, .02, .2))


def test_relative_spreads_put_the_floor_in_view():
    from prlm.sweep.report import relative_spread_sentence

    methods = {"rag": {"mean_rougeL": 0.05, "mean_across_retrievers": 0.02, "mean_across_k": None},
               "prlm": {"mean_rougeL": 0.40, "mean_across_retrievers": 0.04, "mean_across_k": None}}
    sentence = relative_spread_sentence(methods)
    assert "rag 0.0500, prlm 0.4000" in sentence and "across retrievers rag 40%, prlm 10%" in sentence
    assert "across k" not in sentence.split("are:")[1].split(".")[0]
    for m in methods.values():
        m["mean_across_retrievers"] = None
    assert relative_spread_sentence(methods) is None


def test_the_test_split_only_as_the_final_step(tmp_path):
    recipe = str(REPO / "configs" / "sweep-commit-subject-main.yaml")
    with pytest.raises(PrlmError, match="final"):
        load_sweep_config(recipe, [f"out={tmp_path}", "split=test"])
    with pytest.raises(PrlmError, match="final"):
        load_sweep_config(recipe, [f"out={tmp_path}", "final=true"])
    assert load_sweep_config(recipe, [f"out={tmp_path}", "split=test", "final=true"]).split == "test"


def test_recipes_parse(tmp_path):
    for name in ("sweep-commit-subject.yaml", "sweep-commit-subject-main.yaml", "sweep-demo.yaml"):
        cfg = load_sweep_config(str(REPO / "configs" / name), [f"out={tmp_path / name}"])
        assert cfg.grid()[0] == cfg.main_cell
    full = load_sweep_config(str(REPO / "configs" / "sweep-commit-subject.yaml"))
    assert full.split == "dev" and full.prlm_model == "runs/commit-subject/train/final"
    assert len(sweep_cells(full)) == 1 + 2 * 16 + 1 + len(full.extra_models)
    main_cell = load_sweep_config(str(REPO / "configs" / "sweep-commit-subject-main.yaml"))
    # the main cell on the whole split, with the grid's models and settings
    same = ("prlm_model", "sft_model", "extra_models", "max_prompt_tokens", "max_new_tokens", "prlm_max_new_tokens",
            "force_answer_tokens", "seed", "main_retriever", "main_k", "data", "split")
    assert all(getattr(main_cell, name) == getattr(full, name) for name in same)
    assert main_cell.grid() == [full.main_cell] and main_cell.limit == 0 and main_cell.out != full.out


def test_ablation_recipes_remove_one_reward_term(tmp_path):
    from prlm.options import build_config, load_yaml
    from prlm.training.config import TrainConfig

    recipe = load_yaml(REPO / "configs" / "cpu-commit-subject.yaml")
    study = recipe["train"]
    (tmp_path / "config.json").write_text("{}")  # stands in for the run's warm-up policy
    for name, removed in (("no-pers", "w_pers"), ("no-acc", "w_acc")):
        values = load_yaml(REPO / "configs" / f"train-commit-{name}.yaml")
        # GRPO starts from the recipe's own warm-up, so only the reward differs
        assert values["warmup_from"] == f"{recipe['out']}/train/sft-model"
        cfg = build_config(TrainConfig, {**values, "warmup_from": str(tmp_path)})
        assert getattr(cfg, removed) == 0
        # every other option as in the study's training (the warm-up is reused, not retrained)
        assert all(getattr(cfg, key) == value for key, value in study.items()
                   if key not in (removed, "sft_steps", "sft_batch_size"))
    sweep = load_sweep_config(str(REPO / "configs" / "sweep-commit-subject.yaml"))
    assert set(sweep.extra_models.values()) == {"runs/commit-subject-no-pers/final",
                                                "runs/commit-subject-no-acc/final"}


def test_two_sweeps_report_into_one_file(tmp_path, tiny_data):
    from prlm.sweep.report import insert_section

    docs = tmp_path / "results.md"
    docs.write_text("# Results\n")
    grid = load_sweep_config(str(_config(tmp_path, tiny_data, "m", out=str(tmp_path / "grid"))))
    main_cell = load_sweep_config(str(_config(tmp_path, tiny_data, "m", out=str(tmp_path / "main"))))
    for cfg in (grid, main_cell, grid):
        insert_section(docs, cfg, [], [])
    text = docs.read_text()
    for cfg in (grid, main_cell):
        begin, end = section_markers(cfg)
        assert text.count(begin) == 1 and text.count(end) == 1
        assert f"`{cfg.out}`" in text.split(begin)[1].split(end)[0]
    assert text.index(section_markers(grid)[0]) < text.index(section_markers(main_cell)[0])


def test_one_cell_sweep_reports_without_spreads_or_plots(tmp_path, tiny_data, tiny_llama_dir):
    config = _config(tmp_path, tiny_data, tiny_llama_dir, retrievers=["bm25"], ks=[2], sft=None,
                     extra_models={}, methods=["rag", "prlm"])
    assert main(["sweep", str(config)]) == 0
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "Robustness sweep: synthetic, dev split, 1 cell x 3 questions" in report
    assert "No spreads: they need at least two retrievers or two values of k" in report
    assert "| method |  |" not in report and "![ROUGE-L against k]" not in report
    assert "cannot be judged" in report and "prlm vs rag" in report
