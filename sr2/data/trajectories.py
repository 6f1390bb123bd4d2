"""Trajectories for world questions: gold and corrupted steps, and their rendering.

A gold trajectory searches each entity of a question's chain by name (hop k's entity is
named in the passage read at hop k-1) and answers with the value stated in the last
passage read. Corrupted trajectories (wrong query, misread document, premature answer)
record their first flawed step (1-based), which is what the Meta-Refiner should point at.
`render_steps` / `render_trajectory` write a trajectory in the agent's tag protocol.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Callable

from sr2.data import prompts
from sr2.data.world_entities import RELATIONS, Facts

CORRUPTIONS = ("wrong_query", "misread", "premature")


@dataclasses.dataclass(frozen=True)
class PlanStep:
  """One assistant turn: a think, then either a search query or a final answer.

  `gold_passage_id` is the passage the query is aimed at (the entity it names).
  """

  think: str
  query: str | None = None
  answer: str | None = None
  gold_passage_id: str | None = None

  def __post_init__(self):
    if (self.query is None) == (self.answer is None):
      raise ValueError(f"PlanStep needs exactly one of query or answer, got {self}")


@dataclasses.dataclass(frozen=True)
class Plan:
  """What a demonstration does, before it is rendered as text: steps ending in an answer.

  `flawed_step` is the first bad step (1-based, 0 = none). `render_steps` turns a plan into
  the (assistant text, observation) pairs a rollout's trajectory would hold.
  """

  steps: tuple[PlanStep, ...]
  kind: str = "gold"
  flawed_step: int = 0

  def __post_init__(self):
    if not self.steps or self.steps[-1].answer is None:
      raise ValueError("a Plan must end with an answer step")
    if any(s.answer is not None for s in self.steps[:-1]):
      raise ValueError("only the last step of a Plan may answer")
    if self.kind not in ("gold", *CORRUPTIONS):
      raise ValueError(f"Plan.kind must be 'gold' or one of {CORRUPTIONS}, got {self.kind}")
    if (self.kind == "gold") != (self.flawed_step == 0) or not (
      0 <= self.flawed_step <= len(self.steps)
    ):
      raise ValueError(
        f"Plan.flawed_step {self.flawed_step} does not fit kind "
        f"{self.kind!r} and {len(self.steps)} steps"
      )

  @property
  def answer(self) -> str:
    return self.steps[-1].answer


# ---------------------------------------------------------------------------------------
# Building and corrupting.


def build_trajectory(
  fx: Facts, rels, queried, read, needs, kind="gold", flawed=0, answer=None
) -> Plan:
  """Searches `queried[k]` for `rels[k]` of `needs[k]`, reads `read[k]`, then answers.

  The answer defaults to the last value read; with no query the trajectory answers at once.
  """
  steps, prev = [], ""
  for k, q in enumerate(queried):
    need = f"I need to find {RELATIONS[rels[k]].phrase.format(s=fx.text(needs[k]))}."
    steps.append(PlanStep(f"{prev} {need}".strip(), query=fx.text(q), gold_passage_id=q))
    prev = RELATIONS[rels[k]].fact.format(s=fx.text(q), o=fx.text(read[k]))
  answer = fx.text(read[-1]) if answer is None else answer
  if not prev:  # an answer before any search
    prev = f"I need to find {RELATIONS[rels[0]].phrase.format(s=fx.text(needs[0]))}."
  steps.append(PlanStep(f"{prev} The answer is {answer}.", answer=answer))
  return Plan(tuple(steps), kind, flawed)


def corrupt(fx: Facts, rels, chain, values, kind: str, k: int, rng: random.Random) -> Plan | None:
  """A trajectory whose first flaw is at hop `k` (0-based), or None if none differs."""
  gold_answer = fx.text(values[-1])
  if kind == "premature":  # answers at step k+1, before reading hop k's passage
    guess = (
      fx.text(values[k - 1]) if k else fx.text(fx.alternatives(rng, rels[-1], values[-1], [])[0])
    )
    return build_trajectory(fx, rels, chain[:k], values[:k], chain, kind, k + 1, guess)
  if kind == "wrong_query":  # searches a look-alike of the entity it needs
    same_kind = fx.ids[fx.by_id[chain[k]].kind][:]
    rng.shuffle(same_kind)
    options = [o for o in dict.fromkeys([*fx.similar[chain[k]], *same_kind]) if o != chain[k]]
  else:  # misread: states a wrong value for what hop k's passage says
    near = [fx.fact[(s, rels[k])] for s in fx.similar[chain[k]]]
    options = fx.alternatives(rng, rels[k], values[k], near)
  for alt in options[:20]:
    if kind == "wrong_query":
      queried, read = [*chain[:k], alt], [*values[:k], fx.fact[(alt, rels[k])]]
    else:
      queried, read = list(chain[: k + 1]), [*values[:k], alt]
    fx.walk(rels, queried, read)
    if fx.text(read[-1]) != gold_answer:
      return build_trajectory(
        fx,
        rels,
        queried,
        read,
        [*chain[: k + 1], *queried[k + 1 :]],
        kind,
        k + 1 if kind == "wrong_query" else k + 2,
      )
  return None


# ---------------------------------------------------------------------------------------
# Rendering in the agent's tag protocol.


def render_steps(trajectory: Plan, search_fn: Callable[[str], str]) -> list[tuple[str, str | None]]:
  """Each step as `(assistant_text, information_text or None)`.

  Args:
    trajectory: gold or corrupted.
    search_fn: query -> observation (e.g. `Doc 1(Title: t) text` lines of the top hits).

  Returns:
    Pairs that concatenate to `render_trajectory`'s text; the information text (retrieved,
    not written by the model) is what the loss mask leaves out.
  """
  out = []
  for s in trajectory.steps:
    think = f"{prompts.THINK_OPEN}{s.think}{prompts.THINK_CLOSE}\n"
    if s.query is not None:
      act = f"{prompts.SEARCH_OPEN} {s.query} {prompts.SEARCH_CLOSE}"
      out.append((think + act, prompts.wrap_information(search_fn(s.query))))
    else:
      out.append((think + f"{prompts.ANSWER_OPEN} {s.answer} {prompts.ANSWER_CLOSE}", None))
  return out


def render_trajectory(trajectory: Plan, search_fn: Callable[[str], str]) -> str:
  """The trajectory as the Actor's response text, with observations from `search_fn`."""
  return "".join(a + (t or "") for a, t in render_steps(trajectory, search_fn))
