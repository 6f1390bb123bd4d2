"""QA examples in FlashRAG's JSONL format, read without tensorflow-datasets.

Rows are `{id, question, golden_answers, metadata?}`; multi-hop rows add
`paragraphs: [{title, text, is_supporting}]`. A malformed row is an error that names the
file, the line and what was expected. `sr2.data.qa` writes and reads these as tfds
datasets.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from typing import Any

from sr2.jsonl import iter_jsonl

# The folder of FlashRAG-format QA data (`qa/<name>/<split>.jsonl`, `multihop/<set>/...`)
# that configs name by default: $SR2_DATA, else `data/` under the repository root.
DATA_ENV = "SR2_DATA"


def default_data_root() -> str:
  """`$SR2_DATA`, or "data" (configs resolve a relative root against the repository)."""
  return os.environ.get(DATA_ENV) or "data"


QA_DATASETS = ("nq", "triviaqa", "popqa", "hotpotqa", "2wikimultihopqa", "musique", "bamboogle")
MIX_NAME = "nq_hotpotqa_train"  # Search-R1's training set: NQ train + HotpotQA train.
MIX_SOURCES = ("nq", "hotpotqa")
MULTIHOP_DATASETS = ("hotpotqa", "2wikimultihopqa", "musique")
MULTIHOP_PREFIX = "multihop/"  # `multihop/hotpotqa` names the set with paragraphs.


@dataclasses.dataclass(frozen=True)
class Paragraph:
  """One context paragraph of a multi-hop question."""

  title: str
  text: str
  is_supporting: bool = False


@dataclasses.dataclass(frozen=True)
class QAExample:
  """One question with its gold answers (any of them counts as correct)."""

  id: str
  question: str
  golden_answers: tuple[str, ...]
  data_source: str = ""
  paragraphs: tuple[Paragraph, ...] | None = None
  metadata: Mapping[str, Any] | None = dataclasses.field(default=None, hash=False)

  def __post_init__(self):
    if not isinstance(self.id, str) or not self.id.strip():
      raise ValueError(f"QAExample.id must be a non-empty string, got {self.id!r}")
    if not isinstance(self.question, str) or not self.question.strip():
      raise ValueError(f"QAExample {self.id!r}: question must be a non-empty string")
    answers = self.golden_answers
    if isinstance(answers, str) or not answers:
      raise ValueError(f"QAExample {self.id!r}: golden_answers must be a non-empty list")
    if any(not isinstance(a, str) or not a.strip() for a in answers):
      raise ValueError(f"QAExample {self.id!r}: golden_answers must be non-empty strings")
    object.__setattr__(self, "golden_answers", tuple(answers))


def _parse_paragraphs(raw: Any, where: str) -> tuple[Paragraph, ...]:
  if not isinstance(raw, list):
    raise ValueError(f"{where}: 'paragraphs' must be a list, got {type(raw).__name__}")
  out = []
  for j, p in enumerate(raw):
    if not (
      isinstance(p, dict) and isinstance(p.get("title"), str) and isinstance(p.get("text"), str)
    ):
      raise ValueError(f"{where}: paragraphs[{j}] must be an object with string title and text")
    out.append(Paragraph(p["title"], p["text"], bool(p.get("is_supporting", False))))
  return tuple(out)


def read_qa_jsonl(path: str | os.PathLike, data_source: str | None = None) -> list[QAExample]:
  """Reads and validates a FlashRAG-format QA file.

  Args:
    path: a `.jsonl` file, one `{id, question, golden_answers, metadata?, paragraphs?}` a line.
    data_source: the `data_source` of every row; defaults to the file's directory name.

  Returns:
    The rows in file order.

  Raises:
    ValueError: naming the file and line of the first bad row (bytes that are not UTF-8,
      bad JSON, empty id or question, missing or empty answers, a duplicate id), or if the
      file has no rows.
  """
  path = os.fspath(path)
  if data_source is None:
    data_source = os.path.basename(os.path.dirname(os.path.abspath(path)))
  rows: list[QAExample] = []
  seen: dict[str, int] = {}
  for where, line_no, row in iter_jsonl(path, ValueError, "QA file"):
    paragraphs = None
    if "paragraphs" in row:
      paragraphs = _parse_paragraphs(row["paragraphs"], where)
    metadata = row.get("metadata")
    if metadata is not None and not isinstance(metadata, dict):
      raise ValueError(f"{where}: 'metadata' must be an object")
    try:
      ex = QAExample(
        id=row.get("id"),
        question=row.get("question"),
        golden_answers=row.get("golden_answers"),
        data_source=data_source,
        paragraphs=paragraphs,
        metadata=metadata,
      )
    except (ValueError, TypeError) as e:
      raise ValueError(f"{where}: {e}") from None
    if ex.id in seen:
      raise ValueError(f"{where}: duplicate id {ex.id!r} (first on line {seen[ex.id]})")
    seen[ex.id] = line_no
    rows.append(ex)
  if not rows:
    raise ValueError(f"{path}: no rows; expected FlashRAG-format JSON lines")
  return rows


# ---------------------------------------------------------------------------------------
# tensorflow-datasets builders.


DATASET_KINDS = ("multihop", "qa")


def dataset_file(root, name: str, default_split: str, where: str) -> tuple[str, str, Any]:
  """(kind, set name, JSONL path) of a dataset named `qa/<name>[:split]` or `multihop/<set>`.

  The file is `root/<kind>/<set>/<split>.jsonl` (`root`: a pathlib or epath folder, so it
  may be gs://); a malformed name or a missing file raises
  `ConfigError` naming `where` (the config field).
  """
  from sr2.configlib import ConfigError

  base, _, split = name.partition(":")
  kind, _, set_name = base.partition("/")
  if kind not in DATASET_KINDS or not set_name or "/" in set_name:
    raise ConfigError(f"{where}: {name!r}; expected qa/<name> or multihop/<set>[:split]")
  path = root / kind / set_name / f"{split or default_split}.jsonl"
  if not path.is_file():
    raise ConfigError(
      f"{where}: {name!r} has no file {path}; expected FlashRAG JSONL there, one "
      '{"id", "question", "golden_answers": [...]} object per line'
      + (' with "paragraphs": [{"title", "text", "is_supporting"}]' if kind == "multihop" else "")
    )
  return kind, set_name, path
