"""The task of real QA files (`config.data.source="qa"`).

FlashRAG-format QA files named as the evaluation harness names them (`qa/<name>[:split]`,
`multihop/<set>[:split]` under `config.data.data_root`), BM25 over `config.data.corpus`
(a JSONL corpus or a saved index dir) or, when empty, over the pooled paragraphs of the
named multi-hop files. With `config.data.tfds_dir` the sets are read instead from the tfds
datasets `experiments/prepare_data.py` wrote there (array_record, random access: each
process reads the questions it uses). The model and tokenizer come from
`config.model.source` (`sr2.models.load`). RL starts from the checkpoint, as in the paper,
unless `config.sft.steps > 0`: then the warm start first learns the multi-hop train rows'
gold search trajectories (`_gold_demonstrations`).
"""

from __future__ import annotations

import bisect
import functools
import itertools
import pathlib
from collections.abc import Sequence
from typing import Any

from sr2 import files, models
from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError, from_config
from sr2.data import gold_search
from sr2.data.examples import dataset_file, read_qa_jsonl
from sr2.data.trajectories import render_steps
from sr2.retrieval import BM25Index, pool_multihop_paragraphs, read_jsonl_corpus
from sr2.train import sft
from sr2.train.task.core import Question, Task

REPO_ROOT = pathlib.Path(__file__).resolve().parents[3]


def _resolve(root, name: str, default_split: str):
  kind, _, path = dataset_file(root, name, default_split, "config.data")
  return kind, path


def _question(ex, multihop: bool) -> Question:
  """A `Question` from a `QAExample` (gold titles: a multi-hop row's supporting paragraphs)."""
  gold_titles = ()
  if multihop:
    gold_titles = tuple(p.title for p in ex.paragraphs or () if p.is_supporting)
  return Question(ex.id, ex.question, tuple(ex.golden_answers), gold_titles)


def _rows(root, names: Sequence[str], split: str, limit: int) -> list[tuple[Any, bool]]:
  """The named sets' `QAExample`s, each with whether it is a multi-hop row."""
  out = []
  for name in names:
    kind, path = _resolve(root, name, split)
    rows = read_qa_jsonl(path)
    out += [(ex, kind == "multihop") for ex in (rows[:limit] if limit else rows)]
  return out


def _questions(root, names: Sequence[str], split: str, limit: int) -> list[Question]:
  return [_question(ex, multihop) for ex, multihop in _rows(root, names, split, limit)]


class SplitQuestions(Sequence[Question]):
  """The questions of prepared tfds splits (`experiments/prepare_data.py`), read on access.

  The splits are array_record files with random access, so a process that indexes only
  its share of each step's questions reads only those records. `parts` are
  (`sr2.data.qa.QASplit`, multi-hop?) pairs, concatenated in order.
  """

  def __init__(self, parts: Sequence[tuple[Any, bool]]):
    self._parts = list(parts)
    self._ends = list(itertools.accumulate(len(split) for split, _ in self._parts))

  def __len__(self) -> int:
    return self._ends[-1] if self._ends else 0

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    if not -len(self) <= i < len(self):
      raise IndexError(f"question {i} of {len(self)}")
    i %= len(self)
    k = bisect.bisect_right(self._ends, i)
    split, multihop = self._parts[k]
    return _question(split[i - (self._ends[k - 1] if k else 0)], multihop)

  def examples(self):
    """Every row's `QAExample` with whether it is multi-hop (e.g. to pool paragraphs)."""
    for split, multihop in self._parts:
      yield from ((ex, multihop) for ex in split)


def _tfds_questions(tfds_dir: str, names: Sequence[str], split: str, limit: int):
  """`SplitQuestions` of the named sets, read from the tfds datasets under `tfds_dir`."""
  from sr2.data import qa  # tensorflow-datasets, only for runs that read its datasets

  parts = []
  for name in names:
    base, _, own_split = name.partition(":")
    kind, _, set_name = base.partition("/")
    if kind not in ("qa", "multihop") or not set_name:
      raise ConfigError(f"config.data: {name!r}; expected qa/<name> or multihop/<set>[:split]")
    tfds_name = qa.MULTIHOP_PREFIX + set_name if kind == "multihop" else set_name
    chosen = (own_split or split) + (f"[:{limit}]" if limit else "")
    try:
      parts.append((qa.load_split(tfds_name, chosen, tfds_dir), kind == "multihop"))
    except ValueError as e:
      raise ConfigError(f"config.data.tfds_dir: {e}") from None
  return SplitQuestions(parts)


def qa_task(config, rollout: RolloutConfig) -> Task:
  """The QA task (see the module docstring)."""
  d = config.data
  root = files.resolve(d.data_root, REPO_ROOT)  # local or gs://
  tfds_dir = d.get("tfds_dir", "")
  if not root.is_dir() and not tfds_dir:
    raise ConfigError(f"config.data.data_root: {root} is not a directory")
  read = (
    functools.partial(_tfds_questions, tfds_dir)
    if tfds_dir
    else functools.partial(_questions, root)
  )
  splits = {
    "train": read(d.train, "train", d.get("train_limit", 0)),
    "dev": read(d.dev, "dev", d.get("eval_limit", 0)),
    "test": read(d.test or d.dev, "test" if d.test else "dev", d.get("eval_limit", 0)),
  }
  if d.corpus:
    corpus = files.resolve(d.corpus, root)
    if corpus.is_dir():
      index = BM25Index.load(files.local_copy(corpus))
    elif corpus.is_file():
      index = BM25Index.build(read_jsonl_corpus(corpus))
    else:
      raise ConfigError(f"config.data.corpus: {corpus} does not exist")
  elif tfds_dir:
    rows = [
      {"paragraphs": [{"title": p.title, "text": p.text} for p in ex.paragraphs]}
      for split in (splits["train"], splits["dev"])
      for ex, multihop in split.examples()
      if multihop
    ]
    if not rows:
      raise ConfigError("config.data.corpus is empty and no multihop/ set is named to pool")
    index = BM25Index.build(pool_multihop_paragraphs(rows))
  else:
    multihop = [n for n in (*d.train, *d.dev) if n.startswith("multihop/")]
    qa_files = [_resolve(root, n, "train")[1] for n in multihop]
    if not qa_files:
      raise ConfigError("config.data.corpus is empty and no multihop/ set is named to pool")
    index = BM25Index.build(pool_multihop_paragraphs(qa_files))
  spec = from_config(models.ModelSpec, config.model, "config.model")
  loaded = models.build(spec)
  if loaded.tokenizer is None:
    raise ConfigError(f"config.model.source={spec.source!r} has no tokenizer to train with")
  task = Task(
    splits=splits,
    retriever=index,
    tokenizer=loaded.tokenizer,
    model=loaded.config,
    rollout=rollout,
    init_params=lambda seed: loaded.params,
    pretrained=True,
  )
  if config.get("sft", {}).get("steps", 0):
    train = (
      splits["train"].examples()
      if tfds_dir
      else _rows(root, d.train, "train", d.get("train_limit", 0))
    )
    task.sft_examples, task.sft_notes = _gold_demonstrations(
      task, [ex for ex, multihop in train if multihop], config.rl.max_len
    )
  return task


def _gold_demonstrations(task: Task, rows, max_len: int) -> tuple[list[sft.Example], dict]:
  """The warm start's demonstrations on QA data: each multi-hop train row's gold search
  trajectory (`sr2.data.gold_search`), rendered with this task's retriever, prompt and
  tokenizer as a rollout would be. Rows with no plan, or longer than `max_len` tokens
  (the sampler's rows), are dropped and counted."""
  search = lambda q: task.retriever.search([q], k=task.rollout.top_k)[0]
  kept, dropped = gold_search.gold_plans(rows, search)
  examples = []
  for ex, plan in kept:
    prompt = task.prompt_ids(_question(ex, True))
    examples.append(
      sft.trajectory_example(prompt, render_steps(plan, task.search_text), task.tokenizer)
    )
  fits = [e for e in examples if len(e.ids) <= max_len]
  dropped["too_long"] = len(examples) - len(fits)
  if not fits:
    raise ConfigError(
      f"config.sft.steps > 0 but none of the {len(rows)} multi-hop train rows gives a gold "
      f"search trajectory that fits (dropped: {dropped}); name multihop/<set>:train sets in "
      "config.data.train, or raise config.rl.max_len for trajectories too long"
    )
  notes = {"demonstrations": len(fits), "rows": len(rows), "dropped": dropped}
  return fits, notes
