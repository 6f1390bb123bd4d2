"""Retrieval speed: sr2's BM25 (lucene, okapi) against bm25s and rank-bm25.

Run: `python -m sr2.retrieval.benchmark [--num_questions 500] [--copies 8]` (or through
`experiments/benchmark.py retrieval`). Prints one JSON object per measurement. All
implementations get the same tokens (`sr2.retrieval.tokenize`), so agreement is about
scoring, not tokenisation.
"""

import argparse
import json
import pathlib
import tempfile
import time
from collections.abc import Callable, Sequence

import numpy as np

from sr2.retrieval.bm25 import BM25Index, tokenize
from sr2.retrieval.corpus import read_jsonl_corpus

_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data"


def retrieval_benchmark(argv: Sequence[str] | None = None) -> list[dict]:
  """Builds each index on the corpus, times batched/single/cached search; prints JSON lines.

  Args:
    argv: command-line flags (see `--help`); None reads nothing beyond the defaults.

  Returns:
    The measurements, as printed.
  """
  args = _parser().parse_args(list(argv) if argv is not None else [])
  corpus = read_jsonl_corpus(args.corpus)
  # Copies (with new ids) give a larger corpus of the same text statistics, to see scaling.
  corpus = [{**p, "id": f"{p['id']}~{c}"} if c else p for c in range(args.copies) for p in corpus]
  questions = _questions(args.questions, args.num_questions)
  base = {"benchmark": "retrieval", "passages": len(corpus), "queries": len(questions), "k": args.k}
  out = []
  top_ids = {}
  for method in ("lucene", "okapi"):
    start = time.perf_counter()
    index = BM25Index.build(corpus, method=method, cache_size=0)
    build_s = time.perf_counter() - start
    hits = index.search(questions, k=args.k)
    top_ids[method] = [[h.id for h in row] for row in hits]
    row = {
      **base,
      "impl": "sr2",
      "method": method,
      "build_s": round(build_s, 3),
      **_query_rates(lambda qs, index=index: index.search(qs, k=args.k), questions, args.repeats),
    }
    with tempfile.TemporaryDirectory() as tmp:
      index.save(tmp)
      row["disk_bytes"] = sum(p.stat().st_size for p in pathlib.Path(tmp).iterdir())
      start = time.perf_counter()
      loaded = BM25Index.load(tmp, mmap=True, cache_size=len(questions))
      row["load_mmap_s"] = round(time.perf_counter() - start, 4)
      loaded.search(questions, k=args.k)
      start = time.perf_counter()
      loaded.search(questions, k=args.k)
      row["cached_qps"] = round(len(questions) / (time.perf_counter() - start), 1)
    out.append(row)
  out.append(_bm25s_row(base, corpus, questions, args, top_ids["lucene"]))
  if args.rank_bm25_questions:
    out.append(
      _rank_bm25_row(base, corpus, questions[: args.rank_bm25_questions], args, top_ids["okapi"])
    )
  for row in out:
    print(json.dumps(row), flush=True)
  return out


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="benchmark retrieval", description=__doc__)
  p.add_argument("--corpus", default=str(_DATA / "corpus" / "wiki_intros.jsonl"))
  p.add_argument(
    "--questions",
    default=str(_DATA / "qa" / "hotpotqa" / "dev.jsonl"),
    help="QA JSONL with a 'question' field",
  )
  p.add_argument("--copies", type=int, default=1, help="index the corpus this many times")
  p.add_argument("--num_questions", type=int, default=500)
  p.add_argument("--k", type=int, default=3)
  p.add_argument("--repeats", type=int, default=3, help="best of this many timed runs")
  p.add_argument(
    "--rank_bm25_questions",
    type=int,
    default=50,
    help="questions for the (slow) rank-bm25 reference; 0 skips it",
  )
  return p


def _questions(path: str, n: int) -> list[str]:
  with open(path, encoding="utf-8") as f:
    return [json.loads(line)["question"] for line, _ in zip(f, range(n), strict=False)]


def _query_rates(search: Callable[[list[str]], object], questions: list[str], repeats: int) -> dict:
  """Queries/s for one batched call over all questions and for one call per question."""
  batched = min(_timed(lambda: search(questions)) for _ in range(repeats))
  single = min(_timed(lambda: [search([q]) for q in questions]) for _ in range(repeats))
  return {
    "batched_qps": round(len(questions) / batched, 1),
    "single_qps": round(len(questions) / single, 1),
  }


def _timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def _agreement(a: list[list[str]], b: list[list[str]]) -> float:
  return round(float(np.mean([x == y for x, y in zip(a, b, strict=False)])), 4)


def _bm25s_row(base: dict, corpus: list[dict], questions: list[str], args, sr2_ids) -> dict:
  import bm25s  # reference only; sr2 does not search with it

  start = time.perf_counter()  # tokenizing counts as building, as it does for sr2
  tokens = [tokenize(f"{p['title']}\n{p['text']}") for p in corpus]
  retriever = bm25s.BM25(method="lucene")
  retriever.index(tokens, show_progress=False)
  build_s = time.perf_counter() - start
  vocab = retriever.vocab_dict

  def search(qs: list[str]) -> list[list[str]]:
    query_tokens = [tokenize(q) for q in qs]
    # bm25s rejects a query with no in-vocabulary token; sr2 answers it with no hits.
    kept = [i for i, toks in enumerate(query_tokens) if any(t in vocab for t in toks)]
    docs, _ = retriever.retrieve(
      [query_tokens[i] for i in kept], k=args.k, show_progress=False, n_threads=1
    )
    ids = [[] for _ in qs]
    for i, row in zip(kept, docs, strict=True):
      ids[i] = [corpus[int(d)]["id"] for d in row]
    return ids

  rates = _query_rates(search, questions, args.repeats)
  ids = search(questions)
  return {
    **base,
    "impl": "bm25s",
    "method": "lucene",
    "build_s": round(build_s, 3),
    **rates,
    "top_k_agreement_with_sr2": _agreement(ids, sr2_ids),
  }


def _rank_bm25_row(base: dict, corpus: list[dict], questions: list[str], args, sr2_ids) -> dict:
  import rank_bm25

  start = time.perf_counter()
  okapi = rank_bm25.BM25Okapi([tokenize(f"{p['title']}\n{p['text']}") for p in corpus])
  build_s = time.perf_counter() - start
  start = time.perf_counter()
  ids = []
  for q in questions:
    scores = okapi.get_scores(tokenize(q))
    order = np.lexsort((np.arange(len(scores)), -scores))[: args.k]
    ids.append([corpus[i]["id"] for i in order if scores[i] > 0])
  qps = len(questions) / (time.perf_counter() - start)
  return {
    **base,
    "queries": len(questions),
    "impl": "rank_bm25",
    "method": "okapi",
    "build_s": round(build_s, 3),
    "single_qps": round(qps, 1),
    "top_k_agreement_with_sr2": _agreement(ids, sr2_ids),
  }


if __name__ == "__main__":
  import sys

  retrieval_benchmark(sys.argv[1:])
