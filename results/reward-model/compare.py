"""Two reward models on the same dev pairs, from their committed scores files (results/reward-model/*.scores.json):
the paired accuracy difference (B - A) with a 95% bootstrap interval over pairs (1000 draws, seed 0), and, with
--pairs, each model's accuracy split by the answers' form (an ad hoc reading, not a report row):
* `copy`: the rejected answer copies the input (>= 80% of its words occur in the commit body);
* `stub`: the chosen answer is a preamble with no subject (ends with ':' or reads 'The ... subject line ...').

  python results/reward-model/compare.py A.scores.json B.scores.json [--kind KIND] [--pairs PAIRS.jsonl]
"""
import argparse
import json
import random
import re


def wins(path, kind=""):
    return {p["pair_id"]: p["chosen_score"] > p["rejected_score"] for p in json.load(open(path))["per_pair"]
            if not kind or p["kind"] == kind}


def copies(answer, text):
    body = set(re.findall(r"\w+", text.split(":", 1)[-1].lower()))
    words = re.findall(r"\w+", answer.lower())
    return bool(words) and sum(w in body for w in words) / len(words) >= 0.8


def is_stub(answer):
    return answer.rstrip().endswith(":") or bool(re.match(r"(the|a|here|new)\b.*subject line", answer.strip(), re.I))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--kind", default="", help="only the pairs of this kind (a file may hold several)")
    ap.add_argument("--pairs", default="")
    args = ap.parse_args()
    a, b = wins(args.a, args.kind), wins(args.b, args.kind)
    if set(a) != set(b):
        raise SystemExit(f"the two files score different pairs ({len(a)} and {len(b)})")
    ids = sorted(a)
    diff = [b[i] - a[i] for i in ids]
    rng = random.Random(0)
    draws = sorted(sum(rng.choice(diff) for _ in ids) / len(ids) for _ in range(1000))
    print(f"n={len(ids)} A {sum(a.values()) / len(ids):.3f} B {sum(b.values()) / len(ids):.3f} "
          f"B-A {sum(diff) / len(ids):+.3f} [{draws[25]:+.3f}, {draws[974]:+.3f}]; "
          f"A right only {sum(d < 0 for d in diff)}, B right only {sum(d > 0 for d in diff)}")
    if args.pairs:
        rows = {r["pair_id"]: r for r in map(json.loads, open(args.pairs)) if r["pair_id"] in a}
        for name, test in (("rejected copies the input", lambda r: copies(r["rejected"], r["input"])),
                           ("chosen is a stub", lambda r: is_stub(r["chosen"]))):
            for value in (True, False):
                part = [i for i in ids if test(rows[i]) == value]
                if part:
                    print(f"  {name}={value}: n={len(part)} A {sum(a[i] for i in part) / len(part):.3f} "
                          f"B {sum(b[i] for i in part) / len(part):.3f}")


if __name__ == "__main__":
    main()
