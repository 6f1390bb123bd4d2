"""The retrieval implementations the benchmark compares, behind one interface.

`build(impl, corpus, k)` indexes a corpus with sr2 (lucene, okapi), bm25s (its own tokens
or sr2's) or rank-bm25 (sr2's tokens) and returns a dict with a `search` callable
(queries -> top-k passage ids) plus what building measured (seconds, bytes, memory).
bm25s and rank-bm25 are references only: sr2 never searches with them.
"""

import pathlib
import pickle
import resource
import tempfile
import time
from collections.abc import Callable

import numpy as np

from sr2.retrieval.bm25 import BM25Index, tokenize

Search = Callable[[list[str]], list[list[str]]]  # queries -> top-k passage ids each


def timed(fn: Callable[[], object]) -> float:
  start = time.perf_counter()
  fn()
  return time.perf_counter() - start


def build(impl: str, corpus: list[dict], k: int) -> dict:
  """Builds `impl` ("library:tokens" or "sr2:method") on `corpus`; returns its operations."""
  library, variant = impl.split(":")
  if library == "sr2":
    return _build_sr2(corpus, variant, k)
  if library == "bm25s":
    return _build_bm25s(corpus, own_tokens=variant == "own", k=k)
  return _build_rank_bm25(corpus, k)


def _build_sr2(corpus, method: str, k: int) -> dict:
  index = BM25Index.build(corpus, method=method, cache_size=0)

  def search(qs):
    return [[h.id for h in row] for row in index.search(qs, k=k)]

  def disk_bytes(qs):
    """Bytes saved; then the saved index memory-mapped, with its query cache warmed by `qs`."""
    with tempfile.TemporaryDirectory() as tmp:
      index.save(tmp)
      sizes = {p.name: p.stat().st_size for p in pathlib.Path(tmp).iterdir()}
      start = time.perf_counter()
      loaded = BM25Index.load(tmp, mmap=True, cache_size=len(qs))
      load_s = time.perf_counter() - start
      loaded.search(qs, k=k)
      cached_s = timed(lambda: loaded.search(qs, k=k))
    passages = sizes["passages.jsonl"] + sizes["passage_offsets.npy"]
    return {
      "index_bytes": sum(sizes.values()) - passages,
      "disk_bytes_with_passages": sum(sizes.values()),
      "load_mmap_s": round(load_s, 4),
      "cached_qps": round(len(qs) / cached_s, 1),
    }

  return {"search": search, "bytes": disk_bytes}


def _build_bm25s(corpus, own_tokens: bool, k: int) -> dict:
  import bm25s  # reference only; sr2 does not search with it

  texts = [f"{p['title']}\n{p['text']}" for p in corpus]
  retriever = bm25s.BM25(method="lucene")
  if own_tokens:
    retriever.index(bm25s.tokenize(texts, stopwords="en", show_progress=False), show_progress=False)
  else:
    retriever.index([tokenize(t) for t in texts], show_progress=False)
  vocab = retriever.vocab_dict
  pids = [p["id"] for p in corpus]

  def search(qs):
    if own_tokens:
      # bm25s.tokenize gives a fresh vocabulary per call; retrieve maps it back to strings.
      query_tokens = bm25s.tokenization.convert_tokenized_to_string_list(
        bm25s.tokenize(qs, stopwords="en", show_progress=False)
      )
    else:
      query_tokens = [tokenize(q) for q in qs]
    # bm25s rejects a query with no in-vocabulary token; sr2 answers it with no hits.
    kept = [i for i, toks in enumerate(query_tokens) if any(t in vocab for t in toks)]
    ids = [[] for _ in qs]
    if kept:
      docs, scores = retriever.retrieve(
        [query_tokens[i] for i in kept], k=k, show_progress=False, n_threads=0
      )
      for i, d_row, s_row in zip(kept, docs, scores, strict=True):
        ids[i] = [pids[int(d)] for d, s in zip(d_row, s_row, strict=True) if s > 0]
    return ids

  def disk_bytes(_):
    with tempfile.TemporaryDirectory() as tmp:
      retriever.save(tmp, show_progress=False)
      return {"index_bytes": sum(p.stat().st_size for p in pathlib.Path(tmp).iterdir())}

  return {"search": search, "bytes": disk_bytes}


def _build_rank_bm25(corpus, k: int) -> dict:
  import rank_bm25

  okapi = rank_bm25.BM25Okapi([tokenize(f"{p['title']}\n{p['text']}") for p in corpus])
  pids = [p["id"] for p in corpus]
  position = {pid: i for i, pid in enumerate(pids)}

  def top(q):
    scores = okapi.get_scores(tokenize(q))
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    return scores, [i for i in order if scores[i] > 0]

  def search(qs):
    return [[pids[i] for i in top(q)[1]] for q in qs]

  def agreement(qs, reference):
    """Identical top-k ids, and identical up to passages of exactly equal rank-bm25 score."""
    same = tied = 0
    for q, ref in zip(qs, reference, strict=True):
      scores, mine = top(q)
      same += [pids[i] for i in mine] == ref
      tied += [scores[i] for i in mine] == [scores[position[r]] for r in ref]
    return {
      "top_k_identical_to_sr2_okapi": round(same / len(qs), 4),
      "top_k_identical_up_to_exact_ties": round(tied / len(qs), 4),
    }

  return {
    "search": search,
    "agreement": agreement,
    "bytes": lambda _: {"index_bytes": len(pickle.dumps(okapi)), "index_format": "pickle"},
  }


def reset_peak_rss() -> float | None:
  """Resets VmHWM to the current RSS (Linux); returns that RSS in MB, None if unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return _proc_status_mb("VmRSS")
  except OSError:
    return None


def peak_rss_mb() -> float:
  try:
    return _proc_status_mb("VmHWM")
  except OSError:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _proc_status_mb(field: str) -> float:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1]) / 1024  # kB
  raise OSError(f"no {field} in /proc/self/status")
