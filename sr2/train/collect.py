"""One step's experience: rollouts, the Meta-Refiner, rewards, and the drivers' probes.

`collect` runs the Actor on a batch of questions (each repeated G times by the caller), then
the Meta-Refiner if enabled (agent/refiner.py), scores the final trajectories (and the
drafts, for the drivers), and with `probe=True` runs the two counterfactual regenerations
that rl/drivers.py needs. The rows run in chunks of `rollout.batch_rows` (one rollout call,
KV cache and refinement each), so rollout memory is set by config rather than by B·G.
Every row draws its tokens from its own key and every chunk its cuts from its own
generator, numbered from `first_row`: a process given rows `first_row...` of a step
collects exactly what a single process collects for them. Host seconds are split into
rollout (sampler and retrieval), retrieval alone, refiner (judging and regeneration; each
also on its own), reward and probe.
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


@dataclasses.dataclass
class _Chunk:
  """One rollout call's rows (step-local numbers `rows`) and what they gave."""

  rows: range
  trajectories: list[Trajectory]
  drafts: list[Trajectory]
  decisions: list[list[Decision]]
  snapshot: tuple | None  # (state, records) of the drafts, kept for the probe
  metrics: dict[str, float]


def _counterfactual(
  agent: rollout.Agent, params, chunks: Sequence[_Chunk], rows, steps
) -> dict[int, Trajectory]:
  """`rollout.regenerate` on copies of the drafts' snapshots: row -> its trajectory after.

  Each chunk's rows regenerate within that chunk's snapshot (a copy; the snapshot stays).
  """
  cut = dict(zip(rows, steps, strict=True))
  out: dict[int, Trajectory] = {}
  for c in chunks:
    mine = [r for r in c.rows if r in cut]
    if not mine:
      continue
    state, records = jax.tree.map(jnp.copy, c.snapshot[0]), copy.deepcopy(c.snapshot[1])
    local = [r - c.rows.start for r in mine]
    state = rollout.regenerate(agent, params, state, records, local, [cut[r] for r in mine])
    trajs = rollout.finish(state, records, agent.sampler.tokenizer)
    out.update({r: trajs[i] for r, i in zip(mine, local, strict=True)})
  return out


def collect(
  task: Task,
  sampler,
  params,
  questions: Sequence[Question],
  reward_fn: RewardFn,
  refiner: RefinerConfig,
  *,
  rng: jax.Array,
  seed: Sequence[int] = (0,),
  first_row: int = 0,
  probe: bool = False,
  batch: int | None = None,
) -> Collected:
  """Runs one step's rollouts (see the module docstring).

  `rng` keys the Actor's sampling and `seed` the refiner's and the probe's draws; the rows
  are numbered from `first_row` (a process's offset in the step). `batch` pads every
  rollout call to that many rows (default: the chunk's rows).
  """
  retriever = TimedRetriever(task.retriever)
  agent = rollout.Agent(sampler, retriever, task.rollout)
  prompts = [task.prompt_ids(q) for q in questions]
  texts = [q.question for q in questions]
  n = len(questions)
  size = task.rollout.batch_rows or n
  judge = task.judge_fn(refiner)  # None: the policy judges

  def run_chunk(rows: range) -> _Chunk:
    """The Actor's rollouts of `rows`, then the Meta-Refiner if enabled."""
    t0 = time.perf_counter()
    chunk = [prompts[i] for i in rows]
    state, records = rollout.run(
      agent, params, chunk, rng=rng, batch=batch, first_row=first_row + rows.start
    )
    m = {"rollout_s": time.perf_counter() - t0}
    if not refiner.enabled:
      trajs = rollout.finish(state, records, sampler.tokenizer)
      return _Chunk(rows, trajs, trajs, [[] for _ in trajs], None, m)
    snapshot = (jax.tree.map(jnp.copy, state), copy.deepcopy(records)) if probe else None
    t1 = time.perf_counter()
    np_rng = np.random.default_rng([*seed, first_row + rows.start])
    asked = [texts[i] for i in rows]
    out = refine(agent, params, state, records, asked, refiner, rng=np_rng, judge_fn=judge)
    m["refine_s"] = time.perf_counter() - t1
    m["judge_s"], m["regenerate_s"] = out.judge_s, out.regenerate_s
    return _Chunk(rows, out.trajectories, out.drafts, out.decisions, snapshot, m)

  chunks = [run_chunk(range(i, min(i + size, n))) for i in range(0, n, size)]
  trajs = [t for c in chunks for t in c.trajectories]
  drafts = [t for c in chunks for t in c.drafts]
  decisions = [d for c in chunks for d in c.decisions]
  m = {k: sum(c.metrics[k] for c in chunks) for k in chunks[0].metrics}
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
    np_rng = np.random.default_rng([*seed, first_row, 1])
    m.update(_probe(agent, params, chunks, got, reward_fn, np_rng))
    m["probe_s"] = time.perf_counter() - t3
  m["retrieval_s"] = retriever.seconds
  return got


def _probe(agent, params, chunks, got: Collected, reward_fn, np_rng) -> dict[str, float]:
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
    cf = _counterfactual(agent, params, chunks, accepted, cuts)
    r_cf = reward_fn([questions[i] for i in accepted], [cf[i] for i in accepted])[2]
    j_trim.update({i: float(r) for i, r in zip(accepted, r_cf, strict=True)})
  partner = np_rng.permutation(rows)
  cuts = [
    _cut_from(first[p].choice_logprobs, n_steps[i], np_rng)
    for i, p in zip(rows, partner, strict=True)
  ]
  rnd = _counterfactual(agent, params, chunks, rows, cuts)
  r_rnd = reward_fn([questions[i] for i in rows], [rnd[i] for i in rows])[2]
  d = drivers.decomposition(
    np.asarray([not first[i].revise for i in rows]),
    draft_reward[rows],
    np.asarray([j_trim[i] for i in rows]),
    r_rnd - draft_reward[rows],
  )
  return {f"drivers/{k}": v for k, v in d.items()}
