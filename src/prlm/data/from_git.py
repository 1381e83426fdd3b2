"""`prlm data from-git`: a commit-subject dataset in LaMP's schema from any
local git repository, built by the rules of `../shared/data/git-commit-subject`.

- Non-merge commits of `rev`, in author-time order; a commit is one profile
  entry `{id, text (body), title (subject), date}`.
- Bodies lose their closing trailer block (Signed-off-by:, Reviewed-by:, ...)
  and, wherever it sits in the body, every line whose key names a person
  (`person_trailers`: `Suggested-by: Max Dymond` in a block that also holds
  `Closes #123`) or that carries an e-mail address in `Key: value` form; then
  they are cut at `max_chars`. Commits whose body is then empty are left out
  (there is nothing to write a subject for).
- Authors (by mailmap-resolved e-mail) are anonymised as u0000, u0001, ...,
  numbered by their first commit, so the same history always gives the same ids.
- Time-based split per author: the last commit is the test question, the
  one before the dev question, the `train_per_author` before those train
  questions; every question's profile holds up to `max_profile` of the
  author's earlier commits, newest first.
- No answer sits in its own profile: an earlier commit with the same subject
  (a re-applied or cherry-picked commit) is removed from the profile. A
  question whose profile then holds fewer than `min_profile` entries is left
  out (so `prlm data check` accepts every dataset written here).
"""

from __future__ import annotations

import fnmatch
import re
import subprocess
from collections import defaultdict
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from prlm import PrlmError
from prlm.options import opt

TASK_NAME = "commit-subject"
FIELD, RECORD = "\x1f", "\x1e"
LOG_FORMAT = f"%H{FIELD}%aE{FIELD}%at{FIELD}%s{FIELD}%b{RECORD}"
TRAILER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*:\s+\S")
CHERRY_PICK = re.compile(r"^\(cherry picked from commit [0-9a-f]+\)$")
# A `Key: value` line anywhere in a body (indented or not), the key captured.
TRAILER_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9 _-]{0,40}?)\s*:\s*\S")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PERSON_TRAILERS = ("*-by,*-to,Co-authored-by,Signed-off-by,Cc,Author,Authors,Thanks,Credit,Credits,"
                   "Contributed-by,Patch-by,Reported-and-tested-by")


@dataclass
class FromGitConfig:
    rev: str = opt("HEAD", "Revision whose history is read (a branch, tag or commit).")
    train_per_author: int = opt(4, "Train questions per author (each author's commits before dev and test); 0 = all "
                                   "that have a profile of min_profile.")
    min_profile: int = opt(3, "Earlier commits a question needs in its profile; authors with too few commits are left "
                              "out.")
    max_profile: int = opt(48, "Profile entries kept per question (the newest earlier commits).")
    max_chars: int = opt(1200, "Characters kept of a body (input and profile text).")
    person_trailers: str = opt(PERSON_TRAILERS, "Comma-separated trailer keys whose lines name people; such lines are "
                                                "removed wherever they sit in a body (case-insensitive; * matches any "
                                                "text, so *-by covers Reported-by, Suggested-by, Helped-by...). Any "
                                                "`Key: value` line holding an e-mail address is removed too.")

    def __post_init__(self):
        if self.train_per_author < 0:
            raise PrlmError(f"train_per_author must be >= 0 (0 = all), got {self.train_per_author}")
        if self.min_profile < 1:
            raise PrlmError(f"min_profile must be at least 1 (a question needs a profile), got {self.min_profile}")
        if self.max_profile < self.min_profile:
            raise PrlmError(f"max_profile ({self.max_profile}) must be >= min_profile ({self.min_profile})")
        if self.max_chars < 1:
            raise PrlmError(f"max_chars must be at least 1, got {self.max_chars}")
        if not self.person_keys:
            raise PrlmError("person_trailers must name at least one key, e.g. '*-by,Cc'")

    @property
    def person_keys(self) -> list[str]:
        return [key.strip().lower() for key in self.person_trailers.split(",") if key.strip()]


@dataclass
class Commit:
    hash: str
    author: str
    time: int
    subject: str
    body: str

    @property
    def date(self) -> str:
        return datetime.fromtimestamp(self.time, tz=UTC).strftime("%Y-%m-%d")


def strip_trailers(body: str) -> str:
    """The body without its closing trailer block (git's `Key: value` lines)."""
    paragraphs = re.split(r"\n\s*\n", body.strip())
    while paragraphs:
        lines = [ln for ln in paragraphs[-1].splitlines() if ln.strip()]
        # Continuation lines (indented) belong to the trailer above them.
        if lines and TRAILER.match(lines[0]) and all(
                TRAILER.match(ln) or CHERRY_PICK.match(ln.strip()) or ln[:1].isspace() for ln in lines):
            paragraphs.pop()
        else:
            break
    return "\n\n".join(paragraphs).strip()


def scrub_people(body: str, person_keys: list[str]) -> str:
    """The body without the lines that name contributors: trailer-like lines whose
    key matches `person_keys` (fnmatch patterns, lower case) and `Key: value` lines
    carrying an e-mail address, wherever they sit (authors are anonymised, the
    people they credit must be too)."""
    kept = []
    for line in body.splitlines():
        match = TRAILER_LINE.match(line)
        if match:
            key = match.group(1).strip().lower()
            if any(fnmatch.fnmatchcase(key, pattern) for pattern in person_keys) or EMAIL.search(line):
                continue
        kept.append(line)
    return "\n".join(kept)


def clean_body(body: str, cfg: FromGitConfig) -> str:
    """Closing trailers and contributor lines removed, cut at `max_chars`."""
    return strip_trailers(scrub_people(strip_trailers(body), cfg.person_keys))[:cfg.max_chars].strip()


def read_commits(repo: str | Path, rev: str = "HEAD") -> list[Commit]:
    """Non-merge commits of `rev`, oldest first (author time, then git's order)."""
    repo = Path(repo)
    if not repo.is_dir():
        raise PrlmError(f"'{repo}' is not a folder; pass the root of a git repository")
    command = ["git", "-C", str(repo), "log", "--no-merges", "--use-mailmap", f"--format={LOG_FORMAT}", rev, "--"]
    try:
        result = subprocess.run(command, capture_output=True, check=False)
    except FileNotFoundError:
        raise PrlmError("git is not installed (needed to read the repository's history)") from None
    if result.returncode != 0:
        message = result.stderr.decode("utf-8", "replace").strip().splitlines()
        raise PrlmError(f"git log failed in '{repo}': {message[-1] if message else 'no message'}")
    commits = []
    for record in result.stdout.decode("utf-8", "replace").split(RECORD):
        if not record.strip():
            continue
        sha, email, timestamp, subject, body = record.lstrip("\n").split(FIELD, 4)
        commits.append(Commit(sha, email.strip().lower(), int(timestamp), subject.strip(), body))
    order = {c.hash: i for i, c in enumerate(reversed(commits))}  # git lists newest first
    return sorted(commits, key=lambda c: (c.time, order[c.hash]))


def _normalise(subject: str) -> str:
    return " ".join(subject.lower().split())


def build_splits(commits: list[Commit], cfg: FromGitConfig) -> dict[str, list[dict]]:
    """Questions per split, each `{id, user_id, input, profile, output}`."""
    from prlm.data.tasks import get_task

    prefix = get_task(TASK_NAME).input_prefix
    by_author: dict[str, list[Commit]] = defaultdict(list)
    for commit in commits:
        body = clean_body(commit.body, cfg)
        if body and commit.subject:
            by_author[commit.author].append(Commit(commit.hash, commit.author, commit.time, commit.subject, body))
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    # Authors numbered by their first commit: stable for a given history.
    authors = sorted(by_author, key=lambda a: (by_author[a][0].time, a))
    number = 0
    for author in authors:
        history = by_author[author]
        first = cfg.min_profile if cfg.train_per_author == 0 else len(history) - 2 - cfg.train_per_author
        if first < cfg.min_profile:
            continue  # too few commits for a profile before every question
        questions = []
        for index in range(first, len(history)):
            split = "test" if index == len(history) - 1 else "dev" if index == len(history) - 2 else "train"
            question = history[index]
            earlier = [c for c in history[:index] if _normalise(c.subject) != _normalise(question.subject)]
            if len(earlier) < cfg.min_profile:
                continue  # re-applied commits removed, the profile is too short: the question goes
            profile = [{"id": c.hash[:12], "text": c.body, "title": c.subject, "date": c.date}
                       for c in reversed(earlier[-cfg.max_profile:])]
            questions.append((split, {"id": f"{split}-{question.hash[:12]}", "input": prefix + question.body,
                                      "profile": profile, "output": question.subject}))
        if not questions:
            continue  # an author without any question takes no user number
        user = f"u{number:04d}"
        number += 1
        for split, row in questions:
            splits[split].append({**row, "user_id": user})
    return splits


def dataset_from_git(repo: str | Path, out: str | Path, cfg: FromGitConfig) -> dict:
    """Write train/dev/test in LaMP's flat layout plus meta.json; returns the counts."""
    from prlm.data.lamp import Example, save_split
    from prlm.data.tasks import get_task
    from prlm.io import atomic_write_json, check_output_dir, claim_output_dir

    check_output_dir(out, "out")
    commits = read_commits(repo, cfg.rev)
    splits = build_splits(commits, cfg)
    if not splits["test"]:
        raise PrlmError(
            f"no author of '{repo}' has enough commits with a body: each needs at least "
            f"{cfg.min_profile + 2 + cfg.train_per_author} (min_profile + dev + test + train_per_author); "
            "lower --min-profile or --train-per-author")
    task = get_task(TASK_NAME)
    claim_output_dir(out, "prlm data from-git", "out")
    for split, rows in splits.items():
        save_split(out, split, task, [Example(id=r["id"], user_id=r["user_id"], input=r["input"],
                                              profile=r["profile"], gold=r["output"]) for r in rows])
    counts = {split: len(rows) for split, rows in splits.items()}
    atomic_write_json(Path(out) / "meta.json", {
        "task": TASK_NAME, "source": "git log --no-merges", "commits_read": len(commits),
        "authors": len({r["user_id"] for r in splits["test"]}), "questions": counts, "config": asdict(cfg),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    })
    return counts
