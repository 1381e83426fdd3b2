"""The limits arithmetic of the GRPO bench (never its timings)."""

import bench.grpo as grpo_bench
import pytest
from bench.common import policy_shape
from bench.run import SECTIONS


def test_policy_shape_counts_tied_embeddings_once(tiny_llama_dir):
    from prlm.models import load_policy

    model, _ = load_policy(tiny_llama_dir)
    shape = policy_shape(model)
    assert shape["params"] == sum(p.numel() for p in model.parameters())
    assert shape["body_params"] + shape["head_params"] == shape["params"]  # tied: the head is the embedding
    assert shape["weight_bytes"] == 4 * shape["params"]


def test_parts_are_put_against_the_measured_limits(monkeypatch):
    monkeypatch.setattr(grpo_bench, "matmul_gflops", lambda: 100.0)
    monkeypatch.setattr(grpo_bench, "weight_stream_gbs", lambda megabytes: 10.0)
    shape = {"params": 3_000, "body_params": 1_000_000, "head_params": 2_000_000, "weight_bytes": 1_000_000_000}
    times = {"rollout, shared prefix": 30.0, "policy forward + backward, prefix-shared": 2.0}
    limits = grpo_bench.against_limits(times, shape, prompt_tokens=1_000, rows=8, new=10, device="cpu")
    # 10 steps x 1 GB / 10 GB/s = 1 s decoding; prefill 2 x 1e6 x 1000 / 1e11 = 0.02 s.
    assert limits["rollout: bound s (decode steps x weights / GB/s + prefill FLOPs / GFLOP/s)"] == pytest.approx(1.02)
    assert limits["rollout: measured s / bound"] == pytest.approx(30 / 1.02, abs=0.01)
    # 6 x 1e6 x (1000 + 80) + 6 x 2e6 x 80 = 7.44e9 FLOPs -> 0.0744 s at 100 GFLOP/s.
    assert limits["forward + backward: bound s (model FLOPs / GFLOP/s)"] == pytest.approx(0.074, abs=1e-3)
    assert limits["forward + backward: achieved GFLOP/s"] == pytest.approx(3.7, abs=0.1)


def test_limits_is_a_section():
    assert SECTIONS[0] == "limits"
