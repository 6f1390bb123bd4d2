"""The Meta-Refiner: judge each trajectory, cut at the earliest flawed step, regenerate.

The paper's §2.2 (Algorithm 1), with sr2's decisions where the paper is silent:
  - The refiner is the Actor's own params under the Meta-Refiner prompt (`refiner_prompt`
    over the question and the trajectory's assistant steps with their TOOL outputs).
  - One forward pass per trajectory scores the single-token choices "0".."n" right after
    the prompt (n = the trajectory's steps): lp_j = log p(str(j) | prompt), full softmax
    (`scoring.score_choices`, batched `judge_rows` prompts a pass).
  - Beyond the paper, `prompt="continuation"` puts a short question after the Actor's own
    trajectory instead (`refiner_followup`): the judgement then reads the rollout's KV
    cache (`Sampler.score_after`) and encodes only the question's tokens.
  - Revise iff  log p(revise) − lp_0 ≥ margin, with log p(revise) = logsumexp_{j≥1} lp_j
    (`aggregate="logsumexp"`, the summed mass; equivalent to τ = 0.5 on p("0") at margin 0)
    or max_{j≥1} lp_j (`aggregate="max"`).
  - The flawed step j is drawn from softmax(lp_1..lp_n) during training and is the argmax
    at evaluation. The cut keeps steps 1..j−1 (tokens, masks, log-probs and KV cache, see
    `rollout.regenerate`) and the Actor regenerates the rest in the turns left.
  - Up to `max_revisions` rounds; a round judges only the rows revised in the round before,
    and the last revision is returned without another judgement (Algorithm 1).
  - Each judgement is a `Decision`: the refiner prompt, the emitted token ("0" when
    accepting) and its log-prob, which joint optimisation trains on (rl/batch.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import numpy as np

from sr2.agent import scoring
from sr2.agent.refiner_prompts import (
  MAX_CHOICES,
  PROMPTS,
  choice_ids,
  followup_ids,
  prompt_ids,
  trajectory_steps,
)
from sr2.agent.rollout import Agent, Record, Trajectory, finish, regenerate
from sr2.models.config import ModelConfig
from sr2.sampling import Sampler, SamplingState

AGGREGATES = ("logsumexp", "max")
JUDGES = ("policy", "oracle")


@dataclasses.dataclass(frozen=True)
class RefinerConfig:
  """The Meta-Refiner (config.refiner)."""

  enabled: bool = False  # run it during training rollouts (the "+MR" arms and Search-R2).
  # "policy", the policy's own weights judge (the paper); "oracle", the world's gold plans judge
  # instead (`sr2/agent/oracle.py`): the mechanism's ceiling, on tasks that know their plans, with
  # `joint` off (its decisions are not the policy's).
  judge: str = "policy"
  max_revisions: int = 1  # N_max, judge-and-revise rounds per trajectory (paper: 1; Table 4: 1-4).
  margin: float = 0.0  # revise iff log p(revise) − log p("0") ≥ margin (paper: 0.0).
  # "logsumexp" (mass over 1..n) or "max" (best single index) for p(revise).
  aggregate: str = "logsumexp"
  # joint optimisation; the decisions enter the GRPO batch (full Search-R2). Off for the "+MR" and
  # "+MR+PR" ablations.
  joint: bool = True
  max_prompt_tokens: int = 2048  # longer refiner prompts are not judged (accepted, and counted).
  # joint optimisation multiplies each decision row's advantage by this, which scales its
  # policy-gradient term by the same factor (1.0: the paper as sr2 infers it; the paper is
  # silent). Under seq-mean-token-mean a one-token decision row weighs as much as a whole
  # trajectory; < 1 lowers the decisions' share (results/README.md).
  decision_weight: float = 1.0
  # prompts per forward pass of the judgement. The prompts go through sorted by length, each pass
  # padded to its own length bucket, so short prompts are not padded to the longest; 0 = all prompts
  # in one pass. The same scores either way.
  judge_rows: int = 8
  # "table12", the paper's prompt (Appendix L, Table 12): the instruction, the question and the
  # numbered steps with their TOOL outputs, encoded afresh per trajectory. "continuation" (beyond
  # the paper): the Actor's prompt and trajectory as the rollout wrote them, then the question
  # (`refiner_followup`); online it reads the rollout's KV cache, so a judgement encodes the
  # question's tokens (66 with the tiny world's tokenizer) instead of the whole trajectory, all rows
  # in one pass (`judge_rows` applies to "table12" only). Its decision rows are the trajectory plus
  # the question, so under joint optimisation they are longer than in "table12". Rows too long for
  # the question (the sampler's capacity or `max_prompt_tokens`) are accepted unjudged
  # (`refiner/judged` in the step's metrics).
  prompt: str = "table12"

  def __post_init__(self):
    if isinstance(self.max_revisions, bool) or not (
      isinstance(self.max_revisions, int) and self.max_revisions >= 1
    ):
      raise ValueError(f"refiner.max_revisions={self.max_revisions!r}; expected an int >= 1")
    if self.judge not in JUDGES:
      raise ValueError(f"refiner.judge={self.judge!r}; expected one of {JUDGES}")
    if self.judge == "oracle" and self.joint:
      raise ValueError(
        "refiner.judge='oracle' needs refiner.joint=False: the oracle's decisions are not "
        "the policy's samples, so they cannot join the GRPO batch"
      )
    if self.prompt not in PROMPTS:
      raise ValueError(f"refiner.prompt={self.prompt!r}; expected one of {PROMPTS}")
    if self.aggregate not in AGGREGATES:
      raise ValueError(f"refiner.aggregate={self.aggregate!r}; expected one of {AGGREGATES}")
    if self.max_prompt_tokens < 2:
      raise ValueError(f"refiner.max_prompt_tokens={self.max_prompt_tokens}; expected >= 2")
    if isinstance(self.decision_weight, bool) or not (
      isinstance(self.decision_weight, int | float) and self.decision_weight > 0
    ):
      raise ValueError(
        f"refiner.decision_weight={self.decision_weight!r}; expected a number > 0 "
        "(refiner.joint=False leaves the decisions out)"
      )
    if isinstance(self.judge_rows, bool) or not (
      isinstance(self.judge_rows, int) and self.judge_rows >= 0
    ):
      raise ValueError(
        f"refiner.judge_rows={self.judge_rows!r}; expected an int >= 0 (0 = one pass)"
      )


@dataclasses.dataclass(frozen=True)
class Decision:
  """One judgement of one trajectory."""

  # the refiner prompt, tokenised (in the continuation form: the Actor's prompt and trajectory, then
  # the question; joint optimisation trains on it plus the one emitted token).
  prompt_ids: tuple[int, ...]
  choice_logprobs: tuple[float, ...]  # lp_0..lp_n (log p of "0".."n" after the prompt).
  revise: bool  # the gate's verdict.
  step: int  # 0 when accepting, else the flagged (earliest flawed) step j in 1..n.
  token: int  # the emitted token id, that of str(step).
  logprob: float  # lp_step, the sampling log-prob of `token` (the old log-prob for GRPO).


def decide(
  choice_logprobs: np.ndarray, config: RefinerConfig, rng: np.random.Generator | None
) -> tuple[bool, int]:
  """(revise, step) from lp_0..lp_n; step is sampled with `rng`, else the argmax."""
  lp = np.asarray(choice_logprobs, np.float64)
  rest = lp[1:]
  revise_lp = np.logaddexp.reduce(rest) if config.aggregate == "logsumexp" else rest.max()
  if not revise_lp - lp[0] >= config.margin:
    return False, 0
  if rng is None:
    return True, int(np.argmax(rest)) + 1
  p = np.exp(rest - rest.max())
  return True, int(rng.choice(len(rest), p=p / p.sum())) + 1


def _decision(
  ids: Sequence[int], choices: Sequence[int], lp: np.ndarray, config: RefinerConfig, rng
) -> Decision:
  """The `Decision` of a prompt whose choices scored `lp` (the gate and cut of `decide`)."""
  revise, step = decide(lp, config, rng)
  return Decision(
    tuple(ids), tuple(float(x) for x in lp), revise, step, choices[step], float(lp[step])
  )


def judge(
  model: ModelConfig,
  params,
  tokenizer,
  items: Sequence[tuple[str, Sequence[tuple[str, str | None]]]],
  config: RefinerConfig,
  rng: np.random.Generator | None = None,
) -> list[Decision | None]:
  """Decisions for (question, steps) items in batched forward passes; None where not judged.

  An item is not judged (None, i.e. accepted without a decision sample) when it has no
  steps, more than 9 steps, or a prompt longer than `config.max_prompt_tokens`.
  """
  prompts, choices, where = [], [], []
  for i, (question, steps) in enumerate(items):
    if not 1 <= len(steps) < MAX_CHOICES:
      continue
    ids = prompt_ids(tokenizer, question, steps, config.prompt)
    if len(ids) > config.max_prompt_tokens:
      continue
    prompts.append(ids)
    choices.append(choice_ids(tokenizer, len(steps)))
    where.append(i)
  out: list[Decision | None] = [None] * len(items)
  scores = scoring.score_choices(
    model, params, prompts, choices, tokenizer.pad_id or 0, rows_per_pass=config.judge_rows
  )
  for i, p, c, lp in zip(where, prompts, choices, scores, strict=True):
    out[i] = _decision(p, c, lp, config, rng)
  return out


def judge_in_cache(
  sampler: Sampler,
  params,
  state: SamplingState,
  rows: Sequence[int],
  trajectories: Sequence[Trajectory],
  config: RefinerConfig,
  rng: np.random.Generator | None = None,
) -> tuple[SamplingState, list[Decision | None]]:
  """`judge` in the continuation form for rollout `rows`, on the sampler's own KV cache.

  Each row's question (`followup_ids`) is scored after the row's tokens with
  `Sampler.score_after`: the trajectory is not encoded again. The returned state replaces
  `state` (only cache slots past the rows' ends changed). A row is not judged (None) when
  it has no steps or more than 9, or when its tokens and the question would exceed
  `config.max_prompt_tokens` or the row's capacity. `trajectories` are `state`'s rows
  (`rollout.finish`); their lengths are the rows'.
  """
  tok = sampler.tokenizer
  asks: dict[int, tuple[list[int], list[int]]] = {}  # steps -> (question, choices)
  chosen, prompts = [], []
  for r in rows:
    t, n = trajectories[r], len(trajectories[r].steps)
    if not 1 <= n < MAX_CHOICES:
      continue
    if n not in asks:
      asks[n] = (followup_ids(tok, n), choice_ids(tok, n))
    ids = [*t.prompt_ids, *t.response_ids, *asks[n][0]]
    if len(ids) > min(config.max_prompt_tokens, state.max_len):
      continue
    chosen.append(r)
    prompts.append((ids, n))
  state, scores = sampler.score_after(
    params,
    state,
    chosen,
    [asks[n][0] for _, n in prompts],
    [asks[n][1] for _, n in prompts],
  )
  out = {
    r: _decision(ids, asks[n][1], lp, config, rng)
    for r, (ids, n), lp in zip(chosen, prompts, scores, strict=True)
  }
  return state, [out.get(r) for r in rows]


@dataclasses.dataclass
class Refined:
  """What `refine` returns."""

  # the sampler state after the last judgement or regeneration (it replaces the state `refine` was
  # given, which is donated).
  state: SamplingState
  trajectories: list[Trajectory]  # the final trajectories (the mixture policy's samples).
  drafts: list[Trajectory]  # the Actor's first trajectories, before any revision.
  decisions: list[list[Decision]]  # per row, its decisions in order (empty if never judged).
  judge_s: float = 0.0  # host seconds spent judging (prompts and the forward passes), all rounds.
  regenerate_s: float = 0.0  # host seconds spent cutting and regenerating, all rounds.

  @property
  def revised(self) -> np.ndarray:
    """Per row: was the draft revised at least once (bool [B])."""
    return np.asarray([any(d.revise for d in ds) for ds in self.decisions], bool)


def refine(
  agent: Agent,
  params,
  state: SamplingState,
  records: list[Record],
  questions: Sequence[str],
  config: RefinerConfig,
  rng: np.random.Generator | None = None,
  judge_fn: Callable | None = None,
) -> Refined:
  """Algorithm 1 on a finished rollout batch (`state`, `records` from `rollout.run(agent)`).

  `rng` samples the cut (training); None takes the argmax (evaluation). Rows are judged
  together, and every revised row regenerates in the same decode calls. The judgement is
  `judge` on (question, steps) items, or `judge_in_cache` on the rows with
  `config.prompt="continuation"`. `judge_fn(items, rng)` replaces either (whatever
  `config.prompt` says) — a scripted refiner in tests, or a refiner with params of its
  own. The revised rows regenerate in a batch of their own (`rollout.regenerate`), so a few
  revisions cost what a few rows cost. `state` is donated; use `Refined.state`.
  """
  sampler = agent.sampler
  tok = sampler.tokenizer
  if len(questions) != len(records):
    raise ValueError(f"{len(questions)} questions for {len(records)} rollout rows")
  trajs = finish(state, records, tok)
  drafts = list(trajs)
  decisions: list[list[Decision]] = [[] for _ in trajs]
  pending = [i for i, r in enumerate(records) if r.finish != "prompt_too_long"]
  judge_s = regenerate_s = 0.0
  for _ in range(config.max_revisions):
    start = time.perf_counter()
    if judge_fn is None and config.prompt == "continuation":
      state, verdicts = judge_in_cache(sampler, params, state, pending, trajs, config, rng)
    else:
      items = [(questions[i], trajectory_steps(trajs[i], tok)) for i in pending]
      if judge_fn is None:
        verdicts = judge(sampler.model, params, tok, items, config, rng)
      else:
        verdicts = judge_fn(items, rng)
    judge_s += time.perf_counter() - start
    revised = []
    for i, d in zip(pending, verdicts, strict=True):
      if d is not None:
        decisions[i].append(d)
        if d.revise:
          revised.append(i)
    if not revised:
      break
    start = time.perf_counter()
    steps = [decisions[i][-1].step for i in revised]
    state = regenerate(agent, params, state, records, revised, steps)
    trajs = finish(state, records, tok)
    regenerate_s += time.perf_counter() - start
    pending = revised
  return Refined(state, trajs, drafts, decisions, judge_s, regenerate_s)
