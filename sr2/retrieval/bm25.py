"""In-process BM25: the tokenizer, the index, and its scoring (build and search).

Scores are precomputed per (term, passage) at build time and stored term-major as a CSR
matrix `M[V, N]`, with each term's largest |score|; a query's score for a passage is the
float32 sum, in term id order, of its terms' entries (a repeated term scaled by its count):
the row of the sparse product `Q[1, V] @ M`. `sr2.retrieval.scoring` finds the top k
exactly: through a dense accumulator over the query terms' postings, pruned with the term
bounds, or, for batched queries with short posting lists, through the product itself. Two
variants share that path:

* `lucene` (default): idf = log(1 + (N - df + .5) / (df + .5)),
  tf part = tf / (tf + k1 (1 - b + b dl / avgdl)); the formula of bm25s' "lucene" method.
* `okapi`: rank-bm25's `BM25Okapi`: idf = log(N - df + .5) - log(df + .5), where a
  negative idf is replaced by 0.25 * (mean idf over the vocabulary), and
  tf part = tf (k1 + 1) / (tf + k1 (1 - b + b dl / avgdl)).

A query term repeated n times counts n times (as in both references). Only passages with a
positive score are returned, so a query may get fewer than `k` hits; equal scores rank the
lower passage position first. Queries longer than `MAX_QUERY_CHARS` are truncated (counted
in `stats()`): a rollout must never crash on what a model wrote.

Saving and (memory-mapped) loading live in `sr2.retrieval.storage`.
"""

import collections
import dataclasses
import os
import re
import unicodedata
from collections.abc import Mapping, Sequence

import numpy as np
import scipy.sparse as sp
from tqdm.auto import tqdm

from sr2.configlib import is_int_at_least
from sr2.retrieval import scoring
from sr2.retrieval.corpus import validate_passages

METHODS = ("lucene", "okapi")
MAX_QUERY_CHARS = 4096
_OKAPI_EPSILON = 0.25  # rank-bm25's floor for negative idf, as a fraction of the mean idf
# Lucene's English stop set (EnglishAnalyzer.ENGLISH_STOP_WORDS_SET), the list bm25s uses too.
_STOPWORDS = {
  "en": frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their "
    "then there these they this to was will with".split()
  )
}
# Han and kana have no spaces between words: each such character is its own token, as in
# Lucene's StandardAnalyzer. Other scripts split on anything that is not a letter or digit.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002fa1f"
_TOKEN = re.compile(rf"[{_CJK}]|[^\W_{_CJK}]+")


class BM25Error(ValueError):
  """Bad input to a BM25 index: a query, an argument, or a directory that is no index."""


def _check_stopwords(stopwords: str | None) -> None:
  if stopwords is not None and stopwords not in _STOPWORDS:
    raise BM25Error(f"stopwords must be one of {sorted(_STOPWORDS)} or None, got {stopwords!r}")


def tokenize(text: str, stopwords: str | None = "en") -> list[str]:
  """The one tokenizer for passages and queries.

  NFKC-normalises and case-folds `text`, splits it into runs of Unicode letters/digits
  (each Han/kana character alone), and drops stopwords. Punctuation, `_` and emoji split
  words and are dropped.

  Args:
    text: any str.
    stopwords: "en" or None.

  Returns:
    The tokens, in order.
  """
  _check_stopwords(stopwords)
  tokens = _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())
  if stopwords is None:
    return tokens
  stop = _STOPWORDS[stopwords]
  return [t for t in tokens if t not in stop]


@dataclasses.dataclass(frozen=True)
class Hit:
  """One retrieved passage."""

  id: str
  title: str
  text: str
  score: float


@dataclasses.dataclass(frozen=True)
class SearchStats:
  """Counters since the index was built or loaded."""

  cache_hits: int
  cache_misses: int
  cache_size: int
  cache_maxsize: int
  truncated_queries: int


@dataclasses.dataclass(frozen=True)
class BM25Config:
  """How an index scores; saved with it."""

  method: str = "lucene"  # "lucene" or "okapi"
  k1: float = 1.5  # term-frequency saturation
  b: float = 0.75  # length normalisation
  stopwords: str | None = "en"

  def __post_init__(self):
    if self.method not in METHODS:
      raise BM25Error(f"method must be one of {METHODS}, got {self.method!r}")
    if not isinstance(self.k1, int | float) or not 0 <= self.k1 < float("inf"):
      raise BM25Error(f"k1 must be a finite number >= 0, got {self.k1!r}")
    if not isinstance(self.b, int | float) or not 0 <= self.b <= 1:
      raise BM25Error(f"b must be a number in [0, 1], got {self.b!r}")
    _check_stopwords(self.stopwords)


class BM25Index:
  """A BM25 index over passages `{id, title, text}`; title and text are both indexed."""

  def __init__(
    self,
    config: BM25Config,
    vocab: Mapping[str, int],
    scores_VxN: sp.csr_array,
    passages: Sequence[tuple[str, str, str]],
    *,
    cache_size: int = 4096,
    bounds_V: np.ndarray | None = None,
  ):
    """Use `build` or `load`; this wires prepared parts together."""
    if not is_int_at_least(cache_size, 0):
      raise BM25Error(f"cache_size must be an int >= 0, got {cache_size!r}")
    self.config = config
    self._vocab = vocab
    self._scores_VxN = scores_VxN
    self._postings = scoring.Postings.from_matrix(scores_VxN, bounds_V)
    self._scratch: list[np.ndarray] = []  # idle zeroed accumulators (see scoring.search)
    self._passages = passages
    self._cache: collections.OrderedDict[tuple, tuple[Hit, ...]] = collections.OrderedDict()
    self._cache_maxsize = cache_size
    self._hits = self._misses = self._truncated = 0

  @classmethod
  def build(
    cls,
    passages: Sequence[Mapping[str, str]],
    *,
    method: str = "lucene",
    k1: float = 1.5,
    b: float = 0.75,
    stopwords: str | None = "en",
    show_progress: bool = False,
    cache_size: int = 4096,
  ) -> "BM25Index":
    """Indexes `passages`.

    Args:
      passages: dicts with str `id` (unique, non-empty), `title` and `text`; see
        `corpus.validate_passages` for what is rejected.
      method: "lucene" or "okapi" (see the module docstring).
      k1: term-frequency saturation, >= 0.
      b: length normalisation in [0, 1].
      stopwords: "en" (Lucene's English list) or None.
      show_progress: a tqdm bar over passages while tokenizing.
      cache_size: LRU entries for repeated queries; 0 disables the cache.

    Returns:
      The index.
    """
    config = BM25Config(method=method, k1=k1, b=b, stopwords=stopwords)
    rows = validate_passages(passages)
    vocab: dict[str, int] = {}
    term_ids: list[int] = []
    lengths_N = np.zeros(len(rows), dtype=np.int64)
    bar = tqdm(rows, desc="BM25 tokenize", unit="passage", disable=not show_progress)
    for i, (_, title, text) in enumerate(bar):
      tokens = tokenize(f"{title}\n{text}", stopwords=stopwords)
      term_ids.extend(vocab.setdefault(t, len(vocab)) for t in tokens)
      lengths_N[i] = len(tokens)
    if not term_ids:
      raise BM25Error(
        f"passages: none of the {len(rows)} passages has an indexable token "
        "(all stopwords, punctuation or symbols)"
      )
    scores = _score_matrix(np.asarray(term_ids, np.int64), lengths_N, len(vocab), config)
    return cls(config, vocab, scores, rows, cache_size=cache_size)

  def __len__(self) -> int:
    return len(self._passages)

  def search(self, queries: Sequence[str], k: int = 3) -> list[list[Hit]]:
    """Top-`k` passages for each query, best first.

    Args:
      queries: a sequence of str (not a bare str). Empty queries, and queries with no
        token in the vocabulary, get an empty list; queries over `MAX_QUERY_CHARS`
        characters are truncated to that length.
      k: hits per query, >= 1.

    Returns:
      One list of `Hit` per query, at most `k` long.
    """
    if isinstance(queries, str | bytes) or not isinstance(queries, Sequence):
      raise BM25Error(f"queries must be a sequence of str, got {type(queries).__name__}")
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
      raise BM25Error(f"k must be an int >= 1, got {k!r}")
    keys = [self._key(i, query, int(k)) for i, query in enumerate(queries)]
    todo = list(dict.fromkeys(key for key in keys if key and key not in self._cache))
    fresh = dict(zip(todo, self._search_uncached([key[0] for key in todo], int(k)), strict=True))
    self._misses += len(todo)
    out = []
    for key in keys:
      if not key:
        out.append([])
      elif key in fresh:
        out.append(list(fresh[key]))
      else:
        self._cache.move_to_end(key)
        out.append(list(self._cache[key]))
    for key, hits in fresh.items():
      self._remember(key, hits)
    # Every non-empty query that did not trigger its own scoring was served from the cache.
    self._hits += sum(1 for key in keys if key) - len(todo)
    return out

  def stats(self) -> SearchStats:
    """Cache and truncation counters."""
    return SearchStats(
      self._hits, self._misses, len(self._cache), self._cache_maxsize, self._truncated
    )

  def save(self, directory: str | os.PathLike) -> None:
    """Writes the index and its passages under `directory` (created if missing)."""
    from sr2.retrieval import storage  # deferred: storage imports this module

    bounds = self._postings.bounds
    parts = storage.Parts(self.config, self._vocab, self._scores_VxN, self._passages, bounds)
    storage.save(directory, parts)

  @classmethod
  def load(
    cls, directory: str | os.PathLike, *, mmap: bool = True, cache_size: int = 4096
  ) -> "BM25Index":
    """Opens a saved index; with `mmap` the arrays and passages stay on disk until read."""
    from sr2.retrieval import storage  # deferred: storage imports this module

    config, vocab, scores, passages, bounds = storage.load(directory, mmap=mmap)
    return cls(config, vocab, scores, passages, cache_size=cache_size, bounds_V=bounds)

  def _key(self, i: int, query: str, k: int) -> tuple | None:
    """Cache key: the query's sorted in-vocabulary term ids and k; None if it has none."""
    if not isinstance(query, str):
      raise BM25Error(f"queries[{i}] must be str, got {type(query).__name__}")
    if len(query) > MAX_QUERY_CHARS:
      query = query[:MAX_QUERY_CHARS]
      self._truncated += 1
    tokens = tokenize(query, self.config.stopwords)
    ids = sorted(self._vocab[t] for t in tokens if t in self._vocab)
    return (tuple(ids), k) if ids else None

  def _remember(self, key: tuple, hits: tuple[Hit, ...]) -> None:
    if self._cache_maxsize == 0:
      return
    self._cache[key] = hits
    if len(self._cache) > self._cache_maxsize:
      self._cache.popitem(last=False)

  def _search_uncached(self, term_ids: list[tuple[int, ...]], k: int) -> list[tuple[Hit, ...]]:
    found = scoring.search(self._postings, self._scores_VxN, self._scratch, term_ids, k)
    return [
      tuple(self._hit(d, v) for d, v in zip(docs.tolist(), vals.tolist(), strict=True))
      for docs, vals in found
    ]

  def _hit(self, position: int, score: float) -> Hit:
    pid, title, text = self._passages[position]
    return Hit(id=pid, title=title, text=text, score=score)


def _score_matrix(
  term_ids: np.ndarray, lengths_N: np.ndarray, num_terms: int, config: BM25Config
) -> sp.csr_array:
  """Term-major CSR of per-(term, passage) BM25 contributions, float32."""
  n = len(lengths_N)
  doc_of = np.repeat(np.arange(n, dtype=np.int64), lengths_N)
  # Sorting term * n + doc groups postings by term, then by passage: CSR order directly.
  keys, tf = np.unique(term_ids * n + doc_of, return_counts=True)
  terms, docs = keys // n, keys % n
  df_V = np.bincount(terms, minlength=num_terms)
  norm = config.k1 * (1.0 - config.b + config.b * lengths_N[docs] / lengths_N.mean())
  if config.method == "lucene":
    idf_V = np.log1p((n - df_V + 0.5) / (df_V + 0.5))
    values = idf_V[terms] * tf / (tf + norm)
  else:
    idf_V = np.log(n - df_V + 0.5) - np.log(df_V + 0.5)
    floor = _OKAPI_EPSILON * idf_V.mean()
    idf_V = np.where(idf_V < 0, floor, idf_V)
    values = idf_V[terms] * tf * (config.k1 + 1.0) / (tf + norm)
  index_dtype = np.int32 if max(len(keys), n) < 2**31 else np.int64
  indptr = np.zeros(num_terms + 1, dtype=index_dtype)
  np.cumsum(df_V, out=indptr[1:])
  return sp.csr_array(
    (values.astype(np.float32), docs.astype(index_dtype), indptr), shape=(num_terms, n)
  )
