"""A deterministic synthetic personalized headline task: the embedded default dataset.

Every user has a latent writing style that shows in each of their headlines,
as *words* (ROUGE lowercases and drops punctuation, so only words count):

- a tag that opens the headline ("Breaking:", "Tech Brief:", ...),
- a sign-off that closes it ("- Report", "| Full Story", ... or none),
- a verb register: the same neutral event ("released") becomes "unveils",
  "launches", "debuts" or "drops" depending on the user,
- a length: short ("{Subject} {verb} {object}") or long (+ "in {place}"),
- and a casing (cosmetic: ROUGE does not see it).

An article is 2-4 template sentences about one event (subject, neutral past
verb, object, place, weekday). The gold headline is `render_headline(event,
style)`: its content words (subject, object, place) are all in the article, so
a model that ignores the profile still scores partially, while the tag,
sign-off and verb synonym never appear in any article: they can only be
learned from the user's past headlines in the profile. Each user also writes
about a few favourite kinds of event (`actions_per_user`), so retrieval finds
past headlines about the same kind of event, showing the user's verb for it.

Splits are time-based (like LaMP_4_time): per user, dates strictly increase
through the profile, then the train, dev and test questions. Everything is a
function of the config: `random.Random` instances seeded from strings (SHA-512
based, stable across processes), never the global RNG, never `hash()`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import random
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from prlm import PrlmError
from prlm.data.lamp import SPLITS, Example, save_split
from prlm.data.tasks import get_task
from prlm.io import atomic_write_json, claim_output_dir

TASK_NAME = "synthetic"

# --- The user-style vocabulary. None of these words occur in any article. ---

TAGS = (
    "Breaking:",
    "Opinion:",
    "Local:",
    "Tech Brief:",
    "Update:",
    "Watch:",
    "Explainer:",
    "Spotlight:",
    "Roundup:",
    "Dispatch:",
    "Bulletin:",
    "Insider:",
)
SUFFIXES = ("", "- Report", "| Full Story", "(Live Coverage)", "[Exclusive]", "- Developing")
REGISTERS = ("formal", "punchy", "dramatic", "casual")
LENGTHS = ("short", "long")
CASINGS = ("title", "sentence", "shout")


@dataclass(frozen=True)
class Action:
    past: str
    """The neutral verb the article uses."""
    verbs: tuple[str, str, str, str]
    """The headline verb per register (REGISTERS order)."""
    objects: tuple[str, ...]


ACTIONS: dict[str, Action] = {
    "release": Action(
        "released",
        ("unveils", "launches", "debuts", "drops"),
        ("solar battery", "budget smartphone", "delivery drone", "language app", "electric scooter"),
    ),
    "open": Action(
        "opened",
        ("inaugurates", "opens", "christens", "throws open"),
        ("research center", "flagship store", "riverside factory", "training campus", "data center"),
    ),
    "sign": Action(
        "signed",
        ("finalizes", "inks", "seals", "lands"),
        ("supply deal", "sponsorship deal", "licensing agreement", "research pact", "shipping contract"),
    ),
    "win": Action(
        "won",
        ("secures", "claims", "clinches", "bags"),
        ("regional title", "design award", "innovation prize", "city marathon", "championship final"),
    ),
    "acquire": Action(
        "acquired",
        ("purchases", "buys", "snaps up", "takes over"),
        ("rival startup", "bakery chain", "software studio", "logistics firm", "robotics maker"),
    ),
    "cancel": Action(
        "cancelled",
        ("terminates", "scraps", "axes", "ditches"),
        ("planned merger", "summer festival", "stadium project", "bond sale", "expansion plan"),
    ),
    "hire": Action(
        "hired",
        ("appoints", "taps", "names", "recruits"),
        ("chief executive", "head coach", "finance director", "design lead", "chief scientist"),
    ),
    "expand": Action(
        "expanded",
        ("extends", "boosts", "widens", "beefs up"),
        ("delivery network", "bus service", "youth program", "cloud platform", "recycling scheme"),
    ),
}

# --- The article vocabulary. ---

SUBJECTS = (
    "Northwind Labs",
    "Harbor City Council",
    "Bluefin Robotics",
    "Riverside United",
    "Summit Bank",
    "Orchid Health",
    "Granite Motors",
    "Maple University",
    "Pinecrest Foods",
    "Vantage Air",
    "Cobalt Games",
    "Lakeside Hospital",
)
PLACES = (
    "Lisbon", "Denver", "Osaka", "Nairobi", "Leeds", "Porto",
    "Austin", "Lyon", "Perth", "Quebec", "Seville", "Utrecht",
)  # fmt: skip
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
LEADS = (
    "{subject} {past} the {object} in {place} on {weekday}.",
    "On {weekday}, {subject} {past} the {object} in {place}.",
    "In {place} on {weekday}, {subject} {past} the {object}.",
)
FILLERS = (
    "A spokesperson for {subject} said the plan had taken {months} months to prepare.",
    "Reaction from residents of {place} was {mood}.",
    "The organization expects the change to affect hundreds of customers.",
    "Observers called the move {adjective} for the region.",
    "Further details are expected in the coming weeks.",
    "The {object} had been discussed at public meetings since spring.",
    "It was the {ordinal} such move by {subject} this year.",
)
MOODS = ("cautious", "warm", "mixed", "enthusiastic", "quiet", "skeptical")
ADJECTIVES = ("important", "overdue", "bold", "risky", "modest", "surprising")
ORDINALS = ("second", "third", "fourth")
START_YEARS = (2015, 2019)
"""Each user's first profile date falls in these years (inclusive)."""
MAX_GAP_DAYS = 21
MAX_USERS = len(TAGS) * len(SUFFIXES) * len(REGISTERS) * len(LENGTHS)


def _ints(value, name: str, size: int) -> tuple[int, ...]:
    if isinstance(value, str):  # from the command line: "4,1,1"
        try:
            value = tuple(int(v) for v in value.split(","))
        except ValueError:
            raise PrlmError(f"{name} must be {size} comma-separated integers (train,dev,test), got "
                            f"{value!r}") from None
    if not isinstance(value, (tuple, list)) or len(value) != size:
        raise PrlmError(f"{name} must be {size} integers (train, dev, test), got {value!r}")
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise PrlmError(f"{name} must be non-negative integers (train, dev, test), got {value!r}")
    return tuple(value)


@dataclass
class SyntheticConfig:
    num_users: int = field(
        default=40, metadata={"help": f"Users, each with a distinct latent style (1..{MAX_USERS})."}
    )
    profile_size: int = field(
        default=8, metadata={"help": "Past articles with headlines in each user's profile (at least 1)."}
    )
    questions_per_user: tuple[int, int, int] = field(
        default=(4, 1, 1),
        metadata={"help": "Questions per user in the train, dev and test splits, in time order."},
    )
    actions_per_user: int = field(
        default=3,
        metadata={"help": f"Kinds of event a user writes about (1..{len(ACTIONS)}); fewer kinds means "
                  "the profile shows the user's verb for the question's event more often."},
    )
    seed: int = field(default=0, metadata={"help": "Random seed: the same seed gives the same dataset."})

    def __post_init__(self) -> None:
        for name in ("num_users", "profile_size", "actions_per_user", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise PrlmError(f"{name} must be an integer, got {value!r}")
        if not 1 <= self.num_users <= MAX_USERS:
            raise PrlmError(
                f"num_users must be between 1 and {MAX_USERS} (the number of distinct styles), "
                f"got {self.num_users}"
            )
        if self.profile_size < 1:
            raise PrlmError(f"profile_size must be at least 1 (a profile to read), got {self.profile_size}")
        self.questions_per_user = _ints(self.questions_per_user, "questions_per_user", len(SPLITS))
        if sum(self.questions_per_user) < 1:
            raise PrlmError("questions_per_user must ask at least one question per user, e.g. (4, 1, 1)")
        if not 1 <= self.actions_per_user <= len(ACTIONS):
            raise PrlmError(
                f"actions_per_user must be between 1 and {len(ACTIONS)}, got {self.actions_per_user}"
            )
        need = self.profile_size + sum(self.questions_per_user)
        capacity = self.events_capacity
        if need > capacity:
            raise PrlmError(
                f"profile_size + questions per user = {need} exceeds the {capacity} distinct events a user "
                f"can have with actions_per_user={self.actions_per_user}; lower profile_size or "
                "questions_per_user, or raise actions_per_user"
            )

    @property
    def events_capacity(self) -> int:
        objects = min(len(a.objects) for a in ACTIONS.values())
        return len(SUBJECTS) * self.actions_per_user * objects

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


@dataclass(frozen=True)
class UserStyle:
    user_id: str
    tag: str
    suffix: str
    register: str
    length: str
    casing: str
    actions: tuple[str, ...]
    """The kinds of event (ACTIONS keys) this user writes about."""

    def verb(self, action: str) -> str:
        return ACTIONS[action].verbs[REGISTERS.index(self.register)]


@dataclass(frozen=True)
class Event:
    subject: str
    action: str
    object: str
    place: str
    weekday: str
    date: str
    lead: int
    fillers: tuple[int, ...]
    months: int
    mood: str
    adjective: str
    ordinal: str


def user_id(index: int) -> str:
    return f"u{index:03d}"


def _rng(seed: int, *parts) -> random.Random:
    # A str seed goes through SHA-512: stable across runs and processes.
    return random.Random(":".join(["prlm-synthetic", str(seed), *map(str, parts)]))


def user_style(user: str | int, seed: int = 0, actions_per_user: int = 3) -> UserStyle:
    """The latent style of a user: a function of the seed and the user's index only.

    Tags go round-robin over a seeded order of TAGS, so the first len(TAGS)
    users all have different tags; users sharing a tag differ in the rest.
    """
    index = int(user[1:]) if isinstance(user, str) else user
    if not 0 <= index < MAX_USERS:
        raise PrlmError(f"user index must be between 0 and {MAX_USERS - 1}, got {user!r}")
    rng = _rng(seed, "styles")
    tags = list(TAGS)
    rng.shuffle(tags)
    combos = list(itertools.product(SUFFIXES, REGISTERS, LENGTHS))
    group, rank = index % len(tags), index // len(tags)
    for _ in range(group + 1):
        order = combos[:]
        rng.shuffle(order)
    suffix, register, length = order[rank]
    own = _rng(seed, "user", index)
    return UserStyle(
        user_id=user_id(index),
        tag=tags[group],
        suffix=suffix,
        register=register,
        length=length,
        casing=own.choice(CASINGS),
        actions=tuple(own.sample(sorted(ACTIONS), actions_per_user)),
    )


def _cap(words: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in words.split())


def render_headline(event: Event, style: UserStyle) -> str:
    """The gold headline: the event's content in the user's style."""
    verb, obj = style.verb(event.action), event.object
    if style.casing != "sentence":
        verb, obj = _cap(verb), _cap(obj)
    tag = style.tag.upper() if style.casing == "shout" else style.tag
    parts = [tag, event.subject, verb, obj]
    if style.length == "long":
        parts += ["in", event.place]
    if style.suffix:
        parts.append(style.suffix)
    return " ".join(parts)


def render_article(event: Event) -> str:
    values = dict(
        subject=event.subject,
        past=ACTIONS[event.action].past,
        object=event.object,
        place=event.place,
        weekday=event.weekday,
        months=event.months,
        mood=event.mood,
        adjective=event.adjective,
        ordinal=event.ordinal,
    )
    sentences = [LEADS[event.lead]] + [FILLERS[i] for i in event.fillers]
    return " ".join(s.format(**values) for s in sentences)


def _user_events(cfg: SyntheticConfig, style: UserStyle, index: int) -> list[Event]:
    """The user's events in date order: profile first, then the questions."""
    rng = _rng(cfg.seed, "events", index)
    count = cfg.profile_size + sum(cfg.questions_per_user)
    # Cycle through the user's kinds of event so each shows up in the profile.
    actions = [style.actions[i % len(style.actions)] for i in range(count)]
    rng.shuffle(actions)
    first = dt.date(START_YEARS[0], 1, 1)
    span = (dt.date(START_YEARS[1], 12, 31) - first).days
    day = first + dt.timedelta(days=rng.randrange(span + 1))
    seen: set[tuple[str, str, str]] = set()
    events = []
    for action in actions:
        while True:  # capacity is checked in SyntheticConfig, so this ends
            subject, obj = rng.choice(SUBJECTS), rng.choice(ACTIONS[action].objects)
            if (subject, action, obj) not in seen:
                seen.add((subject, action, obj))
                break
        day += dt.timedelta(days=rng.randint(1, MAX_GAP_DAYS))
        events.append(
            Event(
                subject=subject,
                action=action,
                object=obj,
                place=rng.choice(PLACES),
                weekday=day.strftime("%A"),
                date=day.isoformat(),
                lead=rng.randrange(len(LEADS)),
                fillers=tuple(rng.sample(range(len(FILLERS)), rng.randint(1, 3))),
                months=rng.randint(2, 18),
                mood=rng.choice(MOODS),
                adjective=rng.choice(ADJECTIVES),
                ordinal=rng.choice(ORDINALS),
            )
        )
    return events


@dataclass
class SyntheticData:
    config: SyntheticConfig
    splits: dict[str, list[Example]]
    styles: dict[str, UserStyle]
    events: dict[str, Event]
    """The event behind every question and profile entry, by id."""


def generate(cfg: SyntheticConfig) -> SyntheticData:
    task = get_task(TASK_NAME)
    splits: dict[str, list[Example]] = {s: [] for s in SPLITS}
    styles, events = {}, {}
    per_split = [(s, n) for s, n in zip(SPLITS, cfg.questions_per_user)]
    for index in range(cfg.num_users):
        style = user_style(index, cfg.seed, cfg.actions_per_user)
        uid = style.user_id
        styles[uid] = style
        timeline = _user_events(cfg, style, index)
        profile = []
        for k, event in enumerate(timeline[: cfg.profile_size]):
            pid = f"synth-{uid}-p{k:03d}"
            events[pid] = event
            title = render_headline(event, style)
            profile.append({"id": pid, "text": render_article(event), "title": title, "date": event.date})
        questions = iter(timeline[cfg.profile_size :])
        for split, n in per_split:
            for _ in range(n):
                event = next(questions)
                qid = f"synth-{split}-{len(splits[split]):05d}"
                events[qid] = event
                splits[split].append(
                    Example(
                        id=qid,
                        user_id=uid,
                        input=task.input_prefix + render_article(event),
                        profile=[dict(e) for e in profile],
                        gold=render_headline(event, style),
                    )
                )
    return SyntheticData(config=cfg, splits=splits, styles=styles, events=events)


def make_synthetic(
    num_users: int = 40,
    profile_size: int = 8,
    questions_per_user: tuple[int, int, int] = (4, 1, 1),
    seed: int = 0,
    actions_per_user: int = 3,
) -> dict[str, list[Example]]:
    """The train, dev and test examples; the same arguments give the same data."""
    cfg = SyntheticConfig(
        num_users=num_users,
        profile_size=profile_size,
        questions_per_user=questions_per_user,
        actions_per_user=actions_per_user,
        seed=seed,
    )
    return generate(cfg).splits


def write_synthetic(
    out_dir: str | Path,
    num_users: int = 40,
    profile_size: int = 8,
    questions_per_user: tuple[int, int, int] = (4, 1, 1),
    seed: int = 0,
    actions_per_user: int = 3,
) -> Path:
    """Write the three splits (LaMP flat layout) and `meta.json`; returns `out_dir`."""
    cfg = SyntheticConfig(
        num_users=num_users,
        profile_size=profile_size,
        questions_per_user=questions_per_user,
        actions_per_user=actions_per_user,
        seed=seed,
    )
    out_dir = claim_output_dir(out_dir, "prlm data synth")
    data = generate(cfg)
    task = get_task(TASK_NAME)
    for split in SPLITS:
        save_split(out_dir, split, task, data.splits[split])
    meta = {
        "task": TASK_NAME,
        "generator": "prlm.data.synthetic",
        "config": asdict(cfg),
        "config_help": SyntheticConfig.help(),
        "splits": {s: len(data.splits[s]) for s in SPLITS},
        "users": {uid: asdict(style) for uid, style in data.styles.items()},
        "events": {eid: asdict(event) for eid, event in data.events.items()},
    }
    atomic_write_json(out_dir / "meta.json", meta)
    return out_dir
