"""Saving and loading a `BM25Index`: the on-disk format, memory-mapping, lazy passages.

An index directory holds `passages.jsonl` (one `{id, title, text}` row per passage, in
index order) with `passage_offsets.npy` (byte offsets of its rows), the CSR score matrix as
`scores_{data,indices,indptr}.npy`, `term_bounds.npy` (each term's largest |score|, which
search prunes with), `vocab.json` (terms by id) and `meta.json` (format, version,
`BM25Config` fields and sizes). Every file is written under a temporary name and moved into
place, `meta.json` last. Loading with `mmap` keeps the arrays and passages on disk; passages
are parsed one row at a time as hits need them.

`term_bounds.npy` is optional within format version 1: `meta.json` lists it under
`"term_bounds"` only when written with the matrix beside it; without that entry (an index
saved before it existed, or re-saved since by such a version, which leaves a stale file
behind) the bounds are recomputed from the matrix on load, one pass over its values.
"""

import dataclasses
import json
import mmap as mmap_lib
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np
import scipy.sparse as sp

from sr2.retrieval.bm25 import BM25Config, BM25Error

FORMAT_VERSION = 1
_FORMAT = "sr2-bm25"
_BOUNDS = "term_bounds.npy"


class Parts(NamedTuple):
  """What an index is made of: what `save` writes and `load` reads back."""

  config: BM25Config  # how the index scores.
  vocab: Mapping[str, int]  # term -> row of `scores_VxN`.
  scores_VxN: sp.csr_array  # each term's score in each passage, CSR.
  passages: Sequence[tuple[str, str, str]]  # `(id, title, text)` per column of `scores_VxN`.
  # `scoring.term_bounds(scores_VxN)`; from `load`, None for an index without (current) term bounds:
  # the caller computes them.
  bounds_V: np.ndarray | None


def save(directory: str | os.PathLike, parts: Parts) -> None:
  """Writes an index's parts under `directory` (created if missing)."""
  config, vocab, scores_VxN, passages, bounds_V = parts
  path = pathlib.Path(directory)
  path.mkdir(parents=True, exist_ok=True)

  # Every file goes through a temporary name and os.replace, so saving over the directory a
  # memory-mapped index was loaded from never rewrites the bytes it is reading.
  def put(name, write):
    tmp = path / f"{name}.tmp"
    write(tmp)
    os.replace(tmp, path / name)

  offsets = np.zeros(len(passages) + 1, dtype=np.int64)

  def write_passages(tmp):
    with open(tmp, "wb") as f:
      for i, (pid, title, text) in enumerate(passages):
        row = {"id": pid, "title": title, "text": text}
        line = (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")
        f.write(line)
        offsets[i + 1] = offsets[i] + len(line)

  put("passages.jsonl", write_passages)
  put("passage_offsets.npy", lambda tmp: _save_npy(tmp, offsets))
  for part in ("data", "indices", "indptr"):
    put(f"scores_{part}.npy", lambda tmp, part=part: _save_npy(tmp, getattr(scores_VxN, part)))
  put(_BOUNDS, lambda tmp: _save_npy(tmp, np.asarray(bounds_V, np.float32)))
  terms = sorted(vocab, key=vocab.__getitem__)
  put("vocab.json", lambda tmp: tmp.write_text(json.dumps(terms, ensure_ascii=False), "utf-8"))
  meta = {
    "format": _FORMAT,
    "version": FORMAT_VERSION,
    **dataclasses.asdict(config),
    "num_passages": len(passages),
    "num_terms": len(terms),
    "nnz": int(scores_VxN.nnz),
    "term_bounds": _BOUNDS,
  }
  # meta.json last: a directory without it is not (yet) an index.
  put("meta.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=2) + "\n", "utf-8"))


def _save_npy(path: pathlib.Path, array: np.ndarray) -> None:
  with open(path, "wb") as f:  # np.save on a str path would append ".npy" to the tmp name
    np.save(f, np.asarray(array))


def load(directory: str | os.PathLike, *, mmap: bool) -> Parts:
  """Reads the parts `save` wrote; with `mmap` the arrays and passages stay on disk until read.

  Raises:
    BM25Error: if `directory` is not a readable index of this format version.
  """
  path = pathlib.Path(directory)
  what = "a BM25 index directory written by BM25Index.save"
  if not (path / "meta.json").is_file():
    raise BM25Error(f"{str(path)!r} is not {what} (no meta.json)")
  try:
    meta = json.loads((path / "meta.json").read_text("utf-8"))
    if meta.get("format") != _FORMAT:
      raise BM25Error(f"{path}/meta.json: format {meta.get('format')!r}, expected {_FORMAT!r}")
    if meta.get("version") != FORMAT_VERSION:
      raise BM25Error(
        f"{path}: index format version {meta.get('version')!r}; this sr2 reads "
        f"version {FORMAT_VERSION}: rebuild it with experiments/build_index.py"
      )
    config = BM25Config(**{f.name: meta[f.name] for f in dataclasses.fields(BM25Config)})
    arrays = {
      name: np.load(path / f"{name}.npy", mmap_mode="r" if mmap else None)
      for name in ("scores_data", "scores_indices", "scores_indptr", "passage_offsets")
    }
    terms = json.loads((path / "vocab.json").read_text("utf-8"))
    num_passages, num_terms, nnz = meta["num_passages"], meta["num_terms"], meta["nnz"]
    bounds = None
    if meta.get("term_bounds") == _BOUNDS:
      bounds = np.load(path / _BOUNDS, mmap_mode="r" if mmap else None)
      if bounds.shape != (num_terms,) or bounds.dtype != np.float32:
        raise BM25Error(
          f"{path}/{_BOUNDS} has shape {bounds.shape} and dtype {bounds.dtype}, expected "
          f"({num_terms},) float32: the index is corrupt, rebuild it"
        )
  except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
    if isinstance(e, BM25Error):
      raise
    raise BM25Error(f"{str(path)!r} is not a readable {what}: {e!r}") from e
  offsets = arrays["passage_offsets"]
  sizes = {
    "scores_data": nnz,
    "scores_indices": nnz,
    "scores_indptr": num_terms + 1,
    "passage_offsets": num_passages + 1,
  }
  for name, size in sizes.items():
    if arrays[name].shape != (size,):
      raise BM25Error(
        f"{path}/{name}.npy has shape {arrays[name].shape}, meta.json says "
        f"({size},): the index is corrupt, rebuild it"
      )
  if len(terms) != num_terms or (path / "passages.jsonl").stat().st_size != offsets[-1]:
    raise BM25Error(
      f"{path}: vocab.json or passages.jsonl does not match meta.json: "
      "the index is corrupt, rebuild it"
    )
  scores = sp.csr_array(
    (arrays["scores_data"], arrays["scores_indices"], arrays["scores_indptr"]),
    shape=(num_terms, num_passages),
    copy=False,
  )
  with open(path / "passages.jsonl", "rb") as f:
    buffer = mmap_lib.mmap(f.fileno(), 0, access=mmap_lib.ACCESS_READ) if mmap else f.read()
  vocab = {t: i for i, t in enumerate(terms)}
  return Parts(config, vocab, scores, _JsonlPassages(buffer, offsets), bounds)


class _JsonlPassages(Sequence):
  """Passages read lazily from the saved JSONL, by byte offset."""

  def __init__(self, buffer, offsets: np.ndarray):
    self._buffer = buffer
    self._offsets = offsets

  def __len__(self) -> int:
    return len(self._offsets) - 1

  def __getitem__(self, i: int) -> tuple[str, str, str]:
    row = json.loads(self._buffer[int(self._offsets[i]) : int(self._offsets[i + 1])])
    return row["id"], row["title"], row["text"]
