"""Data: prompts and tags, QA examples and datasets (tfds without TensorFlow), the world."""

from sr2.data.examples import MIX_NAME, QA_DATASETS, Paragraph, QAExample, read_qa_jsonl
from sr2.data.prompts import (
  ACTOR_INSTRUCTION,
  ANSWER_CLOSE,
  ANSWER_OPEN,
  INFO_CLOSE,
  INFO_OPEN,
  JUDGE_ANSWER_PREFIX,
  REFINER_QUESTION,
  SEARCH_CLOSE,
  SEARCH_OPEN,
  STOP_STRINGS,
  THINK_CLOSE,
  THINK_OPEN,
  actor_prompt,
  cot_prompt,
  direct_prompt,
  judge_prompt,
  parse_judge_count,
  rag_prompt,
  refiner_followup,
  refiner_prompt,
  wrap_information,
)
from sr2.data.trajectories import (
  CORRUPTIONS,
  Plan,
  PlanStep,
  render_steps,
  render_trajectory,
)
from sr2.data.world import World, WorldConfig, WorldQuestion, build_world
from sr2.data.world_entities import Entity

# The tfds datasets need tensorflow-datasets; they load on first use, so importing the
# prompts, the world or the examples does not import tfds.
_QA_NAMES = ("ALL_NAMES", "FlashragQa", "MultihopQa", "QASplit", "load_split", "prepare")


def __getattr__(name: str):
  if name in _QA_NAMES:
    from sr2.data import qa

    return getattr(qa, name)
  raise AttributeError(f"module 'sr2.data' has no attribute {name!r}")


__all__ = [
  "ACTOR_INSTRUCTION",
  "ALL_NAMES",
  "ANSWER_CLOSE",
  "ANSWER_OPEN",
  "CORRUPTIONS",
  "INFO_CLOSE",
  "INFO_OPEN",
  "JUDGE_ANSWER_PREFIX",
  "MIX_NAME",
  "QA_DATASETS",
  "REFINER_QUESTION",
  "SEARCH_CLOSE",
  "SEARCH_OPEN",
  "STOP_STRINGS",
  "THINK_CLOSE",
  "THINK_OPEN",
  "Entity",
  "FlashragQa",
  "MultihopQa",
  "Paragraph",
  "QAExample",
  "QASplit",
  "PlanStep",
  "Plan",
  "World",
  "WorldConfig",
  "WorldQuestion",
  "actor_prompt",
  "cot_prompt",
  "direct_prompt",
  "rag_prompt",
  "build_world",
  "judge_prompt",
  "load_split",
  "parse_judge_count",
  "prepare",
  "read_qa_jsonl",
  "refiner_followup",
  "refiner_prompt",
  "render_steps",
  "render_trajectory",
  "wrap_information",
]
