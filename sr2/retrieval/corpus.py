"""Passages: reading corpora, validating them, pooling multi-hop paragraphs, formatting hits.

A passage is a dict `{"id": str, "title": str, "text": str}`. Observations shown to the
model are `Doc 1(Title: t) text\nDoc 2(Title: t) text` (sr2's format), wrapped in
`<information>` tags by `format_information`.
"""

import hashlib
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

from sr2.data.prompts import wrap_information
from sr2.jsonl import iter_jsonl

_FIELDS = ("id", "title", "text")
_SPACES = re.compile(r"\s+")
_WORD = re.compile(r"\S+")


class CorpusError(ValueError):
  """A corpus file, passage or paragraph that is not what sr2 expects."""


class TextTokenizer(Protocol):
  """What `format_documents` needs from a tokenizer."""

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: list[int]) -> str: ...


def validate_passages(passages: Sequence[Mapping[str, str]]) -> list[tuple[str, str, str]]:
  """Checks passages and returns them as `(id, title, text)` tuples, in order.

  Rejects an empty corpus, non-mappings, a missing `id`/`title`/`text`, non-str fields,
  empty or duplicate ids, and text that cannot be encoded as UTF-8 (lone surrogates).
  Errors name the passage's position and id.
  """
  if isinstance(passages, str | bytes | Mapping) or not isinstance(passages, Sequence):
    raise CorpusError(f"passages must be a sequence of dicts, got {type(passages).__name__}")
  if not passages:
    raise CorpusError("passages is empty: a BM25 index needs at least one passage")
  rows: list[tuple[str, str, str]] = []
  first_seen: dict[str, int] = {}
  for i, passage in enumerate(passages):
    where = f"passages[{i}]"
    if not isinstance(passage, Mapping):
      raise CorpusError(f"{where} must be a dict with {_FIELDS}, got {type(passage).__name__}")
    where += f" (id {passage.get('id')!r})"
    missing = [f for f in _FIELDS if f not in passage]
    if missing:
      raise CorpusError(f"{where} lacks {missing}; a passage needs {_FIELDS}")
    for field in _FIELDS:
      _check_str(passage[field], f"{where} field {field!r}")
    pid = passage["id"]
    if not pid.strip():
      raise CorpusError(f"{where} has an empty id")
    if pid in first_seen:
      raise CorpusError(
        f"{where} repeats the id of passages[{first_seen[pid]}]; ids must be unique"
      )
    first_seen[pid] = i
    rows.append((pid, passage["title"], passage["text"]))
  return rows


def read_jsonl_corpus(path: str | os.PathLike) -> list[dict[str, str]]:
  """Reads a JSONL corpus: `{id, title, text}` rows or FlashRAG `{id, contents}` rows.

  FlashRAG's `contents` is `'"Title"\\ntext'`; the title's surrounding quotes are removed,
  and `contents` without a newline is all text. Integer ids are turned into str. Blank
  lines are skipped.

  Args:
    path: a UTF-8 JSON Lines file.

  Returns:
    Passages `{"id", "title", "text"}` in file order.
  """
  passages = []
  first_line: dict[str, int] = {}
  for where, lineno, row in _iter_jsonl(path):
    pid = row.get("id")
    if isinstance(pid, int) and not isinstance(pid, bool):
      pid = str(pid)
    _check_str(pid, f"{where}: field 'id'")
    if "title" in row and "text" in row:
      title, text = row["title"], row["text"]
    elif "contents" in row:
      _check_str(row["contents"], f"{where}: field 'contents'")
      title, text = _split_contents(row["contents"])
    else:
      raise CorpusError(f"{where}: expected keys id+title+text or id+contents, got {sorted(row)}")
    _check_str(title, f"{where}: field 'title'")
    _check_str(text, f"{where}: field 'text'")
    if not pid.strip():
      raise CorpusError(f"{where}: empty id")
    if pid in first_line:
      raise CorpusError(f"{where}: id {pid!r} already used on line {first_line[pid]}")
    first_line[pid] = lineno
    passages.append({"id": pid, "title": title, "text": text})
  if not passages:
    raise CorpusError(f"{os.fspath(path)}: no passages in the file")
  return passages


def paragraph_id(title: str, text: str) -> str:
  """A multi-hop paragraph's id in the pooled corpus: `mh-` and 12 hex digits of the SHA-1
  of its stripped title and whitespace-collapsed text."""
  title, text = title.strip(), _SPACES.sub(" ", text).strip()
  return "mh-" + hashlib.sha1(f"{title}\n{text}".encode()).hexdigest()[:12]


def pool_multihop_paragraphs(
  paths_or_rows: str | os.PathLike | Iterable[str | os.PathLike | Mapping[str, Any]],
) -> list[dict[str, str]]:
  """Pools the `paragraphs` of multi-hop QA rows into one deduplicated corpus.

  Paragraphs are equal when their stripped titles and whitespace-collapsed texts are; the
  kept text is the collapsed one. Ids are `mh-` plus 12 hex digits of a SHA-1 of title and
  text, so a paragraph keeps its id across runs and across which sets are pooled.

  Args:
    paths_or_rows: a JSONL path, or an iterable of paths and/or row dicts with
      `paragraphs: [{title, text, ...}]`.

  Returns:
    Passages `{"id", "title", "text"}` in first-seen order.
  """
  if isinstance(paths_or_rows, str | os.PathLike):
    paths_or_rows = [paths_or_rows]
  elif isinstance(paths_or_rows, Mapping):
    raise CorpusError("pool_multihop_paragraphs takes a list of rows, got a single row dict")
  pooled: dict[str, dict[str, str]] = {}
  for where, row in _iter_rows(paths_or_rows):
    paragraphs = row.get("paragraphs")
    if not isinstance(paragraphs, list):
      raise CorpusError(
        f"{where}: expected a list under 'paragraphs', got {type(paragraphs).__name__}"
      )
    for j, paragraph in enumerate(paragraphs):
      at = f"{where}: paragraphs[{j}]"
      if not isinstance(paragraph, Mapping) or "title" not in paragraph or "text" not in paragraph:
        raise CorpusError(f"{at}: expected a dict with 'title' and 'text'")
      _check_str(paragraph["title"], f"{at} field 'title'")
      _check_str(paragraph["text"], f"{at} field 'text'")
      title = paragraph["title"].strip()
      text = _SPACES.sub(" ", paragraph["text"]).strip()
      pid = paragraph_id(title, text)
      kept = pooled.setdefault(pid, {"id": pid, "title": title, "text": text})
      if (kept["title"], kept["text"]) != (title, text):
        raise CorpusError(f"{at}: id hash collision with {kept['title']!r}; report this")
  if not pooled:
    raise CorpusError("pool_multihop_paragraphs: the rows hold no paragraphs")
  return list(pooled.values())


def format_documents(
  hits: Sequence[Any], *, tokenizer: TextTokenizer | None = None, max_tokens: int | None = 500
) -> str:
  """Formats hits as `Doc i(Title: t) text` lines joined by newlines.

  The whole string is capped at `max_tokens`. With a tokenizer the cut is at a token
  boundary: the first `max_tokens` ids are decoded, a trailing partial character (U+FFFD)
  is dropped, and the prefix is shortened token by token until it re-encodes to at most
  `max_tokens` ids. Without one, the cut is after the `max_tokens`-th whitespace-separated
  word. `tokenizer.encode` is called as given: pass one that adds no BOS/EOS.

  Args:
    hits: `Hit`s or mappings with `title` and `text`.
    tokenizer: any object with `encode(str) -> list[int]` and `decode(list[int]) -> str`.
    max_tokens: the cap, >= 1, or None for none.

  Returns:
    The observation text ("" for no hits).
  """
  if max_tokens is not None and (
    isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1
  ):
    raise CorpusError(f"max_tokens must be an int >= 1 or None, got {max_tokens!r}")
  lines = []
  for i, hit in enumerate(hits):
    title, text = (hit["title"], hit["text"]) if isinstance(hit, Mapping) else (hit.title, hit.text)
    lines.append(f"Doc {i + 1}(Title: {title}) {text}")
  observation = "\n".join(lines)
  if max_tokens is None:
    return observation
  if tokenizer is None:
    words = list(_WORD.finditer(observation))
    return observation if len(words) <= max_tokens else observation[: words[max_tokens - 1].end()]
  ids = list(tokenizer.encode(observation))
  if len(ids) <= max_tokens:
    return observation
  for n in range(max_tokens, 0, -1):
    prefix = tokenizer.decode(ids[:n]).rstrip("\ufffd")
    if len(tokenizer.encode(prefix)) <= max_tokens:
      return prefix
  return ""


def format_information(
  hits: Sequence[Any], *, tokenizer: TextTokenizer | None = None, max_tokens: int | None = 500
) -> str:
  """`format_documents` wrapped by `sr2.data.prompts.wrap_information`.

  The cap applies to the documents, not to the tags around them.
  """
  return wrap_information(format_documents(hits, tokenizer=tokenizer, max_tokens=max_tokens))


def _check_str(value: Any, where: str) -> None:
  if not isinstance(value, str):
    raise CorpusError(f"{where} must be str, got {type(value).__name__}")
  try:
    value.encode("utf-8")
  except UnicodeEncodeError as e:
    raise CorpusError(f"{where} is not valid Unicode text ({e.reason} at {e.start})") from None


def _split_contents(contents: str) -> tuple[str, str]:
  if "\n" not in contents:  # no title line: all of it is text
    return "", contents
  title, _, text = contents.partition("\n")
  if len(title) >= 2 and title[0] == title[-1] == '"':
    title = title[1:-1]
  return title, text


def _iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, int, dict]]:
  return iter_jsonl(path, CorpusError, "corpus file")


def _iter_rows(items: Iterable[Any]) -> Iterator[tuple[str, Mapping[str, Any]]]:
  for i, item in enumerate(items):
    if isinstance(item, str | os.PathLike):
      for where, _, row in _iter_jsonl(item):
        yield where, row
    elif isinstance(item, Mapping):
      yield f"rows[{i}]", item
    else:
      raise CorpusError(f"rows[{i}]: expected a path or a row dict, got {type(item).__name__}")
