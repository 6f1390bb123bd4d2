"""One step's experience: rollouts, the Meta-Refiner, rewards, and the drivers' probes.

`collect` runs the Actor on a batch of questions (each repeated G times by the caller), then
the Meta-Refiner if enabled (agent/refiner.py), scores the final trajectories (and the
drafts, for the drivers), and with `probe=True` runs the two counterfactual regenerations
that rl/drivers.py needs. Host seconds are split into rollout (sampler and retrieval),
retrieval alone, refiner (judging and regeneration; each also on its own), reward and probe.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sr2.agent import rollout
from sr2.agent.refiner import Decision, RefinerConfig, refine
from sr2.agent.rollout import Trajectory
from sr2.rl import drivers
from sr2.train.task import Question, Task

# (questions, trajectories) -> (outcome [N], process [N], total [N])
RewardFn = Callable[[Sequence[Question], Sequence[Trajectory]], tuple[np.ndarray, ...]]


class TimedRetriever:
  """Wraps a retriever and adds up the seconds spent in `search`."""

  def __init__(self, retriever):
    self.retriever, self.seconds = retriever, 0.0

  def search(self, queries, k: int = 3):
    start = time.perf_counter()
    try:
      return self.retriever.search(queries, k=k)
    finally:
      self.seconds += time.perf_counter() - start


@dataclasses.dataclass
class Collected:
  """One step's rows: final trajectories with rewards, drafts, decisions, timings."""

  questions: list[Question]
  trajectories: list[Trajectory]
  drafts: list[Trajectory]
  decisions: list[list[Decision]]
  outcome: np.ndarray
  process: np.ndarray
  reward: np.ndarray
  draft_reward: np.ndarray
  metrics: dict[str, float]


def _cut_from(choice_logprobs, n: int, rng: np.random.Generator) -> int:
  """A cut in 1..n drawn from softmax(lp_1..lp_m), clipped to n steps."""
  rest = np.asarray(choice_logprobs[1:], np.float64)
  p = np.exp(rest - rest.max())
  return min(int(rng.choice(len(rest), p=p / p.sum())) + 1, n)


def _counterfactual(agent: rollout.Agent, params, snapshot, rows, steps) -> list[Trajectory]:
  """`rollout.regenerate` on a copy of the drafts' `snapshot`: their trajectories after it."""
  state, records = jax.tree.map(jnp.copy, snapshot[0]), copy.deepcopy(snapshot[1])
  state = rollout.regenerate(agent, params, state, records, rows, steps)
  return rollout.finish(state, records, agent.sampler.tokenizer)


def collect(
  task: Task,
  sampler,
  params,
  questions: Sequence[Question],
  reward_fn: RewardFn,
  refiner: RefinerConfig,
  *,
  rng: jax.Array,
  np_rng: np.random.Generator,
  probe: bool = False,
  batch: int | None = None,
) -> Collected:
  """Runs one step's rollouts (see the module docstring)."""
  retriever = TimedRetriever(task.retriever)
  agent = rollout.Agent(sampler, retriever, task.rollout)
  t0 = time.perf_counter()
  prompts = [task.prompt_ids(q) for q in questions]
  state, records = rollout.run(agent, params, prompts, rng=rng, batch=batch)
  t_roll = time.perf_counter() - t0
  m: dict[str, float] = {}
  if refiner.enabled:
    snapshot = (jax.tree.map(jnp.copy, state), copy.deepcopy(records)) if probe else None
    t1 = time.perf_counter()
    texts = [q.question for q in questions]
    out = refine(agent, params, state, records, texts, refiner, rng=np_rng)
    m["refine_s"] = time.perf_counter() - t1
    m["judge_s"], m["regenerate_s"] = out.judge_s, out.regenerate_s
    trajs, drafts, decisions = out.trajectories, out.drafts, out.decisions
  else:
    trajs = rollout.finish(state, records, sampler.tokenizer)
    drafts, decisions = trajs, [[] for _ in trajs]
  t2 = time.perf_counter()
  outcome, process, reward = reward_fn(questions, trajs)
  draft_reward = reward if not refiner.enabled else reward_fn(questions, drafts)[2]
  m["reward_s"] = time.perf_counter() - t2
  if refiner.enabled:
    judged = np.asarray([bool(ds) for ds in decisions])
    accepted = np.asarray([not (ds and ds[0].revise) for ds in decisions])
    m.update(
      {f"refiner/{k}": v for k, v in drivers.observed(accepted, draft_reward, reward).items()}
    )
    m["refiner/judged"] = float(judged.mean())
    m["refiner/decisions"] = float(sum(len(ds) for ds in decisions))
  got = Collected(
    list(questions), trajs, drafts, decisions, outcome, process, reward, draft_reward, m
  )
  if refiner.enabled and probe and any(decisions):
    t3 = time.perf_counter()
    m.update(_probe(agent, params, snapshot, got, reward_fn, np_rng))
    m["probe_s"] = time.perf_counter() - t3
  m["rollout_s"] = t_roll
  m["retrieval_s"] = retriever.seconds
  return got


def _probe(agent, params, snapshot, got: Collected, reward_fn, np_rng) -> dict[str, float]:
  """Counterfactual regenerations for the drivers (see rl/drivers.py), on judged drafts."""
  questions, decisions, drafts = got.questions, got.decisions, got.drafts
  reward, draft_reward = got.reward, got.draft_reward
  rows = [i for i, ds in enumerate(decisions) if ds]
  first = {i: decisions[i][0] for i in rows}
  n_steps = {i: len(drafts[i].steps) for i in rows}
  accepted = [i for i in rows if not first[i].revise]
  j_trim = {i: float(reward[i]) for i in rows if first[i].revise}
  if accepted:
    cuts = [_cut_from(first[i].choice_logprobs, n_steps[i], np_rng) for i in accepted]
    cf = _counterfactual(agent, params, snapshot, accepted, cuts)
    r_cf = reward_fn([questions[i] for i in accepted], [cf[i] for i in accepted])[2]
    j_trim.update({i: float(r) for i, r in zip(accepted, r_cf, strict=True)})
  partner = np_rng.permutation(rows)
  cuts = [
    _cut_from(first[p].choice_logprobs, n_steps[i], np_rng)
    for i, p in zip(rows, partner, strict=True)
  ]
  rnd = _counterfactual(agent, params, snapshot, rows, cuts)
  r_rnd = reward_fn([questions[i] for i in rows], [rnd[i] for i in rows])[2]
  d = drivers.decomposition(
    np.asarray([not first[i].revise for i in rows]),
    draft_reward[rows],
    np.asarray([j_trim[i] for i in rows]),
    r_rnd - draft_reward[rows],
  )
  return {f"drivers/{k}": v for k, v in d.items()}
