"""Small LaMP-shaped datasets built in tests (never the shared data)."""

from __future__ import annotations

import json
from pathlib import Path

# The shape of DeepSeek-R1-Distill-Qwen-1.5B's chat template (the paper's policy; the
# hub is out of reach in tests): its generation prompt opens the reasoning itself.
R1_DISTILL_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{% endif %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ '<｜Assistant｜>' + message['content'] + '<｜end▁of▁sentence｜>' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<｜Assistant｜><think>\\n' }}{% endif %}"
)

WORDS = "river market council school storm vote budget museum train festival harbor bridge".split()


def lamp4_questions(n: int = 4, profile_size: int = 5) -> tuple[list[dict], dict]:
    questions, golds = [], []
    for q in range(n):
        profile = []
        for p in range(profile_size):
            w = WORDS[(q + p) % len(WORDS)]
            profile.append({"id": f"{q}-{p}", "text": f"The {w} story number {p} about the {w}.",
                            "title": f"{w.title()} news {p}", "date": f"2020-01-{p + 1:02d}"})
        w = WORDS[q % len(WORDS)]
        questions.append({"id": f"q{q}", "user_id": f"u{q % 2}",
                          "input": f"Generate a headline for the following article: The {w} opened today.",
                          "profile": profile})
        golds.append({"id": f"q{q}", "output": f"{w.title()} opens today"})
    return questions, {"task": "LaMP_4", "golds": golds}


def write_lamp(folder: Path, split: str = "dev", questions=None, outputs=None, nested: bool = False) -> Path:
    if questions is None:
        questions, default_outputs = lamp4_questions()
        outputs = default_outputs if outputs is None else outputs
    target = folder / split if nested else folder
    target.mkdir(parents=True, exist_ok=True)
    (target / f"{split}_questions.json").write_text(json.dumps(questions), encoding="utf-8")
    if outputs is not None:
        (target / f"{split}_outputs.json").write_text(json.dumps(outputs), encoding="utf-8")
    return folder
