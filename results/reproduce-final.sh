#!/usr/bin/env bash
# The final comparison of issue 13 on one shared dataset, from the repository root:
#   bash results/reproduce-final.sh git-commit-subject
#   bash results/reproduce-final.sh three-projects-commit-subject
# It trains and evaluates, on the test split once, the methods docs/results.md compares there:
#   warmup-only and prlm   configs/pers-commit-subject-w0.yaml (warm-up 60 steps, 40 GRPO steps, the last kept)
#   prlm-rl-only           the same recipe without the warm-up (train.sft_steps=0, GRPO on every training question)
#   sft                    configs/sft-commit-subject-devsel.yaml (TRL's SFTTrainer, rag prompt)
# and keeps their records under results/DATA/test/ (no-profile and rag are the protocol's own records; their
# commands are in docs/results.md). What was chosen on dev, once, on git-commit-subject, and reused unchanged
# for every dataset (one recipe):
#   - the GRPO step count, 40: the best step of the dev curve of configs/commit-subject.yaml
#     (results/git-commit-subject/curves/prlm); prlm-rl-only gets the same count;
#   - the sft step count, SFT_STEPS below: the best of 20, 40, 60 on the first 40 dev questions
#     (results/git-commit-subject/curves/sft/dev_curve.jsonl; on git this script chooses it again, elsewhere it reuses it).
# On three-projects the records are named issue13-warmup-only, issue13-prlm, issue13-sft and issue13-prlm-rl-only:
# issue 23's recipe holds the plain names there (results/reproduce-study.sh). git keeps the plain names.
# Wall time at 2 torch threads on the 2-core CPU: about 1 h 45 min per dataset (docs/results.md has each run's).
set -euo pipefail
DATA=${1:?usage: bash results/reproduce-final.sh DATA   (git-commit-subject or three-projects-commit-subject)}
SFT_STEPS=${SFT_STEPS:-60}  # the step count git's dev chose (20, 40 or 60; it chose 60): only read for other datasets
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2} MKL_NUM_THREADS=${MKL_NUM_THREADS:-2} HF_HUB_OFFLINE=1
export TOKENIZERS_PARALLELISM=false
RECIPE=configs/pers-commit-subject-w0.yaml
SFT_RECIPE=configs/sft-commit-subject-devsel.yaml
DATA_DIR=../shared/data/$DATA
NAME=${DATA%-commit-subject}
KEEP_AS=""  # the records' name prefix (see above)
if [ "$DATA" = git-commit-subject ]; then
  # the folders where the records were made (git's prlm run is the recipe's own `out`)
  STUDY_OUT=runs/pers-w0 RL_OUT=runs/final/git-rl-only SFT_OUT=runs/final/git-sft
  ON_DATA=()
  SFT_CHOOSE=()  # the recipe's dev evaluations at 20, 40 and 60 steps choose; the chosen model is best/
  SFT_MODEL=$SFT_OUT/best
else
  STUDY_OUT=runs/final/$NAME RL_OUT=runs/final/$NAME-rl-only SFT_OUT=runs/final/$NAME-sft
  ON_DATA=(--set "data=$DATA_DIR")
  SFT_CHOOSE=(--data "$DATA_DIR" --max-steps "$SFT_STEPS" --dev-eval-steps 0)  # git's choice, not chosen again
  SFT_MODEL=$SFT_OUT/final
  if [ "$DATA" = three-projects-commit-subject ]; then KEEP_AS=issue13-; fi
fi
COMPARE=(--compare-to "${KEEP_AS}warmup-only")
RL_COMPARE=()
if [ -n "$KEEP_AS" ]; then
  COMPARE+=(--compare-to "${KEEP_AS}sft" --compare-to "${KEEP_AS}prlm-rl-only")
  RL_COMPARE=(--compare-to rag)
fi
STUDY=("${ON_DATA[@]}" --set "out=$STUDY_OUT")
RL_ONLY=("${ON_DATA[@]}" --set train.sft_steps=0 --set train.grpo_questions=all --set eval_warmup_only=false
         --set "out=$RL_OUT")
SFT=("${SFT_CHOOSE[@]}" --out "$SFT_OUT")
GRPO_CHOICE="the GRPO step count, 40: the best step of the git dev curve of configs/commit-subject.yaml (results/git-commit-subject/curves/prlm), one recipe for both datasets"
SFT_CHOICE="the sft step count ($SFT_STEPS): the best of 20, 40 and 60 steps on the first 40 git dev questions (results/git-commit-subject/curves/sft/dev_curve.jsonl), one recipe for both datasets"

# 1. warm-up + GRPO; the test split once (the dev evaluation is what `prlm run` without --final adds)
prlm run "$RECIPE" "${STUDY[@]}" --final
OUT=$STUDY_OUT
prlm results add "$OUT/final-test/warmup-only" --data-name "$DATA" --method "${KEEP_AS}warmup-only" \
  --selected-on "fixed in advance" --recipe "$RECIPE" --train-summary "$OUT/train/train_summary.json" \
  --command "prlm run $RECIPE ${STUDY[*]} --final"
prlm results add "$OUT/final-test/prlm" --data-name "$DATA" --method "${KEEP_AS}prlm" --selected-on dev \
  --selection "$GRPO_CHOICE" --recipe "$RECIPE" --train-summary "$OUT/train/train_summary.json" \
  "${COMPARE[@]}" --command "prlm run $RECIPE ${STUDY[*]} --final"

# 2. the paper's method as written: GRPO from the base policy, the format pre-filled
prlm run "$RECIPE" "${RL_ONLY[@]}" --final
OUT=$RL_OUT
prlm results add "$OUT/final-test/prlm" --data-name "$DATA" --method "${KEEP_AS}prlm-rl-only" --selected-on dev \
  --selection "$GRPO_CHOICE" --recipe "$RECIPE" --train-summary "$OUT/train/train_summary.json" \
  "${RL_COMPARE[@]}" --command "prlm run $RECIPE ${RL_ONLY[*]} --final"

# 3. the supervised baseline, its step count chosen on git dev
prlm sft --config "$SFT_RECIPE" "${SFT[@]}"
if [ "$DATA" = git-commit-subject ]; then  # the dev measurements that chose the step count, kept
  mkdir -p "results/$DATA/curves/sft" && cp "$SFT_OUT/dev_curve.jsonl" "results/$DATA/curves/sft/"
fi
prlm eval --task commit-subject --data "$DATA_DIR" --split test --method rag --retriever bm25 --k 4 \
  --max-prompt-tokens 512 --max-new-tokens 32 --batch-size 8 --seed 0 --device cpu --backend hf \
  --model "$SFT_MODEL" --out "$SFT_OUT/test"
prlm results add "$SFT_OUT/test" --data-name "$DATA" --method "${KEEP_AS}sft" --selected-on dev --selection "$SFT_CHOICE" \
  --recipe "$SFT_RECIPE" --train-summary "$SFT_OUT/sft_summary.json" \
  --command "prlm sft --config $SFT_RECIPE ${SFT[*]} && prlm eval ... --model $SFT_MODEL (results/reproduce-final.sh)"

prlm report
