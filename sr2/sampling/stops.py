"""Stop strings detected inside the jitted decode loop, whatever the BPE merges around them.

A stop string can end in the middle of a token ("</search>\\n" is one token in some
vocabularies) or be split over several ("</", "search", ">"). We therefore match on bytes:
each stop string gets a KMP automaton over bytes, and on the host we run every token's
bytes through it from every state, once per tokenizer, giving a table
`next_state[s, q, token]`. In the loop a row keeps one automaton state per stop string
and the check for a new token is one gather. State `len(s)` means "matched" and is
absorbing, so a match anywhere inside a token's bytes is seen.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import numpy as np


def token_bytes(tokenizer, vocab_size: int) -> list[bytes]:
  """The bytes each id contributes to decoded text (special tokens as their text).

  Handles byte-level BPE (GPT-2/Llama-3/Qwen/SmolLM style) and SentencePiece-style
  vocabularies ('▁' for space, <0xNN> byte tokens). Ids past the tokenizer's vocabulary
  (embedding padding) contribute nothing.
  """
  hf = getattr(tokenizer, "hf", tokenizer)
  n = min(len(hf), vocab_size)
  pieces = hf.convert_ids_to_tokens(list(range(n)))
  special = {int(i) for i in getattr(hf, "added_tokens_decoder", {})}
  decoder = type(hf.backend_tokenizer.decoder).__name__ if hf.backend_tokenizer.decoder else ""
  out: list[bytes] = []
  if decoder == "ByteLevel":
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    inv = {c: b for b, c in bytes_to_unicode().items()}
    for i, p in enumerate(pieces):
      if i in special or p is None or any(c not in inv for c in p):
        out.append((p or "").encode("utf-8"))
      else:
        out.append(bytes(inv[c] for c in p))
  else:
    for i, p in enumerate(pieces):
      p = p or ""
      if i not in special and len(p) == 6 and p.startswith("<0x") and p.endswith(">"):
        out.append(bytes([int(p[3:5], 16)]))
      else:
        out.append(p.replace("\u2581", " ").encode("utf-8"))
  return out + [b""] * (vocab_size - n)


def _kmp_dfa(pattern: bytes) -> np.ndarray:
  """delta[q, c]: longest prefix of `pattern` that is a suffix after reading byte c in state q."""
  n = len(pattern)
  delta = np.zeros((n + 1, 256), np.int32)
  delta[0, pattern[0]] = 1
  restart = 0
  for q in range(1, n):
    delta[q] = delta[restart]
    delta[q, pattern[q]] = q + 1
    restart = delta[restart, pattern[q]]
  delta[n] = n  # matched: absorbing
  return delta


@dataclasses.dataclass(frozen=True)
class StopTables:
  """Per-stop-string automata over whole tokens."""

  next_state: np.ndarray  # int32 [S, Q, V]; Q = longest stop string + 1 (shorter ones padded).
  lengths: np.ndarray  # int32 [S]; state == lengths[s] means stop string s has been completed.
  strings: tuple[str, ...]  # the stop strings, for messages.


def build_stop_tables(pieces: Sequence[bytes], stop_strings: Sequence[str]) -> StopTables:
  """Runs every token's bytes through each stop string's automaton from every state."""
  if not stop_strings:
    return StopTables(np.zeros((0, 1, len(pieces)), np.int32), np.zeros((0,), np.int32), ())
  for s in stop_strings:
    if not isinstance(s, str) or not s:
      raise ValueError(f"stop strings must be non-empty str, got {s!r}")
  patterns = [s.encode("utf-8") for s in stop_strings]
  q_max = max(len(p) for p in patterns) + 1
  lengths = np.array([len(p) for p in pieces], np.int64)
  order = np.argsort(lengths, kind="stable")[::-1]  # longest first: prefixes stay contiguous
  sorted_len = lengths[order]
  max_len = int(sorted_len[0]) if len(pieces) else 0
  byte_mat = np.zeros((len(pieces), max(max_len, 1)), np.uint8)
  for row, i in enumerate(order):
    byte_mat[row, : lengths[i]] = np.frombuffer(pieces[i], np.uint8)
  tables = np.zeros((len(patterns), q_max, len(pieces)), np.int32)
  for s, pattern in enumerate(patterns):
    delta = _kmp_dfa(pattern)
    n = len(pattern)
    state = np.broadcast_to(np.arange(n + 1)[:, None], (n + 1, len(pieces))).copy()
    for j in range(max_len):
      live = int(np.sum(sorted_len > j))  # tokens longer than j: a prefix of the order
      state[:, :live] = delta[state[:, :live], byte_mat[:live, j]]
    unsorted = np.empty_like(state)
    unsorted[:, order] = state
    tables[s, : n + 1] = unsorted
    tables[s, n + 1 :] = n  # padding states are never entered; keep them "matched"
  return StopTables(tables, np.array([len(p) for p in patterns], np.int32), tuple(stop_strings))


# Per tokenizer object (weakly held, so a new tokenizer never inherits a dead one's tables).
_TABLES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def stop_tables_for(tokenizer, vocab_size: int, stop_strings: Sequence[str]) -> StopTables:
  """`build_stop_tables` for a tokenizer, memoised per (tokenizer, vocab, strings)."""
  per_tokenizer = _TABLES.setdefault(tokenizer, {})
  key = (vocab_size, tuple(stop_strings))
  if key not in per_tokenizer:
    per_tokenizer[key] = build_stop_tables(token_bytes(tokenizer, vocab_size), stop_strings)
  return per_tokenizer[key]


def match_text(pieces: Sequence[bytes], token_ids: Sequence[int], stop_strings: Sequence[str]):
  """Reference on the host: index of the first token after which the text contains a stop
  string (None if never). Used by tests to check the in-loop detection."""
  text = b""
  patterns = [s.encode("utf-8") for s in stop_strings]
  for t, i in enumerate(token_ids):
    text += pieces[i]
    if any(p in text for p in patterns):
      return t
  return None
