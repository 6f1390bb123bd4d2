"""QA metrics: normalisation, EM, F1, cover-EM, answer extraction and the outcome reward."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sr2 import rewards
from sr2.agent import protocol
from sr2.rewards import cover_em, exact_match, extract_answer, f1, normalize_answer

NORMALIZE_CASES = [
  ("The Beatles!", "beatles"),
  ("  A  Tale of\tTwo\nCities ", "tale of two cities"),
  ("theatre", "theatre"),  # articles only as whole words
  ("Vitamin A", "vitamin"),  # SQuAD quirk: a lone "a" is an article
  ("Saint-Denis", "saintdenis"),  # punctuation is deleted, not turned into a space
  ("1,000", "1000"),
  ("3.14", "314"),
  ("$5", "5"),  # `$` is in SQuAD's ASCII set
  ("€5", "€5"),  # non-ASCII symbols (category Sc) are kept
  ("José", "josé"),  # accents kept
  ("Jose\u0301", "josé"),  # decomposed -> composed by NFKC
  ("ＡＢＣ　１２３", "abc 123"),  # full-width letters, digits and space
  ("ﬁsh", "fish"),  # ligature
  ("STRASSE", "strasse"),
  ("Straße", "strasse"),  # casefold
  ("«Amélie»", "amélie"),  # guillemets are P*
  ("O’Neill", "oneill"),
  ("北京。", "北京"),  # CJK full stop is P*
  ("東京 タワー", "東京 タワー"),
  ("", ""),
  ("the a an", ""),
]


@pytest.mark.parametrize("text, expected", NORMALIZE_CASES)
def test_normalize_answer(text, expected):
  assert normalize_answer(text) == expected


EM_CASES = [
  ("The Beatles", "beatles", 1.0),
  ("the beatles!", ["Beatles"], 1.0),
  ("Paris, France", "Paris", 0.0),
  ("José", "Jose", 0.0),
  ("José", "JOSÉ", 1.0),
  ("ＡＢＣ", "abc", 1.0),
  ("北京。", "北京", 1.0),
  ("O’Neill", "O'Neill", 1.0),
  ("1,000", "1000", 1.0),
  ("1999", "1999.", 1.0),
  ("Saint-Denis", "Saint Denis", 0.0),
  ("Lennon", ["John Lennon", "lennon"], 1.0),  # any alias
  ("", "Paris", 0.0),
  ("", ["The The"], 0.0),  # both normalise to "": an empty answer never matches
  ("the", ["The The"], 0.0),
  (None, "Paris", 0.0),
]


@pytest.mark.parametrize("pred, golds, expected", EM_CASES)
def test_exact_match(pred, golds, expected):
  assert exact_match(pred, golds) == expected


F1_CASES = [
  # pred [cat, sat, on, mat], gold [cat, on, mat]: same 3, P = 3/4, R = 1,
  # F1 = 2 * 3/4 * 1 / (3/4 + 1) = 6/7.
  ("the cat sat on the mat", "a cat on a mat", 6 / 7),
  # same 1, P = 1/3, R = 1 -> 2 * 1/3 / (4/3) = 1/2.
  ("new york city", "York", 0.5),
  # multiset overlap min(2, 1) = 1, P = 1/2, R = 1 -> 2/3.
  ("paris paris", "Paris", 2 / 3),
  # golds: "obama" P = 1/2, R = 1 -> 2/3; "barack hussein obama" P = 1, R = 2/3 -> 4/5.
  ("Barack Obama", ["Obama", "Barack Hussein Obama"], 0.8),
  ("yes it is", "yes", 0.0),  # yes/no/noanswer: no partial credit
  ("no", "no way", 0.0),
  ("Yes.", "yes", 1.0),
  ("东京 都", "东京", 2 / 3),  # [东京, 都] vs [东京]: P = 1/2, R = 1
  ("东京都", "东京", 0.0),  # unspaced CJK is one token
  ("", "Paris", 0.0),
  (None, "Paris", 0.0),
  ("the", "the", 0.0),  # no tokens on either side: 0 (SQuAD v1.1)
  ("Berlin", "Paris", 0.0),
]


@pytest.mark.parametrize("pred, golds, expected", F1_CASES)
def test_f1(pred, golds, expected):
  assert f1(pred, golds) == pytest.approx(expected)


COVER_CASES = [
  ("The capital is Paris.", "paris", 1.0),
  ("Parisian", "paris", 0.0),  # whole tokens only
  ("john lennon and paul", ["Paul McCartney", "John Lennon"], 1.0),
  ("new york city", "York City", 1.0),
  ("new york city", "new city", 0.0),  # contiguous tokens
  ("", "x", 0.0),
  ("the band", "The The", 0.0),  # a gold that normalises to "" covers nothing
]


@pytest.mark.parametrize("pred, golds, expected", COVER_CASES)
def test_cover_em(pred, golds, expected):
  assert cover_em(pred, golds) == expected


_FEEDBACK = protocol.invalid_action_feedback(protocol.parse_turn("<think>hm</think>"))
EXTRACT_CASES = [
  ("<answer> Paris </answer>", "Paris"),
  ("<think>x</think>\n<answer>a</answer> then <answer>b</answer>", "b"),  # the last one
  ("<answer>a</answer> <answer>b", None),  # an unclosed final answer was cut off
  ("<answer>a", None),
  ("no tags at all", None),
  ("", None),
  ("<answer></answer>", ""),
  ("<answer>a <answer>b</answer>", "b"),
  ("<answer>a</answer></answer>", "a"),
  ("</answer><answer>", None),
  ("<ANSWER>x</ANSWER>", None),  # tags are case-sensitive
  ("<answer>x</answer>\n\n<information><answer>y</answer></information>\n\n", "x"),
  ("<information> <answer>z</answer>", "z"),  # an unclosed block is model text
  ("<think>hm</think>" + _FEEDBACK, None),  # the feedback quotes <answer> and </answer>
  ("<answer>x</answer>" + _FEEDBACK, "x"),
  ("<answer>a<information>d</information>b</answer>", None),  # must close in one stretch
]


@pytest.mark.parametrize("response, expected", EXTRACT_CASES)
def test_extract_answer(response, expected):
  assert extract_answer(response) == expected


def test_outcome_reward():
  response = "<think>The band from Liverpool.</think>\n<answer> The Beatles </answer>"
  assert rewards.outcome_reward(response, ["beatles", "Fab Four"]) == 1.0
  assert rewards.outcome_reward(response, "The Rolling Stones") == 0.0
  assert rewards.outcome_reward("<think>no idea</think>", "x") == 0.0
  assert rewards.outcome_reward("<answer></answer>", "x") == 0.0


@pytest.mark.parametrize(
  "golds, match",
  [
    ([], "golds is empty"),
    ((), "golds is empty"),
    ([""], r"golds\[0\] is empty"),
    (["ok", "  "], r"golds\[1\] is empty"),
    (["ok", 3], r"golds\[1\] must be a str"),
    (b"bytes", "golds must be"),
    ({"a": 1}, "golds must be"),
    (None, "golds must be"),
  ],
)
def test_bad_golds(golds, match):
  for metric in (exact_match, f1, cover_em, rewards.outcome_reward):
    with pytest.raises(ValueError, match=match):
      metric("no answer here", golds)


def test_bad_pred_types():
  with pytest.raises(TypeError, match="normalize_answer expects a str"):
    normalize_answer(None)
  with pytest.raises(TypeError, match="pred"):
    exact_match(3, "x")
  with pytest.raises(TypeError, match="response"):
    extract_answer(None)


def test_golds_accept_any_iterable():
  assert exact_match("b", (g for g in ["a", "b"])) == 1.0


_PIECES = list("aAnthe Éé\u0301.,-'’。北京 \t\nß12ﬁ") + ["the ", " a ", "yes"]
_TEXT = st.lists(st.sampled_from(_PIECES), max_size=15).map("".join)


@settings(max_examples=300, deadline=None)
@given(pred=_TEXT, gold=_TEXT, other=st.text(max_size=20))
def test_metric_properties(pred, gold, other):
  norm = normalize_answer(pred + other)
  assert normalize_answer(norm) == norm
  if not gold.strip():
    return
  em, score, cover = exact_match(pred, gold), f1(pred, gold), cover_em(pred, gold)
  assert 0.0 <= score <= 1.0
  if em:  # EM implies full F1 and coverage
    assert score == 1.0 and cover == 1.0
  assert exact_match(gold, gold) == float(bool(normalize_answer(gold)))
