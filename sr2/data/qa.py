"""QA datasets: FlashRAG-format JSONL, tensorflow-datasets builders (no TensorFlow), loaders.

Rows are `{id, question, golden_answers, metadata?}`; multi-hop rows add
`paragraphs: [{title, text, is_supporting}]`. Builders write `array_record` files and are
read back through `as_data_source()`, the only tfds path that works without TensorFlow.

Order: records are keyed by their row position and written with shuffling disabled, so
record i of a split is row i of the source file (the NQ+HotpotQA mix: NQ rows, then
HotpotQA rows). Each record also stores that position as `index`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

try:
  import tensorflow_datasets as tfds
except ImportError as e:  # an optional dependency: only tfds datasets need it
  raise ImportError(
    "sr2.data.qa reads and writes tfds datasets and needs tensorflow-datasets: "
    "pip install 'sr2[data]' (or pip install tensorflow-datasets)"
  ) from e

from sr2.data.examples import (
  MIX_NAME,
  MIX_SOURCES,
  MULTIHOP_DATASETS,
  MULTIHOP_PREFIX,
  QA_DATASETS,
  Paragraph,
  QAExample,
  read_qa_jsonl,
)


def _features(with_paragraphs: bool) -> tfds.features.FeaturesDict:
  text = tfds.features.Text
  spec: dict[str, Any] = {
    "index": tfds.features.Scalar(np.int64),
    "id": text(),
    "question": text(),
    "golden_answers": tfds.features.Sequence(text()),
    "data_source": text(),
    "metadata": text(),  # JSON; "" when the row has none.
  }
  if with_paragraphs:
    spec["paragraphs"] = tfds.features.Sequence(
      {"title": text(), "text": text(), "is_supporting": tfds.features.Scalar(np.bool_)}
    )
  return tfds.features.FeaturesDict(spec)


def _source_dir(root: str, sub: str, name: str) -> str:
  """`<root>/<sub>/<name>` (the shared-data layout) or `<root>/<name>` (a flat layout)."""
  for d in (os.path.join(root, sub, name), os.path.join(root, name)):
    if os.path.isdir(d):
      return d
  raise ValueError(
    f"no directory for dataset {name!r} under source {root!r}; "
    f"expected {root}/{sub}/{name}/<split>.jsonl"
  )


def _split_files(d: str) -> dict[str, list[str]]:
  files = sorted(f for f in os.listdir(d) if f.endswith(".jsonl"))
  if not files:
    raise ValueError(f"{d}: no <split>.jsonl files")
  return {f[: -len(".jsonl")]: [os.path.join(d, f)] for f in files}


def _records(files: Sequence[str], with_paragraphs: bool) -> Iterator[tuple[int, dict]]:
  index = 0
  for path in files:
    for ex in read_qa_jsonl(path):
      if with_paragraphs and ex.paragraphs is None:
        raise ValueError(f"{path}: row {ex.id!r} has no 'paragraphs'")
      rec = {
        "index": index,
        "id": ex.id,
        "question": ex.question,
        "golden_answers": list(ex.golden_answers),
        "data_source": ex.data_source,
        "metadata": "" if ex.metadata is None else json.dumps(ex.metadata, ensure_ascii=False),
      }
      if with_paragraphs:
        rec["paragraphs"] = [dataclasses.asdict(p) for p in ex.paragraphs]
      yield index, rec  # an integer key + disable_shuffling keeps file order
      index += 1


class _JsonlBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared logic: one split per `<split>.jsonl` found in the source directory."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    "Pass the directory holding qa/<name>/<split>.jsonl (and multihop/<name>/...) files "
    "in FlashRAG format as the manual_dir (see experiments/prepare_data.py)."
  )
  _SUBDIR = "qa"
  _WITH_PARAGRAPHS = False
  # No checksums file ships with sr2; tfds would otherwise probe the package directory
  # through `importlib_resources`, which tensorflow-datasets does not install.
  code_path = None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
      builder=self, features=_features(self._WITH_PARAGRAPHS), disable_shuffling=True
    )

  def _split_files(self, root: str) -> dict[str, list[str]]:
    return _split_files(_source_dir(root, self._SUBDIR, self.builder_config.name))

  def _split_generators(self, dl_manager):
    splits = self._split_files(os.fspath(dl_manager.manual_dir))
    return {s: self._generate_examples(files) for s, files in splits.items()}

  def _generate_examples(self, files):
    return _records(files, self._WITH_PARAGRAPHS)


class FlashragQa(_JsonlBuilder):
  """The seven QA evaluation sets, plus the NQ+HotpotQA training mix."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in (*QA_DATASETS, MIX_NAME)]

  def _split_files(self, root):
    if self.builder_config.name != MIX_NAME:
      return super()._split_files(root)
    return {"train": [os.path.join(_source_dir(root, "qa", n), "train.jsonl") for n in MIX_SOURCES]}


class MultihopQa(_JsonlBuilder):
  """Multi-hop sets whose rows carry their context paragraphs."""

  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=n) for n in MULTIHOP_DATASETS]
  _SUBDIR = "multihop"
  _WITH_PARAGRAPHS = True


# ---------------------------------------------------------------------------------------
# Python API.

ALL_NAMES = (*QA_DATASETS, MIX_NAME, *(MULTIHOP_PREFIX + n for n in MULTIHOP_DATASETS))


def _builder(name: str, data_dir: str | os.PathLike) -> tfds.core.GeneratorBasedBuilder:
  if name not in ALL_NAMES:
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(ALL_NAMES)}")
  cls = MultihopQa if name.startswith(MULTIHOP_PREFIX) else FlashragQa
  return cls(
    config=name.removeprefix(MULTIHOP_PREFIX),
    data_dir=os.fspath(data_dir),
    file_format="array_record",
  )


def prepare(
  name: str, source_dir: str | os.PathLike, data_dir: str | os.PathLike, overwrite: bool = False
) -> tfds.core.GeneratorBasedBuilder:
  """Builds dataset `name` (see `ALL_NAMES`) from FlashRAG JSONL under `source_dir`.

  Args:
    name: e.g. "nq", "nq_hotpotqa_train", "multihop/hotpotqa".
    source_dir: holds `qa/<name>/<split>.jsonl` and `multihop/<name>/<split>.jsonl`.
    data_dir: where the tfds dataset is written.
    overwrite: rebuild even if the dataset is already prepared.

  Returns:
    The prepared builder (`.as_data_source()` gives the raw records).
  """
  builder = _builder(name, data_dir)
  mode = (
    tfds.download.GenerateMode.REUSE_CACHE_IF_EXISTS
    if overwrite
    else tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS
  )
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(source_dir), download_mode=mode)
  # tfds prints its banners to stdout; keep stdout free for callers' own output.
  with contextlib.redirect_stdout(sys.stderr):
    builder.download_and_prepare(download_config=config)
  return builder


def _s(b: bytes | str) -> str:
  return b.decode("utf-8") if isinstance(b, bytes) else b


def _decode(rec: Mapping[str, Any]) -> QAExample:
  paragraphs = None
  if "paragraphs" in rec:
    p = rec["paragraphs"]
    paragraphs = tuple(
      Paragraph(_s(t), _s(x), bool(s))
      for t, x, s in zip(p["title"], p["text"], p["is_supporting"], strict=True)
    )
  meta = _s(rec["metadata"])
  return QAExample(
    id=_s(rec["id"]),
    question=_s(rec["question"]),
    golden_answers=tuple(_s(a) for a in rec["golden_answers"]),
    data_source=_s(rec["data_source"]),
    paragraphs=paragraphs,
    metadata=json.loads(meta) if meta else None,
  )


class QASplit(Sequence[QAExample]):
  """Random-access view of one prepared split, rows in source-file order."""

  def __init__(self, source):
    self._source = source

  def __len__(self) -> int:
    return len(self._source)

  def __getitem__(self, i):
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for a split of {n} rows")
    return _decode(self._source[i % n])

  def __iter__(self) -> Iterator[QAExample]:
    chunk = 256  # batched reads are much faster than one record at a time
    for start in range(0, len(self), chunk):
      keys = list(range(start, min(start + chunk, len(self))))
      yield from (_decode(r) for r in self._source.__getitems__(keys))


def load_split(name: str, split: str, data_dir: str | os.PathLike) -> QASplit:
  """Opens split `split` (tfds slicing such as "test[:10]" works) of a prepared dataset."""
  builder = _builder(name, data_dir)
  if not builder.is_prepared():
    raise ValueError(
      f"dataset {name!r} is not prepared under {os.fspath(data_dir)!r}; "
      "run sr2.data.prepare or experiments/prepare_data.py first"
    )
  base = split.split("[")[0]
  if base not in builder.info.splits:
    raise ValueError(
      f"dataset {name!r} has no split {base!r}; it has {', '.join(sorted(builder.info.splits))}"
    )
  return QASplit(builder.as_data_source(split=split))
