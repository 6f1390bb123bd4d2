"""An oracle Meta-Refiner, for questions whose gold search plan is known (the synthetic world).

It stands where the learned judge stands (`refine(..., judge_fn=oracle_judge(...))`) and
gives the mechanism's ceiling: it revises exactly the trajectories with a flaw (A_prec of a
perfect gate) and cuts at the first flawed step (a perfect Trimmer).

The first flawed step of a trajectory, against its question's `GoldPlan` (the entity each
hop must search, in order, and the gold answers): a trajectory whose answer is right has
none. Otherwise walk its assistant steps with h = hops found so far; step k is flawed when
  - it is invalid (no complete `<search>` or `<answer>`),
  - it searches anything but the entity hop h+1 needs (names compared normalised: a wrong
    look-alike, a repeat, or a search after the last hop), or
  - it answers (wrong, or before the last hop).
The first such step is the cut. A wrong trajectory with no such step (every search right,
then the turns ran out) is accepted: no step of it can be replaced by a better one.
On the world's known corruptions this is their recorded first flaw: a wrong query is the
step that searches the look-alike; a misread shows in the next step, which searches the
misread entity or answers with it; a premature answer is the answer step.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from sr2.agent.protocol import parse_turn
from sr2.agent.refiner import Decision
from sr2.agent.refiner_prompts import MAX_CHOICES, choice_ids, prompt_ids
from sr2.rewards.qa import exact_match, normalize_answer

_UNCHOSEN = -1e9  # the log-probability the oracle gives the choices it does not make


@dataclasses.dataclass(frozen=True)
class GoldPlan:
  """What a question's gold trajectory searches (one entity name per hop) and answers."""

  queries: tuple[str, ...]
  answers: tuple[str, ...]


def first_flaw(steps: Sequence[tuple[str, str | None]], plan: GoldPlan) -> int:
  """The first flawed step (1-based) of `steps` (assistant text, tool text), 0 for none."""
  turns = [parse_turn(text) for text, _ in steps]
  if turns and turns[-1].kind == "answer" and exact_match(turns[-1].answer, plan.answers):
    return 0
  wanted = [normalize_answer(q) for q in plan.queries]
  found = 0
  for k, turn in enumerate(turns, start=1):
    if turn.kind != "search":
      return k  # invalid, or an answer that is wrong (a right one returned above)
    if found < len(wanted) and normalize_answer(turn.query) == wanted[found]:
      found += 1
    else:
      return k
  return 0


def oracle_judge(
  plans: Mapping[str, GoldPlan], tokenizer
) -> Callable[[Sequence[tuple[str, Sequence[tuple[str, str | None]]]], object], list]:
  """A `judge_fn` for `refine`: the oracle's `Decision` per (question, steps) item.

  Items are judged as the learned judge would take them (None for no steps or more than 9);
  a question without a plan is an error naming it. The decision's choice log-probs are 0 at
  the oracle's choice and -1e9 elsewhere; its prompt is the paper's refiner prompt, so the
  decision reads like the learned judge's (it is never trained on: `refiner.joint` must be
  off with the oracle).
  """

  def judge_fn(items, rng=None) -> list[Decision | None]:
    del rng  # the oracle does not sample
    out: list[Decision | None] = []
    for question, steps in items:
      if question not in plans:
        raise KeyError(f"the oracle refiner has no gold plan for question {question!r}")
      if not 1 <= len(steps) < MAX_CHOICES:
        out.append(None)
        continue
      step = first_flaw(steps, plans[question])
      choices = choice_ids(tokenizer, len(steps))
      lp = np.full(len(steps) + 1, _UNCHOSEN)
      lp[step] = 0.0
      ids = prompt_ids(tokenizer, question, steps, "table12")
      out.append(Decision(tuple(ids), tuple(lp.tolist()), step > 0, step, choices[step], 0.0))
    return out

  return judge_fn
