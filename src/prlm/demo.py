"""`make demo`: both baselines on the synthetic task with the embedded model."""

from __future__ import annotations

from pathlib import Path

from prlm.config import EvalConfig
from prlm.data.synthetic import write_synthetic
from prlm.evaluation import compare_runs, summary_markdown
from prlm.generation import make_generator
from prlm.pipeline import run_eval


def run_demo(out: str | Path, limit: int = 0, model: str = "smollm2-135m") -> list[dict]:
    out = Path(out)
    data_dir = out / "data"
    write_synthetic(data_dir)
    print(f"synthetic task written to {data_dir}/")
    generator, tokenizer = make_generator(model, backend="auto", device="auto")
    summaries = []
    for method in ("no-profile", "rag"):
        cfg = EvalConfig(task="synthetic", data=str(data_dir), split="dev", method=method, retriever="bm25",
                         k=4, model=model, limit=limit, out=str(out / method))
        summaries.append(run_eval(cfg, generator=generator, tokenizer=tokenizer))
    print()
    print(summary_markdown(summaries), end="")
    print("paired bootstrap, rag minus no-profile:")
    for result in compare_runs(out / "no-profile", out / "rag"):
        print("  " + result.line())
    return summaries
