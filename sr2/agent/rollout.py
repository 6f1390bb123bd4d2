"""The batched multi-turn search loop on the sampler (step 2 of a training step).

Each turn: decode every live row until `</search>`, `</answer>` or EOS (detected inside the
jitted loop), parse what each row wrote, send all queries of the turn to the retriever in
one call, and append `<information>` observations (or invalid-action feedback) to the rows
that need them. The sampled token ids are kept as they are: nothing is re-tokenised, so
`loss_mask` is exactly 1 on what the model wrote and 0 on the prompt side of the response
(observations, feedback).

The public surface is an `Agent` (sampler, retriever, limits) and three calls; every
caller (training's collection, the Meta-Refiner, in-training evaluation, the evaluation
harness) goes through them:
  run         prefill the prompts and run turns until every row has finished;
  regenerate  cut rows back to a step boundary and run the turns that remain
              (the Meta-Refiner's cut-and-regenerate, and the drivers' counterfactuals);
  finish      host copies of every row as a `Trajectory`.
They work on a `SamplingState` plus per-row `Record`s: `continue_rollout` resumes the loop
from any state, and `rewind` cuts rows back to a step boundary.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any, Protocol

import jax
import numpy as np

from sr2.agent import protocol
from sr2.configlib import check_ints
from sr2.data.prompts import STOP_STRINGS
from sr2.retrieval.corpus import format_documents
from sr2.sampling import Sampler, SamplingState
from sr2.sampling.state import CONTEXT_FULL, EOS


class Retriever(Protocol):
  def search(self, queries: Sequence[str], k: int = 3) -> list[list[Any]]: ...


@dataclasses.dataclass(frozen=True)
class RolloutConfig:
  """The agent loop's limits."""

  max_turns: int = 4  # assistant turns per trajectory (the paper's B = 4).
  max_turn_tokens: int = 512  # new tokens per assistant turn.
  top_k: int = 3  # passages per search.
  max_obs_tokens: int = 500  # cap on the documents of one observation, in tokens.
  invalid_feedback: bool = True  # append feedback after an invalid turn (else the row ends).
  # rows per rollout call when training collects a step (its KV cache and buffers are this many
  # rows, whatever B·G is); 0 = all of a process's rows at once.
  batch_rows: int = 0

  def __post_init__(self):
    names = ("max_turns", "max_turn_tokens", "top_k", "max_obs_tokens")
    check_ints(self, "rollout", names, error=ValueError)
    check_ints(self, "rollout", ("batch_rows",), minimum=0, error=ValueError)


@dataclasses.dataclass(frozen=True)
class Agent:
  """What the loop runs on besides the params: the sampler, the retriever and the limits.

  The sampler must have a tokenizer and stop on the Actor's stop strings (both checked).
  """

  sampler: Sampler
  retriever: Retriever
  config: RolloutConfig

  def __post_init__(self):
    if self.sampler.tokenizer is None:
      raise ValueError("the rollout needs a sampler with a tokenizer")
    missing = [s for s in STOP_STRINGS if s not in self.sampler.config.stop_strings]
    if missing:
      raise ValueError(f"the sampler must stop on {STOP_STRINGS}; missing {missing}")


@dataclasses.dataclass
class Segment:
  """A span of the response: what the model wrote in one turn, or an environment text."""

  kind: str  # "model" | "observation" | "feedback"
  start: int  # offsets into the row's tokens (prompt included)
  end: int
  turn: int


@dataclasses.dataclass
class Record:
  """Host bookkeeping of one row while the loop runs."""

  prompt_len: int
  segments: list[Segment] = dataclasses.field(default_factory=list)
  queries: list[str] = dataclasses.field(default_factory=list)
  doc_ids: list[list[str]] = dataclasses.field(default_factory=list)
  query_turns: list[int] = dataclasses.field(default_factory=list)  # turn of each query
  turn_kinds: list[str] = dataclasses.field(default_factory=list)  # parsed kind of each turn
  invalid_turns: int = 0
  turns: int = 0
  finish: str | None = None  # why the trajectory ended; None while it runs
  answer: str | None = None  # the answer of a valid answer turn


@dataclasses.dataclass(frozen=True)
class Trajectory:
  """One finished rollout.

  Token-aligned lists cover the response only (everything after the prompt).
  `steps[i]` = (start, end) offsets into the response of assistant step i + 1 with its
  tool output: the unit the Meta-Refiner numbers and cuts at.
  """

  prompt_ids: list[int]
  response_ids: list[int]
  logprobs: list[float]
  loss_mask: list[int]
  turn_ids: list[int]
  steps: list[tuple[int, int]]
  queries: list[str]
  doc_ids: list[list[str]]
  observations: list[str]  # per query, the documents' text as appended ("" if not appended)
  response: str
  answer: str | None  # from the turn that answered validly; None if none did
  finish: str
  num_turns: int
  invalid_turns: int

  @property
  def num_searches(self) -> int:
    return len(self.queries)


def _start(
  sampler: Sampler,
  params,
  prompts: Sequence[Sequence[int]],
  rng,
  batch: int | None,
  first_row: int = 0,
) -> tuple[SamplingState, list[Record]]:
  """Prefills the prompts (at a fixed `batch` size if given); returns state and records.

  A prompt that leaves no room to generate is not run: its row gets a one-token stand-in,
  its record is finished as "prompt_too_long", and the rest of the batch goes on.
  """
  capacity = sampler.config.max_len
  records, fitted = [], []
  for p in prompts:
    rec = Record(prompt_len=len(p))
    if len(p) == 0 or len(p) >= capacity:
      rec.prompt_len, rec.finish = 1, "prompt_too_long"
      p = [sampler.tokenizer.pad_id or 0]
    records.append(rec)
    fitted.append(p)
  state = sampler.prefill(params, fitted, rng, batch=batch, first_row=first_row)
  return state, records


def continue_rollout(
  agent: Agent, params, state: SamplingState, records: list[Record]
) -> SamplingState:
  """Runs turns until every row has finished or used `agent.config.max_turns` turns."""
  sampler, retriever, config = agent.sampler, agent.retriever, agent.config
  tok = sampler.tokenizer
  capacity = state.max_len
  while True:
    live = [r for r, rec in enumerate(records) if rec.finish is None]
    if not live:
      return state
    before = np.array(jax.device_get(state.lengths))  # a copy: the state may be reused
    state = sampler.decode(params, state, config.max_turn_tokens)
    tokens, lengths, finish = (
      np.asarray(x) for x in jax.device_get((state.tokens, state.lengths, state.finish))
    )
    searches: list[tuple[int, str]] = []
    feedback: list[tuple[int, str]] = []
    for r in live:
      rec = records[r]
      rec.segments.append(Segment("model", int(before[r]), int(lengths[r]), rec.turns))
      rec.turns += 1
      turn = protocol.parse_turn(tok.decode(tokens[r, before[r] : lengths[r]].tolist()))
      code = int(finish[r])
      rec.turn_kinds.append(turn.kind)
      rec.invalid_turns += turn.kind == "invalid"
      if turn.kind == "answer":
        rec.finish, rec.answer = "answer", turn.answer
      elif code == CONTEXT_FULL:  # no room left to continue
        rec.finish = "context_full"
      elif rec.turns >= config.max_turns:
        rec.finish = "max_turns"
      elif turn.kind == "search":
        searches.append((r, turn.query))
      elif code == EOS:  # EOS without an action: the model chose to stop
        rec.finish = "eos"
      else:
        if config.invalid_feedback:
          feedback.append((r, protocol.invalid_action_feedback(turn)))
        else:
          rec.finish = "invalid"
    chunks: dict[int, tuple[str, list[int]]] = {}
    if searches:
      hits = retriever.search([q for _, q in searches], k=config.top_k)
      for (r, query), row_hits in zip(searches, hits, strict=True):
        records[r].queries.append(query)
        records[r].query_turns.append(records[r].turns - 1)
        records[r].doc_ids.append([h.id for h in row_hits])
        docs = format_documents(row_hits, tokenizer=tok, max_tokens=config.max_obs_tokens)
        chunks[r] = ("observation", tok.encode(protocol.format_observation(docs)))
    for r, text in feedback:
      chunks[r] = ("feedback", tok.encode(text))
    rows, payload = [], []
    for r, (kind, ids) in sorted(chunks.items()):
      # Leave room for at least one more generated token after the observation.
      if lengths[r] + len(ids) + 1 > capacity:
        records[r].finish = "context_full"
        continue
      records[r].segments.append(
        Segment(kind, int(lengths[r]), int(lengths[r]) + len(ids), records[r].turns - 1)
      )
      rows.append(r)
      payload.append(ids)
    if rows:
      state = sampler.append(params, state, rows, payload)


def rewind(
  sampler: Sampler,
  state: SamplingState,
  records: list[Record],
  rows: Sequence[int],
  steps: Sequence[int],
) -> SamplingState:
  """Moves each row back to just before its assistant step `steps[i]` (1-based).

  Steps 1..j-1 stay as they were: their tokens, log-probs and KV-cache entries (the
  sampler truncates the row; nothing is re-encoded), their observations, queries and
  retrieved ids. The row is live again with `j - 1` turns used, so `continue_rollout`
  regenerates the rest within the remaining turn budget. This is the Meta-Refiner's cut.
  """
  lengths = []
  for r, j in zip(rows, steps, strict=True):
    rec = records[r]
    model = [seg for seg in rec.segments if seg.kind == "model"]
    if isinstance(j, bool) or not isinstance(j, int | np.integer) or not 1 <= j <= len(model):
      raise ValueError(f"row {r}: step must be an int in [1, {len(model)}], got {j!r}")
    turn, start = model[j - 1].turn, model[j - 1].start
    keep = [i for i, t in enumerate(rec.query_turns) if t < turn]
    rec.queries = [rec.queries[i] for i in keep]
    rec.doc_ids = [rec.doc_ids[i] for i in keep]
    rec.query_turns = [rec.query_turns[i] for i in keep]
    rec.segments = [seg for seg in rec.segments if seg.turn < turn]
    rec.turn_kinds = rec.turn_kinds[:turn]
    rec.invalid_turns = sum(k == "invalid" for k in rec.turn_kinds)
    rec.turns, rec.finish, rec.answer = turn, None, None
    lengths.append(start)
  return sampler.truncate(state, list(rows), lengths)


def finish(state: SamplingState, records: list[Record], tokenizer) -> list[Trajectory]:
  """Host copies of every row as a `Trajectory`."""
  tokens, logprobs, lengths = (
    np.asarray(x) for x in jax.device_get((state.tokens, state.logprobs, state.lengths))
  )
  out = []
  for r, rec in enumerate(records):
    p, n = rec.prompt_len, int(lengths[r])
    if rec.finish == "prompt_too_long":
      n = p  # the stand-in row's output is not a response
    mask = np.zeros(n - p, np.int32)
    turn_ids = np.full(n - p, -1, np.int32)
    steps: list[tuple[int, int]] = []
    for seg in rec.segments:
      turn_ids[seg.start - p : seg.end - p] = seg.turn
      if seg.kind == "model":
        mask[seg.start - p : seg.end - p] = 1
        steps.append((seg.start - p, seg.end - p))
      else:
        steps[-1] = (steps[-1][0], seg.end - p)
    response_ids = tokens[r, p:n].tolist()
    response = tokenizer.decode(response_ids)
    obs = {seg.turn: seg for seg in rec.segments if seg.kind == "observation"}
    observations = [
      tokenizer.decode(tokens[r, obs[t].start : obs[t].end].tolist()).strip() if t in obs else ""
      for t in rec.query_turns
    ]
    out.append(
      Trajectory(
        prompt_ids=tokens[r, :p].tolist(),
        response_ids=response_ids,
        logprobs=np.where(mask == 1, logprobs[r, p:n], 0.0).tolist(),
        loss_mask=mask.tolist(),
        turn_ids=turn_ids.tolist(),
        steps=steps,
        queries=list(rec.queries),
        doc_ids=[list(d) for d in rec.doc_ids],
        observations=observations,
        response=response,
        answer=rec.answer,
        finish=rec.finish or "running",
        num_turns=rec.turns,
        invalid_turns=rec.invalid_turns,
      )
    )
  return out


def run(
  agent: Agent,
  params,
  prompts: Sequence[Sequence[int]],
  *,
  rng=None,
  batch: int | None = None,
  first_row: int = 0,
) -> tuple[SamplingState, list[Record]]:
  """Runs the search agent on tokenised prompts until every row has finished.

  Returns the sampler state and one record per prompt; `finish` turns them into
  trajectories, `regenerate` cuts and continues them. `rng` samples (None: the sampler's
  method without a key, e.g. greedy); each row draws from its own key, `rng` folded with
  its number `first_row + i`, so a row samples the same tokens in whatever chunk or
  process it runs. `batch` fixes the sampler's batch size (extra rows stay empty), so
  calls with fewer prompts reuse the same compiled programs.
  """
  state, records = _start(agent.sampler, params, prompts, rng, batch, first_row)
  state = continue_rollout(agent, params, state, records)
  return state, records


def regenerate(
  agent: Agent,
  params,
  state: SamplingState,
  records: list[Record],
  rows: Sequence[int],
  steps: Sequence[int],
  multiple: int = 8,
) -> SamplingState:
  """Cuts each of `rows` before its assistant step `steps[i]` and regenerates the rest.

  `rewind`, then `continue_rollout` on those rows. The kept steps are not re-encoded. The
  rows run in a batch of their own (their count rounded up to `multiple`; the full batch
  when that is not smaller), taken out with `Sampler.select` and put back with
  `Sampler.merge`: each decode step then costs what these rows cost, not the whole batch.
  `records` are updated in place; `state` is donated. Every other row must have finished.
  """
  rows, sampler = list(rows), agent.sampler
  chosen = set(rows)
  stray = [r for r, rec in enumerate(records) if rec.finish is None and r not in chosen]
  if stray:
    raise ValueError(f"rows {stray} are still running but not among the rows to regenerate")
  state = rewind(sampler, state, records, rows, steps)
  if not rows:
    return state
  batch = -(-len(rows) // multiple) * multiple
  if batch >= state.batch:
    return continue_rollout(agent, params, state, records)
  sub = sampler.select(state, rows, batch)
  sub = continue_rollout(agent, params, sub, [records[r] for r in rows])
  return sampler.merge(state, sub, rows)
