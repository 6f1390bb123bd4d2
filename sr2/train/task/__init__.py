"""What a training run learns on (`Task`), built from an experiment config.

Two sources (`config.data.source`): `world`, the synthetic world (`task/world.py`), and
`qa`, real QA files with BM25 over their paragraphs or a corpus (`task/qa.py`).
"""

from __future__ import annotations

from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError, from_config
from sr2.train.task.core import JudgeCase, Question, Task
from sr2.train.task.qa import qa_task
from sr2.train.task.world import world_model_config, world_task

SOURCES = ("world", "qa")

__all__ = [
  "SOURCES",
  "JudgeCase",
  "Question",
  "Task",
  "build_task",
  "qa_task",
  "world_model_config",
  "world_task",
]


def build_task(config) -> Task:
  """The task of an experiment config: the world's or the QA files'."""
  source = config.data.get("source", "world")
  if source not in SOURCES:
    raise ConfigError(f"config.data.source={source!r}; expected one of {SOURCES}")
  rollout = from_config(RolloutConfig, config.rollout, "config.rollout")
  return world_task(config, rollout) if source == "world" else qa_task(config, rollout)
