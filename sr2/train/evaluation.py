"""Greedy evaluation inside a training run: EM on a split, and the Trimmer's accuracy.

The Actor decodes greedily (the paper's validation decoding). With `use_refiner` the
Meta-Refiner runs too, with argmax cuts (the paper evaluates without it). Trimmer accuracy
(synthetic world only) judges rendered gold and corrupted trajectories whose first flawed
step is known: the gate should accept gold ones and flag the others, and the Trimmer should
name the known step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np

from sr2.agent import rollout
from sr2.agent.refiner import RefinerConfig, judge, refine
from sr2.configlib import check_ints
from sr2.rewards import exact_match
from sr2.sampling import Sampler, SamplingConfig
from sr2.train.task import JudgeCase, Question, Task


@dataclasses.dataclass(frozen=True)
class TrainEvalConfig:
  """Greedy evaluation inside a training run (config.eval)."""

  split: str = "test"  # the split evaluated before and after RL.
  limit: int = 0  # first N questions of that split; 0 = all.
  # rows per rollout call (the last batch is padded, so programs compile once).
  batch_size: int = 64
  every: int = 0  # evaluate on the dev split every N GRPO steps; 0 = never.
  dev_limit: int = 0  # first N dev questions for the periodic evaluation; 0 = all.
  use_refiner: bool = False  # run the Meta-Refiner (argmax cuts) at evaluation too.

  def __post_init__(self):
    check_ints(self, "eval", ("limit", "every", "dev_limit"), minimum=0, error=ValueError)
    check_ints(self, "eval", ("batch_size",), error=ValueError)


def evaluate_policy(
  task: Task,
  params,
  questions: Sequence[Question],
  *,
  batch_size: int,
  max_len: int,
  refiner: RefinerConfig | None = None,
  share: range | None = None,
  gather: Callable[[np.ndarray], np.ndarray] | None = None,
  progress: Callable[[int], object] | None = None,
) -> dict[str, float]:
  """Greedy rollouts: EM overall and per hop count, searches, turns (and revision rate).

  With several processes each rolls out its `share` of `questions` and `gather` brings
  every process's per-question results together (sr2/parallel/hosts.py). `progress` is
  called with the number of questions each batch finished (e.g. a tqdm bar's `update`).
  """
  sampler = Sampler(task.model, task.tokenizer, SamplingConfig(max_len=max_len))
  agent = rollout.Agent(sampler, task.retriever, task.rollout)
  mine = [questions[i] for i in (share if share is not None else range(len(questions)))]
  oracle = task.judge_fn(refiner) if refiner is not None else None  # None: the policy judges
  trajs, revised = [], []
  for i in range(0, len(mine), batch_size):
    chunk = mine[i : i + batch_size]
    prompts = [task.prompt_ids(q) for q in chunk]
    state, records = rollout.run(agent, params, prompts, batch=batch_size)
    if refiner is not None:
      texts = [q.question for q in chunk]
      out = refine(agent, params, state, records, texts, refiner, judge_fn=oracle)
      trajs += out.trajectories
      revised += out.revised.tolist()
    else:
      trajs += rollout.finish(state, records, task.tokenizer)
    if progress is not None:
      progress(len(chunk))
  rows = np.asarray(
    [
      (exact_match(t.answer, q.golds), t.num_searches, t.num_turns)
      for t, q in zip(trajs, mine, strict=True)
    ],
    np.float64,
  ).reshape(-1, 3)
  if gather is not None:
    rows, revised = gather(rows), gather(np.asarray(revised, bool)).tolist()
  em = rows[:, 0]
  hops = np.asarray([q.hops for q in questions])
  out = {
    "em": float(em.mean()),
    "n": len(questions),
    "searches": float(rows[:, 1].mean()),
    "turns": float(rows[:, 2].mean()),
  }
  out.update({f"em_{h}hop": float(em[hops == h].mean()) for h in sorted(set(hops.tolist())) if h})
  if refiner is not None:
    out["revision_rate"] = float(np.mean(revised))
  return out


def trimmer_accuracy(
  task: Task, params, cases: Sequence[JudgeCase], config: RefinerConfig, batch_size: int = 64
) -> dict[str, float]:
  """Gate and Trimmer accuracy (argmax) on trajectories with a known first flawed step.

  gate_acc: accept iff the trajectory is gold; trim_acc: among corrupted ones the gate
  flagged, the flagged step is the known one; trim_recall: the same over all corrupted
  ones (a missed flag counts as wrong); per corruption kind too.
  """
  decisions, oracle = [], task.judge_fn(config)
  for i in range(0, len(cases), batch_size):
    chunk = cases[i : i + batch_size]
    items = [(c.question, list(c.steps)) for c in chunk]
    if oracle is not None:
      decisions += oracle(items, None)
    else:
      decisions += judge(task.model, params, task.tokenizer, items, config, rng=None)
  flawed = np.asarray([c.flawed_step for c in cases])
  step = np.asarray([d.step if d is not None else 0 for d in decisions])
  bad = flawed > 0
  flagged = step > 0
  out = {
    "gate_acc": float(np.mean(flagged == bad)),
    "trim_recall": float(np.mean(step[bad] == flawed[bad])) if bad.any() else 0.0,
    "trim_acc": float(np.mean(step[bad & flagged] == flawed[bad & flagged]))
    if (bad & flagged).any()
    else 0.0,
  }
  kinds = np.asarray([c.kind for c in cases])
  for kind in sorted(set(kinds.tolist()) - {"gold"}):
    sel = kinds == kind
    out[f"trim_recall_{kind}"] = float(np.mean(step[sel] == flawed[sel]))
  return out
