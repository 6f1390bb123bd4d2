"""The synthetic world's task (`config.data.source="world"`).

A BPE tokenizer trained on the world's text, a small model from `config.model` initialised
at random, and the warm start's SFT examples: the gold trajectories (with
`config.data.stop_short`, a share of multi-hop demonstrations answers one hop early) and,
with `config.data.judge_demos`, the Meta-Refiner's judgements of gold and corrupted plans.
Corrupted dev trajectories with a known first flawed step (`JudgeCase`) measure the gate
and the Trimmer; the gold plans drive the oracle refiner.
"""

from __future__ import annotations

import jax

from sr2 import models
from sr2.agent import refiner_prompts
from sr2.agent.oracle import GoldPlan
from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError, from_config
from sr2.data import WorldConfig, actor_prompt, build_world
from sr2.data.trajectories import render_steps
from sr2.data.world_tokenizer import train_tokenizer
from sr2.retrieval import BM25Index, format_documents
from sr2.train import sft
from sr2.train.task.core import JudgeCase, Question, Task


def world_model_config(config, vocab_size: int) -> models.ModelConfig:
  """The world's model: the fields of `config.model` with the tokenizer's vocabulary."""
  fields = {k: v for k, v in config.model.to_dict().items() if k != "source"}
  return models.ModelConfig(**{**fields, "vocab_size": vocab_size})


def world_task(config, rollout: RolloutConfig) -> Task:
  """The world's task (see the module docstring)."""
  stop_short = config.data.get("stop_short", 0.0)
  if not isinstance(stop_short, int | float) or not 0 <= stop_short <= 1:
    raise ConfigError(f"config.data.stop_short must be in [0, 1], got {stop_short!r}")
  world = build_world(from_config(WorldConfig, config.data.world, "config.data.world"))
  index = BM25Index.build(world.passage_dicts())
  raw_docs = lambda q: format_documents(index.search([q], k=rollout.top_k)[0])
  train = world.split("train")
  gold_text = [
    "".join(a + (o or "") for a, o in render_steps(q.gold, raw_docs))
    for q in train[: config.data.tokenizer_gold_texts]
  ]
  texts = world.texts() + [actor_prompt(q.question) for q in train] + gold_text
  tok = train_tokenizer(texts, config.data.vocab_size)
  model = world_model_config(config, len(tok))
  titles = {pid: title for pid, title, _ in world.passages}

  def question(q) -> Question:
    gold = tuple(titles[s.gold_passage_id] for s in q.gold.steps if s.gold_passage_id)
    return Question(q.id, q.question, (q.answer,), gold, q.hops)

  task = Task(
    splits={s: [question(q) for q in world.split(s)] for s in ("train", "dev", "test")},
    retriever=index,
    tokenizer=tok,
    model=model,
    rollout=rollout,
    init_params=lambda seed: models.init_params(model, jax.random.key(seed)),
  )
  search = task.search_text
  task.sft_examples = [_demonstration(q, tok, search, stop_short) for q in train]
  task.sft_examples += _judgements(config, train, tok, search)
  cases = []
  for q in world.split("dev")[: config.data.get("judge_cases", 64)]:
    for t in (q.gold, *q.corrupted):
      cases.append(JudgeCase(q.question, tuple(render_steps(t, search)), t.flawed_step, t.kind))
  task.judge_cases = cases
  task.gold_plans = _gold_plans(world)
  return task


def _gold_plans(world) -> dict[str, GoldPlan]:
  """Question text -> `GoldPlan` over every split; the same text must mean the same plan."""
  plans: dict[str, GoldPlan] = {}
  for split in ("train", "dev", "test"):
    for q in world.split(split):
      queries = tuple(s.query for s in q.gold.steps if s.query is not None)
      plan = GoldPlan(queries, (q.answer,))
      if plans.setdefault(q.question, plan) != plan:
        raise ValueError(f"two world questions read {q.question!r} with different gold plans")
  return plans


def _judgements(config, train, tok, search) -> list[sft.Example]:
  """Judgement demonstrations (`config.data.judge_demos` train questions, two each).

  Each shows the Meta-Refiner's task on a question's gold plan and on one of its corrupted
  plans (the kinds in turn): the refiner prompt in `config.refiner.prompt`'s form over the
  rendered steps, then the digit of the first flawed step (0 for gold), the one token
  trained. A warm start that learns them judges with a measurable precision before RL, as
  a pretrained LLM's judge would; the gate's accuracy is measured on dev questions.
  """
  n = config.data.get("judge_demos", 0)
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ConfigError(f"config.data.judge_demos must be an int >= 0, got {n!r}")
  form = config.get("refiner", {}).get("prompt", "table12")
  with_flaws = [q for q in train if q.corrupted]
  out = []
  for i, q in enumerate(with_flaws[:n]):
    for plan in (q.gold, q.corrupted[i % len(q.corrupted)]):
      steps = render_steps(plan, search)
      ids = refiner_prompts.prompt_ids(tok, q.question, steps, form)
      target = refiner_prompts.choice_ids(tok, len(steps))[plan.flawed_step]
      out.append(sft.example_from_segments(ids, [([target], True)]))
  return out


def _demonstration(q, tok, search, stop_short: float) -> sft.Example | sft.Choice:
  """The warm start's demonstration of a train question.

  The gold trajectory, except that on a multi-hop question a `stop_short` share of draws
  answers one hop early with the bridge entity: a demonstrator with a systematic
  decision error that only the outcome reward can correct.
  """
  prompt = tok.encode(actor_prompt(q.question))
  gold = sft.trajectory_example(prompt, render_steps(q.gold, search), tok)
  if not stop_short or q.stop_short is None:
    return gold
  short = sft.trajectory_example(prompt, render_steps(q.stop_short, search), tok)
  return sft.Choice((gold, short), (1.0 - stop_short, stop_short))
