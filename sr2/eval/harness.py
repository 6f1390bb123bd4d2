"""Evaluation: datasets × methods → one row of metrics each, plus per-question records.

A dataset is named `multihop/<set>` or `qa/<name>`, optionally with `:<split>`:
  multihop/<set>  questions from `<data_root>/multihop/<set>/<split>.jsonl`; the corpus is
                  the pooled, deduplicated paragraphs of that whole file, so BM25 can find
                  the answers (and every question's distractors are in it too).
  qa/<name>       questions from `<data_root>/qa/<name>/<split>.jsonl`; the corpus is
                  `eval.corpora[<name>]` or else `eval.corpus`: a JSONL corpus (indexed
                  here) or a directory saved by `BM25Index.save`.
Each corpus index is built once and shared by every dataset that names it. Samplers are
built once per method and reused across batches and datasets, so programs compile once.

Metrics per (dataset, method): mean EM and F1 of the prediction (methods.py says how it is
read), mean retriever calls per question (`rag`: 1), mean generation turns (baselines: 1),
mean model-written tokens (the agent's observations excluded) and wall seconds, compile
time of the first batch included.
"""

from __future__ import annotations

import collections
import dataclasses
import os
import pathlib
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import tqdm
from absl import logging

from sr2 import files, models
from sr2.agent.rollout import RolloutConfig
from sr2.configlib import ConfigError, check_ints, check_keys, from_config
from sr2.data.examples import DATA_ENV, dataset_file, default_data_root, read_qa_jsonl
from sr2.eval import methods as methods_lib
from sr2.parallel import hosts
from sr2.retrieval import BM25Config, BM25Index, pool_multihop_paragraphs, read_jsonl_corpus
from sr2.rewards.qa import exact_match, f1
from sr2.sampling import Sampler, SamplingConfig, sampling_config

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
_GROUPS = ("model", "sampling", "rollout", "retrieval", "eval")

SamplerFactory = Callable[[str, SamplingConfig], Any]  # (method, sampling config) -> sampler


@dataclasses.dataclass(frozen=True)
class EvalConfig:
  """What to evaluate and how (the `eval` group plus the typed groups it uses)."""

  # `multihop/<set>` or `qa/<name>`, each optionally `:<split>`.
  datasets: tuple[str, ...] = ("multihop/hotpotqa",)
  # a subset of `methods.METHODS`, run in this order.
  methods: tuple[str, ...] = methods_lib.METHODS
  split: str = "dev"  # the split of datasets that name none.
  # folder holding `multihop/` and `qa/`; relative to the repo root.
  data_root: str = dataclasses.field(default_factory=default_data_root)
  # corpus of `qa/` datasets: a JSONL file or a saved index dir (relative to `data_root`);
  # "" = none.
  corpus: str = ""
  # per `qa/` set name, a corpus that overrides `corpus`.
  corpora: Mapping[str, str] = dataclasses.field(default_factory=dict)
  limit: int = 0  # questions per dataset, the first ones of the file; 0 = all.
  batch_size: int = 8  # questions per sampler call (the last batch is padded with empty rows).
  max_new_tokens: int = 64  # answer budget of `direct` and `rag`, in tokens.
  cot_max_new_tokens: int = 256  # budget of `cot` (reasoning + answer), in tokens.
  seed: int = 0  # sampling seed (unused by greedy decoding).
  progress: bool = True  # a progress bar per dataset and method on stderr (process 0).
  # the decoding of every method; stop strings are set per method.
  sampling: SamplingConfig = SamplingConfig()
  # the agent's loop; `top_k`/`max_obs_tokens` also shape the `rag` documents.
  rollout: RolloutConfig = RolloutConfig()
  bm25: BM25Config = BM25Config()  # how corpus indices built here score.

  def __post_init__(self):
    for name in ("datasets", "methods"):
      value = getattr(self, name)
      if isinstance(value, str) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"eval.{name} must be a non-empty list of strings, got {value!r}")
      object.__setattr__(self, name, tuple(value))
    bad = [m for m in self.methods if m not in methods_lib.METHODS]
    if bad or len(set(self.methods)) != len(self.methods):
      raise ConfigError(f"eval.methods={self.methods}; expected distinct {methods_lib.METHODS}")
    check_ints(self, "eval", ("limit",), minimum=0)
    check_ints(self, "eval", ("batch_size", "max_new_tokens", "cot_max_new_tokens"))
    corpora = dict(self.corpora)
    if not all(isinstance(v, str) for kv in corpora.items() for v in kv):
      raise ConfigError(f"eval.corpora must map set names to corpus paths, got {corpora!r}")
    object.__setattr__(self, "corpora", corpora)


def eval_config(config: Any) -> tuple[models.ModelSpec, EvalConfig]:
  """The typed `(ModelSpec, EvalConfig)` of an evaluation ConfigDict; unknown fields raise."""
  check_keys(config.keys(), _GROUPS, "config", required=_GROUPS)
  spec = from_config(models.ModelSpec, config.model, "config.model")
  if "stop_strings" in config.sampling:
    raise ConfigError("config.sampling.stop_strings: the harness sets stop strings per method")
  return spec, from_config(
    EvalConfig,
    config.eval,
    "config.eval",
    sampling=sampling_config(config.sampling),
    rollout=from_config(RolloutConfig, config.rollout, "config.rollout"),
    bm25=from_config(BM25Config, config.retrieval, "config.retrieval"),
  )


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """A resolved dataset: its questions file and its corpus ("" = the pooled paragraphs)."""

  name: str
  path: files.PathLike
  corpus: str


def data_root(cfg: EvalConfig):
  """`cfg.data_root` as an absolute path (local or gs://); raises if it is not a directory."""
  root = files.resolve(cfg.data_root, REPO_ROOT)
  if not root.is_dir():
    raise ConfigError(
      f"eval.data_root: {root} is not a directory; point config.eval.data_root at the folder "
      f"holding multihop/ and qa/ (default ${DATA_ENV}, else data/ under the repo root)"
    )
  return root


def resolve_datasets(cfg: EvalConfig) -> list[DatasetSpec]:
  """Checks every dataset's file and corpus exist, before anything loads or compiles."""
  root, out = data_root(cfg), []
  needs_corpus = any(m in methods_lib.RETRIEVAL_METHODS for m in cfg.methods)
  for name in cfg.datasets:
    kind, set_name, path = dataset_file(root, name, cfg.split, "eval.datasets")
    corpus = ""
    if kind == "qa" and needs_corpus:
      corpus = cfg.corpora.get(set_name, cfg.corpus)
      if not corpus:
        raise ConfigError(f"eval: dataset {name!r} needs eval.corpora.{set_name} or eval.corpus")
      corpus = os.fspath(files.resolve(corpus, root))
      if not files.path(corpus).exists():
        raise ConfigError(f"eval: corpus {corpus} of dataset {name!r} does not exist")
    out.append(DatasetSpec(name, path, corpus))
  return out


def _index(ds: DatasetSpec, cfg: EvalConfig, cache: dict[str, BM25Index]) -> BM25Index:
  key = ds.corpus or f"pooled:{ds.path}"
  if key not in cache:
    start = time.perf_counter()
    if not ds.corpus:
      passages = pool_multihop_paragraphs(ds.path)
    elif files.path(ds.corpus).is_dir():
      cache[key] = BM25Index.load(files.local_copy(ds.corpus))
      return cache[key]
    else:
      passages = read_jsonl_corpus(ds.corpus)
    cache[key] = BM25Index.build(passages, **dataclasses.asdict(cfg.bm25))
    logging.info(
      "BM25 over %d passages of %s: %.1fs", len(passages), key, time.perf_counter() - start
    )
  return cache[key]


@dataclasses.dataclass
class EvalResult:
  """`rows`: one metrics dict per (dataset, method); `trajectories[(dataset, method)]`."""

  rows: list[dict[str, Any]]
  trajectories: dict[tuple[str, str], list[dict[str, Any]]]


def summarize(dataset: str, method: str, records: Sequence[dict], wall_s: float) -> dict:
  """The metrics row of scored per-question records."""
  n = len(records)

  def mean(key):
    return round(sum(float(r[key]) for r in records) / n, 4) if n else 0.0

  def share(holds):
    return round(sum(1 for r in records if holds(r)) / n, 4) if n else 0.0

  return {
    "dataset": dataset,
    "method": method,
    "n": n,
    "em": mean("em"),
    "f1": mean("f1"),
    "mean_searches": mean("searches"),
    # Shares of questions with at least one valid search (parsed, retrieved a passage) and
    # with a closed <answer>: whether a model follows the protocol at all.
    "valid_search_rate": share(lambda r: r.get("valid_searches", 0) > 0),
    "answer_rate": share(lambda r: bool(r.get("answered"))),
    "mean_turns": mean("turns"),
    "mean_new_tokens": mean("new_tokens"),
    # Why each question ended (answer, eos, max_turns, context_full, prompt_too_long, ...).
    "finish": dict(collections.Counter(str(r.get("finish")) for r in records)),
    "wall_s": round(wall_s, 2),
  }


def evaluate(
  model: models.Model, cfg: EvalConfig, make_sampler: SamplerFactory | None = None
) -> EvalResult:
  """Runs `cfg.methods` on `cfg.datasets` with greedy (or configured) decoding.

  Args:
    model: config, params and a tokenizer (prompts are text).
    cfg: what to run.
    make_sampler: builds the sampler of a method from its sampling config; defaults to
      `Sampler(model.config, model.tokenizer, ...)` (tests pass scripted fakes).

  Returns:
    The metrics rows and, per (dataset, method), one record per question:
    `{id, question, golds, prediction, em, f1, searches, turns, finish, response, ...}`.
  """
  specs = resolve_datasets(cfg)
  if model.tokenizer is None:
    raise ValueError(f"model {model.source!r} has no tokenizer; evaluation needs one")
  make_sampler = make_sampler or (lambda _, sc: Sampler(model.config, model.tokenizer, sc))
  samplers = {
    m: make_sampler(m, dataclasses.replace(cfg.sampling, stop_strings=methods_lib.stop_strings(m)))
    for m in cfg.methods
  }
  indices: dict[str, BM25Index] = {}
  rows, trajectories = [], {}
  rng = jax.random.key(cfg.seed)
  for ds in specs:
    examples = read_qa_jsonl(ds.path)
    examples = examples[: cfg.limit] if cfg.limit else examples
    retriever = None
    if any(m in methods_lib.RETRIEVAL_METHODS for m in cfg.methods):
      retriever = _index(ds, cfg, indices)
    # With several processes each runs every P-th batch; the records are gathered after.
    starts = list(range(0, len(examples), cfg.batch_size))
    mine = starts[jax.process_index() :: jax.process_count()]
    for method in cfg.methods:
      start, records, by_batch = time.perf_counter(), [], []
      bar = tqdm.tqdm(
        total=len(examples),
        desc=f"{ds.name} {method}",
        unit="q",
        file=sys.stderr,
        dynamic_ncols=True,
        disable=not (cfg.progress and hosts.is_writer()),
      )
      for j, b in enumerate(mine):
        batch = examples[b : b + cfg.batch_size]
        kwargs = dict(retriever=retriever, rollout=cfg.rollout, batch_size=cfg.batch_size)
        key = jax.random.fold_in(rng, b)
        if method == "agent":
          out = methods_lib.run_agent(samplers[method], model.params, batch, rng=key, **kwargs)
        else:
          budget = cfg.cot_max_new_tokens if method == "cot" else cfg.max_new_tokens
          out = methods_lib.run_baseline(
            samplers[method],
            model.params,
            method,
            batch,
            max_new_tokens=budget,
            rng=key,
            **kwargs,
          )
        records += [_score(ex, rec) for ex, rec in zip(batch, out, strict=True)]
        by_batch.append([b, records[-len(batch) :]])
        # Every process runs its batch of the round alike: the bar counts the whole round.
        done = min(len(examples), (j + 1) * jax.process_count() * cfg.batch_size)
        bar.update(done - bar.n)
      bar.close()
      logging.info(
        "%s %s: %d questions, %.1fs", ds.name, method, len(examples), time.perf_counter() - start
      )
      if jax.process_count() > 1:
        gathered = sorted(
          (p for part in hosts.gather_json(by_batch) for p in part), key=lambda p: p[0]
        )
        records = [r for _, batch_records in gathered for r in batch_records]
      rows.append(summarize(ds.name, method, records, time.perf_counter() - start))
      trajectories[(ds.name, method)] = records
  return EvalResult(rows, trajectories)


def _score(ex, rec: dict[str, Any]) -> dict[str, Any]:
  pred = rec["prediction"]
  return {
    "id": ex.id,
    "question": ex.question,
    "golds": list(ex.golden_answers),
    "prediction": pred,
    "em": exact_match(pred, ex.golden_answers),
    "f1": f1(pred, ex.golden_answers),
    **{k: v for k, v in rec.items() if k != "prediction"},
  }
