"""`prlm rm pairs|style-pairs|paper-pairs|judge|judge-compare|train|eval|score`: parse, call the library, print.

No logic lives here."""

from __future__ import annotations

import json

from prlm.options import add_config_args, config_from_args


def _cmd_pairs(args) -> None:
    from prlm.reward.pairs import PairsConfig, build_pairs

    cfg = config_from_args(PairsConfig, args)
    summary = build_pairs(cfg)
    print(json.dumps({k: summary[k] for k in ("pairs", "written_now", "questions_now", "questions_resumed",
                                              "dropped", "dropped_by_reason", "by_kind")}))
    print(f"wrote {summary['pairs']} pair(s) to {cfg.out} in {summary['wall_time_s']} s "
          f"({summary['dropped']} dropped; provenance in the .meta.json beside it)")


def command_line(prefix: str, cfg) -> str:
    """The command that reproduces `cfg`: `prefix` and every option that differs from its default."""
    import shlex
    from dataclasses import fields

    parts = [prefix]
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if value != f.default:
            parts.append(f"--{f.name.replace('_', '-')} "
                         f"{shlex.quote(str(value).lower() if isinstance(value, bool) else str(value))}")
    return " ".join(parts)


def _cmd_style_pairs(args) -> None:
    from prlm.reward.style_pairs import StylePairsConfig, build_style_pairs

    cfg = config_from_args(StylePairsConfig, args)
    summary = build_style_pairs(cfg)
    print(json.dumps({k: summary[k] for k in ("pairs", "own_outputs", "users", "by_kind", "skipped")}))
    print(f"wrote {summary['pairs']} pair(s) to {cfg.out} in {summary['wall_time_s']} s")


def _cmd_paper_pairs(args) -> None:
    from prlm.reward.style_pairs import pairs_from_runs

    summary = pairs_from_runs(args.with_profile_run, args.without_profile_run, args.data, args.out, k=args.k,
                              task=args.task)
    print(f"wrote {summary['pairs']} {summary['kind']} pair(s) on {summary['split']} to {args.out} "
          f"({summary['dropped']} dropped: an empty side or both answers equal)")


def _cmd_judge(args) -> None:
    from prlm.io import atomic_write_jsonl
    from prlm.reward.judge import judge_run, style_run

    rows, summary = style_run(args.run, args.data, args.task)
    if args.model:
        judged = {r["id"]: r for r in judge_run(args.model, args.run, args.data, args.task, args.device)}
        rows = [{**r, **judged[r["id"]]} for r in rows]
        scored = [r["judge_score"] for r in rows if r["judge_score"] is not None]
        summary["judge_reward"] = round(sum(r["judge_reward"] for r in rows) / len(rows), 4)
        summary["judge_score"] = round(sum(scored) / len(scored), 4) if scored else None
        summary["judge_degenerate"] = len(rows) - len(scored)
    if args.out:
        atomic_write_jsonl(args.out, rows)
    print(json.dumps(summary))


def _cmd_judge_compare(args) -> None:
    from prlm.reward.judge import JudgeCompareConfig, judge_compare

    cfg = config_from_args(JudgeCompareConfig, args)
    result = judge_compare(cfg, command=command_line("prlm rm judge-compare", cfg))
    dropped = result["dropped"]
    print(f"{result['b']} - {result['a']} on {result['data']} {result['split']}, judged by {result['judge']}: "
          f"{result['n']} question(s) of {result['users']} user(s) the judge never saw ({dropped['questions']} "
          f"of {dropped['users']} user(s) it trained on or chose its epoch with dropped); "
          f"95% paired bootstrap, {result['samples']} resamples:")
    for m in result["measures"]:
        if m["n"]:
            print(f"  {m['measure']}: n={m['n']} A {m['a_mean']:.4f} B {m['b_mean']:.4f} B-A {m['diff']:+.4f} "
                  f"[{m['lo']:+.4f}, {m['hi']:+.4f}]")
        else:
            print(f"  {m['measure']}: no question where both sides have a value")
    print(f"wrote {cfg.out}")


def add_rm_commands(subparsers) -> None:
    """Register `rm` and its subcommands on the top-level `prlm` subparsers."""
    from prlm.reward.model import RewardTrainConfig, RMEvalConfig
    from prlm.reward.pairs import PairsConfig
    from prlm.reward.personalization import ScoreConfig

    rm = subparsers.add_parser("rm", help="the personalization reward model: pairs, train, eval, score")
    sub = rm.add_subparsers(dest="rm_command", required=True)

    p = sub.add_parser("pairs", help="generate preference pairs (answer with profile > answer without) as JSONL; "
                                     "resumable")
    add_config_args(p, PairsConfig)
    p.set_defaults(func=_cmd_pairs)

    from prlm.reward.style_pairs import StylePairsConfig

    p = sub.add_parser("style-pairs", help="pairs from real outputs, no generation: own vs other user, preamble, "
                       "sign-off, casing; with the user's past outputs as context")
    add_config_args(p, StylePairsConfig)
    p.set_defaults(func=_cmd_style_pairs)

    p = sub.add_parser("paper-pairs", help="the paper's with-profile vs without-profile pairs from two evaluation "
                       "runs (rag and no-profile) on the same split, without generating")
    p.add_argument("--with-profile-run", required=True, help="run folder of `prlm eval --method rag` (chosen), or "
                   "'gold' for the user's real output (own-vs-no-profile pairs)")
    p.add_argument("--without-profile-run", required=True, help="run folder of `prlm eval --method no-profile`")
    p.add_argument("--data", required=True, help="dataset folder of the runs (inputs and profiles)")
    p.add_argument("--task", default="commit-subject", help="task name")
    p.add_argument("--k", type=int, default=4, help="past outputs of the user kept as 'context'")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.set_defaults(func=_cmd_paper_pairs)

    p = sub.add_parser("judge", help="how personal a run's answers are: the model-free style measure (area "
                       "prefix, casing, length) and, with --model, the judge reward model's scores")
    p.add_argument("--run", required=True, help="run folder of `prlm eval` (predictions.jsonl, summary.json)")
    p.add_argument("--data", required=True, help="dataset folder of the run (inputs and profiles)")
    p.add_argument("--model", default="", help="judge checkpoint (`prlm rm train --role judge`); empty: style only")
    p.add_argument("--task", default="commit-subject", help="task name")
    p.add_argument("--device", default="cpu", help="device for the judge")
    p.add_argument("--out", default="", help="JSONL of per-question flags and scores to write")
    p.set_defaults(func=_cmd_judge)

    from prlm.reward.judge import JudgeCompareConfig

    p = sub.add_parser("judge-compare", help="two evaluations of the same questions (A, B: run or record folders) "
                       "judged and style-measured on users the judge never saw: B - A per measure with 95%% paired "
                       "bootstrap intervals, as one JSON file for `prlm report`")
    add_config_args(p, JudgeCompareConfig)
    p.set_defaults(func=_cmd_judge_compare)

    p = sub.add_parser("train", help="train the (input, answer) scorer on pairs (Bradley-Terry, validation on "
                                     "held-out users)")
    add_config_args(p, RewardTrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="pairwise accuracy and mean margin of a checkpoint on a pairs file, with "
                                    "bootstrap 95%% intervals")
    add_config_args(p, RMEvalConfig)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("score", help="score (input, answer) pairs: raw score and sigmoid reward")
    add_config_args(p, ScoreConfig)
    p.set_defaults(func=_cmd_score)


def _cmd_train(args) -> None:
    from prlm.reward.model import RewardTrainConfig, train_reward_model

    cfg = config_from_args(RewardTrainConfig, args)
    result = train_reward_model(cfg)
    for epoch in result["epochs"]:
        print(f"epoch {epoch['epoch']:g}: validation pairwise accuracy {epoch['val_accuracy']:.4f}, "
              f"mean margin {epoch['val_margin']:+.4f}, loss {epoch['val_loss']:.4f}")
    val = result.get("selection")
    if val:
        print(f"best epoch {result['best_epoch']:g}, chosen on {val['n']} pairs of "
              f"{len(result['users']['validation'])} validation users (optimistic there: "
              f"pairwise accuracy {val['accuracy']:.4f})")
    else:
        print("no validation users in the pairs file: the last epoch is kept")
    held = result.get("held_out")
    if held:
        print(f"held-out users ({len(result['users']['report'])}, neither trained on nor used for the epoch): "
              f"{held['n']} pairs, pairwise accuracy {held['accuracy']:.4f} "
              f"[95% CI {held['accuracy_ci'][0]:.4f}, {held['accuracy_ci'][1]:.4f}]")
    else:
        print("no held-out users in the pairs file: report with `prlm rm eval` on another pairs file")
    print(f"wrote {cfg.out}/ (model, tokenizer, prlm_rm_config.json) in {result['wall_time_s']} s")


def _cmd_eval(args) -> None:
    from prlm.reward.model import RMEvalConfig, run_rm_eval

    cfg = config_from_args(RMEvalConfig, args)
    result = run_rm_eval(cfg, command=command_line("prlm rm eval", cfg))
    groups = [("all", result)] + sorted(result.get("by_kind", {}).items())
    print(f"{result['n']} pairs, bootstrap 95% intervals over {result['samples']} resamples of the pairs:")
    for name, m in groups:
        print(f"  {name}: n={m['n']} pairwise accuracy {m['accuracy']:.4f} [{m['accuracy_ci'][0]:.4f}, "
              f"{m['accuracy_ci'][1]:.4f}], mean margin {m['margin']:+.4f} [{m['margin_ci'][0]:+.4f}, "
              f"{m['margin_ci'][1]:+.4f}], ties {m['ties']}, rejected not above chosen {m['lower_or_keep']:.4f}")
    print(f"{result['n_users']} user(s) ({cfg.users}); {result['pairs_per_s']} pairs/s at "
          f"{result['torch_threads']} thread(s); in {result['wall_time_s']} s"
          + (f"; wrote {cfg.out}" if cfg.out else "") + (f"; report rows in {cfg.results}" if cfg.results else ""))


def _cmd_score(args) -> None:
    from prlm.reward.personalization import ScoreConfig, format_score, score_rows

    cfg = config_from_args(ScoreConfig, args)
    rows = score_rows(cfg)
    if cfg.out:
        print(f"scored {len(rows)} row(s); wrote {cfg.out}")
    else:
        for row in rows:
            print(format_score(row))
