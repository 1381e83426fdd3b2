"""A deterministic partition of users for the reward models: who trains, who chooses the epoch, who is reported.

Every user id is hashed (sha256 of ``salt|user_id``) to a point in [0, 1); the
point alone decides the user's group, so the same user lands in the same
group in every pairs file, every split and every run, whichever other users
are present (a shuffled split would move users when the set of users changes).

Groups, from the shares in :class:`UserPartition`:

* ``rm-train``: the reward model trains on them;
* ``validation``: both models choose their epoch on them, and nothing is ever
  reported on them;
* ``held-out``: the reward model's figures are reported on them; the *judge*
  (the separate evaluation reward model, :mod:`prlm.reward.judge`) trains on
  them, so that the judge and the reward model share no training user.

For the judge the roles swap: it trains on ``held-out``, chooses its epoch on
``validation`` and is reported on ``rm-train`` (users it never saw).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from prlm import PrlmError

GROUPS = ("rm-train", "validation", "held-out")
ROLES = ("reward", "judge")


@dataclass(frozen=True)
class UserPartition:
    validation_share: float = 0.1
    held_out_share: float = 0.45
    salt: str = "prlm-rm-users"

    def __post_init__(self):
        if not 0 <= self.validation_share < 1 or not 0 <= self.held_out_share < 1:
            raise PrlmError("validation and held-out shares must each be in [0, 1)")
        if self.validation_share + self.held_out_share >= 1:
            raise PrlmError(f"validation_share {self.validation_share} + held_out_share {self.held_out_share} leave "
                            "no user to train on; keep their sum below 1")

    def point(self, user_id: str) -> float:
        digest = hashlib.sha256(f"{self.salt}|{user_id}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2 ** 64

    def group(self, user_id: str) -> str:
        """'rm-train', 'validation' or 'held-out'."""
        p = self.point(str(user_id))
        if p < self.validation_share:
            return "validation"
        if p < self.validation_share + self.held_out_share:
            return "held-out"
        return "rm-train"

    def train_group(self, role: str) -> str:
        """The group a model of `role` ('reward' or 'judge') trains on."""
        if role not in ROLES:
            raise PrlmError(f"unknown role '{role}'; use one of {', '.join(ROLES)}")
        return "rm-train" if role == "reward" else "held-out"

    def report_group(self, role: str) -> str:
        """The group a model of `role` is reported on: the other model's training users."""
        return "held-out" if self.train_group(role) == "rm-train" else "rm-train"

    def split_rows(self, rows: Iterable[dict], role: str = "reward") -> dict[str, list[dict]]:
        """Rows by what a model of `role` does with them: {'train', 'validation', 'report'}."""
        train_group, report_group = self.train_group(role), self.report_group(role)
        parts: dict[str, list[dict]] = {"train": [], "validation": [], "report": []}
        for row in rows:
            group = self.group(str(row["user_id"]))
            if group == train_group:
                parts["train"].append(row)
            elif group == "validation":
                parts["validation"].append(row)
            elif group == report_group:
                parts["report"].append(row)
        return parts

    def as_dict(self) -> dict:
        return {"validation_share": self.validation_share, "held_out_share": self.held_out_share, "salt": self.salt}
