"""Rewards: QA answer metrics, the outcome reward, the process reward and the hybrid."""

from sr2.rewards.hybrid import hybrid_reward, reward_parts
from sr2.rewards.process import (
  JUDGES,
  Collection,
  Judge,
  JudgeItem,
  LexicalJudge,
  LLMJudge,
  ProcessConfig,
  Verdict,
  density,
  lexical_labels,
  make_judge,
  process_rewards,
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
  "JUDGES",
  "Collection",
  "Judge",
  "JudgeItem",
  "LLMJudge",
  "LexicalJudge",
  "ProcessConfig",
  "Verdict",
  "cover_em",
  "density",
  "exact_match",
  "extract_answer",
  "f1",
  "hybrid_reward",
  "lexical_labels",
  "make_judge",
  "normalize_answer",
  "outcome_reward",
  "process_rewards",
  "reward_parts",
]
