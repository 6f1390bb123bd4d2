"""Retrieval: sr2's BM25 (lucene, okapi) against bm25s and rank-bm25, for speed and recall.

Run (or through `experiments/benchmark.py retrieval`):

  python -m sr2.benchmarks.retrieval --corpus PATH --queries PATH --k 3 [--size 100000]
  python -m sr2.benchmarks.retrieval --recall [--multihop DATA/multihop]

Prints one JSON object per measurement. Speed: each implementation is built and searched in
a fresh process, so its peak memory is its own: the process's resident high-water mark
(VmHWM) is reset after the corpus is loaded (`/proc/self/clear_refs`), and
`rss_growth_mb` is that mark after build and every timed search minus the resident size
before the build. `--size` pads the corpus with seeded synthetic passages ("Filler i")
whose words are drawn from the corpus's unigram distribution and whose lengths from its
length distribution. Implementations: sr2 (its tokenizer), bm25s with sr2's tokens and
with its own `bm25s.tokenize(..., stopwords="en")`, and rank-bm25's `BM25Okapi` with sr2's
tokens on the first `--rank_bm25_queries` queries (it is about 1000x slower). Recall
(`--recall`, the same implementations, in process): for each multi-hop dev set, the corpus
is its pooled paragraphs (`pool_multihop_paragraphs`), and recall@k is the fraction of a
question's supporting paragraphs among its top k, averaged over its questions.
"""

import argparse
import collections
import concurrent.futures
import gc
import json
import multiprocessing
import pathlib
import re
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from sr2.data.examples import default_data_root
from sr2.retrieval import impls
from sr2.retrieval.corpus import pool_multihop_paragraphs, read_jsonl_corpus

_DATA = pathlib.Path(__file__).resolve().parents[2] / default_data_root()  # absolute stays
_SPEED_IMPLS = ("sr2:lucene", "sr2:okapi", "bm25s:own", "bm25s:sr2", "rank_bm25:sr2")
_RECALL_IMPLS = ("sr2:lucene", "sr2:okapi", "bm25s:own", "bm25s:sr2", "rank_bm25:sr2")
_MULTIHOP_SETS = ("hotpotqa", "2wikimultihopqa", "musique")
_SPACES = re.compile(r"\s+")  # as pool_multihop_paragraphs normalises text

Search = Callable[[list[str]], list[list[str]]]  # queries -> top-k passage ids each


def retrieval_benchmark(argv: Sequence[str] | None = None) -> list[dict]:
  """Runs the speed (default) or `--recall` measurements; prints JSON lines.

  Args:
    argv: command-line flags (see `--help`); None reads nothing beyond the defaults.

  Returns:
    The measurements, as printed.
  """
  args = _parser().parse_args(list(argv) if argv is not None else [])
  return _recall(args) if args.recall else _speed(args)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="benchmark retrieval", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
  )
  p.add_argument("--corpus", default=str(_DATA / "corpus" / "wiki_intros.jsonl"))
  p.add_argument(
    "--queries",
    "--questions",
    default=str(_DATA / "qa" / "hotpotqa" / "dev.jsonl"),
    help="QA JSONL with a 'question' field; the first --num_queries are used",
  )
  p.add_argument("--num_queries", "--num_questions", type=int, default=500)
  p.add_argument("--size", type=int, default=0, help="pad the corpus with filler to this many")
  p.add_argument("--seed", type=int, default=0, help="seed of the filler passages")
  p.add_argument("--k", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
  p.add_argument(
    "--rank_bm25_queries",
    "--rank_bm25_questions",
    type=int,
    default=100,
    help="queries for the (slow) rank-bm25 reference; 0 skips it",
  )
  p.add_argument(
    "--impls",
    default=",".join(_SPEED_IMPLS),
    help="comma-separated implementations to time (e.g. sr2:lucene alone at corpus scale)",
  )
  p.add_argument("--recall", action="store_true", help="measure recall@k on multi-hop sets")
  p.add_argument("--multihop", default=str(_DATA / "multihop"), help="holds <set>/dev.jsonl")
  return p


def synthetic_filler(passages: Sequence[dict], n: int, seed: int = 0) -> list[dict]:
  """`n` passages "Filler i" drawn from the unigram word and length statistics of `passages`.

  Words are whitespace-separated pieces of the passages' texts (punctuation attached), so
  the filler tokenizes like the real text; no real passage is copied.
  """
  return [p for block in filler_blocks(passages, n, seed) for p in block]


def filler_blocks(passages: Sequence[dict], n: int, seed: int = 0, block: int = 100_000):
  """`synthetic_filler`'s passages in lists of `block`, drawn as needed (millions fit)."""
  texts = [p["text"].split() for p in passages]
  unigram = collections.Counter(w for t in texts for w in t)
  words = sorted(unigram)  # sorted: the draws depend on the seed only, not on dict order
  counts = np.array([unigram[w] for w in words], dtype=np.float64)
  cdf = np.cumsum(counts / counts.sum())
  rng = np.random.default_rng(seed)
  lengths = rng.choice(np.array([len(t) for t in texts]), size=n)
  for first in range(0, n, block):
    sizes = lengths[first : first + block]
    draws = np.minimum(cdf.searchsorted(rng.random(int(sizes.sum())), side="right"), len(words) - 1)
    ends = np.cumsum(sizes).tolist()
    out, start = [], 0
    for i, end in enumerate(ends, start=first):
      text = " ".join([words[j] for j in draws[start:end].tolist()])
      out.append({"id": f"filler-{i:06d}", "title": f"Filler {i}", "text": text})
      start = end
    yield out


# ---------------------------------------------------------------------------------------
# Speed and memory.


def _speed(args) -> list[dict]:
  corpus = read_jsonl_corpus(args.corpus)
  real = len(corpus)
  if args.size and args.size < real:
    raise SystemExit(f"--size {args.size} is below the corpus's {real} passages")
  questions = _questions(args.queries, args.num_queries)
  base = {
    "benchmark": "retrieval",
    "passages": max(real, args.size),
    "real_passages": real,
    "queries": len(questions),
    "k": args.k,
  }
  out, ids = [], {}
  with tempfile.TemporaryDirectory() as tmp:
    corpus_path = pathlib.Path(tmp) / "corpus.jsonl"
    with open(corpus_path, "w", encoding="utf-8") as f:
      f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in corpus)
      for block in filler_blocks(corpus, max(0, args.size - real), args.seed):
        f.writelines(json.dumps(p, ensure_ascii=False) + "\n" for p in block)
    del corpus
    chosen = [i for i in args.impls.split(",") if i]
    unknown = sorted(set(chosen) - set(_SPEED_IMPLS))
    if unknown:
      raise SystemExit(f"--impls: unknown {unknown}; expected some of {list(_SPEED_IMPLS)}")
    for impl in [i for i in _SPEED_IMPLS if i in chosen]:
      qs, reference = questions, None
      if impl.startswith("rank_bm25"):
        if not args.rank_bm25_queries or "sr2:okapi" not in ids:
          continue
        qs = questions[: args.rank_bm25_queries]
        reference = ids["sr2:okapi"][: len(qs)]
      ctx = multiprocessing.get_context("spawn")
      with concurrent.futures.ProcessPoolExecutor(1, mp_context=ctx) as pool:
        row, ids[impl] = pool.submit(_measure, impl, str(corpus_path), qs, args, reference).result()
      if impl.startswith("bm25s") and "sr2:lucene" in ids:
        row["top_k_agreement_with_sr2_lucene"] = _agreement(ids[impl], ids["sr2:lucene"])
      out.append({**base, **row})
      print(json.dumps(out[-1]), flush=True)
  out.append(_summary(base, {r["impl"]: r for r in out}))
  print(json.dumps(out[-1]), flush=True)
  return out


def _measure(impl: str, corpus_path: str, questions: list[str], args, reference) -> tuple:
  """In a fresh process: build, time searches, peak memory, bytes; returns (row, top ids)."""
  corpus = read_jsonl_corpus(corpus_path)
  gc.collect()
  rss_before = impls.reset_peak_rss()
  start = time.perf_counter()
  engine = impls.build(impl, corpus, args.k)
  row = {"impl": impl, "build_s": round(time.perf_counter() - start, 3)}
  search = engine["search"]
  start = time.perf_counter()
  ids = search(questions)  # a warm-up for the others; rank-bm25 is timed once, here
  if impl.startswith("rank_bm25"):  # one query at a time is its only mode
    row["single_qps"] = round(len(questions) / (time.perf_counter() - start), 2)
  else:
    batched = min(impls.timed(lambda: search(questions)) for _ in range(args.repeats))
    single = min(impls.timed(lambda: [search([q]) for q in questions]) for _ in range(args.repeats))
    row["batched_qps"] = round(len(questions) / batched, 1)
    row["single_qps"] = round(len(questions) / single, 1)
  peak = impls.peak_rss_mb()
  row["peak_rss_mb"] = round(peak, 1)
  row["rss_growth_mb"] = None if rss_before is None else round(peak - rss_before, 1)
  if reference is not None:
    row.update(engine["agreement"](questions, reference))
  row.update(engine["bytes"](questions))
  return row, ids


def _summary(base: dict, rows: dict) -> dict:
  """Ratios the acceptance targets are stated in."""
  out = {**base, "benchmark": "retrieval_summary"}
  rank = rows.get("rank_bm25:sr2")
  if rank:
    for mode in ("batched", "single"):
      ratio = rows["sr2:okapi"][f"{mode}_qps"] / rank["single_qps"]
      out[f"sr2_okapi_{mode}_over_rank_bm25"] = round(ratio, 1)
    out["target_1000x_rank_bm25_met"] = out["sr2_okapi_batched_over_rank_bm25"] >= 1000
    out["top_k_identical_to_rank_bm25_up_to_ties"] = rank["top_k_identical_up_to_exact_ties"] == 1
  for tokens in ("own", "sr2"):
    if "sr2:lucene" not in rows or f"bm25s:{tokens}" not in rows:
      continue
    for mode in ("batched", "single"):
      ratio = rows["sr2:lucene"][f"{mode}_qps"] / rows[f"bm25s:{tokens}"][f"{mode}_qps"]
      out[f"sr2_lucene_{mode}_over_bm25s_{tokens}_tokens"] = round(ratio, 2)
  lucene = [v for key, v in out.items() if key.startswith("sr2_lucene_")]
  if lucene:
    out["target_faster_than_bm25s_met"] = all(v > 1 for v in lucene)
  return out


# ---------------------------------------------------------------------------------------
# Recall of supporting paragraphs.


def _recall(args) -> list[dict]:
  out = []
  for name in _MULTIHOP_SETS:
    path = pathlib.Path(args.multihop) / name / "dev.jsonl"
    from sr2.data.examples import read_qa_jsonl

    examples = read_qa_jsonl(path)
    corpus = pool_multihop_paragraphs(path)
    pid = {(p["title"], p["text"]): p["id"] for p in corpus}
    gold = [
      {
        pid[(p.title.strip(), _SPACES.sub(" ", p.text).strip())]
        for p in ex.paragraphs
        if p.is_supporting
      }
      for ex in examples
    ]
    questions = [ex.question for ex in examples]
    for impl in _RECALL_IMPLS:
      start = time.perf_counter()
      top = impls.build(impl, corpus, args.k)["search"](questions)
      found = [len(g & set(t)) / len(g) for g, t in zip(gold, top, strict=True)]
      out.append(
        {
          "benchmark": "retrieval_recall",
          "set": f"multihop/{name}/dev",
          "questions": len(questions),
          "passages": len(corpus),
          "impl": impl,
          "k": args.k,
          f"recall_at_{args.k}": round(float(np.mean(found)), 4),
          f"all_supporting_in_top_{args.k}": round(float(np.mean([f == 1 for f in found])), 4),
          "seconds": round(time.perf_counter() - start, 2),
        }
      )
      print(json.dumps(out[-1]), flush=True)
  return out


# ---------------------------------------------------------------------------------------
# Helpers.


def _questions(path: str, n: int) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["question"] for line, _ in zip(f, range(n), strict=False)]


def _agreement(a: list[list[str]], b: list[list[str]]) -> float:
  return round(float(np.mean([x == y for x, y in zip(a, b, strict=False)])), 4)


if __name__ == "__main__":
  import sys

  retrieval_benchmark(sys.argv[1:])
