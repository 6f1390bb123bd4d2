"""Tests for sr2.retrieval.bm25: parity with rank-bm25 and bm25s, exactness of the pruned
search against the brute-force sparse product, storage, cache, bad input."""

import itertools
import json
import pathlib
import random

import numpy as np
import pytest
import scipy.sparse as sp

from sr2.retrieval import MAX_QUERY_CHARS, BM25Error, BM25Index, CorpusError, scoring, tokenize

_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"
_WIKI = _DATA / "corpus" / "wiki_intros.jsonl"
_HOTPOT = _DATA / "qa" / "hotpotqa" / "dev.jsonl"


def _first_rows(path: pathlib.Path, n: int) -> list[dict]:
  if not path.exists():
    pytest.skip(f"{path} not found (shared data not present)")
  with open(path, encoding="utf-8") as f:
    return [json.loads(line) for line in itertools.islice(f, n)]


@pytest.fixture(scope="module")
def wiki() -> list[dict]:
  return _first_rows(_WIKI, 2000)


@pytest.fixture(scope="module")
def questions() -> list[str]:
  return [row["question"] for row in _first_rows(_HOTPOT, 50)]


def _passage_tokens(passages: list[dict]) -> list[list[str]]:
  # What BM25Index.build indexes: title and text together.
  return [tokenize(f"{p['title']}\n{p['text']}") for p in passages]


def _reference_top(scores: np.ndarray, k: int) -> list[int]:
  """Positions of the k best positive scores, ties to the lower position."""
  order = np.lexsort((np.arange(len(scores)), -scores))[:k]
  return [int(i) for i in order if scores[i] > 0]


def _assert_same_ranking(hits, ref_scores: np.ndarray, position: dict, k: int, query: str):
  """Scores match the reference per passage; ids match exactly except inside near-ties."""
  ref = _reference_top(ref_scores, k)
  got = [position[h.id] for h in hits]
  np.testing.assert_allclose(
    [h.score for h in hits], ref_scores[got], rtol=2e-6, atol=1e-5, err_msg=query
  )
  np.testing.assert_allclose(ref_scores[got], ref_scores[ref], rtol=2e-6, atol=1e-5, err_msg=query)
  for rank, (g, r) in enumerate(zip(got, ref, strict=True)):
    if g != r:  # allowed only when float32 vs float64 rounding reorders equal-looking scores
      assert abs(ref_scores[g] - ref_scores[r]) < 1e-5, (query, rank, g, r)


def test_okapi_matches_rank_bm25(wiki, questions):
  rank_bm25 = pytest.importorskip("rank_bm25")
  reference = rank_bm25.BM25Okapi(_passage_tokens(wiki))
  index = BM25Index.build(wiki, method="okapi")
  position = {p["id"]: i for i, p in enumerate(wiki)}
  results = index.search(questions, k=5)
  for query, hits in zip(questions, results, strict=True):
    _assert_same_ranking(hits, reference.get_scores(tokenize(query)), position, 5, query)
  assert sum(len(hits) for hits in results) > 200  # the comparison is not vacuous


def test_lucene_matches_bm25s_and_agrees_with_rank_bm25(wiki, questions):
  bm25s = pytest.importorskip("bm25s")
  rank_bm25 = pytest.importorskip("rank_bm25")
  tokens = _passage_tokens(wiki)
  reference = bm25s.BM25(method="lucene")
  reference.index(tokens, show_progress=False)
  okapi = rank_bm25.BM25Okapi(tokens)
  index = BM25Index.build(wiki)  # method="lucene"
  position = {p["id"]: i for i, p in enumerate(wiki)}
  overlaps = []
  for query, hits in zip(questions, index.search(questions, k=3), strict=True):
    q = [t for t in tokenize(query) if t in reference.vocab_dict]
    ref_scores = reference.get_scores(q).astype(np.float64) if q else np.zeros(len(wiki))
    _assert_same_ranking(hits, ref_scores, position, 3, query)
    okapi_top = _reference_top(okapi.get_scores(tokenize(query)), 3)
    overlaps.append(len({position[h.id] for h in hits} & set(okapi_top)) / 3)
  # Lucene's idf (log1p, no floor) differs from Okapi's, so rankings differ a little;
  # measured mean top-3 overlap on these 50 questions is 0.97.
  assert np.mean(overlaps) > 0.9


def test_repeated_query_term_counts_each_time():
  index = BM25Index.build(
    [{"id": "a", "title": "", "text": "rome"}, {"id": "b", "title": "", "text": "paris"}]
  )
  [[once]], [[twice]] = index.search(["rome"]), index.search(["rome Rome"])
  assert twice.score == pytest.approx(2 * once.score)


def test_save_load_round_trip(tmp_path, wiki, questions):
  index = BM25Index.build(wiki[:500], method="okapi")
  index.save(tmp_path / "ix")
  expected = index.search(questions)
  for mmap in (True, False):
    loaded = BM25Index.load(tmp_path / "ix", mmap=mmap)
    assert len(loaded) == 500 and loaded.config == index.config
    assert loaded.search(questions) == expected
    assert loaded._scores_VxN.data.flags.writeable is not mmap  # read-only memmap
  # Saving a memory-mapped index over its own directory must not corrupt it.
  loaded = BM25Index.load(tmp_path / "ix")
  loaded.save(tmp_path / "ix")
  assert BM25Index.load(tmp_path / "ix").search(questions) == expected
  meta = json.loads((tmp_path / "ix" / "meta.json").read_text())
  assert meta["method"] == "okapi" and meta["num_passages"] == 500 and meta["version"] == 1
  assert meta["term_bounds"] == "term_bounds.npy"
  np.testing.assert_array_equal(
    BM25Index.load(tmp_path / "ix")._postings.bounds, scoring.term_bounds(index._scores_VxN)
  )


def test_load_without_term_bounds_recomputes_them(tmp_path, wiki, questions):
  """An index saved before term bounds existed (or re-saved since by such a version, which
  leaves a stale file behind) has no "term_bounds" in meta.json: its bounds are recomputed."""
  index = BM25Index.build(wiki[:500])
  expected = index.search(questions, k=5)
  index.save(tmp_path / "ix")
  meta_path = tmp_path / "ix" / "meta.json"
  meta = json.loads(meta_path.read_text())
  del meta["term_bounds"]
  meta_path.write_text(json.dumps(meta))
  stale = np.zeros(meta["num_terms"], np.float32)  # would prune every passage if used
  np.save(tmp_path / "ix" / "term_bounds.npy", stale)
  loaded = BM25Index.load(tmp_path / "ix", cache_size=0)
  assert loaded.search(questions, k=5) == expected
  assert [loaded.search([q], k=5)[0] for q in questions] == expected
  np.save(tmp_path / "ix" / "term_bounds.npy", np.zeros(3, np.float32))
  meta["term_bounds"] = "term_bounds.npy"
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(BM25Error, match="term_bounds.npy has shape"):
    BM25Index.load(tmp_path / "ix")


def test_load_rejects_what_is_not_an_index(tmp_path):
  with pytest.raises(BM25Error, match="no meta.json"):
    BM25Index.load(tmp_path / "missing")
  (tmp_path / "meta.json").write_text('{"format": "something-else"}')
  with pytest.raises(BM25Error, match="format"):
    BM25Index.load(tmp_path)
  (tmp_path / "meta.json").write_text("not json")
  with pytest.raises(BM25Error, match="not a readable"):
    BM25Index.load(tmp_path)
  BM25Index.build([{"id": "a", "title": "t", "text": "x y"}]).save(tmp_path / "ix")
  np.save(tmp_path / "ix" / "scores_data.npy", np.zeros(7, np.float32))
  with pytest.raises(BM25Error, match="corrupt"):
    BM25Index.load(tmp_path / "ix")


def test_tokenize():
  assert tokenize("The Café, CAFÉ and cafe\u0301!") == ["café", "café", "café"]
  assert tokenize("The end", stopwords=None) == ["the", "end"]
  assert tokenize("東京タワー is tall 🗼") == ["東", "京", "タ", "ワ", "ー", "tall"]
  assert tokenize("snake_case ＡＢＣ straße") == ["snake", "case", "abc", "strasse"]
  assert tokenize("  \n\t") == [] and tokenize("🙂🙂") == []
  with pytest.raises(BM25Error, match="stopwords"):
    tokenize("x", stopwords="fr")


def test_unicode_passages_and_queries():
  index = BM25Index.build(
    [
      {"id": "fr", "title": "Café de Flore", "text": "Un café à Paris, fréquenté par Sartre."},
      {"id": "ja", "title": "東京タワー", "text": "東京都港区にある電波塔。"},
      {"id": "emoji", "title": "Pizza 🍕", "text": "Neapolitan pizza 🍕 with basil."},
      {"id": "ru", "title": "Москва", "text": "Столица России."},
    ]
  )
  assert [h.id for h in index.search(["cafe\u0301 PARIS"])[0]] == ["fr"]
  assert index.search(["東京"])[0][0].id == "ja"
  assert index.search(["🍕 pizza"])[0][0].title == "Pizza 🍕"
  assert index.search(["москва"])[0][0].id == "ru"


def test_ties_rank_lower_position_first():
  passages = [{"id": f"p{i}", "title": "", "text": "alpha beta"} for i in range(6)]
  passages.insert(3, {"id": "best", "title": "alpha", "text": "alpha"})
  index = BM25Index.build(passages, cache_size=0)
  hits = index.search(["alpha"], k=4)[0]
  assert [h.id for h in hits] == ["best", "p0", "p1", "p2"]
  assert hits[1].score == hits[2].score == hits[3].score


def _brute_force(index: BM25Index, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
  """The reference: each query's term counts times the score matrix (scipy's product, one
  query at a time), then every positive score ranked by score and position."""
  matrix = index._scores_VxN
  out = []
  for query in queries:
    ids = [index._vocab[t] for t in tokenize(query) if t in index._vocab]
    counts = np.bincount(ids, minlength=matrix.shape[0]).astype(np.float32)
    scores = (sp.csr_array(counts[None, :]) @ matrix).toarray()[0]
    order = np.lexsort((np.arange(len(scores)), -scores))[:k]
    out.append([(int(d), float(scores[d])) for d in order if scores[d] > 0])
  return out


def _positions(index: BM25Index, results) -> list[list[tuple[int, float]]]:
  position = {pid: i for i, (pid, _, _) in enumerate(index._passages)}
  return [[(position[h.id], h.score) for h in hits] for hits in results]


def _all_paths(index: BM25Index, queries: list[str], k: int, monkeypatch) -> list:
  """Results of the accumulator path (batched and one at a time) and of the mixed batch."""
  mixed = index.search(queries, k=k)
  with monkeypatch.context() as patch:
    patch.setattr(scoring, "SPARSE_MAX_POSTINGS", -1)  # every query through the accumulator
    batched = index.search(queries, k=k)
    single = [index.search([q], k=k)[0] for q in queries]
  return [_positions(index, r) for r in (batched, single, mixed)]


def test_pruned_search_equals_sparse_product_on_wiki(monkeypatch):
  passages = _first_rows(_WIKI, 20_000)  # all of it
  queries = [row["question"] for row in _first_rows(_HOTPOT, 300)]
  queries += ["film film film director", "the", "Paris Paris", "river " * 40]
  index = BM25Index.build(passages, cache_size=0)
  for k in (1, 3, 10):
    reference = _brute_force(index, queries, k)
    for got in _all_paths(index, queries, k, monkeypatch):
      assert got == reference  # the same ids in the same order and bit-identical scores
  # The pruning is not vacuous: most queries score far fewer candidates than they touch.
  post, acc = index._postings, np.zeros(len(index), np.float32)
  pruned = 0
  for query in queries[:100]:
    terms, weights = scoring._runs(index._key(0, query, 3)[0])
    lo, hi = post.indptr[terms].tolist(), post.indptr[[t + 1 for t in terms]].tolist()
    for a, b, w in zip(lo, hi, weights, strict=True):
      np.add.at(acc, post.indices[a:b], post.data[a:b] * np.float32(w))
    u = [w * b for w, b in zip(weights, post.bounds[terms].tolist(), strict=True)]
    found = scoring.candidates(acc, post.indices, lo, hi, u, 3)
    pruned += len(found) * 10 < np.count_nonzero(acc)
    acc[:] = 0
  assert pruned > 80


def test_pruned_search_on_adversarial_corpora(monkeypatch):
  """Seeded random corpora over tiny vocabularies: many exact ties across the pruning
  threshold, repeated query terms, k above the number of matches, okapi's negative idf."""
  rng = random.Random(0)
  for _ in range(60):
    words = [f"w{i}" for i in range(rng.choice([2, 3, 6, 30]))]
    passages = [
      {
        "id": f"p{i}",
        "title": "",
        "text": " ".join(rng.choice(words[: rng.randint(1, len(words))]) for _ in range(n)),
      }
      for i, n in enumerate(rng.choices([1, 2, 3, 8, 30], k=rng.choice([1, 2, 5, 40, 200])))
    ]
    settings = dict(method=rng.choice(["lucene", "okapi"]), k1=rng.choice([0.0, 1.5]))
    index = BM25Index.build(passages, b=rng.choice([0.0, 0.75]), cache_size=0, **settings)
    queries = [" ".join(rng.choices(words, k=rng.randint(1, 9))) for _ in range(20)]
    for k in (1, 2, 5, 500):
      reference = _brute_force(index, queries, k)
      for got in _all_paths(index, queries, k, monkeypatch):
        assert got == reference, (settings, k)


def test_tie_at_the_kth_score_keeps_lower_positions():
  # 30 passages tie for the best score; the pruning threshold equals it, and ties must still
  # reach the position tie-break. A rare term makes one passage best.
  passages = [{"id": f"p{i}", "title": "", "text": "alpha beta gamma"} for i in range(30)]
  passages += [{"id": f"q{i}", "title": "", "text": "beta delta"} for i in range(30)]
  passages.insert(17, {"id": "rare", "title": "", "text": "alpha beta gamma zeta"})
  index = BM25Index.build(passages, cache_size=0)
  for k in (1, 4, 40):
    hits = index.search(["zeta alpha gamma beta beta"], k=k)[0]
    expected = ["rare"] + [f"p{i}" for i in range(30)] + [f"q{i}" for i in range(30)]
    assert [h.id for h in hits] == expected[:k]
  assert all(h.score == hits[1].score for h in hits[1:31])


def test_fewer_hits_than_k_and_empty_queries():
  index = BM25Index.build(
    [
      {"id": "a", "title": "Rome", "text": "capital of Italy"},
      {"id": "b", "title": "Oslo", "text": "capital of Norway"},
    ]
  )
  assert [h.id for h in index.search(["Italy"], k=3)[0]] == ["a"]
  assert index.search(["", "   ", "the of", "zzz unknown", "🙂"]) == [[], [], [], [], []]
  assert index.search([]) == []
  assert len(index) == 2


def test_long_query_is_truncated_and_counted():
  index = BM25Index.build(
    [{"id": "a", "title": "", "text": "needle"}, {"id": "b", "title": "", "text": "hay"}]
  )
  long = "hay " + "x" * MAX_QUERY_CHARS + " needle"
  assert [h.id for h in index.search([long])[0]] == ["b"]  # "needle" was cut off
  assert index.stats().truncated_queries == 1


def test_cache_hits_misses_and_lru():
  index = BM25Index.build(
    [{"id": str(i), "title": w, "text": w} for i, w in enumerate(["alpha", "beta", "gamma"])],
    cache_size=2,
  )
  first = index.search(["alpha", "Alpha!", "beta"])  # "Alpha!" has alpha's key
  assert (index.stats().cache_hits, index.stats().cache_misses) == (1, 2)
  first[0].clear()  # callers own the lists they get
  assert index.search(["alpha"])[0][0].id == "0"
  index.search(["gamma"])  # evicts beta, the least recently used
  index.search(["beta"])
  stats = index.stats()
  assert (stats.cache_hits, stats.cache_misses, stats.cache_size) == (2, 4, 2)
  off = BM25Index.build([{"id": "a", "title": "", "text": "x"}], cache_size=0)
  assert off.search(["x", "x"]) == off.search(["x"]) * 2
  assert off.stats().cache_size == 0


def test_search_rejects_bad_arguments():
  index = BM25Index.build([{"id": "a", "title": "", "text": "x"}])
  with pytest.raises(BM25Error, match="sequence of str"):
    index.search("x")
  with pytest.raises(BM25Error, match=r"queries\[1\] must be str"):
    index.search(["x", None])
  for k in (0, -1, True, 2.0):
    with pytest.raises(BM25Error, match="k must be"):
      index.search(["x"], k=k)


@pytest.mark.parametrize(
  "passages, match",
  [
    ([], "empty"),
    ("not a list", "sequence of dicts"),
    ([{"id": "a", "title": "t"}], r"passages\[0\] \(id 'a'\) lacks \['text'\]"),
    ([{"id": " ", "title": "t", "text": "x"}], "empty id"),
    (
      [{"id": "a", "title": "t", "text": "x"}, {"id": "a", "title": "u", "text": "y"}],
      r"passages\[1\] \(id 'a'\) repeats the id of passages\[0\]",
    ),
    ([{"id": 7, "title": "t", "text": "x"}], r"field 'id' must be str, got int"),
    ([{"id": "a", "title": None, "text": "x"}], "field 'title' must be str"),
    (
      [{"id": "a", "title": "t", "text": "bad \ud800 text"}],
      r"passages\[0\] \(id 'a'\) field 'text' is not valid Unicode",
    ),
    (["just a string"], r"passages\[0\] must be a dict"),
  ],
)
def test_build_rejects_bad_passages(passages, match):
  with pytest.raises(CorpusError, match=match):
    BM25Index.build(passages)


def test_build_rejects_bad_settings():
  ok = [{"id": "a", "title": "", "text": "x"}]
  for kwargs, match in [
    ({"method": "bm42"}, "method"),
    ({"k1": -1.0}, "k1"),
    ({"b": 1.5}, "b must"),
    ({"stopwords": "xx"}, "stopwords"),
    ({"cache_size": -1}, "cache_size"),
  ]:
    with pytest.raises(BM25Error, match=match):
      BM25Index.build(ok, **kwargs)
  with pytest.raises(BM25Error, match="has an indexable token"):
    BM25Index.build([{"id": "a", "title": "the", "text": "🙂"}])
