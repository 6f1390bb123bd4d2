"""The process reward: the share of searches that brought useful, new evidence.

PAPER.md §3, Eq. 16:  r_process(y) = (1/M) Σ_i u_i, over the M searches of trajectory y;
u_i = 1 when collection c_i (the documents the i-th search returned) is useful and new.
Edge cases (DESIGN.md): M = 0 → 0; an unparsable judge reply → 0; a count above M → M.

Two judges:
  lexical (default)  c_i is useful if its text contains a normalised gold answer as whole
                     words, or the title of a gold supporting passage; new if it holds a
                     passage id that no earlier search of the trajectory returned. Per-
                     collection labels, no model.
  llm                the paper's judge prompt (`prompts.judge_prompt`) decoded greedily by
                     any sr2 model through a `Sampler`, batched over trajectories; the reply's
                     "Final Answer: N" is the count (`prompts.parse_judge_count`). The judge
                     needs the gold answer, so it is called only when the outcome is 1 (a
                     wrong answer gets R = 0 whatever the count) and M > 0.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np

from sr2.data.prompts import judge_prompt, parse_judge_count
from sr2.rewards.qa import normalize_answer

JUDGES = ("lexical", "llm")


@dataclasses.dataclass(frozen=True)
class Collection:
  """What one search returned: the passage ids and the documents' text the model saw."""

  doc_ids: tuple[str, ...]
  text: str


@dataclasses.dataclass(frozen=True)
class JudgeItem:
  """One trajectory to judge."""

  question: str
  golds: tuple[str, ...]
  collections: tuple[Collection, ...]
  gold_titles: tuple[str, ...] = ()


def _contains_words(haystack: str, needle: str) -> bool:
  """`needle` occurs in `haystack` as whole words (both already normalised)."""
  return bool(needle) and re.search(rf"(?<!\S){re.escape(needle)}(?!\S)", haystack) is not None


def lexical_labels(item: JudgeItem) -> list[int]:
  """u_i per collection: 1 if useful (gold answer or gold title in it) and new, else 0."""
  golds = [normalize_answer(g) for g in item.golds]
  titles = [normalize_answer(t) for t in item.gold_titles]
  seen: set[str] = set()
  labels = []
  for c in item.collections:
    text = normalize_answer(c.text)
    useful = any(_contains_words(text, g) for g in golds + titles)
    new = any(d not in seen for d in c.doc_ids)
    seen.update(c.doc_ids)
    labels.append(int(useful and new))
  return labels


def density(count: int, m: int) -> float:
  """Eq. 16 from a count: count / M, the count clipped to [0, M]; 0 when M = 0."""
  if m < 0:
    raise ValueError(f"m (number of searches) must be >= 0, got {m}")
  return 0.0 if m == 0 else float(min(max(count, 0), m)) / m


class LexicalJudge:
  """The default judge (see the module docstring)."""

  def __call__(self, items: Sequence[JudgeItem], outcome: Sequence[float]) -> np.ndarray:
    return np.asarray(
      [density(sum(lexical_labels(it)), len(it.collections)) for it in items], np.float64
    )


class LLMJudge:
  """The paper's judge prompt run greedily by an sr2 model (params fixed at construction).

  Args:
    sampler: a `Sampler` (greedy) over the judge model, with a tokenizer.
    params: the judge model's params.
    max_new_tokens: reply budget.
    chat: render the prompt with the tokenizer's chat template (instruct models).
  """

  def __init__(self, sampler, params, max_new_tokens: int = 64, chat: bool = True):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    self.sampler, self.params = sampler, params
    self.max_new_tokens, self.chat = max_new_tokens, chat
    self.calls = 0  # prompts sent to the model

  def prompt(self, item: JudgeItem) -> str:
    hf = getattr(self.sampler.tokenizer, "hf", None) if self.chat else None
    template = hf if hf is not None and getattr(hf, "chat_template", None) else None
    return judge_prompt(item.question, item.golds, [c.text for c in item.collections], template)

  def __call__(self, items: Sequence[JudgeItem], outcome: Sequence[float]) -> np.ndarray:
    out = np.zeros(len(items), np.float64)
    todo = [i for i, it in enumerate(items) if outcome[i] > 0 and it.collections]
    if not todo:
      return out
    tok = self.sampler.tokenizer
    prompts = [tok.encode(self.prompt(items[i])) for i in todo]
    state = self.sampler.prefill(self.params, prompts)
    state = self.sampler.decode(self.params, state, self.max_new_tokens)
    tokens, lengths = np.asarray(state.tokens), np.asarray(state.lengths)
    self.calls += len(todo)
    for row, (i, p) in enumerate(zip(todo, prompts, strict=True)):
      reply = tok.decode(tokens[row, len(p) : lengths[row]].tolist())
      m = len(items[i].collections)
      out[i] = density(parse_judge_count(reply, m), m)
    return out
