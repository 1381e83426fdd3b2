"""This machine's limits, against which the GRPO step's parts are put.

- fp32 matrix-multiply GFLOP/s (2048 x 2048): the ceiling of compute-bound
  work, i.e. prefill and the training forward + backward;
- the rate at which a matrix-vector product streams 540 MB of fp32 weights
  (the policy's size), GB/s: the ceiling of a decoding step, which must read
  every weight once per generated token;
- what the policy's own decoding step achieves (batch 1 and batch 8, short
  context): weight bytes / step time.

All at torch's thread setting (see the Machine table); on a shared machine
the figures move with the other work running, so the GRPO section measures
them again next to its own timings.
"""

from __future__ import annotations

import statistics

from bench.common import matmul_gflops, policy_shape, time_runs, weight_stream_gbs

FULL = {"limits_policy": "smollm2-135m", "limits_decode_steps": 16}
QUICK = {**FULL, "limits_decode_steps": 4}
HELP = {"limits_policy": "policy whose decoding step is timed",
        "limits_decode_steps": "decoding steps timed per batch size"}


def add_arguments(parser) -> None:
    from bench.common import add_size_options

    add_size_options(parser, FULL, QUICK, HELP)


def decode_step_seconds(model, batch: int, steps: int, context: int = 64) -> float:
    """Median seconds of one cached decoding step of `batch` rows after a `context`-token prefill."""
    import torch

    with torch.inference_mode():
        ids = torch.randint(100, 10_000, (batch, context))
        cache = model(input_ids=ids, use_cache=True).past_key_values
        token = torch.randint(100, 10_000, (batch, 1))

        def step():
            model(input_ids=token, past_key_values=cache, use_cache=True)

        step()
        times, _ = time_runs(step, steps)
    return statistics.median(times)


def run(quick: bool, args=None) -> dict:
    from bench.common import choose_sizes
    from prlm.models import load_policy

    sizes = choose_sizes(args, FULL, QUICK, quick)
    model, _ = load_policy(sizes["limits_policy"])
    shape = policy_shape(model)
    gflops, gbs = matmul_gflops(repeats=3 if quick else 5), weight_stream_gbs(repeats=3 if quick else 5)
    limits = {"fp32 matmul GFLOP/s (2048 x 2048)": round(gflops, 1),
              "fp32 weight streaming GB/s (matrix-vector over 540 MB)": round(gbs, 2),
              "policy fp32 weights, GB": round(shape["weight_bytes"] / 1e9, 3)}
    decode = {}
    for batch in (1, 8):
        seconds = decode_step_seconds(model, batch, sizes["limits_decode_steps"])
        decode[f"batch {batch}: seconds per decoding step"] = round(seconds, 4)
        decode[f"batch {batch}: weights streamed, GB/s"] = round(shape["weight_bytes"] / seconds / 1e9, 2)
        decode[f"batch {batch}: share of the streaming limit"] = round(shape["weight_bytes"] / seconds / 1e9 / gbs, 2)
    return {"title": "Machine limits", "sizes": sizes,
            "profile": {"arithmetic and memory": limits, "the policy's decoding step (context 64)": decode}}
