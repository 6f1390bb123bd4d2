"""Gold search trajectories for real multi-hop questions: the warm start on QA data.

A pretrained chat model that has never seen the tag protocol answers in prose and never
searches. On the world the demonstrator teaches it; on HotpotQA, 2WikiMultihopQA and
MuSiQue the supporting paragraphs play that role. For a question whose supporting
paragraphs are P_1..P_n in reasoning order (`hop_order`), the gold plan searches each
P_k's entity by name, reads what comes back and answers with the first gold answer:

  <think> To answer this I should look up E_1. </think> <search> E_1 </search>
  <information> ...the top-k passages for "E_1"... </information>
  <think> I have read about E_1. Next I should look up E_2. </think> <search> E_2 </search>
  <information> ... </information>
  <think> I have read about E_2. The answer is A. </think> <answer> A </answer>

E_k is P_k's title without a trailing disambiguation ("Lilu (mythology)" -> "Lilu"), the
name the question or an earlier passage uses. A query is kept only if the retriever puts
P_k in its top k (`gold_plan` tries the bare name, the full title, then the name with the
question); a question for which some hop has no such query is dropped, with its reason.
The observations are rendered later from the same retriever (`render_steps`), so they are
the passages a rollout would read.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sr2.data.examples import Paragraph, QAExample
from sr2.data.trajectories import Plan, PlanStep
from sr2.retrieval.corpus import paragraph_id

_DISAMBIGUATION = re.compile(r"\s*\([^()]*\)\s*$")
_WORD = re.compile(r"\w+")
DROPPED = ("no_supporting", "no_answer", "not_retrieved")


def entity(title: str) -> str:
  """A title without a trailing parenthetical: the entity's name as text mentions it."""
  bare = _DISAMBIGUATION.sub("", title).strip()
  return bare or title.strip()


def _words(text: str) -> set[str]:
  return {w.lower() for w in _WORD.findall(text)}


def _by_title(paragraphs: Sequence[Paragraph], name: str) -> Paragraph | None:
  """The paragraph whose title (or its entity) names `name`, best word overlap first."""
  want = _words(name)
  best, score = None, 0.0
  for p in paragraphs:
    if entity(p.title).lower() == name.strip().lower():
      return p
    got = _words(entity(p.title))
    s = len(want & got) / max(len(want | got), 1)
    if s > score:
      best, score = p, s
  return best if score >= 0.5 else None


def hop_order(example: QAExample) -> list[Paragraph]:
  """The supporting paragraphs in the order a reader needs them.

  MuSiQue rows name each sub-question's paragraph (`question_decomposition`), and
  2WikiMultihopQA rows list the evidence triples in order (`evidences`, matched to
  titles by their subject). Otherwise (HotpotQA) the order is greedy: next comes the
  paragraph whose entity's words are most covered by the question and the paragraphs
  read so far (data order breaks ties), so a bridge entity follows the passage that
  names it and a comparison's entities follow the question.
  """
  paragraphs = tuple(example.paragraphs or ())
  supporting = [p for p in paragraphs if p.is_supporting]
  meta = example.metadata or {}
  ordered: list[Paragraph] = []
  steps = meta.get("question_decomposition")
  if isinstance(steps, list):
    for s in steps:
      i = s.get("paragraph_support_idx") if isinstance(s, dict) else None
      if isinstance(i, int) and 0 <= i < len(paragraphs) and paragraphs[i].is_supporting:
        ordered.append(paragraphs[i])
  evidences = meta.get("evidences")
  if not ordered and isinstance(evidences, list):
    for triple in evidences:
      if isinstance(triple, list | tuple) and triple and isinstance(triple[0], str):
        found = _by_title(supporting, triple[0])
        if found is not None:
          ordered.append(found)
  ordered = list(dict.fromkeys(ordered))
  rest = [p for p in supporting if p not in ordered]
  if ordered:
    return ordered + rest
  known = _words(example.question)
  while rest:
    cover = [
      len(_words(entity(p.title)) & known) / max(len(_words(entity(p.title))), 1) for p in rest
    ]
    nxt = rest.pop(cover.index(max(cover)))
    ordered.append(nxt)
    known |= _words(nxt.text)
  return ordered


def _retrieves(hits: Iterable[Any], paragraph: Paragraph) -> bool:
  want = paragraph_id(paragraph.title, paragraph.text)
  return any(paragraph_id(h.title, h.text) == want for h in hits)


def query_for(
  paragraph: Paragraph, question: str, search: Callable[[str], Sequence[Any]]
) -> str | None:
  """The first of (entity, full title, entity + question) whose top hits hold `paragraph`."""
  name = entity(paragraph.title)
  tries = (name, paragraph.title, f"{name} {question}")
  for query in dict.fromkeys(" ".join(t.split()) for t in tries):  # as the parser reads it
    if _retrieves(search(query), paragraph):
      return query
  return None


def gold_plan(
  example: QAExample, search: Callable[[str], Sequence[Any]]
) -> tuple[Plan | None, str]:
  """The gold plan of a multi-hop row, or (None, reason) with a reason from DROPPED.

  Args:
    example: a multi-hop row (with paragraphs, some marked supporting).
    search: query -> the retriever's top hits (objects with `title` and `text`), as the
      rollout would get them (same index, same k).
  """
  hops = hop_order(example)
  if not hops:
    return None, "no_supporting"
  answer = next((a.strip() for a in example.golden_answers if a.strip()), "")
  if not answer:
    return None, "no_answer"
  steps, prev = [], None
  for p in hops:
    query = query_for(p, example.question, search)
    if query is None:
      return None, "not_retrieved"
    name = entity(p.title)
    think = (
      f"To answer this I should look up {name}."
      if prev is None
      else f"I have read about {prev}. Next I should look up {name}."
    )
    steps.append(PlanStep(think, query=query, gold_passage_id=paragraph_id(p.title, p.text)))
    prev = name
  steps.append(PlanStep(f"I have read about {prev}. The answer is {answer}.", answer=answer))
  return Plan(tuple(steps)), ""


def gold_plans(
  examples: Iterable[QAExample], search: Callable[[str], Sequence[Any]]
) -> tuple[list[tuple[QAExample, Plan]], dict[str, int]]:
  """Every row's gold plan where one exists, and how many rows were dropped per reason."""
  kept, dropped = [], collections.Counter()
  for ex in examples:
    plan, reason = gold_plan(ex, search)
    if plan is None:
      dropped[reason] += 1
    else:
      kept.append((ex, plan))
  return kept, {r: dropped[r] for r in DROPPED}
