#!/usr/bin/env bash
# Prepare what a GPU check machine lacks (it reaches no network and the weights are too
# large to send): wheels of the pinned packages, SmolLM2's config and tokenizer (weights
# are re-made at random there), and 24 training questions of git-commit-subject.
# Run from the repository root; .gpu/ and .whl/ are for carrying, never committed.
set -euo pipefail
grep -qx "/.gpu/" .git/info/exclude || echo "/.gpu/" >> .git/info/exclude
grep -qx "/.whl/" .git/info/exclude || echo "/.whl/" >> .git/info/exclude
mkdir -p .gpu/smollm-files .gpu/data .whl
PY=.venv/bin/python
CACHE=$($PY -c 'from prlm.models import resolve_policy_path; print(resolve_policy_path("smollm2-135m"))')
cp "$CACHE"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} .gpu/smollm-files/
$PY - <<'PYEOF'
import json
src = "../shared/data/git-commit-subject"
questions = json.load(open(f"{src}/train_questions.json"))[:24]
ids = {q["id"] for q in questions}
outputs = json.load(open(f"{src}/train_outputs.json"))
outputs["golds"] = [g for g in outputs["golds"] if g["id"] in ids]
json.dump(questions, open(".gpu/data/train_questions.json", "w"))
json.dump(outputs, open(".gpu/data/train_outputs.json", "w"))
PYEOF
PLAT="--python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64"
$PY -m pip download -q --no-deps --only-binary=:all: $PLAT -d .whl trl==1.16.0 transformers==5.23.0 datasets==5.2.0 \
  dill==0.4.1 multiprocess==0.70.19
$PY -m pip wheel -q --no-deps rouge-score==0.1.2 -w .whl
du -sh .gpu .whl
