"""Rewards: QA answer metrics, the outcome reward, the process reward and the hybrid."""

from sr2.rewards.hybrid import hybrid_reward
from sr2.rewards.process import (
  Collection,
  JudgeItem,
  LexicalJudge,
  LLMJudge,
  density,
  lexical_labels,
)
from sr2.rewards.qa import (
  cover_em,
  exact_match,
  extract_answer,
  f1,
  normalize_answer,
  outcome_reward,
)

__all__ = [
  "Collection",
  "JudgeItem",
  "LLMJudge",
  "LexicalJudge",
  "cover_em",
  "density",
  "exact_match",
  "extract_answer",
  "f1",
  "hybrid_reward",
  "lexical_labels",
  "normalize_answer",
  "outcome_reward",
]
