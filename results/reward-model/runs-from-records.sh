#!/usr/bin/env bash
# Rebuilds the run folders that `prlm rm paper-pairs` reads (summary.json, predictions.jsonl) from the committed
# records of the protocol's dev runs (results/DATA/dev/METHOD/: summary.json, predictions.jsonl.gz), so the
# paper's pairs and the own-vs-no-profile pairs are made from the very answers the records keep, without
# regenerating them. paper-pairs reads only each row's id and answer and the summary's split, all in the record.
#   results/reward-model/runs-from-records.sh RUNS_DIR   (default runs/protocol)
set -euo pipefail
RUNS=${1:-runs/protocol}
for DATA in git-commit-subject three-projects-commit-subject; do
  for METHOD in no-profile rag; do
    SRC=results/$DATA/dev/$METHOD
    if [ ! -f "$SRC/predictions.jsonl.gz" ]; then
      echo "no record $SRC; skipped" >&2
      continue
    fi
    mkdir -p "$RUNS/$DATA/dev/$METHOD"
    gzip -dc "$SRC/predictions.jsonl.gz" > "$RUNS/$DATA/dev/$METHOD/predictions.jsonl"
    cp "$SRC/summary.json" "$RUNS/$DATA/dev/$METHOD/summary.json"
  done
done
