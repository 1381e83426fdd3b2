#!/usr/bin/env bash
# On the GPU machine (after bench/gpu/prepare.sh here; carry .whl and .gpu):
# install the wheels, make a SmolLM2-shaped model with random weights, check the
# prefix-shared pass against TRL's on CUDA, and time the GRPO step there.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/src:$PWD HF_HUB_OFFLINE=1 PRLM_CACHE=/tmp/prlmcache PYTHONUNBUFFERED=1 TQDM_DISABLE=1
python3 -c "import torch, transformers, trl; print(torch.__version__, transformers.__version__, trl.__version__, torch.cuda.get_device_name())" || exit 1
python3 bench/gpu/random_smollm.py || exit 1
python3 -m pytest -q -p no:cacheprovider tests/test_prefix_sharing.py tests/test_rollout.py 2>&1 | tail -1
python3 bench/gpu/equivalence.py 2>&1 | grep -v Warn | tail -2
python3 -m bench --only grpo --grpo-device cuda --data .gpu/data --out-dir "${OUT:-runs/bench-gpu}" 2>&1 | tail -30
