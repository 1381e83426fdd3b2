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


# --- the reward model's pair source ------------------------------------------------------------------------------

STYLE_KINDS = {"own-vs-other-user", "preamble", "sign-off", "casing", "input-copy"}


def _tiny_study(tmp_path, llama, rm: dict, **overrides):
    """A synthetic study with the tiny policy, small enough to run from the data to one GRPO step."""
    from prlm.study import StudyConfig

    values = dict(out=str(tmp_path / "study"), task="synthetic", model=llama, k=1, max_prompt_tokens=320,
                  synthetic={"num_users": 12, "profile_size": 3, "questions_per_user": [2, 1, 1]},
                  baselines=[], limit=2, max_new_tokens=4, prlm_max_new_tokens=6, rm=rm,
                  train=dict(sft_steps=0, max_steps=1, prompts_per_step=1, num_generations=2, max_completion_length=6,
                             learning_rate=1e-3, w_pers=0.5, save_steps=1, report_to="none"))
    return StudyConfig(**{**values, **overrides})


def test_style_source_trains_the_reward_model_grpo_loads(tmp_path, tiny_llama_dir):
    from test_reward_model import tiny_bert

    backbone = tmp_path / "tiny-bert"
    tiny_bert(backbone)
    cfg = _tiny_study(tmp_path, tiny_llama_dir, {
        "source": "style", "style_pairs": {"max_per_user": 2},
        "train": {"backbone": str(backbone), "max_length": 64, "epochs": 1, "batch_size": 8, "device": "cpu"}})
    stages = [s for s in build_stages(cfg) if s.name in ("data", "retrieval", "rm-pairs", "rm-train", "train")]
    assert "retrieval" not in stages[2].deps  # style pairs rank past outputs by their own BM25
    assert run_stages(Path(cfg.out), stages, log=lambda _: None) == {s.name: "ran" for s in stages}
    rm = Path(cfg.out) / "rm"
    rows = [json.loads(line) for line in (rm / "style-pairs.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in rows} == STYLE_KINDS and all(r["context"] for r in rows)
    assert not (rm / "pairs.jsonl").exists()  # nothing generated
    saved = json.loads((rm / "model" / "prlm_rm_config.json").read_text())
    # the measured recipe, where the recipe's own options leave it alone
    assert saved["context_entries"] == 4 and saved["train_config"]["kind_weights"].endswith("input-copy=0.34")
    assert saved["pairs_file"] == str(rm / "style-pairs.jsonl")
    log = [json.loads(line) for line in (Path(cfg.out) / "train" / "train_log.jsonl").read_text().splitlines()]
    assert "rewards/personalization/mean" in log[-1]  # GRPO scored completions with the study's reward model


def test_a_synthetic_study_builds_the_papers_pairs_by_default(tmp_path, tiny_llama_dir):
    cfg = _tiny_study(tmp_path, tiny_llama_dir, {"pairs": {"limit": 3}})
    assert cfg.rm["source"] == "paper"
    stages = [s for s in build_stages(cfg) if s.name in ("data", "retrieval", "rm-pairs")]
    run_stages(Path(cfg.out), stages, log=lambda _: None)
    # the policy answered the questions (the random tiny model's answers are empty, so no pair is kept)
    meta = json.loads((Path(cfg.out) / "rm" / "pairs.meta.json").read_text())
    assert meta["summary"]["by_kind"] == {"rag-vs-no-profile": 0} and meta["summary"]["questions_now"] == 3
    assert meta["provenance"]["model"] == cfg.model
    assert not (Path(cfg.out) / "rm" / "style-pairs.jsonl").exists()


def test_paper_source_still_builds_the_papers_pairs(tmp_path):
    from prlm.reward.pairs import PairsConfig

    cfg = load_study_config(str(REPO / "configs" / "cpu-commit-subject.yaml"),
                            [f"out={tmp_path}", "rm.source=paper", "rm.pairs.kinds=rag-vs-no-profile"])
    stages = {s.name: s for s in build_stages(cfg)}
    pairs = PairsConfig(**stages["rm-pairs"].config)
    assert pairs.kind_list == ["rag-vs-no-profile"] and pairs.model == cfg.model and pairs.split == "train"
    assert "retrieval" in stages["rm-pairs"].deps  # the policy answers with the study's ranking
    assert stages["rm-train"].config["pairs"] == str(tmp_path / "rm" / "pairs.jsonl")
    assert "context_entries" not in stages["rm-train"].config  # RewardTrainConfig's defaults, as before


def test_a_synthetic_study_defaults_to_the_papers_pairs_and_commit_subjects_to_style(tmp_path):
    from prlm.study import STYLE_PAIRS_RECIPE, default_rm_source

    demo = load_study_config(str(REPO / "configs" / "cpu-demo.yaml"), [f"out={tmp_path}"])
    assert demo.rm["source"] == "paper" and "model" in {s.name: s for s in build_stages(demo)}["rm-pairs"].config
    assert [default_rm_source(t) for t in ("synthetic", "LaMP-4", "LaMP_5", "LaMP-7", "commit-subject")] == [
        "paper", "paper", "paper", "paper", "style"]
    commit = load_study_config(str(REPO / "configs" / "commit-subject.yaml"),
                               [f"out={tmp_path}", "train.w_pers=0.1"])
    pairs = {s.name: s for s in build_stages(commit)}["rm-pairs"].config
    assert commit.rm["source"] == "style" and set(pairs["kinds"].split(",")) == STYLE_KINDS
    assert {key: pairs[key] for key in STYLE_PAIRS_RECIPE} == dict(STYLE_PAIRS_RECIPE)


def test_the_style_recipe_is_the_measured_one():
    """The study's default options are those of the configs that trained rm-minilm-context-inputcopy."""
    from prlm.options import load_yaml
    from prlm.study import STYLE_PAIRS_RECIPE, STYLE_TRAIN_RECIPE

    pairs = load_yaml(REPO / "configs" / "rm-style-pairs-commit-inputcopy.yaml")
    train = load_yaml(REPO / "configs" / "rm-train-minilm-context-inputcopy.yaml")
    assert dict(STYLE_PAIRS_RECIPE) == {k: v for k, v in pairs.items() if k not in ("task", "data", "split", "k",
                                                                                     "out")}
    assert pairs["k"] == STYLE_TRAIN_RECIPE["context_entries"]  # the pairs' k follows context_entries
    assert dict(STYLE_TRAIN_RECIPE) == {k: v for k, v in train.items() if k not in ("pairs", "out", "seed", "device")}


@pytest.mark.parametrize("overrides, message", [
    (["rm.style_pairs.max_per_usr=4"], "unknown option 'rm.style_pairs.max_per_usr' (did you mean 'max_per_user'?)"),
    (["rm.source=paper", "rm.style_pairs.k=4"], "rm.style_pairs holds options of source: style, but rm.source is "
                                                "'paper': move them to rm.pairs, or set rm.source: style"),
    (["rm.source=styl"], "rm.source='styl' is not valid; use one of: style, paper"),
    (["rm.style_pairs.out=x.jsonl"], "rm.style_pairs.out is set by the study"),
    (["rm.style_pairs.k=2"], "rm.style_pairs.k=2 is below rm.train.context_entries=4"),
])
def test_style_pairs_options_are_checked_key_by_key(tmp_path, overrides, message):
    with pytest.raises(PrlmError) as err:
        load_study_config(str(REPO / "configs" / "cpu-commit-subject.yaml"), [f"out={tmp_path}", *overrides])
    assert message in str(err.value)


def test_paper_options_under_the_default_style_source_say_how_to_fix_it(tmp_path):
    with pytest.raises(PrlmError, match=r"rm.pairs holds options of source: paper, but rm.source is 'style' \(the "
                                        r"default on commit-subject\): move them to rm.style_pairs, or set rm.source: "
                                        "paper"):
        load_study_config(str(REPO / "configs" / "commit-subject.yaml"), [f"out={tmp_path}", "rm.pairs.limit=4"])
