"""`prlm data from-git`: a commit-subject dataset in LaMP's schema from any
local git repository, built by the rules of `../shared/data/git-commit-subject`.

- Non-merge commits of `rev`, in author-time order; a commit is one profile
  entry `{id, text (body), title (subject), date}`. The subject is the first
  line of the message (a first paragraph wrapped over several lines, which git
  would join into one long subject, gives its first line, the rest opening the
  body; `wrapped_subject: skip` makes such commits no question), and subjects
  over `max_subject_words` are no questions.
- Bodies lose their closing trailer block (Signed-off-by:, Reviewed-by:, ...)
  and, wherever it sits in the body, every line whose key names a person
  (`person_trailers`: `Suggested-by: Max Dymond` in a block that also holds
  `Closes #123`) or that carries an e-mail address in `Key: value` form; then
  they are cut at `max_chars`. Everywhere (bodies, subjects): every e-mail
  address goes (a line that is only a name and an address goes whole), credit
  phrases with the name they credit (`credit_phrases`: "From NAME in GitHub
  issue 5025.", "Thanks to NAME") go, and GitHub @handles become @someone.
  Names inside free prose otherwise can remain. Commits whose body is then
  empty are left out (there is nothing to write a subject for).
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
# The raw message (%B): the subject is cut from its first paragraph here, as people write it (see `split_message`).
LOG_FORMAT = f"%H{FIELD}%aE{FIELD}%at{FIELD}%B{RECORD}"
TRAILER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]*:\s+\S")
CHERRY_PICK = re.compile(r"^\(cherry picked from commit [0-9a-f]+\)$")
# A `Key: value` line anywhere in a body (indented or not), the key captured.
TRAILER_LINE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9 _-]{0,40}?)\s*:\s*\S")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(\.[\w-]+)+")
PERSON_TRAILERS = ("*-by,*-to,Co-authored-by,Signed-off-by,Cc,Author,Authors,Thanks,Credit,Credits,"
                   "Contributed-by,Patch-by,Reported-and-tested-by")
# Prose that credits a person by name (tmux: "From NAME in GitHub issue 5025.", "..., from NAME.").
CREDIT_PHRASES = ("from,patch from,patch by,based on a patch by,original patch by,diff from,fix from,thanks to,"
                  "thanks,reported by,suggested by,requested by,noticed by,spotted by,found by,pointed out by,"
                  "written by,contributed by,courtesy of,help from,with help from,idea from")
# A person's name as prose credits it: capitalised words or initials (Jean-Luc, O'Neil, M.), a few particles,
# or a GitHub @handle.
_NAME_WORD = r"(?:[A-Z]\.|[A-Z][\w'’-]*)"
_NAME = rf"(?:@[A-Za-z0-9][A-Za-z0-9-]*|{_NAME_WORD}(?:\s+(?:(?:van|von|de|da|del|der|le|la)\s+)?{_NAME_WORD}){{0,3}})"
# What follows a credited name in the same credit: "in GitHub issue 5025", "for testing".
_CREDIT_TAIL = (r"(?:[ \t]+(?:in|on|via|at)[ \t]+(?:GitHub[ \t]+)?(?:issue|PR|pull request|bug)[ \t]+#?\d+)?"
                r"(?:[ \t]+for[ \t][^.!?;\n]*)?")
# Any group (<...>, (...), [...]) that holds an address goes with it: "[pyem @ user@host-2006...]".
_GROUP_WITH_EMAIL = re.compile(r"[<(\[][^<>()\[\]\n]*" + EMAIL.pattern + r"[^<>()\[\]\n]*[>)\]]")
# A line that is only a name and an address (svn-era imports: "FIRST LAST <user@host> | 2006-09-11 ...").
_NAME_AND_ADDRESS = re.compile(r"^[\W_]*(?:" + _NAME_WORD + r"[\s,]*){0,5}[<(\[]?\s*" + EMAIL.pattern)
# A GitHub handle (not an address, not a decorator path such as @pytest.mark).
HANDLE = re.compile(r"(?<![\w.@/])@[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})\b(?![.\w-]*\.\w)")
HANDLE_STANDIN = "@someone"
SUBJECT_MODES = ("first-line", "skip")


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
    credit_phrases: str = opt(CREDIT_PHRASES, "Comma-separated phrases that credit a person in prose; the phrase and "
                                              "the capitalised name or @handle after it are removed wherever they sit "
                                              "(case-insensitive; a bare 'from' only where a credit sits: opening a "
                                              "sentence, or closing one as in '..., from NAME.'). E-mail addresses "
                                              "are removed everywhere and @handles replaced whatever this says.")
    wrapped_subject: str = opt("first-line", "A first paragraph wrapped over several lines (git joins it into a "
                                             "paragraph-long subject): 'first-line' takes its first line as the "
                                             "subject and the rest opens the body; 'skip' makes such commits no "
                                             "question (they stay in profiles).")
    max_subject_words: int = opt(25, "Subjects longer than this are not questions (a paragraph, not a subject line); "
                                     "0 = no limit.")

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
        if self.wrapped_subject not in SUBJECT_MODES:
            raise PrlmError(f"wrapped_subject='{self.wrapped_subject}' is not valid; use one of: "
                            f"{', '.join(SUBJECT_MODES)}")
        if self.max_subject_words < 0:
            raise PrlmError(f"max_subject_words must be >= 0 (0 = no limit), got {self.max_subject_words}")

    @property
    def person_keys(self) -> list[str]:
        return [key.strip().lower() for key in self.person_trailers.split(",") if key.strip()]

    @property
    def credits(self) -> re.Pattern | None:
        return credit_pattern([p for p in self.credit_phrases.split(",") if p.strip()])


@dataclass
class Commit:
    hash: str
    author: str
    time: int
    subject: str
    body: str
    wrapped: bool = False
    """The first paragraph ran over several lines; `subject` is its first line, the rest opens `body`."""

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


def scrub_people(body: str, person_keys: list[str], credits: re.Pattern | None = None) -> str:
    """The body without what names contributors, wherever it sits (authors are anonymised, the people they
    credit must be too): trailer-like lines whose key matches `person_keys` (fnmatch patterns, lower case),
    `Key: value` lines carrying an e-mail address and lines that are only a name and an address go whole;
    then `scrub_text` removes every other address, credit phrase (`credits`) and @handle."""
    kept = []
    for line in body.splitlines():
        match = TRAILER_LINE.match(line)
        if match:
            key = match.group(1).strip().lower()
            if any(fnmatch.fnmatchcase(key, pattern) for pattern in person_keys) or EMAIL.search(line):
                continue
        if _NAME_AND_ADDRESS.match(line):
            continue
        kept.append(line)
    return scrub_text("\n".join(kept), credits)


def credit_pattern(phrases: list[str]) -> re.Pattern | None:
    """One pattern for every credit phrase followed by a name; a bare 'from' only where a credit sits."""
    phrases = sorted({" ".join(p.lower().split()) for p in phrases if p.strip()}, key=len, reverse=True)
    if not phrases:
        return None
    anywhere = [r"\s+".join(map(re.escape, p.split())) for p in phrases if p != "from"]
    parts = [rf"[,;]?[ \t]*\b(?i:{'|'.join(anywhere)})[ \t]+{_NAME}{_CREDIT_TAIL}"] if anywhere else []
    if "from" in phrases:
        # Opening a sentence ("From NAME in GitHub issue 5025."), or closing one (", from NAME.").
        parts.append(rf"(?:^|(?<=[.!?]))[ \t]*(?i:from)[ \t]+{_NAME}{_CREDIT_TAIL}[.!?]?(?=[ \t]|$)")
        parts.append(rf"[,;]?[ \t]+(?i:from)[ \t]+{_NAME}{_CREDIT_TAIL}(?=[.!?]?[ \t]*$)")
    return re.compile("|".join(parts), re.MULTILINE)


def scrub_text(text: str, credits: re.Pattern | None = None) -> str:
    """Every e-mail address (with the bracket group around it), every credit phrase with its name, and every
    GitHub @handle (replaced by @someone) out of any text: bodies, profile texts, subjects."""
    lines = []
    for line in text.splitlines():
        scrubbed = EMAIL.sub("", _GROUP_WITH_EMAIL.sub("", line))
        scrubbed = HANDLE.sub(HANDLE_STANDIN, credits.sub("", scrubbed) if credits is not None else scrubbed)
        if scrubbed == line:
            lines.append(line)
        elif scrubbed.strip(" \t.,;:-|"):
            lines.append(_tidy(scrubbed))
        # else: a line left with punctuation only (a credit sentence, a name and address) goes
    return "\n".join(lines).strip()


def _tidy(line: str) -> str:
    """A line something was cut from: no doubled spaces or stops, no separator left at its start."""
    line = re.sub(r"[ \t]{2,}", " ", line)
    line = re.sub(r"[ \t]+([.,;:!?])", r"\1", line)
    line = re.sub(r"([.!?])[.,;]+", r"\1", line)
    line = re.sub(r"^(\s*)[-|:,;.]+[ \t]+", r"\1", line)
    return line.rstrip()


def clean_body(body: str, cfg: FromGitConfig) -> str:
    """Closing trailers and contributor lines removed, cut at `max_chars`."""
    return strip_trailers(scrub_people(strip_trailers(body), cfg.person_keys, cfg.credits))[:cfg.max_chars].strip()


def split_message(message: str) -> tuple[str, str, bool]:
    """(subject, body, wrapped): the subject is the first line of the first paragraph; when that paragraph was
    wrapped over several lines (git would join them into one long subject), the rest of it opens the body."""
    paragraphs = message.strip().split("\n\n", 1)
    first = [line.strip() for line in paragraphs[0].splitlines() if line.strip()]
    rest = paragraphs[1] if len(paragraphs) > 1 else ""
    if not first:
        return "", rest, False
    if len(first) == 1:
        return first[0], rest, False
    return first[0], "\n".join(first[1:]) + ("\n\n" + rest if rest.strip() else ""), True


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
        sha, email, timestamp, message = record.lstrip("\n").split(FIELD, 3)
        subject, body, wrapped = split_message(message)
        commits.append(Commit(sha, email.strip().lower(), int(timestamp), subject, body, wrapped))
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
        body, subject = clean_body(commit.body, cfg), scrub_text(commit.subject, cfg.credits)
        if body and subject:
            by_author[commit.author].append(Commit(commit.hash, commit.author, commit.time, subject, body,
                                                   commit.wrapped))
    splits: dict[str, list[dict]] = {"train": [], "dev": [], "test": []}
    # Authors numbered by their first commit: stable for a given history.
    authors = sorted(by_author, key=lambda a: (by_author[a][0].time, a))
    number = 0
    for author in authors:
        questions = _author_questions(by_author[author], cfg, prefix)
        if not questions:
            continue  # an author without any question takes no user number
        user = f"u{number:04d}"
        number += 1
        for split, row in questions:
            splits[split].append({**row, "user_id": user})
    return splits


def is_question(commit: Commit, cfg: FromGitConfig) -> bool:
    """Whether a commit's subject is one to predict: a subject line, not a paragraph."""
    if commit.wrapped and cfg.wrapped_subject == "skip":
        return False
    return not cfg.max_subject_words or len(commit.subject.split()) <= cfg.max_subject_words


def _author_questions(history: list[Commit], cfg: FromGitConfig, prefix: str) -> list[tuple[str, dict]]:
    """(split, question) of one author: the last question-worthy commit is the test question, the one before the
    dev question, the `train_per_author` before those train questions; every commit before one is its profile."""
    eligible = [i for i in range(cfg.min_profile, len(history)) if is_question(history[i], cfg)]
    wanted = 2 + cfg.train_per_author
    if cfg.train_per_author and len(eligible) < wanted:
        return []  # too few commits for a profile before every question
    chosen = eligible[-wanted:] if cfg.train_per_author else eligible
    questions = []
    for position, index in enumerate(chosen):
        split = "test" if position == len(chosen) - 1 else "dev" if position == len(chosen) - 2 else "train"
        question = history[index]
        earlier = [c for c in history[:index] if _normalise(c.subject) != _normalise(question.subject)]
        if len(earlier) < cfg.min_profile:
            continue  # re-applied commits removed, the profile is too short: the question goes
        profile = [{"id": c.hash[:12], "text": c.body, "title": c.subject, "date": c.date}
                   for c in reversed(earlier[-cfg.max_profile:])]
        questions.append((split, {"id": f"{split}-{question.hash[:12]}", "input": prefix + question.body,
                                  "profile": profile, "output": question.subject}))
    return questions


def dataset_from_git(repo: str | Path, out: str | Path, cfg: FromGitConfig) -> dict:
    """Write train/dev/test in LaMP's flat layout plus meta.json; returns the counts."""
    from prlm.data.lamp import Example, save_split
    from prlm.data.tasks import get_task
    from prlm.io import atomic_write_json, check_output_dir, claim_output_dir

    check_output_dir(out, "out", made_by="prlm data from-git")
    commits = read_commits(repo, cfg.rev)
    splits = build_splits(commits, cfg)
    if not splits["test"]:
        raise PrlmError(
            f"no author of '{repo}' has enough commits with a body: each needs at least "
            f"{cfg.min_profile + 2 + cfg.train_per_author} (min_profile + dev + test + train_per_author); "
            "lower --min-profile or --train-per-author (commits whose subject is no question, see --wrapped-subject "
            "and --max-subject-words, count only as profile entries)")
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
