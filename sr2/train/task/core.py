"""What a run learns on: its questions, retriever, tokenizer and model (`Task`).

`sr2.train.task.world` builds the synthetic world's task and `sr2.train.task.qa` the
task of real QA files; `sr2.train.task.build_task` picks one by `config.data.source`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

from sr2 import models
from sr2.agent.oracle import GoldPlan, oracle_judge
from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError
from sr2.data import actor_prompt
from sr2.data.prompts import chat_of
from sr2.retrieval import format_documents
from sr2.train import sft


@dataclasses.dataclass(frozen=True)
class Question:
  """One question with what the rewards need: gold answers and gold supporting titles."""

  id: str
  question: str
  golds: tuple[str, ...]
  gold_titles: tuple[str, ...] = ()
  hops: int = 0  # 0 when unknown


@dataclasses.dataclass(frozen=True)
class JudgeCase:
  """A rendered trajectory whose first flawed step is known (0 = none): Trimmer accuracy."""

  question: str
  steps: tuple[tuple[str, str | None], ...]
  flawed_step: int
  kind: str


@dataclasses.dataclass
class Task:
  """Everything a run needs besides params. `init_params(seed)` gives the starting params."""

  splits: dict[str, Sequence[Question]]  # lists, or `SplitQuestions` read on access
  retriever: Any
  tokenizer: Any
  model: models.ModelConfig
  rollout: RolloutConfig
  init_params: Callable[[int], Any]
  sft_examples: list[sft.Example | sft.Choice] = dataclasses.field(default_factory=list)
  judge_cases: list[JudgeCase] = dataclasses.field(default_factory=list)
  # Question text -> its gold plan, where known (the world): what the oracle refiner reads.
  gold_plans: dict[str, GoldPlan] = dataclasses.field(default_factory=dict)
  # Whether `init_params` loads a checkpoint (the warm start trains from it) rather than
  # initialising at random (the warm start trains from the run's own fresh state).
  pretrained: bool = False
  # What building the warm start's demonstrations kept and dropped (the run's summary).
  sft_notes: dict[str, Any] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> Sequence[Question]:
    if name not in self.splits:
      raise ConfigError(f"no split {name!r}; this task has {sorted(self.splits)}")
    return self.splits[name]

  def judge_fn(self, refiner) -> Callable | None:
    """What judges in place of the policy (`refine(judge_fn=)`): the oracle, or None."""
    if refiner.judge != "oracle":
      return None
    if not self.gold_plans:
      raise ConfigError("config.refiner.judge='oracle' needs the world's gold plans (tiny_world)")
    return oracle_judge(self.gold_plans, self.tokenizer)

  def prompt_ids(self, question: Question) -> list[int]:
    """The Actor's prompt, through the chat template where the tokenizer has one (as the
    evaluation harness builds it)."""
    return self.tokenizer.encode(actor_prompt(question.question, chat_of(self.tokenizer)))

  def search_text(self, query: str) -> str:
    """The documents one search returns, formatted and capped as the rollout appends them."""
    hits = self.retriever.search([query], k=self.rollout.top_k)[0]
    return format_documents(hits, tokenizer=self.tokenizer, max_tokens=self.rollout.max_obs_tokens)
