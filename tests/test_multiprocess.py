"""GRPO under several processes: `prlm train`'s code launched by torchrun with two
CPU processes (gloo), against one process on the same global batch.

Under several processes TRL's own log-prob pass runs (prefix sharing is for one
process) and DDP averages the gradients; this checks that the two-process run
trains what the one-process run trains, that both ranks hold the same weights,
and that a checkpoint resumes as if the run had never stopped. The worker
(tests/grpo_worker.py) seeds each prompt's rollouts by prompt and step, so both
runs sample the same completions.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parent / "grpo_worker.py"
SRC = Path(__file__).resolve().parent.parent / "src"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _train(data, model, out, processes: int, prompts_per_step: int, max_steps: int, resume: bool = False):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    launcher = [sys.executable] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port())]
    command = launcher + [str(WORKER), "--data", str(data), "--model", model, "--out", str(out),
                          "--prompts-per-step", str(prompts_per_step), "--max-steps", str(max_steps)]
    result = subprocess.run(command + (["--resume"] if resume else []), env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]


def _log(out) -> dict[int, dict]:
    rows = [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]
    return {row["step"]: row for row in rows}


def _weights(path):
    import torch

    return torch.load(path)


def _max_diff(a, b) -> float:
    assert a.keys() == b.keys()
    return max((a[name] - b[name]).abs().max().item() for name in a)


@pytest.mark.slow
def test_two_processes_train_what_one_does_and_resume(tmp_path, tiny_llama_dir):
    from prlm.data.synthetic import write_synthetic
    from prlm.models import load_policy

    data = tmp_path / "data"
    write_synthetic(data, num_users=4, profile_size=2, questions_per_user=(2, 1, 1))
    two, one = tmp_path / "two", tmp_path / "one"
    # The same global batch: 2 prompts x 2 completions a step, split over two ranks or in one.
    _train(data, tiny_llama_dir, two, processes=2, prompts_per_step=1, max_steps=2)
    after_two_steps = _weights(two / "weights-rank0.pt")
    assert _max_diff(after_two_steps, _weights(two / "weights-rank1.pt")) == 0.0  # both ranks, same weights
    assert {p.name for p in (two / "checkpoints").iterdir()} >= {"checkpoint-2"}

    _train(data, tiny_llama_dir, two, processes=2, prompts_per_step=1, max_steps=3, resume=True)
    _train(data, tiny_llama_dir, one, processes=1, prompts_per_step=2, max_steps=3)

    resumed, single = _weights(two / "weights-rank0.pt"), _weights(one / "weights-rank0.pt")
    assert _max_diff(resumed, _weights(two / "weights-rank1.pt")) == 0.0
    initial = {name: p.detach() for name, p in load_policy(tiny_llama_dir)[0].named_parameters()}
    assert _max_diff(resumed, initial) > 1e-3 and _max_diff(resumed, after_two_steps) > 1e-4  # it trained
    assert _max_diff(resumed, single) < 1e-4  # two processes with a resume = one process throughout

    log_two, log_one = _log(two), _log(one)
    assert sorted(log_two) == sorted(log_one) == [1, 2, 3]  # the resumed run logs step 3 after steps 1-2
    for step in (1, 2, 3):
        assert log_two[step]["grad_norm"] > 0
        assert log_two[step]["reward"] == pytest.approx(log_one[step]["reward"], abs=1e-6)
        assert log_two[step]["loss"] == pytest.approx(log_one[step]["loss"], abs=1e-5)
        assert log_two[step]["grad_norm"] == pytest.approx(log_one[step]["grad_norm"], rel=1e-4)
