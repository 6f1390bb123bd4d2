"""QA answer metrics: SQuAD-style normalisation, EM, F1, cover-EM and the outcome reward.

`normalize_answer` follows the SQuAD recipe (lowercase, drop punctuation, drop the English
articles a/an/the, collapse whitespace) with deliberate unicode choices:

- NFKC first, so full-width letters/digits, ligatures and no-break spaces match their plain
  forms; then `casefold` (a stronger lowercase: "ß" -> "ss") and NFKC again, since
  casefolding can leave text unnormalised.
- Punctuation is ASCII `string.punctuation` (exactly SQuAD's set, which includes symbols
  such as `$ + < = > ^ | ~`) plus every unicode character of category P* (CJK full stops,
  curly quotes, dashes, guillemets). Other symbols (S*: "€", "°") are kept. Like SQuAD,
  punctuation is deleted, not replaced by a space: "Saint-Denis" -> "saintdenis",
  "1,000" -> "1000", "3.14" -> "314".
- Accents are kept ("José" != "Jose"); NFKC only makes composed and decomposed forms
  equal. CJK text is kept as is; tokens are whitespace-separated, so an unspaced CJK answer
  is one token for F1 and cover-EM.

The metrics `exact_match`, `f1` and `cover_em` take `pred`, the predicted answer or None
(no answer, which scores 0), and `golds`, one gold answer or a non-empty sequence of its
aliases. A prediction that normalises to "" never scores: an empty `<answer></answer>`
must not match a gold alias that happens to normalise to "" (e.g. "The The").
"""

from __future__ import annotations

import collections
import re
import string
import unicodedata
from collections.abc import Iterable, Mapping

from sr2.data.prompts import ANSWER_CLOSE as _ANSWER_CLOSE
from sr2.data.prompts import ANSWER_OPEN as _ANSWER_OPEN
from sr2.data.prompts import INFO_CLOSE, INFO_OPEN

# A complete observation block, innermost: its body holds no other opening tag, so a stray
# `<information>` written by the model cannot swallow the environment's block after it.
_INFO_BLOCK = re.compile(
  f"{re.escape(INFO_OPEN)}(?:(?!{re.escape(INFO_OPEN)}).)*?{re.escape(INFO_CLOSE)}", re.S
)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b")
_ASCII_PUNCT = frozenset(string.punctuation)
# HotpotQA/FlashRAG convention: these answers get no partial F1 credit.
_NO_PARTIAL_F1 = frozenset({"yes", "no", "noanswer"})


def _is_punct(ch: str) -> bool:
  return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def normalize_answer(s: str) -> str:
  """Normalises an answer for matching (see the module docstring for the unicode rules)."""
  if not isinstance(s, str):
    raise TypeError(f"normalize_answer expects a str, got {type(s).__name__}")
  s = unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", s).casefold())
  s = "".join(ch for ch in s if not _is_punct(ch))
  # Deleting punctuation can put a combining mark next to a new base letter; recompose so
  # that normalising twice gives the same string.
  s = unicodedata.normalize("NFKC", s)
  s = _ARTICLES.sub(" ", s)
  return " ".join(s.split())


def _normalized_golds(golds: str | Iterable[str]) -> tuple[str, ...]:
  """Validates `golds` (a str or an iterable of str) and returns them normalised."""
  if isinstance(golds, str):
    golds = (golds,)
  elif isinstance(golds, bytes | Mapping) or not isinstance(golds, Iterable):
    raise ValueError(f"golds must be a str or a sequence of str, got {type(golds).__name__}")
  golds = tuple(golds)
  if not golds:
    raise ValueError("golds is empty: a QA example needs at least one gold answer")
  for i, gold in enumerate(golds):
    if not isinstance(gold, str):
      raise ValueError(f"golds[{i}] must be a str, got {type(gold).__name__}")
    if not gold.strip():
      raise ValueError(f"golds[{i}] is empty or whitespace ({gold!r}); gold answers need text")
  return tuple(normalize_answer(g) for g in golds)


def _normalized(pred: str | None, golds: str | Iterable[str]) -> tuple[str, tuple[str, ...]]:
  """A metric's validated, normalised `(pred, golds)`; None as `pred` becomes ""."""
  norm_golds = _normalized_golds(golds)
  if pred is None:
    return "", norm_golds
  if not isinstance(pred, str):
    raise TypeError(f"pred must be a str or None, got {type(pred).__name__}")
  return normalize_answer(pred), norm_golds


def exact_match(pred: str | None, golds: str | Iterable[str]) -> float:
  """1.0 if the normalised prediction equals any normalised gold, else 0.0."""
  norm_pred, norm_golds = _normalized(pred, golds)
  return float(bool(norm_pred) and norm_pred in norm_golds)


def _f1_tokens(pred: str, gold: str) -> float:
  if pred != gold and (pred in _NO_PARTIAL_F1 or gold in _NO_PARTIAL_F1):
    return 0.0
  pred_tokens, gold_tokens = pred.split(), gold.split()
  same = sum((collections.Counter(pred_tokens) & collections.Counter(gold_tokens)).values())
  if same == 0:
    return 0.0
  precision, recall = same / len(pred_tokens), same / len(gold_tokens)
  return 2 * precision * recall / (precision + recall)


def f1(pred: str | None, golds: str | Iterable[str]) -> float:
  """Token-level F1 of the normalised prediction, maximised over the golds.

  Tokens are the whitespace-separated words after `normalize_answer`, counted as a
  multiset (SQuAD). As in HotpotQA's and FlashRAG's scorers, when either side normalises to
  "yes", "no" or "noanswer" and the two differ, F1 is 0. A prediction or gold without tokens
  scores 0 (SQuAD v1.1). The result lies in [0, 1].
  """
  norm_pred, norm_golds = _normalized(pred, golds)
  return max(_f1_tokens(norm_pred, g) for g in norm_golds)


def cover_em(pred: str | None, golds: str | Iterable[str]) -> float:
  """1.0 if some normalised gold occurs in the normalised prediction as whole tokens.

  "paris" covers "the capital is paris" but not "parisian". Golds that normalise to ""
  cover nothing.
  """
  norm_pred, norm_golds = _normalized(pred, golds)
  padded = f" {norm_pred} "
  return float(any(g and f" {g} " in padded for g in norm_golds))


def extract_answer(response: str) -> str | None:
  """The stripped text of the last `<answer>...</answer>` in a response, or None.

  The response is what the Actor wrote plus the observations the environment inserted;
  the prompt is not part of it. Complete `<information>...</information>` blocks are
  skipped: retrieved passages or the invalid-action feedback may contain answer tags that
  the model never wrote. The last `<answer>` opening decides: if nothing closes it, the
  final answer was cut off (EOS or length) and the result is None, even when an earlier
  answer is complete, since the model had moved past it. Tags are case-sensitive, and an
  answer must open and close within one stretch of model text. `<answer></answer>` is "".
  Never raises on a str.
  """
  if not isinstance(response, str):
    raise TypeError(f"response must be a str, got {type(response).__name__}")
  for segment in reversed(_INFO_BLOCK.split(response)):
    start = segment.rfind(_ANSWER_OPEN)
    if start < 0:
      continue
    start += len(_ANSWER_OPEN)
    end = segment.find(_ANSWER_CLOSE, start)
    return None if end < 0 else segment[start:end].strip()
  return None


def outcome_reward(response: str, golds: str | Iterable[str]) -> float:
  """The outcome reward r_outcome: EM of the extracted answer, 0.0 when there is none.

  `golds` is validated even when the response has no answer, so bad data fails loudly.
  """
  _normalized_golds(golds)
  answer = extract_answer(response)
  return 0.0 if answer is None else exact_match(answer, golds)
