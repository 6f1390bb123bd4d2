"""The training reward of a run (config.reward): outcome EM, optionally gated process reward.

process = "none"     R = EM                       (Search-R1)
process = "lexical"  R = EM · (1 + r_process)     (sr2's default judge)
process = "llm"      the same with the paper's judge prompt run by `judge_source` (a
                     named model, HF dir or .gguf; it needs a tokenizer)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from sr2.agent.rollout import Trajectory
from sr2.configlib import check_choices
from sr2.rewards import exact_match
from sr2.rewards.hybrid import hybrid_reward
from sr2.rewards.process import Collection, JudgeItem, LexicalJudge, ProcessConfig, make_judge
from sr2.train.task import Question, Task

PROCESS = ("none", "lexical", "llm")


@dataclasses.dataclass(frozen=True)
class RewardConfig:
  """config.reward (see the module docstring)."""

  process: str = "none"
  judge_source: str = "smollm2-135m-instruct"  # llm judge model
  judge_max_new_tokens: int = 64  # llm judge reply budget

  def __post_init__(self):
    check_choices(self, "reward", {"process": PROCESS}, error=ValueError)
    if self.judge_max_new_tokens < 1:
      raise ValueError(f"reward.judge_max_new_tokens={self.judge_max_new_tokens}; expected >= 1")


def judge_items(questions: Sequence[Question], trajs: Sequence[Trajectory]) -> list[JudgeItem]:
  """What the process judge sees of each trajectory: its searches' ids and documents."""
  return [
    JudgeItem(
      q.question,
      q.golds,
      tuple(
        Collection(tuple(ids), text) for ids, text in zip(t.doc_ids, t.observations, strict=True)
      ),
      q.gold_titles,
    )
    for q, t in zip(questions, trajs, strict=True)
  ]


def _llm_judge(cfg: RewardConfig):
  from sr2 import models

  config = ProcessConfig(judge="llm", max_new_tokens=cfg.judge_max_new_tokens)
  return make_judge(config, models.load(cfg.judge_source))


def make_reward_fn(cfg: RewardConfig, task: Task):
  """fn(questions, trajectories) -> (outcome [N], process [N], total [N]) as float arrays."""
  judge = None
  if cfg.process == "lexical":
    judge = LexicalJudge()
  elif cfg.process == "llm":
    judge = _llm_judge(cfg)

  def reward_fn(questions: Sequence[Question], trajs: Sequence[Trajectory]):
    outcome = np.asarray(
      [exact_match(t.answer, q.golds) for q, t in zip(questions, trajs, strict=True)], np.float64
    )
    if judge is None:
      return outcome, np.zeros_like(outcome), outcome
    process = judge(judge_items(questions, trajs), outcome)
    return outcome, process, hybrid_reward(outcome, process)

  return reward_fn
