"""The process reward: the share of searches that brought useful, new evidence.

The paper's §3, Eq. 16:  r_process(y) = N_useful / M = (1/M) Σ_i u_i, over the M searches of
trajectory y; u_i = 1 when collection c_i (the documents the i-th search returned) is
useful and new. Edge cases (sr2's decisions; the paper is silent): M = 0 → 0; an
unparsable judge reply → 0; a count above M → M.

Two judges, both answering `verdicts(items, outcome)` with one `Verdict` per trajectory:
  lexical (default)  c_i is useful if its normalised text contains a normalised gold answer
                     or a gold supporting title as whole words ("kelt" is in "born in kelt"
                     but not in "keltic"), and new if it holds a passage id that no earlier
                     search of the same trajectory returned. Per-collection labels, no model.
                     Golds that normalise to "yes"/"no" are not looked for (a passage saying
                     "no" says nothing about a yes/no question); gold titles still count.
  llm                the paper's judge prompt (`prompts.judge_prompt`) decoded greedily by
                     any sr2 model through a `Sampler`, batched over trajectories; the last
                     "Final Answer: N" of the reply is the count (`prompts.parse_judge_count`).
                     The model only gives a count, so there are no labels. It is not asked
                     when the outcome is 0 (R = 0 whatever the count) or M = 0 (r_process =
                     0): identical R, fewer prompts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import jax
import numpy as np

from sr2.configlib import check_choices, check_ints
from sr2.data.prompts import judge_prompt, parse_judge_count
from sr2.rewards.qa import normalize_answer

JUDGES = ("lexical", "llm")
_NOT_LOOKED_FOR = frozenset({"", "yes", "no"})


def _str_tuple(value, name: str) -> tuple[str, ...]:
  if isinstance(value, str | bytes) or not isinstance(value, Sequence):
    raise TypeError(f"{name} must be a tuple of str, got {type(value).__name__}")
  for i, v in enumerate(value):
    if not isinstance(v, str):
      raise TypeError(f"{name}[{i}] must be a str, got {type(v).__name__}")
  return tuple(value)


@dataclasses.dataclass(frozen=True)
class Collection:
  """What one search returned: its passage ids and the documents' text the model saw."""

  doc_ids: tuple[str, ...]
  text: str

  def __post_init__(self):
    object.__setattr__(self, "doc_ids", _str_tuple(self.doc_ids, "Collection.doc_ids"))
    if not isinstance(self.text, str):
      raise TypeError(f"Collection.text must be a str, got {type(self.text).__name__}")


@dataclasses.dataclass(frozen=True)
class JudgeItem:
  """One trajectory to judge: its question, gold answers, searches in order, gold titles."""

  question: str
  golds: tuple[str, ...]
  collections: tuple[Collection, ...]
  gold_titles: tuple[str, ...] = ()

  def __post_init__(self):
    if not isinstance(self.question, str) or not self.question.strip():
      raise ValueError(f"JudgeItem.question must be a non-empty str, got {self.question!r}")
    golds = (self.golds,) if isinstance(self.golds, str) else self.golds
    golds = _str_tuple(golds, "JudgeItem.golds")
    if not golds or not all(g.strip() for g in golds):
      raise ValueError(f"JudgeItem.golds must hold at least one non-empty answer, got {golds}")
    if isinstance(self.collections, Collection) or not isinstance(self.collections, Sequence):
      raise TypeError(
        f"JudgeItem.collections must be a tuple of Collection, got {type(self.collections)}"
      )
    for i, c in enumerate(self.collections):
      if not isinstance(c, Collection):
        raise TypeError(f"JudgeItem.collections[{i}] must be a Collection, got {type(c).__name__}")
    object.__setattr__(self, "golds", golds)
    object.__setattr__(self, "collections", tuple(self.collections))
    object.__setattr__(self, "gold_titles", _str_tuple(self.gold_titles, "JudgeItem.gold_titles"))


def density(count: int, m: int) -> float:
  """Eq. 16 from a count: count / M, the count clipped to [0, M]; 0 when M = 0."""
  if m < 0:
    raise ValueError(f"m (number of searches) must be >= 0, got {m}")
  return 0.0 if m == 0 else float(min(max(count, 0), m)) / m


@dataclasses.dataclass(frozen=True)
class Verdict:
  """A judge's finding on one trajectory."""

  count: int  # N_useful, in [0, m].
  m: int  # M, the number of searches.
  # u_i per collection when the judge gives them (lexical), else None (llm).
  labels: tuple[int, ...] | None = None
  # False when the judge skipped the trajectory (llm: outcome 0 or M = 0, or a prompt too long for
  # the sampler); the count is then 0.
  judged: bool = True

  def __post_init__(self):
    if self.m < 0 or not 0 <= self.count <= self.m:
      raise ValueError(f"Verdict needs 0 <= count <= m, got count={self.count}, m={self.m}")
    if self.labels is not None and (
      len(self.labels) != self.m
      or any(u not in (0, 1) for u in self.labels)
      or sum(self.labels) != self.count
    ):
      raise ValueError(f"Verdict.labels {self.labels} must be m={self.m} 0/1s summing to count")

  @property
  def process(self) -> float:
    """r_process = count / M (0 when M = 0)."""
    return density(self.count, self.m)


def process_rewards(verdicts: Sequence[Verdict]) -> np.ndarray:
  """r_process per trajectory, float64 [N]."""
  return np.asarray([v.process for v in verdicts], np.float64).reshape(len(verdicts))


class Judge(Protocol):
  """A process-reward judge: `verdicts` per trajectory, `__call__` their r_process.

  The judges here subclass it for its `__call__`.
  """

  def verdicts(
    self, items: Sequence[JudgeItem], outcome: Sequence[float] | None = None
  ) -> list[Verdict]: ...

  def __call__(
    self, items: Sequence[JudgeItem], outcome: Sequence[float] | None = None
  ) -> np.ndarray:
    return process_rewards(self.verdicts(items, outcome))


def _outcome(items: Sequence[JudgeItem], outcome) -> np.ndarray:
  """Validated outcome rewards [N]; None means "judge everything" (all ones)."""
  for i, it in enumerate(items):
    if not isinstance(it, JudgeItem):
      raise TypeError(f"items[{i}] must be a JudgeItem, got {type(it).__name__}")
  if outcome is None:
    return np.ones(len(items))
  o = np.asarray(outcome, np.float64)
  if o.shape != (len(items),):
    raise ValueError(f"outcome has shape {o.shape}; expected ({len(items)},), one per item")
  if not np.all((o >= 0) & (o <= 1)):
    raise ValueError(f"outcome rewards must lie in [0, 1], got {o}")
  return o


def _has_words(text: str, needle: str) -> bool:
  """`needle` occurs in `text` as a run of whole tokens (both normalised)."""
  return f" {needle} " in f" {text} "


def lexical_labels(item: JudgeItem) -> list[int]:
  """u_i per collection: 1 if useful (a gold answer or gold title in it) and new, else 0."""
  needles = {normalize_answer(g) for g in item.golds} - _NOT_LOOKED_FOR
  needles |= {normalize_answer(t) for t in item.gold_titles} - {""}
  seen: set[str] = set()
  labels = []
  for c in item.collections:
    text = normalize_answer(c.text)
    useful = any(_has_words(text, n) for n in needles)
    new = any(d not in seen for d in c.doc_ids)
    seen.update(c.doc_ids)
    labels.append(int(useful and new))
  return labels


class LexicalJudge(Judge):
  """The default judge (see the module docstring); it labels every item, outcome or not."""

  def verdicts(
    self, items: Sequence[JudgeItem], outcome: Sequence[float] | None = None
  ) -> list[Verdict]:
    _outcome(items, outcome)
    out = []
    for it in items:
      labels = tuple(lexical_labels(it))
      out.append(Verdict(sum(labels), len(labels), labels))
    return out


class LLMJudge(Judge):
  """The paper's judge prompt run greedily by an sr2 model (see the module docstring).

  Prompts are decoded `batch_size` at a time, each batch padded to `batch_size` rows so the
  sampler compiles one batch shape; a prompt whose tokens plus `max_new_tokens` exceed the
  sampler's row capacity is not sent (count 0, `judged=False`, counted in `overflows`).

  Args:
    sampler: a greedy `Sampler` over the judge model, with a tokenizer; it should not stop
      on the agent's tags (`SamplingConfig(stop_strings=())`).
    params: the judge model's params.
    max_new_tokens: reply budget (the paper's reasoning judge used 3,000).
    chat: render the prompt with the tokenizer's chat template when it has one.
    batch_size: rows per decode; None sends all prompts of a call in one unpadded batch.
  """

  def __init__(
    self,
    sampler,
    params,
    max_new_tokens: int = 64,
    chat: bool = True,
    batch_size: int | None = None,
  ):
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    if batch_size is not None and batch_size < 1:
      raise ValueError(f"batch_size={batch_size}; expected >= 1 or None")
    if getattr(sampler, "tokenizer", None) is None:
      raise ValueError("the llm judge's sampler needs a tokenizer (to encode prompts)")
    self.sampler, self.params = sampler, params
    self.max_new_tokens, self.chat, self.batch_size = max_new_tokens, chat, batch_size
    self.calls = 0  # prompts sent to the model
    self.overflows = 0  # prompts too long to send

  def prompt(self, item: JudgeItem) -> str:
    """The judge prompt for one trajectory (it must have at least one search)."""
    tok = self.sampler.tokenizer
    template = tok if self.chat and getattr(tok, "has_chat_template", False) else None
    return judge_prompt(item.question, item.golds, [c.text for c in item.collections], template)

  def _replies(self, prompts: list[list[int]]) -> list[str]:
    """Greedy replies to tokenised prompts, one decode per batch of `batch_size`."""
    tok, size = self.sampler.tokenizer, self.batch_size or len(prompts)
    replies = []
    for start in range(0, len(prompts), size):
      chunk = prompts[start : start + size]
      pad = {"batch": size} if len(chunk) < size else {}
      state = self.sampler.prefill(self.params, chunk, **pad)
      state = self.sampler.decode(self.params, state, self.max_new_tokens)
      tokens, lengths = (np.asarray(a) for a in jax.device_get((state.tokens, state.lengths)))
      for row, p in enumerate(chunk):
        ids = tokens[row, len(p) : int(lengths[row])].tolist()
        replies.append(tok.decode(ids, skip_special_tokens=True))
    self.calls += len(prompts)
    return replies

  def verdicts(
    self, items: Sequence[JudgeItem], outcome: Sequence[float] | None = None
  ) -> list[Verdict]:
    o = _outcome(items, outcome)
    out = [Verdict(0, len(it.collections), judged=False) for it in items]
    capacity = getattr(getattr(self.sampler, "config", None), "max_len", None)
    todo, prompts = [], []
    for i, it in enumerate(items):
      if o[i] == 0 or not it.collections:
        continue
      ids = self.sampler.tokenizer.encode(self.prompt(it))
      if capacity is not None and len(ids) + self.max_new_tokens > capacity:
        self.overflows += 1
        continue
      todo.append(i)
      prompts.append(ids)
    if prompts:
      for i, reply in zip(todo, self._replies(prompts), strict=True):
        m = len(items[i].collections)
        out[i] = Verdict(parse_judge_count(reply, m), m)
    return out


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
  """How the process reward is judged."""

  judge: str = "lexical"  # "lexical" (default, no model) or "llm" (the paper's judge prompt).
  max_new_tokens: int = 64  # llm reply budget in tokens.
  # llm sampler row capacity (prompt + reply), capped at the model's max_seq_len.
  max_len: int = 4096
  batch_size: int = 8  # llm prompts per decode.
  chat: bool = True  # llm prompts rendered with the tokenizer's chat template when it has one.

  def __post_init__(self):
    check_choices(self, "process", {"judge": JUDGES}, error=ValueError)
    check_ints(self, "process", ("max_new_tokens", "max_len", "batch_size"), error=ValueError)
    if self.max_new_tokens >= self.max_len:
      raise ValueError(
        f"process.max_new_tokens={self.max_new_tokens} leaves no room for the prompt in "
        f"process.max_len={self.max_len}"
      )
    if not isinstance(self.chat, bool):
      raise ValueError(f"process.chat={self.chat!r}; expected a bool")


def make_judge(config: ProcessConfig, model=None, *, sampler=None, params=None) -> Judge:
  """The judge `config` names.

  Args:
    config: a ProcessConfig.
    model: llm only, unless `sampler` is given: a loaded model (`sr2.models.load`) with
      `.config`, `.params` and `.tokenizer`; a greedy sampler without stop strings is built.
    sampler: llm only: a ready sampler (then `params` or `model` gives the params).
    params: llm only: the judge's params (default `model.params`).

  Returns:
    A LexicalJudge (the model arguments are ignored) or an LLMJudge.
  """
  if not isinstance(config, ProcessConfig):
    raise TypeError(f"make_judge expects a ProcessConfig, got {type(config).__name__}")
  if config.judge == "lexical":
    return LexicalJudge()
  if sampler is None:
    if model is None or getattr(model, "tokenizer", None) is None:
      raise ValueError("process.judge='llm' needs a model with a tokenizer, or a sampler")
    from sr2.sampling import Sampler, SamplingConfig

    max_len = min(config.max_len, model.config.max_seq_len)
    sampler = Sampler(model.config, model.tokenizer, SamplingConfig(max_len, stop_strings=()))
  if params is None:
    params = getattr(model, "params", None)
  if params is None:
    raise ValueError("process.judge='llm' needs the judge's params (params= or model=)")
  return LLMJudge(sampler, params, config.max_new_tokens, config.chat, config.batch_size)
