"""What a training run learns on: questions by split, a retriever, a tokenizer and a model.

Two sources (`config.data.source`):
  world  the synthetic world (data/world.py): a BPE tokenizer trained on the world's text,
         a small model from `config.model` initialised at random, SFT examples rendered
         from the gold trajectories (with `config.data.stop_short`, a share of multi-hop
         demonstrations answers one hop early), and corrupted trajectories with a known first flawed
         step (to measure the Meta-Refiner's gate and Trimmer: `JudgeCase`).
  qa     FlashRAG-format QA files named as the evaluation harness names them
         (`qa/<name>[:split]`, `multihop/<set>[:split]` under `config.data.data_root`), BM25
         over `config.data.corpus` (a JSONL corpus or a saved index dir) or, when empty,
         over the pooled paragraphs of the named multi-hop files. With
         `config.data.tfds_dir` the sets are read instead from the tfds datasets
         `experiments/prepare_data.py` wrote there (array_record, random access: each
         process reads the questions it uses). The model and tokenizer
         from `config.model.source` (`sr2.models.load`). RL starts from the checkpoint,
         as in the paper, unless `config.sft.steps > 0`: then the warm start first
         learns the multi-hop train rows' gold search trajectories (`_gold_demonstrations`).
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import itertools
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from sr2 import files, models
from sr2.agent import refiner_prompts
from sr2.agent.oracle import GoldPlan, oracle_judge
from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError, from_config
from sr2.data import WorldConfig, actor_prompt, build_world, gold_search
from sr2.data.examples import dataset_file, read_qa_jsonl
from sr2.data.prompts import chat_of
from sr2.data.trajectories import render_steps
from sr2.data.world_tokenizer import train_tokenizer
from sr2.retrieval import BM25Index, format_documents, pool_multihop_paragraphs, read_jsonl_corpus
from sr2.train import sft

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
SOURCES = ("world", "qa")


@dataclasses.dataclass(frozen=True)
class Question:
  """One question with what the rewards need: gold answers and gold supporting titles."""

  id: str
  question: str
  golds: tuple[str, ...]
  gold_titles: tuple[str, ...] = ()
  hops: int = 0  # 0 when unknown


@dataclasses.dataclass(frozen=True)
class JudgeCase:
  """A rendered trajectory whose first flawed step is known (0 = none): Trimmer accuracy."""

  question: str
  steps: tuple[tuple[str, str | None], ...]
  flawed_step: int
  kind: str


@dataclasses.dataclass
class Task:
  """Everything a run needs besides params. `init_params(seed)` gives the starting params."""

  splits: dict[str, Sequence[Question]]  # lists, or `SplitQuestions` read on access
  retriever: Any
  tokenizer: Any
  model: models.ModelConfig
  rollout: RolloutConfig
  init_params: Callable[[int], Any]
  sft_examples: list[sft.Example | sft.Choice] = dataclasses.field(default_factory=list)
  judge_cases: list[JudgeCase] = dataclasses.field(default_factory=list)
  # Question text -> its gold plan, where known (the world): what the oracle refiner reads.
  gold_plans: dict[str, GoldPlan] = dataclasses.field(default_factory=dict)
  # Whether `init_params` loads a checkpoint (the warm start trains from it) rather than
  # initialising at random (the warm start trains from the run's own fresh state).
  pretrained: bool = False
  # What building the warm start's demonstrations kept and dropped (the run's summary).
  sft_notes: dict[str, Any] = dataclasses.field(default_factory=dict)

  def split(self, name: str) -> Sequence[Question]:
    if name not in self.splits:
      raise ConfigError(f"no split {name!r}; this task has {sorted(self.splits)}")
    return self.splits[name]

  def judge_fn(self, refiner) -> Callable | None:
    """What judges in place of the policy (`refine(judge_fn=)`): the oracle, or None."""
    if refiner.judge != "oracle":
      return None
    if not self.gold_plans:
      raise ConfigError("config.refiner.judge='oracle' needs the world's gold plans (tiny_world)")
    return oracle_judge(self.gold_plans, self.tokenizer)

  def prompt_ids(self, question: Question) -> list[int]:
    """The Actor's prompt, through the chat template where the tokenizer has one (as the
    evaluation harness builds it)."""
    return self.tokenizer.encode(actor_prompt(question.question, chat_of(self.tokenizer)))

  def search_text(self, query: str) -> str:
    """The documents one search returns, formatted and capped as the rollout appends them."""
    hits = self.retriever.search([query], k=self.rollout.top_k)[0]
    return format_documents(hits, tokenizer=self.tokenizer, max_tokens=self.rollout.max_obs_tokens)


def build_task(config) -> Task:
  """The task of an experiment config (see the module docstring)."""
  source = config.data.get("source", "world")
  if source not in SOURCES:
    raise ConfigError(f"config.data.source={source!r}; expected one of {SOURCES}")
  rollout = from_config(RolloutConfig, config.rollout, "config.rollout")
  return world_task(config, rollout) if source == "world" else qa_task(config, rollout)


# --------------------------------------------------------------------------- world


def world_model_config(config, vocab_size: int) -> models.ModelConfig:
  """The world's model: the fields of `config.model` with the tokenizer's vocabulary."""
  fields = {k: v for k, v in config.model.to_dict().items() if k != "source"}
  return models.ModelConfig(**{**fields, "vocab_size": vocab_size})


def world_task(config, rollout: RolloutConfig) -> Task:
  stop_short = config.data.get("stop_short", 0.0)
  if not isinstance(stop_short, int | float) or not 0 <= stop_short <= 1:
    raise ConfigError(f"config.data.stop_short must be in [0, 1], got {stop_short!r}")
  world = build_world(from_config(WorldConfig, config.data.world, "config.data.world"))
  index = BM25Index.build(world.passage_dicts())
  raw_docs = lambda q: format_documents(index.search([q], k=rollout.top_k)[0])
  train = world.split("train")
  gold_text = [
    "".join(a + (o or "") for a, o in render_steps(q.gold, raw_docs))
    for q in train[: config.data.tokenizer_gold_texts]
  ]
  texts = world.texts() + [actor_prompt(q.question) for q in train] + gold_text
  tok = train_tokenizer(texts, config.data.vocab_size)
  model = world_model_config(config, len(tok))
  titles = {pid: title for pid, title, _ in world.passages}

  def question(q) -> Question:
    gold = tuple(titles[s.gold_passage_id] for s in q.gold.steps if s.gold_passage_id)
    return Question(q.id, q.question, (q.answer,), gold, q.hops)

  task = Task(
    splits={s: [question(q) for q in world.split(s)] for s in ("train", "dev", "test")},
    retriever=index,
    tokenizer=tok,
    model=model,
    rollout=rollout,
    init_params=lambda seed: models.init_params(model, _key(seed)),
  )
  search = task.search_text
  task.sft_examples = [_demonstration(q, tok, search, stop_short) for q in train]
  task.sft_examples += _judgements(config, train, tok, search)
  cases = []
  for q in world.split("dev")[: config.data.get("judge_cases", 64)]:
    for t in (q.gold, *q.corrupted):
      cases.append(JudgeCase(q.question, tuple(render_steps(t, search)), t.flawed_step, t.kind))
  task.judge_cases = cases
  task.gold_plans = _gold_plans(world)
  return task


def _gold_plans(world) -> dict[str, GoldPlan]:
  """Question text -> `GoldPlan` over every split; the same text must mean the same plan."""
  plans: dict[str, GoldPlan] = {}
  for split in ("train", "dev", "test"):
    for q in world.split(split):
      queries = tuple(s.query for s in q.gold.steps if s.query is not None)
      plan = GoldPlan(queries, (q.answer,))
      if plans.setdefault(q.question, plan) != plan:
        raise ValueError(f"two world questions read {q.question!r} with different gold plans")
  return plans


def _judgements(config, train, tok, search) -> list[sft.Example]:
  """Judgement demonstrations (`config.data.judge_demos` train questions, two each).

  Each shows the Meta-Refiner's task on a question's gold plan and on one of its corrupted
  plans (the kinds in turn): the refiner prompt in `config.refiner.prompt`'s form over the
  rendered steps, then the digit of the first flawed step (0 for gold), the one token
  trained. A warm start that learns them judges with a measurable precision before RL, as
  a pretrained LLM's judge would; the gate's accuracy is measured on dev questions.
  """
  n = config.data.get("judge_demos", 0)
  if isinstance(n, bool) or not isinstance(n, int) or n < 0:
    raise ConfigError(f"config.data.judge_demos must be an int >= 0, got {n!r}")
  form = config.get("refiner", {}).get("prompt", "table12")
  with_flaws = [q for q in train if q.corrupted]
  out = []
  for i, q in enumerate(with_flaws[:n]):
    for plan in (q.gold, q.corrupted[i % len(q.corrupted)]):
      steps = render_steps(plan, search)
      ids = refiner_prompts.prompt_ids(tok, q.question, steps, form)
      target = refiner_prompts.choice_ids(tok, len(steps))[plan.flawed_step]
      out.append(sft.example_from_segments(ids, [([target], True)]))
  return out


def _demonstration(q, tok, search, stop_short: float) -> sft.Example | sft.Choice:
  """The warm start's demonstration of a train question.

  The gold trajectory, except that on a multi-hop question a `stop_short` share of draws
  answers one hop early with the bridge entity: a demonstrator with a systematic
  decision error that only the outcome reward can correct.
  """
  prompt = tok.encode(actor_prompt(q.question))
  gold = sft.trajectory_example(prompt, render_steps(q.gold, search), tok)
  if not stop_short or q.stop_short is None:
    return gold
  short = sft.trajectory_example(prompt, render_steps(q.stop_short, search), tok)
  return sft.Choice((gold, short), (1.0 - stop_short, stop_short))


def _key(seed: int):
  import jax

  return jax.random.key(seed)


# --------------------------------------------------------------------------- qa


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
