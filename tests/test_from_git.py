import json
import os
import subprocess

import pytest

from prlm import PrlmError
from prlm.cli import main
from prlm.data import load_split
from prlm.data.from_git import FromGitConfig, dataset_from_git, scrub_people, split_message, strip_trailers

AUTHORS = [("Alice Example", "alice@example.org"), ("Bob Builder", "bob@example.org"),
           ("Carol Coder", "carol@example.org")]


def _git(repo, *args, env=None):
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, env=env)


def _commit(repo, index, author, subject, body, day):
    name, email = author
    (repo / f"file{index}.txt").write_text(f"change {index}\n")
    _git(repo, "add", ".")
    when = f"2024-01-{day:02d}T12:00:00+00:00"
    env = {**os.environ, "GIT_AUTHOR_NAME": name, "GIT_AUTHOR_EMAIL": email, "GIT_AUTHOR_DATE": when,
           "GIT_COMMITTER_NAME": name, "GIT_COMMITTER_EMAIL": email, "GIT_COMMITTER_DATE": when}
    message = subject + ("\n\n" + body if body else "")
    _git(repo, "commit", "-q", "-m", message, env=env)


@pytest.fixture
def repo(tmp_path):
    """Alice 8 commits, Bob 7 (one re-applied, one without body), Carol 3 (too few);
    a merge commit; authors interleaved in time."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    index, day = 0, 1
    plan = [(0, i) for i in range(8)] + [(1, i) for i in range(7)] + [(2, i) for i in range(3)]
    plan.sort(key=lambda p: (p[1], p[0]))
    for who, i in plan:
        name = AUTHORS[who][0].split()[0].lower()
        subject = f"{name}: change number {i}"
        body = (f"Explain why {name} made change {i} in the parser.\n\n"
                f"Signed-off-by: {AUTHORS[who][0]} <{AUTHORS[who][1]}>\n"
                f"Reviewed-by: Someone Else <else@example.org>")
        if who == 1 and i == 2:
            body = ""  # no body: nothing to write a subject for
        if who == 1 and i == 6:
            subject = "bob: change number 4"  # the same change re-applied under another hash
        _commit(repo, index, AUTHORS[who], subject, body, day)
        index, day = index + 1, day + 1
    _git(repo, "checkout", "-q", "-b", "side", "HEAD~1")
    _commit(repo, 99, AUTHORS[0], "alice: side work", "A change on a side branch.", 27)
    _git(repo, "checkout", "-q", "main")
    env = {**os.environ, "GIT_AUTHOR_NAME": "Alice Example", "GIT_AUTHOR_EMAIL": "alice@example.org",
           "GIT_COMMITTER_NAME": "Alice Example", "GIT_COMMITTER_EMAIL": "alice@example.org",
           "GIT_AUTHOR_DATE": "2024-01-28T12:00:00+00:00", "GIT_COMMITTER_DATE": "2024-01-28T12:00:00+00:00"}
    _git(repo, "merge", "-q", "--no-ff", "-m", "Merge branch 'side'\n\nA merge body.", "side", env=env)
    return repo


def test_strip_trailers_keeps_the_prose():
    body = "Fix the thing.\n\nIt broke: badly.\n\nSigned-off-by: A <a@b>\nCc: c@d\n  continued"
    assert strip_trailers(body) == "Fix the thing.\n\nIt broke: badly."
    assert strip_trailers("Only prose here.") == "Only prose here."


def test_from_git_builds_a_valid_time_split(repo, tmp_path):
    out = tmp_path / "data"
    assert main(["data", "from-git", str(repo), str(out), "--train-per-author", "2", "--min-profile", "2"]) == 0
    splits = {s: load_split(out, s, "commit-subject", require_golds=True) for s in ("train", "dev", "test")}
    # Alice (9 commits with body incl. the side branch) and Bob (6 with body) qualify; Carol (3) does not.
    assert {len(d) for d in splits.values()} == {2 * 2, 2}
    assert len(splits["test"]) == 2 and len(splits["train"]) == 4
    raw = (out / "train_questions.json").read_text() + (out / "test_questions.json").read_text()
    for secret in ("Alice", "alice@", "Bob", "bob@", "Carol", "Signed-off-by", "Reviewed-by", "Merge branch"):
        assert secret not in raw
    assert {ex.user_id for ex in splits["test"].examples} == {"u0000", "u0001"}  # numbered by first commit
    by_user = {s: {ex.user_id: [] for ex in d.examples} for s, d in splits.items()}
    for s, d in splits.items():
        for ex in d.examples:
            by_user[s][ex.user_id].append(ex)
            assert ex.input.startswith("Generate a subject line for the following commit message: ")
            assert ex.gold not in {e["title"] for e in ex.profile}  # no answer in its own profile
            dates = [e["date"] for e in ex.profile]
            assert dates == sorted(dates, reverse=True) and len(ex.profile) >= 2
    alice_test = by_user["test"]["u0000"][0]
    assert alice_test.gold == "alice: side work"  # the latest commit, reached through the merge
    for user, (test_ex,) in by_user["test"].items():
        (dev_ex,) = by_user["dev"][user]
        question_date = lambda ex: max(e["date"] for e in ex.profile)  # noqa: E731
        assert question_date(dev_ex) <= question_date(test_ex)
        assert dev_ex.id.split("-")[1] in {e["id"] for e in test_ex.profile}  # dev precedes test
        for train_ex in by_user["train"][user]:
            assert train_ex.id.split("-")[1] in {e["id"] for e in dev_ex.profile}
    bob_test = by_user["test"]["u0001"][0]
    assert bob_test.gold == "bob: change number 4"
    assert "bob: change number 2" not in {e["title"] for e in bob_test.profile}  # empty body left out
    meta = json.loads((out / "meta.json").read_text())
    assert meta["authors"] == 2 and meta["questions"] == {"train": 4, "dev": 2, "test": 2}


def test_same_history_gives_the_same_dataset(repo, tmp_path):
    cfg = FromGitConfig(train_per_author=1, min_profile=2)
    dataset_from_git(repo, tmp_path / "a", cfg)
    dataset_from_git(repo, tmp_path / "b", cfg)
    for name in ("train_questions.json", "test_outputs.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


def test_errors_say_how_to_fix(repo, tmp_path):
    with pytest.raises(PrlmError, match="lower --min-profile"):
        dataset_from_git(repo, tmp_path / "x", FromGitConfig(min_profile=20))
    with pytest.raises(PrlmError, match="git log failed"):
        dataset_from_git(tmp_path, tmp_path / "y", FromGitConfig())
    with pytest.raises(PrlmError, match="max_profile"):
        FromGitConfig(min_profile=5, max_profile=2)


CURL_LIKE_BODY = (
    "The parser read one byte past the buffer when the header ended early.\n\n"
    "Reported-by: Jane Roe <jane.roe@example.net>\n"
    "Bisected by the fuzzers.\n\n"
    "Suggested-by: Max Dymond\n"
    "Fixes #1234\n"
    "Closes #5678"
)


def test_person_lines_go_wherever_they_sit():
    cfg = FromGitConfig()
    cleaned = scrub_people(CURL_LIKE_BODY, cfg.person_keys)
    assert "Jane" not in cleaned and "Max Dymond" not in cleaned and "@" not in cleaned
    # Lines that name no one stay: the prose, issue references.
    for kept in ("read one byte past", "Bisected by the fuzzers.", "Fixes #1234", "Closes #5678"):
        assert kept in cleaned
    # An e-mail address in any `Key: value` line goes, whatever the key.
    assert scrub_people("Text.\nPing: someone@example.org\nMore text.", ["*-by"]) == "Text.\nMore text."


def test_person_trailer_keys_are_configurable():
    body = "Prose line.\nPaired-with: Ann Other\nFixes #1"
    assert "Ann Other" in scrub_people(body, FromGitConfig().person_keys)
    custom = FromGitConfig(person_trailers="*-by, Paired-with")
    assert scrub_people(body, custom.person_keys) == "Prose line.\nFixes #1"
    with pytest.raises(PrlmError, match="person_trailers"):
        FromGitConfig(person_trailers=" , ")


@pytest.fixture
def reapplied_repo(tmp_path):
    """Dana: 9 commits, every one the same change re-applied (so every profile would be
    empty once re-applied commits are removed); Erin: 9 ordinary commits whose bodies
    credit people the way curl's do."""
    repo = tmp_path / "reapplied"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    dana, erin = ("Dana Dev", "dana@example.org"), ("Erin Ops", "erin@example.org")
    index = 0
    for day in range(1, 10):
        _commit(repo, index, dana, "dana: bump the version", f"Bump to 1.{day} for the release.", day)
        _commit(repo, index + 1, erin, f"erin: fix parser case {day}",
                f"Case {day} of the header parser.\n\n" + CURL_LIKE_BODY, day)
        index += 2
    return repo


def test_from_git_writes_only_what_data_check_accepts(reapplied_repo, tmp_path):
    out = tmp_path / "data"
    assert main(["data", "from-git", str(reapplied_repo), str(out)]) == 0  # default options
    assert main(["data", "check", str(out), "--task", "commit-subject"]) == 0
    splits = {s: load_split(out, s, "commit-subject", require_golds=True) for s in ("train", "dev", "test")}
    questions = [ex for d in splits.values() for ex in d.examples]
    assert questions and all(len(ex.profile) >= FromGitConfig().min_profile for ex in questions)
    assert {ex.user_id for ex in questions} == {"u0000"}  # Erin only; Dana has no question left
    assert all(ex.gold.startswith("erin:") for ex in questions)
    raw = "".join(p.read_text() for p in out.glob("*.json"))
    for secret in ("Jane", "Roe", "Max Dymond", "@example", "Reported-by", "Suggested-by", "Dana", "Erin"):
        assert secret not in raw
    assert "Closes #5678" in raw  # what names no one is kept


# --- issue 24: no personal data, subjects as people write them ----------------------

TMUX_LIKE = ("Add a format for the pane's cursor colour. From Jane Q. Public in GitHub issue 5025.\n\n"
             "Fix a crash when the client detaches, from Jean-Luc O'Neil.\n"
             "Copied from Python stdlib, as before.")
NUMPY_LIKE = ("BUG: fix overflow in np.sum\n\nThanks to Max Mustermann for the report; see gh-1234 and @octo-cat's "
              "review.\nUse @pytest.mark.slow for the big case.\nReported-by: Ann Other <ann@example.org>")
SCIPY_LIKE = ("JOHN DOE <jdoe@example.com> | 2006-09-11 12:00:00\nImprove the plot1d method.\n"
              "---John M. Doe <jdoe@example.com>\nMail questions to lists@scipy.org please.")


def test_credits_addresses_and_handles_go_from_bodies():
    cfg = FromGitConfig()
    tmux = scrub_people(TMUX_LIKE, cfg.person_keys, cfg.credits)
    assert tmux == ("Add a format for the pane's cursor colour.\n\nFix a crash when the client detaches.\n"
                    "Copied from Python stdlib, as before.")
    numpy = scrub_people(strip_trailers(NUMPY_LIKE), cfg.person_keys, cfg.credits)
    assert "Max" not in numpy and "octo-cat" not in numpy and "Ann" not in numpy and "@example" not in numpy
    assert "@someone's review" in numpy and "@pytest.mark.slow" in numpy  # a decorator is no handle
    scipy = scrub_people(SCIPY_LIKE, cfg.person_keys, cfg.credits)
    assert scipy == "Improve the plot1d method.\nMail questions to please."
    curl = scrub_people(CURL_LIKE_BODY, cfg.person_keys, cfg.credits)
    assert "Jane" not in curl and "Max Dymond" not in curl and "@" not in curl


def test_credit_phrases_are_configurable():
    body = "Fix the parser. Paired with Ann Other."
    assert scrub_people(body, FromGitConfig().person_keys, FromGitConfig().credits) == body
    custom = FromGitConfig(credit_phrases="paired with")
    assert scrub_people(body, custom.person_keys, custom.credits) == "Fix the parser."


def test_wrapped_first_paragraphs_give_their_first_line_as_subject():
    message = ("Add a new option to resize panes which many people have asked\nfor over the years.\n\n"
               "The body.")
    assert split_message(message) == ("Add a new option to resize panes which many people have asked",
                                      "for over the years.\n\nThe body.", True)
    assert split_message("One line subject\n\nBody.") == ("One line subject", "Body.", False)


@pytest.fixture
def tmux_like_repo(tmp_path):
    """Fay: 8 commits whose first paragraph is wrapped and whose bodies credit people; every address in
    a subject; the last one's subject a paragraph of 30 words."""
    repo = tmp_path / "tmuxish"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    fay = ("Fay Writer", "fay@example.org")
    for day in range(1, 9):
        subject = (f"Change {day} of the status line [fay @ fay@example.org-2006] so that it wraps\n"
                   "properly when the terminal is narrow")
        if day == 8:
            subject = " ".join(["word"] * 30)
        _commit(repo, day, fay, subject, f"From Gil Helper in GitHub issue {day}.\n\nDetails of change {day}.", day)
    return repo


@pytest.mark.parametrize("mode", ["first-line", "skip"])
def test_from_git_data_hold_no_address_name_or_paragraph_subject(tmux_like_repo, tmp_path, mode, capsys):
    out = tmp_path / mode
    argv = ["data", "from-git", str(tmux_like_repo), str(out), "--train-per-author", "0", "--wrapped-subject", mode]
    if mode == "skip":  # every subject is wrapped or a paragraph: no question is left, and the error says why
        assert main(argv) == 2
        assert "--wrapped-subject" in capsys.readouterr().err
        return
    assert main(argv) == 0
    text = "".join(p.read_text() for p in out.glob("*_*.json"))
    assert "@example.org" not in text and "Gil" not in text and "Helper" not in text
    questions = [ex for s in ("train", "dev", "test") for ex in load_split(out, s, "commit-subject").examples]
    assert all(len(ex.gold.split()) <= 25 for ex in questions)  # the 30-word subject is no question
    assert questions and all(ex.gold.endswith("so that it wraps") for ex in questions)
    assert all("properly when the terminal is narrow" in ex.input for ex in questions)
