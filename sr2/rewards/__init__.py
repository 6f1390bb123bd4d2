"""Rewards: QA answer metrics and the outcome reward."""

from sr2.rewards.qa import (
  cover_em,
  exact_match,
  extract_answer,
  f1,
  normalize_answer,
  outcome_reward,
)

__all__ = [
  "cover_em",
  "exact_match",
  "extract_answer",
  "f1",
  "normalize_answer",
  "outcome_reward",
]
