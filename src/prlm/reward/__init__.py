"""The contrastive personalization reward model (PrLM's third reward term).

Modules, one stage each:

* :mod:`prlm.reward.pairs`: preference pairs from the policy's own answers
  (with the retrieved profile = chosen, without = rejected), resumable JSONL.
* :mod:`prlm.reward.style_pairs`: pairs from real outputs, no generation
  (own vs other user, preamble, sign-off, casing), with the user's past
  outputs as context; the paper's pairs from two evaluation runs.
* :mod:`prlm.reward.users`: the hash partition of users (reward-model
  training, epoch choice, held-out; the judge trains on the held-out users).
* :mod:`prlm.reward.judge`: the judge's scores and the model-free style
  measure (area prefix, casing, length) of an evaluation run's answers, and
  the paired comparison of two runs by both (`judge-compare`).
* :mod:`prlm.reward.model`: the ([context] input, answer) scorer, Bradley-Terry training
  through TRL's ``RewardTrainer``, save/load, batched scoring, evaluation.
* :mod:`prlm.reward.personalization`: :class:`PersonalizationReward`, the
  picklable callable with TRL's reward signature.
* :mod:`prlm.reward.cli`: ``prlm rm pairs|style-pairs|paper-pairs|train|eval|score|judge|judge-compare``.

Nothing here loads a model at import time.
"""
