import json
from pathlib import Path

import pytest

from prlm import PrlmError
from prlm.stages import Stage, run_stages
from prlm.study import build_stages, load_study_config

REPO = Path(__file__).resolve().parents[1]


def _stages(calls, opts):
    def record(name):
        return lambda: calls.append(name)
    return [Stage("data", {"n": opts["n"]}, record("data")),
            Stage("train", {"lr": opts["lr"]}, record("train"), deps=["data"]),
            Stage("eval-rag", {"k": opts["k"]}, record("eval-rag"), deps=["data"]),
            Stage("eval-prlm", {"k": opts["k"]}, record("eval-prlm"), deps=["train"])]


def test_stages_skip_when_done_and_rerun_what_a_change_touches(tmp_path):
    calls = []
    opts = {"n": 1, "lr": 0.1, "k": 4}
    assert set(run_stages(tmp_path, _stages(calls, opts), log=lambda _: None).values()) == {"ran"}
    calls.clear()
    assert set(run_stages(tmp_path, _stages(calls, opts), log=lambda _: None).values()) == {"skipped"}
    assert calls == []
    run_stages(tmp_path, _stages(calls, {**opts, "lr": 0.2}), log=lambda _: None)
    assert calls == ["train", "eval-prlm"]  # eval-rag does not depend on training
    calls.clear()
    run_stages(tmp_path, _stages(calls, {**opts, "lr": 0.2, "n": 2}), log=lambda _: None)
    assert calls == ["data", "train", "eval-rag", "eval-prlm"]


def test_a_crashed_stage_reruns(tmp_path):
    calls = []

    def boom():
        raise RuntimeError("crash")
    stages = _stages(calls, {"n": 1, "lr": 0.1, "k": 4})
    stages[1] = Stage("train", {"lr": 0.1}, boom, deps=["data"])
    with pytest.raises(RuntimeError):
        run_stages(tmp_path, stages, log=lambda _: None)
    calls.clear()
    status = run_stages(tmp_path, _stages(calls, {"n": 1, "lr": 0.1, "k": 4}), log=lambda _: None)
    assert status["data"] == "skipped" and calls == ["train", "eval-rag", "eval-prlm"]


def test_recipes_build_their_stages(tmp_path):
    for name in ("cpu-demo.yaml", "cpu-commit-subject.yaml"):
        cfg = load_study_config(str(REPO / "configs" / name), [f"out={tmp_path / name}"])
        names = [s.name for s in build_stages(cfg)]
        ablation = ["eval-warmup-only"] if name == "cpu-commit-subject.yaml" else []
        assert names == ["data", "retrieval", "eval-no-profile", "eval-rag", "rm-pairs", "rm-train", "train",
                         "eval-prlm", *ablation, "report"]
    cfg = load_study_config(str(REPO / "configs" / "cpu-demo.yaml"),
                            [f"out={tmp_path}", "train.w_pers=0", "train.max_steps=3"])
    stages = {s.name: s for s in build_stages(cfg)}
    assert "rm-train" not in stages and stages["train"].config["max_steps"] == 3
    with_ablation = [s.name for s in build_stages(load_study_config(
        str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path}", "eval_warmup_only=true"]))]
    assert with_ablation[-2:] == ["eval-warmup-only", "report"]
    reuse = {s.name: s for s in build_stages(load_study_config(
        str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path}", f"rm.model={tmp_path}"]))}
    assert "rm-pairs" not in reuse and reuse["train"].config["reward_model"] == str(tmp_path)


def test_bad_overrides(tmp_path):
    with pytest.raises(PrlmError, match="key=value"):
        load_study_config(str(REPO / "configs" / "cpu-demo.yaml"), ["train.max_steps"])
    with pytest.raises(PrlmError, match="unknown option"):
        load_study_config(str(REPO / "configs" / "cpu-demo.yaml"), ["colour=red"])


def test_test_split_only_as_the_final_step(tmp_path):
    recipe = str(REPO / "configs" / "cpu-commit-subject.yaml")
    with pytest.raises(PrlmError, match="--final"):
        load_study_config(recipe, [f"out={tmp_path}", "eval_split=test"])
    dev = {s.name: s for s in build_stages(load_study_config(recipe, [f"out={tmp_path}"]))}
    final = {s.name: s for s in build_stages(load_study_config(recipe, [f"out={tmp_path}"]), final=True)}
    assert dev["eval-prlm"].config["split"] == "dev" and final["final-prlm"].config["split"] == "test"
    assert final["final-prlm"].config["out"] == str(tmp_path / "final-test" / "prlm")
    # the final step reuses the dev run's training: same stage, same fingerprinted config
    assert final["train"].config == dev["train"].config and "eval-prlm" not in final


def test_checkpoint_chosen_on_dev_needs_dev_evaluations(tmp_path):
    recipe = str(REPO / "configs" / "cpu-commit-subject.yaml")
    with pytest.raises(PrlmError, match="dev_eval_steps"):
        load_study_config(recipe, [f"out={tmp_path}", "checkpoint=dev-best"])
    cfg = load_study_config(recipe, [f"out={tmp_path}", "checkpoint=dev-best", "train.dev_eval_steps=5"])
    assert {s.name: s for s in build_stages(cfg)}["eval-prlm"].config["model"] == str(tmp_path / "train" / "best")


def test_results_records_are_kept_when_asked(tmp_path):
    recipe = str(REPO / "configs" / "cpu-commit-subject.yaml")
    cfg = load_study_config(recipe, [f"out={tmp_path}", "results_data=git-commit-subject"])
    names = [s.name for s in build_stages(cfg, final=True, command="prlm run x --final", recipe="x")]
    assert names[-2:] == ["results-final-test", "final-report"]


def test_stages_that_retrieve_as_the_study_read_its_ranking(tmp_path):
    cfg = load_study_config(str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path}", "rm.pairs.k=6"])
    stages = {s.name: s for s in build_stages(cfg)}
    readers = {name for name, s in stages.items() if "retrieval" in s.deps}
    assert readers == {"eval-rag", "rm-pairs", "train", "eval-prlm"}  # no-profile retrieves nothing
    assert stages["retrieval"].config["depth"] == 6  # as deep as the deepest reader
    own = {s.name: s for s in build_stages(load_study_config(
        str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path}", "train.retriever=recency"]))}
    assert "retrieval" not in own["train"].deps and "retrieval" in own["eval-rag"].deps


def test_the_recorded_ranking_serves_what_the_stages_would_retrieve(tmp_path):
    from prlm.data import get_task, load_split
    from prlm.data.synthetic import write_synthetic
    from prlm.pipeline import EvalConfig
    from prlm.retrieval import RankedRetriever, make_retriever
    from prlm.study import StudyRanking, _record_retrieval

    cfg = load_study_config(str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path}", "k=2"])
    write_synthetic(cfg.data, num_users=4, profile_size=5, questions_per_user=(2, 1, 1))
    ranking = StudyRanking(cfg)
    _record_retrieval(cfg, tmp_path / "retrieval", depth=3)
    rag = EvalConfig(task=cfg.task, data=cfg.data, split="dev", retriever="bm25", out=str(tmp_path / "e"))
    served = ranking.retriever(rag)
    assert isinstance(served, RankedRetriever)
    assert ranking.retriever(EvalConfig(**{**rag.__dict__, "method": "no-profile"})) is None
    task = get_task(cfg.task)
    for split in ("train", "dev", "test"):
        for ex in load_split(cfg.data, split, task).examples:
            want, _ = make_retriever("bm25", task)(ex.input, ex.profile, 3)
            assert [e["id"] for e in served(ex.input, ex.profile, 3)[0]] == [e["id"] for e in want]
    inspection = (tmp_path / "retrieval" / "dev.jsonl").read_text().splitlines()
    assert all(len(json.loads(line)["retrieved"]) == 2 for line in inspection)  # the study's k, as before
