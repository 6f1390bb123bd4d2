"""Reading JSON Lines with errors that name the file and line (QA sets, corpora)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

from sr2 import files


def iter_jsonl(
  path: str | os.PathLike, error: type[Exception] = ValueError, what: str = "file"
) -> Iterator[tuple[str, int, dict]]:
  """Yields `("file:line", line number, row dict)` for each non-blank line.

  Args:
    path: a UTF-8 JSON Lines file, local or gs://.
    error: the exception type raised for a bad file or line.
    what: how messages name the file ("corpus file", "QA file", ...).

  Raises:
    `error` naming the file (and line) when the file cannot be opened, or a line is not
    UTF-8, not JSON, or not a JSON object.
  """
  name = os.fspath(path)
  try:
    f = files.path(name).open("rb")
  except OSError as e:
    raise error(f"cannot open {what} {name!r}: {e.strerror or e}") from e
  with f:
    for lineno, raw in enumerate(f, start=1):
      where = f"{name}:{lineno}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 ({e.reason} at byte {e.start})") from None
      if line.strip():
        yield where, lineno, _json_object(line, where, error)


def _json_object(line: str, where: str, error: type[Exception]) -> dict:
  """The JSON object on `line`; `error` naming `where` when it is not JSON or not an object."""
  try:
    row = json.loads(line)
  except json.JSONDecodeError as e:
    raise error(f"{where}: not valid JSON ({e.msg}, column {e.colno})") from None
  if not isinstance(row, dict):
    raise error(f"{where}: expected a JSON object, got {type(row).__name__}")
  return row
