#!/usr/bin/env bash
# The trivial floors of ../shared/data/README.md as records of every shared dataset and split (no model; a few
# seconds each), from the repository root: bash results/add-floors.sh; then `prlm report`.
set -euo pipefail
PRLM=${PRLM:-prlm}
for DATA in numpy-scipy-cargo-commit-subject three-projects-commit-subject git-commit-subject; do
  for SPLIT in dev test; do
    for FLOOR in floor-first-words floor-recent-title floor-bm25-title; do
      RUN=runs/floors/$DATA-$SPLIT-$FLOOR
      CMD="prlm results floor $FLOOR --task commit-subject --data ../shared/data/$DATA --split $SPLIT --out $RUN"
      [ -f "$RUN/summary.json" ] || $PRLM results floor "$FLOOR" --task commit-subject --data "../shared/data/$DATA" \
        --split "$SPLIT" --out "$RUN"
      $PRLM results add "$RUN" --data-name "$DATA" --method "$FLOOR" --selected-on "fixed in advance" --command "$CMD"
    done
  done
done
