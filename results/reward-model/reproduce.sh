#!/usr/bin/env bash
# Reproduces every file in results/reward-model/ (issue 14), from the repository root, at one thread.
# Weights and pairs go to $RM (outside git); the committed records are the JSON files beside this script.
# The paper's pairs read the answers of the `rag` and `no-profile` dev runs of the protocol
# (RUNS/DATA/dev/{rag,no-profile}, made by `prlm eval`); a dataset without both runs is skipped. Those run
# folders are rebuilt from the committed records (results/DATA/dev/METHOD/) by runs-from-records.sh: the same
# answers, no generation.
set -euo pipefail
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
RM=${RM:-/root/prlm-runs/rm}
RUNS=${RUNS:-$RM/protocol}
OUT=results/reward-model
mkdir -p "$RM" "$OUT"

# 1. training pairs (real outputs only, no generation): the reward model's users and the judge's users
prlm rm style-pairs --config configs/rm-style-pairs-commit.yaml --out "$RM/git-train-rm.jsonl"
prlm rm style-pairs --config configs/rm-style-pairs-commit.yaml --users held-out,validation \
  --out "$RM/git-train-judge.jsonl"
# the same users and outputs with one more kind, input-copy (the real subject against the body's first line)
prlm rm style-pairs --config configs/rm-style-pairs-commit-inputcopy.yaml --out "$RM/git-train-rm-inputcopy.jsonl"

# 2. the reward model (with the user's past subjects as context), the no-context form, the judge
prlm rm train --config configs/rm-train-minilm-context.yaml --pairs "$RM/git-train-rm.jsonl" \
  --out "$RM/rm-minilm-context" --overwrite true
prlm rm train --config configs/rm-train-minilm-nocontext.yaml --pairs "$RM/git-train-rm.jsonl" \
  --out "$RM/rm-minilm-nocontext" --overwrite true
prlm rm train --config configs/rm-judge-minilm-context.yaml --pairs "$RM/git-train-judge.jsonl" \
  --out "$RM/judge-minilm-context" --overwrite true
# rm-minilm-context's recipe on the pairs with input-copy
prlm rm train --config configs/rm-train-minilm-context-inputcopy.yaml --pairs "$RM/git-train-rm-inputcopy.jsonl" \
  --out "$RM/rm-minilm-context-inputcopy" --overwrite true
cp "$RM/rm-minilm-context-inputcopy/prlm_rm_config.json" "$OUT/rm-minilm-context-inputcopy.train.json"
cp "$RM/judge-minilm-context/prlm_rm_config.json" "$OUT/judge-minilm-context.train.json"

# 3. dev pairs of both datasets (eval wordings of preambles and sign-offs, never trained on), the paper's pairs
results/reward-model/runs-from-records.sh "$RUNS"
for DATA in git-commit-subject three-projects-commit-subject; do
  prlm rm style-pairs --data "../shared/data/$DATA" --split dev --k 4 --variant eval --negatives any \
    --out "$RM/$DATA-dev-style.jsonl"
  cp "$RM/$DATA-dev-style.jsonl" "$RM/$DATA-dev-eval.jsonl"
  if [ -d "$RUNS/$DATA/dev/no-profile" ]; then
    # the real subject against the untrained policy's no-profile answer (issue 3's 58%)
    prlm rm paper-pairs --with-profile-run gold --without-profile-run "$RUNS/$DATA/dev/no-profile" \
      --data "../shared/data/$DATA" --k 4 --out "$RM/$DATA-dev-own-vs-np.jsonl"
    for MODEL in rm-minilm-context rm-minilm-context-inputcopy; do
      prlm rm eval --model "$RM/$MODEL" --pairs "$RM/$DATA-dev-own-vs-np.jsonl" --data "$DATA" \
        --name "$MODEL" --results "$OUT/$MODEL.$DATA.dev.own-vs-no-profile.json" \
        --out "$OUT/$MODEL.$DATA.dev.own-vs-no-profile.scores.json"
    done
  fi
  if [ -d "$RUNS/$DATA/dev/rag" ] && [ -d "$RUNS/$DATA/dev/no-profile" ]; then
    prlm rm paper-pairs --with-profile-run "$RUNS/$DATA/dev/rag" --without-profile-run "$RUNS/$DATA/dev/no-profile" \
      --data "../shared/data/$DATA" --k 4 --out "$RM/$DATA-dev-paper.jsonl"
    # kept apart from the style pairs, in their own records (MODEL.DATA.dev.paper-pairs.*)
    for MODEL in rm-minilm-context rm-minilm-context-inputcopy; do
      prlm rm eval --model "$RM/$MODEL" --pairs "$RM/$DATA-dev-paper.jsonl" --data "$DATA" --name "$MODEL" \
        --results "$OUT/$MODEL.$DATA.dev.paper-pairs.json" --out "$OUT/$MODEL.$DATA.dev.paper-pairs.scores.json"
    done
  fi
  # 4. each model on the users it never saw (the reward models: held-out users of git, every user of
  #    three-projects; the judge: the reward model's training users of git, every user of three-projects)
  #    (the judge: own-vs-other-user only, the figure that says it recognizes users it never trained on)
  for MODEL in rm-minilm-context rm-minilm-nocontext rm-minilm-context-inputcopy; do
    prlm rm eval --model "$RM/$MODEL" --pairs "$RM/$DATA-dev-eval.jsonl" --data "$DATA" --name "$MODEL" \
      --results "$OUT/$MODEL.$DATA.dev.json" --out "$OUT/$MODEL.$DATA.dev.scores.json"
  done
  prlm rm eval --model "$RM/judge-minilm-context" --pairs "$RM/$DATA-dev-eval.jsonl" \
    --kinds own-vs-other-user --data "$DATA" --name judge-minilm-context \
    --results "$OUT/judge-minilm-context.$DATA.dev.json" --out "$OUT/judge-minilm-context.$DATA.dev.scores.json"
done

# 5. does the context model read the user? own-vs-other-user on git dev with each pair given another user's context
DATA=git-commit-subject
for MODEL in rm-minilm-context rm-minilm-context-inputcopy; do
  prlm rm eval --model "$RM/$MODEL" --pairs "$RM/$DATA-dev-eval.jsonl" --kinds own-vs-other-user \
    --context other-user --data "$DATA" --name "$MODEL, another user's context" \
    --results "$OUT/$MODEL.$DATA.dev.other-user-context.json" \
    --out "$OUT/$MODEL.$DATA.dev.other-user-context.scores.json"
done

# 6. issue 14, target 4: the w_pers experiment (configs/pers-commit-subject-w0.yaml and -w05.yaml, kept in
#    results/git-commit-subject/{dev,test}/prlm{,-pers} by `prlm results add`), judged on the users the
#    judge never saw
for SPLIT in dev test; do
  prlm rm judge-compare --a "results/$DATA/$SPLIT/prlm" --b "results/$DATA/$SPLIT/prlm-pers" \
    --model "$RM/judge-minilm-context" --data "../shared/data/$DATA" \
    --out "$OUT/judge-compare.$DATA.$SPLIT.pers-w05-vs-w0.json"
done
