"""The contrastive personalization reward model (PrLM's third reward term).

Modules, one stage each:

* :mod:`prlm.reward.pairs`: preference pairs from the policy's own answers
  (with the retrieved profile = chosen, without = rejected), resumable JSONL.
* :mod:`prlm.reward.model`: the (input, answer) scorer, Bradley-Terry training
  through TRL's ``RewardTrainer``, save/load, batched scoring, evaluation.
* :mod:`prlm.reward.personalization`: :class:`PersonalizationReward`, the
  picklable callable with TRL's reward signature.
* :mod:`prlm.reward.cli`: ``prlm rm pairs|train|eval|score``.

Nothing here loads a model at import time.
"""
