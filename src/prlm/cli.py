"""The `prlm` command: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from prlm import PrlmError, __version__
from prlm.io import check_output_dir
from prlm.options import add_config_args, config_from_args, to_dict
from prlm.pipeline import EvalConfig


def _check_inputs_before_loading(cfg) -> None:
    """What a training command reads and writes, checked before its model loads
    (loading and retrieval take minutes on real data; a typo should not)."""
    from prlm.data.lamp import split_files

    check_output_dir(cfg.out)
    split_files(cfg.data, cfg.split)


def _cmd_eval(args) -> None:
    from prlm.evaluation import summary_markdown
    from prlm.pipeline import run_eval

    cfg = config_from_args(EvalConfig, args)
    check_output_dir(cfg.out)
    summary = run_eval(cfg)
    if cfg.predict_only:
        print(f"wrote {cfg.out}/lamp_predictions.json ({summary['n']} predictions, no golds read; task "
              f"{summary['task']}) and predictions.jsonl in {summary['wall_time_s']} s")
        return
    print(summary_markdown([summary]), end="")
    for note in summary["notes"]:
        print(note)
    print(f"wrote {cfg.out}/ (predictions.jsonl, summary.json, summary.md) in {summary['wall_time_s']} s")


def _cmd_compare(args) -> None:
    from prlm.evaluation import compare_runs, load_run, summary_markdown

    summaries = [load_run(p)[0] for p in (args.run_a, args.run_b)]
    unscored = [p for p, s in zip((args.run_a, args.run_b), summaries) if not s.get("metrics")]
    if unscored:
        raise PrlmError(f"run '{unscored[0]}' has no metrics (made with --predict-only, without golds); "
                        "compare runs evaluated against gold outputs")
    print(summary_markdown(summaries), end="")
    print(f"paired bootstrap, {args.samples} resamples, B = {args.run_b} minus A = {args.run_a}:")
    for result in compare_runs(args.run_a, args.run_b, samples=args.samples, seed=args.seed):
        print("  " + result.line())


def _cmd_data_synth(args) -> None:
    from prlm.data.synthetic import SyntheticConfig, write_synthetic

    cfg = config_from_args(SyntheticConfig, args)
    check_output_dir(args.out, made_by="prlm data synth")
    write_synthetic(args.out, **to_dict(cfg))
    print(f"wrote the synthetic task to {args.out}/ (train, dev, test in LaMP's layout, meta.json)")


def _cmd_data_from_git(args) -> None:
    from prlm.data.from_git import FromGitConfig, dataset_from_git

    cfg = config_from_args(FromGitConfig, args)
    check_output_dir(args.out, "out")
    counts = dataset_from_git(args.repo, args.out, cfg)
    print(f"wrote a commit-subject dataset to {args.out}/: " + ", ".join(f"{s} {n}" for s, n in counts.items())
          + f" questions; check it with `prlm data check {args.out} --task commit-subject`")


def _cmd_data_check(args) -> None:
    from prlm.data.lamp import check_splits

    found = check_splits(args.dir, args.split, args.task, allow_empty_profiles=args.allow_empty_profiles,
                         allow_task_mismatch=args.allow_task_mismatch)
    for stats in found:
        print(json.dumps(stats))
    longest = max((s for s in found if s["gold_words_max"] is not None), key=lambda s: s["gold_words_max"],
                  default=None)
    print(f"ok: {len(found)} split(s) of '{args.dir}' are valid for task {args.task}"
          + (f"; the longest gold has {longest['gold_words_max']} words ({longest['split']} "
             f"'{longest['longest_gold_id']}')" if longest else ""))


def _cmd_rescore(args) -> None:
    from prlm.evaluation import summary_markdown
    from prlm.pipeline import rescore_run

    print(summary_markdown([rescore_run(path) for path in args.runs]), end="")


def _cmd_train(args) -> None:
    from prlm.training.config import TrainConfig
    from prlm.training.grpo import train_grpo

    cfg = config_from_args(TrainConfig, args)
    _check_inputs_before_loading(cfg)
    if cfg.w_pers:
        from prlm.training.grpo import reward_model_config

        reward_model_config(cfg)  # a wrong --reward-model fails now, not after the model has loaded
    final = train_grpo(cfg)
    print(f"trained policy saved to {final}/")


def _cmd_sft(args) -> None:
    from prlm.training.sft import SFTConfig, train_sft

    cfg = config_from_args(SFTConfig, args)
    _check_inputs_before_loading(cfg)
    final = train_sft(cfg)
    print(f"tuned model saved to {final}/; evaluate it with `prlm eval --method rag --model {final}`")
    if cfg.dev_eval_steps:
        best = final.parent / "best"
        print(f"dev-best model (step in {best}/best.json, curve in {final.parent}/dev_curve.jsonl) saved to "
              f"{best}/; evaluate it with `prlm eval --method rag --model {best}`")


def _cmd_sweep(args) -> None:
    import shlex

    from prlm.sweep import load_sweep_config, run_sweep

    cfg = load_sweep_config(args.config, args.set)
    check_output_dir(cfg.out, "out")
    words = ["prlm", "sweep", args.config] + [w for item in args.set for w in ("--set", item)]
    words += (["--report-only"] if args.report_only else []) + (["--into", args.into] if args.into else [])
    status = run_sweep(cfg, report_only=args.report_only, into=args.into, command=shlex.join(words))
    ran = sum(v == "ran" for v in status.values())
    print(f"sweep: {ran} stage(s) ran, {len(status) - ran} skipped; report in {cfg.out}/report.md")


def _cmd_run(args) -> None:
    import shlex

    from prlm.study import load_study_config, run_study

    cfg = load_study_config(args.config, args.set)
    check_output_dir(cfg.out, "out")
    words = ["prlm", "run", args.config] + [w for item in args.set for w in ("--set", item)]
    status = run_study(cfg, final=args.final, command=shlex.join(words + (["--final"] if args.final else [])),
                       recipe=args.config)
    print("stages: " + ", ".join(f"{name} {what}" for name, what in status.items()))
    report = Path(cfg.out) / ("final-test" if args.final else "eval") / "report.md"
    if status.get("report") == "skipped" and report.is_file():
        print(report.read_text(encoding="utf-8"), end="")


def _cmd_check(args) -> None:
    from prlm.check import check_config

    results = [check_config(path, kind=args.kind, overrides=args.set) for path in args.configs]
    for result in results:
        print("\n".join(result.lines()))
    missing = [f"{r.path}: {option} {path}" for r in results for option, path, _ in r.missing]
    if missing and args.strict:
        raise PrlmError(f"{len(missing)} path(s) to read are missing and no config beside them makes them, e.g. "
                        f"{missing[0]}")


def _cmd_results_add(args) -> None:
    from prlm.results import add_record

    seeds = [int(s) for s in args.seeds.split(",") if s.strip()] if args.seeds else []
    folder = add_record(args.run if len(args.run) > 1 else args.run[0], args.results, args.data_name, args.method,
                        args.selected_on, args.command, recipe=args.recipe,
                        train_summary=args.train_summary or None, compare_to=args.compare_to,
                        selection=args.selection, seeds=seeds)
    print(f"kept the record of {', '.join(args.run)} in {folder}/ (predictions.jsonl.gz, summary.json); "
          "regenerate the docs with `prlm report`")


def _cmd_results_floor(args) -> None:
    from prlm.floors import run_floor

    summary = run_floor(args.floor, args.task, args.data, args.split, args.out)
    print(f"{args.floor} on {args.split}: ROUGE-1 {summary['metrics']['rouge1']:.4f}, ROUGE-L "
          f"{summary['metrics']['rougeL']:.4f} (n={summary['n']}); run folder {args.out}")


def _cmd_results_curve(args) -> None:
    from prlm.results import add_curve

    folder = add_curve(args.train_out, args.results, args.data_name, args.name)
    print(f"kept the learning curve of {args.train_out} in {folder}/; plot and table it with `prlm report`")


def _cmd_report(args) -> None:
    from prlm.results import render_report, write_report

    if args.check:
        json_text, markdown = render_report(args.results, Path(args.markdown).read_text(encoding="utf-8"))
        stale = [p for p, text in ((args.json, json_text), (args.markdown, markdown))
                 if not Path(p).is_file() or Path(p).read_text(encoding="utf-8") != text]
        if stale:
            raise PrlmError(f"{', '.join(stale)} differ from what {args.results}/ gives; run `prlm report`")
        print(f"{args.json} and {args.markdown} match {args.results}/")
        return
    write_report(args.results, args.json, args.markdown)
    print(f"wrote {args.json} and the generated section of {args.markdown} from {args.results}/")


def _cmd_serve(args) -> None:
    try:
        from prlm.serving.app import serve
    except ModuleNotFoundError as err:
        raise PrlmError(f"prlm serve needs the serving extra ({err.name} is not installed): "
                        "pip install 'prlm[serve]' (make installs it)") from err
    from prlm.serving.config import ServeConfig

    cfg = config_from_args(ServeConfig, args)
    if args.action:
        from prlm.serving import backup

        print(backup.run(args.action, cfg.db, args.file))
        return
    serve(cfg)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="prlm", description="Personalized RAG with explicit reasoning (PrLM).")
    parser.add_argument("--version", action="version", version=f"prlm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_eval_commands(sub)
    _add_data_commands(sub)
    _add_training_commands(sub)
    _add_study_commands(sub)
    _add_results_commands(sub)

    p = sub.add_parser("serve", help="the personalized generation API and web page over a per-user profile store "
                                     "(admin token from $PRLM_ADMIN_TOKEN or --admin-token-file)")
    from prlm.serving.config import ServeConfig

    add_config_args(p, ServeConfig)
    p.add_argument("action", nargs="?", choices=("backup", "restore"),
                   help="instead of serving: copy the --db SQLite store to FILE (online), or fill a new --db from it")
    p.add_argument("file", nargs="?", help="the backup file (with backup or restore)")
    p.set_defaults(func=_cmd_serve)

    from prlm.reward.cli import add_rm_commands
    add_rm_commands(sub)
    return parser


def _add_eval_commands(sub) -> None:
    """eval, compare, rescore: one run folder, two compared, runs rescored."""
    p = sub.add_parser("eval", help="evaluate a method (no-profile, rag, prlm) on a split and write a run folder")
    add_config_args(p, EvalConfig)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("compare", help="paired bootstrap between two run folders (B minus A)")
    p.add_argument("run_a", help="run folder A (the baseline)")
    p.add_argument("run_b", help="run folder B")
    p.add_argument("--samples", type=_positive_int, default=1000, help="bootstrap resamples (default: 1000)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default: 0)")
    p.set_defaults(func=_cmd_compare)

    p = sub.add_parser("rescore", help="re-extract answers from a run's recorded completions and recompute its "
                                       "metrics")
    p.add_argument("runs", nargs="+", help="run folders")
    p.set_defaults(func=_cmd_rescore)


def _add_data_commands(sub) -> None:
    """data synth, data check, data from-git."""
    data = sub.add_parser("data", help="make or check datasets").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("synth", help="write the synthetic personalized task in LaMP's layout")
    p.add_argument("--out", required=True, help="folder to write")
    from prlm.data.synthetic import SyntheticConfig

    add_config_args(p, SyntheticConfig)
    p.set_defaults(func=_cmd_data_synth)
    p = data.add_parser("check", help="validate a dataset folder and print its statistics")
    p.add_argument("dir", help="dataset folder in LaMP's layout")
    p.add_argument("--task", default="commit-subject",
                   help="task name from the task table (default: commit-subject, as every other command)")
    p.add_argument("--split", default="all", help="train, dev, test or all (default: all found)")
    p.add_argument("--allow-empty-profiles", action="store_true", help="accept questions with an empty profile")
    p.add_argument("--allow-task-mismatch", action="store_true",
                   help="accept data whose outputs file or input instruction names another task")
    p.set_defaults(func=_cmd_data_check)
    p = data.add_parser("from-git", help="build a commit-subject dataset (LaMP's schema, time-based split, authors "
                                         "numbered, addresses, credits and @handles removed) from a local git "
                                         "repository")
    p.add_argument("repo", help="root of a local git repository")
    p.add_argument("out", help="folder to write (train, dev, test in LaMP's layout, meta.json)")
    from prlm.data.from_git import FromGitConfig

    add_config_args(p, FromGitConfig)
    p.set_defaults(func=_cmd_data_from_git)


def _add_training_commands(sub) -> None:
    """train (GRPO) and sft (the supervised baseline)."""
    p = sub.add_parser("train", help="train the policy with GRPO (optional supervised warm-up of the format first)")
    from prlm.training.config import TrainConfig

    add_config_args(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("sft", help="the supervised baseline: fine-tune the policy with TRL's SFTTrainer on the "
                                   "train split's real outputs, prompted as RAG")
    from prlm.training.sft import SFTConfig

    add_config_args(p, SFTConfig)
    p.set_defaults(func=_cmd_sft)


def _add_study_commands(sub) -> None:
    """sweep and run: many stages, finished ones skipped."""
    p = sub.add_parser("sweep", help="robustness study: no-profile, rag, prlm (and sft, ablations) across "
                                     "retrievers and k, with CSV, plots and report; finished cells are skipped")
    p.add_argument("config", help="sweep YAML (see configs/sweep-*.yaml)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option: --set limit=20 --set 'ks=[1,4]' (repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="write the report from the cells finished so far, evaluating nothing")
    p.add_argument("--into", metavar="MARKDOWN",
                   help="also write the report as a section of this file (e.g. docs/results.md), plots copied beside "
                        "it")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser("run", help="the whole study from a YAML config: data, retrieval, reward model, GRPO, "
                                   "three methods evaluated, report; finished stages are skipped on rerun")
    p.add_argument("config", help="study YAML (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override an option, dotted for sections: --set train.max_steps=5 (repeatable)")
    p.add_argument("--final", action="store_true",
                   help="the protocol's final step: evaluate the test split once with the models the dev runs "
                        "chose (trains only what is missing); results in OUT/final-test/")
    p.set_defaults(func=_cmd_run)

    from prlm.check import KINDS

    p = sub.add_parser("check", help="check config files without running them: recognise each one's kind, validate "
                                     "its keys and values as its command would, look up the paths it reads; loads "
                                     "no model")
    p.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML config file(s), e.g. configs/*.yaml")
    p.add_argument("--kind", default="", choices=("",) + tuple(KINDS), metavar="KIND",
                   help=f"the config's kind when it cannot be recognised: {', '.join(KINDS)}")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="an override, as `prlm run`/`prlm sweep` take it: --set data=MY_DATA (repeatable)")
    p.add_argument("--strict", action="store_true",
                   help="exit 2 when a path the config reads is missing and no config beside it makes it")
    p.set_defaults(func=_cmd_check)


def _add_results_commands(sub) -> None:
    """results add, results add-curve and report: the committed records and their tables."""
    results = sub.add_parser("results", help="committed result records (results/)").add_subparsers(
        dest="results_command", required=True)
    p = results.add_parser("add", help="keep a compact record of a run folder under results/DATA/SPLIT/METHOD/")
    p.add_argument("run", nargs="+", help="run folder (from prlm eval or prlm run); several: one recipe trained "
                                          "at different seeds (--seeds), kept as one record")
    p.add_argument("--seeds", default="", help="with several runs: each run's training seed, in their order, e.g. "
                                               "0,1")
    p.add_argument("--data-name", required=True, help="dataset name in the record, e.g. git-commit-subject")
    p.add_argument("--method", required=True, help="method name: no-profile, rag, sft, warmup-only, prlm, "
                                                   "prlm-rl-only, or an ablation's name (prlm-...)")
    p.add_argument("--selected-on", required=True, choices=("dev", "fixed in advance"),
                   help="how the recipe and checkpoint were chosen: on dev, or fixed before any evaluation")
    p.add_argument("--command", required=True, help="the command that reproduces the run")
    p.add_argument("--selection", default="", help="with --selected-on dev (required then): what was chosen on dev "
                                                   "and from which dev measurement")
    p.add_argument("--recipe", default="", help="the recipe's config file, e.g. configs/commit-subject.yaml")
    p.add_argument("--train-summary", action="append", default=[], help="train_summary.json of the model's "
                   "training run (repeat once per run, in the runs' order)")
    p.add_argument("--compare-to", action="append", default=[], metavar="METHOD",
                   help="also compare this method against METHOD in the report (B = this one; repeatable): the "
                        "baseline an ablation or experiment was made against")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.set_defaults(func=_cmd_results_add)
    p = results.add_parser("floor", help="answer a split with a trivial floor (no model: the first ten words of "
                                         "the input, the most recent past output, the BM25-nearest past output) "
                                         "and write a run folder for `results add`")
    p.add_argument("floor", choices=("floor-first-words", "floor-recent-title", "floor-bm25-title"))
    p.add_argument("--task", required=True, help="task name, e.g. commit-subject or LaMP-4")
    p.add_argument("--data", required=True, help="data folder in LaMP's schema")
    p.add_argument("--split", required=True, help="split to answer (its golds are needed)")
    p.add_argument("--out", required=True, help="run folder to write")
    p.set_defaults(func=_cmd_results_floor)
    p = results.add_parser("add-curve", help="keep a GRPO or sft run's learning curve (step log, dev evaluations, "
                                             "best step) under results/DATA/curves/NAME/")
    p.add_argument("train_out", help="the `out` folder of a `prlm train` run (holds train_log.jsonl) or of a "
                                     "`prlm sft` run (dev_curve.jsonl with a dev curve, else sft_summary.json)")
    p.add_argument("--data-name", required=True, help="dataset name, e.g. git-commit-subject")
    p.add_argument("--name", required=True, help="the model's method name, e.g. prlm")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.set_defaults(func=_cmd_results_curve)

    p = sub.add_parser("report", help="regenerate docs/results.json and the tables of docs/results.md from "
                                      "results/ alone")
    p.add_argument("--results", default="results", help="results folder (default: results)")
    p.add_argument("--json", default="docs/results.json", help="JSON to write (default: docs/results.json)")
    p.add_argument("--markdown", default="docs/results.md",
                   help="markdown whose generated section is rewritten (default: docs/results.md)")
    p.add_argument("--check", action="store_true", help="write nothing; exit 2 when the files are stale")
    p.set_defaults(func=_cmd_report)


# The shell's code for a command stopped by SIGINT (128 + 2): scripts and make see it as interrupted.
INTERRUPTED = 130


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        args.func(args)
    except PrlmError as err:
        print(f"prlm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Every stage writes atomically and records itself only when done, so a rerun resumes.
        print("\nprlm: interrupted; run the same command again to resume", file=sys.stderr)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
