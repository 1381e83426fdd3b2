"""Run the benchmark sections side by side and write the report.

    python -m bench [--quick] [--only retrieval,generation] [--repeats N] [section sizes...]

Each section is a module `bench/<name>.py` exposing `run(quick: bool) -> dict`
(or `run(quick, args)` when it also defines `add_arguments(parser)` for its
sizes). Sections listed in SECTIONS but absent are reported as absent.

What `run` returns (rendered by bench/report.py; every key but "title" optional):
    {"title": str, "sizes": {name: value},
     "comparisons": [bench.common.comparison(name, baseline, candidate, target=...)],
     "profile": {title: [bench.common.top_functions(...) rows] or {name: value}},
     "notes": [str]}
where baseline and candidate come from bench.common.measurement(label, times, work, unit).

A full
run writes docs/benchmarks.md and docs/benchmarks.json; a quick run writes
runs/bench-quick/ unless --out-dir is given, so quick figures never replace
the real ones by accident.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
import time
import traceback
from pathlib import Path

from bench.common import REPO_ROOT, BenchError, machine
from bench.report import render_markdown

SECTIONS = ("limits", "retrieval", "generation", "grpo", "grpo_throughput", "reward_model", "sft")


def present_sections() -> dict:
    """name -> module, for the sections that exist."""
    return {name: importlib.import_module(f"bench.{name}") for name in SECTIONS
            if importlib.util.find_spec(f"bench.{name}") is not None}


def build_parser(modules: dict) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description="prlm's benchmark suite.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repetition: checks the suite runs, "
                        "its figures mean nothing")
    parser.add_argument("--only", default="", help=f"comma-separated sections to run (of {', '.join(SECTIONS)})")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions per measurement (default 3; 1 "
                        "with --quick); medians are reported")
    parser.add_argument("--data", default=None, help="git-commit-subject folder (default ../shared/data/"
                        "git-commit-subject from the repository root)")
    parser.add_argument("--out-dir", default=None, help="folder for benchmarks.md and benchmarks.json (default docs/; "
                        "runs/bench-quick/ with --quick)")
    for name, module in modules.items():
        if hasattr(module, "add_arguments"):
            module.add_arguments(parser.add_argument_group(f"{name} sizes"))
    return parser


def selected(only: str, modules: dict) -> list[str]:
    wanted = [s.strip() for s in only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in wanted if s not in SECTIONS]
    if unknown:
        raise BenchError(f"unknown section(s) {', '.join(unknown)}; use {', '.join(SECTIONS)}")
    return [s for s in SECTIONS if s in wanted]


def run_section(name: str, module, args) -> dict:
    print(f"[bench] {name} ...", file=sys.stderr, flush=True)
    started = time.perf_counter()
    result = module.run(args.quick, args) if hasattr(module, "add_arguments") else module.run(args.quick)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    print(f"[bench] {name} done in {result['wall_s']} s", file=sys.stderr, flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    modules = present_sections()
    args = build_parser(modules).parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        raise SystemExit("--repeats must be at least 1")
    names = selected(args.only, modules)
    results, failed = {}, []
    for name in names:
        if name not in modules:
            results[name] = {"title": name, "absent": True}
            continue
        try:
            results[name] = run_section(name, modules[name], args)
        except Exception as err:  # reported in the outputs and in the exit status; the other sections still run
            traceback.print_exc()
            results[name] = {"title": name, "error": f"{type(err).__name__}: {err}"}
            failed.append(name)
    report = {"quick": args.quick, "machine": machine(),
              "command": " ".join(["python -m bench", *(argv or sys.argv[1:])]), "sections": results}
    out_dir = Path(args.out_dir) if args.out_dir else REPO_ROOT / ("runs/bench-quick" if args.quick else "docs")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "benchmarks.json").write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
    (out_dir / "benchmarks.md").write_text(render_markdown(report), encoding="utf-8")
    print(render_markdown(report))
    print(f"[bench] wrote {out_dir / 'benchmarks.md'} and {out_dir / 'benchmarks.json'}", file=sys.stderr)
    return 1 if failed else 0
