"""Exact top-k BM25 search over a term-major score matrix.

`M[V, N]` (CSR, float32) holds the BM25 contribution of term t to passage d. A query is its
distinct term ids t_1 < ... < t_m with multiplicities w_i, and the score of passage d is

  S(d) = (((0 + c_1(d)) + c_2(d)) + ... + c_m(d))  in float32,  c_i(d) = fl32(w_i M[t_i, d]),

summed in ascending term id (c_i(d) = 0 where d lacks t_i): what scipy's `Q[B, V] @ M`
computes, row by row. The top k are the passages with S > 0, by S descending, then by
passage position ascending. Both paths below give bit-identical scores and ranks.

`top_k` (one query) adds each term's postings, in ascending term id, into a dense float32
accumulator (`np.add.at`; a term's passages are distinct), which then holds S(d) exactly,
and finds the best passages without reading every touched one:

* u_i = w_i max_d |M[t_i, d]| bounds c_i (`term_bounds`, precomputed per term).
* tau, a lower bound on the k-th best S: the k-th largest S among the passages of the
  highest-bound term (`_threshold`).
* Terms, by descending u_i, form the "essential" set until the bound of the others,
  R = sum of their u_i, satisfies R + slack < tau. A passage in no essential posting list
  has S <= R + slack < tau, so it is not in the top k; slack = (m + 4) 2^-23 sum_i u_i
  covers float32 rounding (products and m sums, for any signs of c_i).
* The candidates are the essential postings with S >= tau, so passages tied with the k-th
  best reach the position tie-break.

`sparse_top_k` (many queries with short posting lists) is the sparse product itself, whose
per-query overhead is lower; `search` routes each query to one of the two.
"""

import dataclasses

import numpy as np
import scipy.sparse as sp

# In a batch, queries with at most this many postings go through the sparse product: below
# it, its per-posting cost (about 5x the accumulator's) is outweighed by the accumulator
# path's fixed per-query cost (measured on 12k and 100k Wikipedia-like passages).
SPARSE_MAX_POSTINGS = 4000
_QUERY_CHUNK = 256  # queries per sparse product; bounds the size of the B x N result


@dataclasses.dataclass(frozen=True)
class Postings:
  """The CSR arrays of `M[V, N]` (plain ndarray views) with each term's bound."""

  data: np.ndarray  # float32 [nnz]
  indices: np.ndarray  # passage of each entry, ascending within a term [nnz]
  indptr: np.ndarray  # [V + 1]
  bounds: np.ndarray  # float32 [V]: max_d |M[t, d]|
  num_docs: int

  @classmethod
  def from_matrix(cls, scores_VxN: sp.csr_array, bounds_V: np.ndarray | None = None):
    """Wraps `scores_VxN` without copying; computes `term_bounds` unless given."""
    if bounds_V is None:
      bounds_V = term_bounds(scores_VxN)
    # np.asarray drops the memmap subclass (slower to slice) but keeps the mapping.
    arrays = (np.asarray(a) for a in (scores_VxN.data, scores_VxN.indices, scores_VxN.indptr))
    return cls(*arrays, np.asarray(bounds_V), scores_VxN.shape[1])


def term_bounds(scores_VxN: sp.csr_array) -> np.ndarray:
  """`max_d |M[t, d]|` for each term t (0 for a term without postings), float32."""
  indptr = np.asarray(scores_VxN.indptr)
  out = np.zeros(len(indptr) - 1, np.float32)
  nonempty = np.flatnonzero(np.diff(indptr) > 0)
  if len(nonempty):
    # Empty rows hold no entries, so consecutive non-empty starts delimit each row's run.
    out[nonempty] = np.maximum.reduceat(np.abs(scores_VxN.data), indptr[nonempty])
  return out


def search(
  post: Postings,
  scores_VxN: sp.csr_array,
  scratch: list[np.ndarray],
  queries: list[tuple[int, ...]],
  k: int,
) -> list[tuple[np.ndarray, np.ndarray]]:
  """(positions, float32 scores) of the `k` best passages per query, best first.

  Args:
    post: `Postings` of `scores_VxN`.
    scores_VxN: the matrix.
    scratch: idle float32 zero accumulators of `num_docs`; one is borrowed (or made) and
      put back, so concurrent searches never share one.
    queries: each a non-empty tuple of term ids, ascending, a term repeated as often as it
      occurs in the query.
    k: >= 1.
  """
  out: list = [None] * len(queries)
  few = []
  if len(queries) > 1:
    flat = np.fromiter((t for ids in queries for t in ids), np.int64)
    starts = np.cumsum([0] + [len(ids) for ids in queries[:-1]])
    sizes = np.add.reduceat(post.indptr[flat + 1] - post.indptr[flat], starts)
    few = np.flatnonzero(sizes <= SPARSE_MAX_POSTINGS).tolist()
    for i, row in zip(few, sparse_top_k(scores_VxN, [queries[i] for i in few], k), strict=True):
      out[i] = row
  if len(few) < len(queries):
    acc = scratch.pop() if scratch else np.zeros(post.num_docs, np.float32)
    try:
      for i, ids in enumerate(queries):
        if out[i] is None:
          out[i] = top_k(post, acc, *_runs(ids), k)
    finally:
      scratch.append(acc)
  return out


def top_k(
  post: Postings, acc: np.ndarray, terms: list[int], weights: list[int], k: int
) -> tuple[np.ndarray, np.ndarray]:
  """The `k` best passages for one query, as (positions, float32 scores), best first.

  Args:
    post: the index.
    acc: float32 zeros [num_docs], used as scratch and left zeroed.
    terms: distinct term ids, ascending.
    weights: each term's multiplicity in the query (>= 1).
    k: >= 1.
  """
  indptr, indices, data = post.indptr, post.indices, post.data
  term_m = np.array(terms)
  lo, hi = indptr[term_m].tolist(), indptr[term_m + 1].tolist()
  u = [w * b for w, b in zip(weights, post.bounds[term_m].tolist(), strict=True)]
  try:
    for a, b, w in zip(lo, hi, weights, strict=True):
      np.add.at(acc, indices[a:b], data[a:b] if w == 1 else data[a:b] * np.float32(w))
    docs = candidates(acc, indices, lo, hi, u, k)
    return best(docs, acc[docs], k)
  finally:
    if sum(hi) - sum(lo) > len(acc) // 16:  # a memset beats scattering this many zeros
      acc.fill(0)
    else:
      for a, b in zip(lo, hi, strict=True):
        acc[indices[a:b]] = 0


def candidates(
  acc: np.ndarray, indices: np.ndarray, lo: list[int], hi: list[int], u: list[float], k: int
) -> np.ndarray:
  """Distinct passages that include the top k, from the postings `indices[lo[i]:hi[i]]` of
  the query's terms, given their exact scores `acc` and term bounds `u` (module docstring)."""
  m = len(u)
  order = sorted(range(m), key=u.__getitem__, reverse=True)
  tau = _threshold(acc, indices, lo, hi, order, k)
  remaining, slack = sum(u), (m + 4) * 2.0**-23 * sum(u)
  essential = []
  for i in order:
    essential.append(indices[lo[i] : hi[i]])
    remaining -= u[i]
    if remaining + slack < tau:
      break
  docs = essential[0] if len(essential) == 1 else np.concatenate(essential)
  docs = docs[acc[docs] >= max(tau, 0.0)]
  if len(essential) > 1 and len(docs) > 1:  # a passage in several lists: keep one copy
    docs = np.sort(docs)
    docs = docs[np.concatenate(([True], docs[1:] != docs[:-1]))]
  return docs


def _threshold(acc, indices, lo, hi, order, k) -> float:
  """A lower bound on the k-th best score: the (k j)-th largest score among the postings of
  the j highest-bound terms, for the least j with k j postings (a passage is in at most j of
  them, so k distinct passages score at least that); -inf if no j has enough."""
  size = 0
  for j, i in enumerate(order, 1):
    size += hi[i] - lo[i]
    if size >= k * j:
      pool = [indices[lo[i] : hi[i]] for i in order[:j]]
      vals = acc[pool[0] if j == 1 else np.concatenate(pool)]
      return float(np.partition(vals, size - k * j)[size - k * j])
  return -np.inf


def sparse_top_k(
  scores_VxN: sp.csr_array, queries: list[tuple[int, ...]], k: int
) -> list[tuple[np.ndarray, np.ndarray]]:
  """`top_k` of many queries (term ids as in `search`) through the product `Q[B, V] @ M`."""
  out = []
  index_dtype = scores_VxN.indices.dtype  # Q's must match, or scipy copies all of M's
  for start in range(0, len(queries), _QUERY_CHUNK):
    chunk = queries[start : start + _QUERY_CHUNK]
    cols = np.fromiter((t for ids in chunk for t in ids), dtype=index_dtype)
    indptr = np.cumsum([0] + [len(ids) for ids in chunk], dtype=index_dtype)
    query_BxV = sp.csr_array(
      (np.ones(len(cols), np.float32), cols, indptr), shape=(len(chunk), scores_VxN.shape[0])
    )
    query_BxV.sum_duplicates()  # a term repeated n times gets weight n
    scores_BxN = sp.csr_array(query_BxV @ scores_VxN)
    for row in range(len(chunk)):
      lo, hi = scores_BxN.indptr[row], scores_BxN.indptr[row + 1]
      out.append(best(scores_BxN.indices[lo:hi], scores_BxN.data[lo:hi], k))
  return out


def best(docs: np.ndarray, vals: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """The `k` best (doc, score) pairs with score > 0: score descending, then doc ascending."""
  keep = vals > 0
  docs, vals = docs[keep], vals[keep]
  if len(vals) > k:
    # Keep every candidate tied with the k-th best so the tie-break below sees all of them.
    kth = np.partition(vals, len(vals) - k)[len(vals) - k]
    keep = vals >= kth
    docs, vals = docs[keep], vals[keep]
  order = np.lexsort((docs, -vals))[:k]
  return docs[order], vals[order]


def _runs(ids: tuple[int, ...]) -> tuple[list[int], list[int]]:
  """Sorted term ids with repeats -> (distinct ids, how often each occurs)."""
  terms, weights = [ids[0]], [1]
  for t in ids[1:]:
    if t == terms[-1]:
      weights[-1] += 1
    else:
      terms.append(t)
      weights.append(1)
  return terms, weights
