"""`prlm rm pairs|train|eval|score`: parse, call the library, print. No logic lives here."""

from __future__ import annotations

import json

from prlm.config import add_config_args, config_from_args


def _cmd_pairs(args) -> None:
    from prlm.reward.pairs import PairsConfig, build_pairs

    cfg = config_from_args(PairsConfig, args)
    summary = build_pairs(cfg)
    print(json.dumps({k: summary[k] for k in ("pairs", "written_now", "questions_now", "questions_resumed",
                                              "dropped", "dropped_by_reason", "by_kind")}))
    print(f"wrote {summary['pairs']} pair(s) to {cfg.out} in {summary['wall_time_s']} s "
          f"({summary['dropped']} dropped; provenance in the .meta.json beside it)")


def add_rm_commands(subparsers) -> None:
    """Register `rm` and its subcommands on the top-level `prlm` subparsers."""
    from prlm.reward.model import RMEvalConfig, TrainConfig
    from prlm.reward.pairs import PairsConfig
    from prlm.reward.personalization import ScoreConfig

    rm = subparsers.add_parser("rm", help="the personalization reward model: pairs, train, eval, score")
    sub = rm.add_subparsers(dest="rm_command", required=True)

    p = sub.add_parser("pairs", help="generate preference pairs (answer with profile > answer without) as JSONL; resumable")
    add_config_args(p, PairsConfig)
    p.set_defaults(func=_cmd_pairs)

    p = sub.add_parser("train", help="train the (input, answer) scorer on pairs (Bradley-Terry, validation on held-out users)")
    add_config_args(p, TrainConfig)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("eval", help="pairwise accuracy and mean margin of a checkpoint on a pairs file, with bootstrap 95%% intervals")
    add_config_args(p, RMEvalConfig)
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("score", help="score (input, answer) pairs: raw score and sigmoid reward")
    add_config_args(p, ScoreConfig)
    p.set_defaults(func=_cmd_score)


def _cmd_train(args) -> None:
    from prlm.reward.model import TrainConfig, train_reward_model

    cfg = config_from_args(TrainConfig, args)
    result = train_reward_model(cfg)
    for epoch in result["epochs"]:
        print(f"epoch {epoch['epoch']:g}: validation pairwise accuracy {epoch['val_accuracy']:.4f}, "
              f"mean margin {epoch['val_margin']:+.4f}, loss {epoch['val_loss']:.4f}")
    val = result.get("validation")
    if val:
        print(f"best epoch {result['best_epoch']:g} on {val['n']} validation pairs "
              f"({len(result['users']['validation'])} held-out users): pairwise accuracy {val['accuracy']:.4f} "
              f"[95% CI {val['accuracy_ci'][0]:.4f}, {val['accuracy_ci'][1]:.4f}], mean margin {val['margin']:+.4f} "
              f"[95% CI {val['margin_ci'][0]:+.4f}, {val['margin_ci'][1]:+.4f}]")
    else:
        print("no validation users (val_fraction 0 or a single user): the last epoch is kept")
    print(f"wrote {cfg.out}/ (model, tokenizer, prlm_rm_config.json) in {result['wall_time_s']} s")


def _cmd_eval(args) -> None:
    from prlm.reward.model import RMEvalConfig, run_rm_eval

    cfg = config_from_args(RMEvalConfig, args)
    result = run_rm_eval(cfg)
    groups = [("all", result)] + sorted(result.get("by_kind", {}).items())
    print(f"{result['n']} pairs, bootstrap 95% intervals over {result['samples']} resamples of the pairs:")
    for name, m in groups:
        print(f"  {name}: n={m['n']} pairwise accuracy {m['accuracy']:.4f} [{m['accuracy_ci'][0]:.4f}, "
              f"{m['accuracy_ci'][1]:.4f}], mean margin {m['margin']:+.4f} [{m['margin_ci'][0]:+.4f}, "
              f"{m['margin_ci'][1]:+.4f}]")
    print(f"in {result['wall_time_s']} s" + (f"; wrote {cfg.out}" if cfg.out else ""))


def _cmd_score(args) -> None:
    from prlm.reward.personalization import ScoreConfig, format_score, score_rows

    cfg = config_from_args(ScoreConfig, args)
    rows = score_rows(cfg)
    if cfg.out:
        print(f"scored {len(rows)} row(s); wrote {cfg.out}")
    else:
        for row in rows:
            print(format_score(row))
