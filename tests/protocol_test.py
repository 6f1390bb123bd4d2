"""The tag protocol: turn parsing (incl. malformed output), observations, steps and cuts."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sr2.agent import protocol
from sr2.agent.protocol import (
  Turn,
  cut_before_step,
  format_observation,
  invalid_action_feedback,
  parse_turn,
  split_steps,
)
from sr2.data import prompts
from sr2.rewards import extract_answer


def test_tags_have_one_home():
  assert prompts.STOP_STRINGS == (prompts.SEARCH_CLOSE, prompts.ANSWER_CLOSE)
  assert prompts.STOP_STRINGS == ("</search>", "</answer>")
  # The protocol reads the tags from sr2.data.prompts and defines none of its own.
  assert not any(hasattr(protocol, name) for name in ("SEARCH_OPEN", "STOP_STRINGS", "TAGS"))


# (chunk, kind, query or answer, think, substring of error or note)
PARSE_CASES = [
  (
    "<think>need info</think>\n<search> capital of France </search>",
    "search",
    "capital of France",
    "need info",
    None,
  ),
  ("<search>a\n  b\tc</search>", "search", "a b c", None, None),  # whitespace collapsed
  ("<answer> Paris </answer>", "answer", "Paris", None, None),  # think is optional
  ("<think>a</think><think>b</think><answer>x</answer>", "answer", "x", "a\nb", None),
  ("<think>x <search>q</search>", "search", "q", None, None),  # unclosed think: no think
  ("<search>q1</search><search>q2</search>", "search", "q1", None, "text after"),
  ("<answer>x</answer> and more", "answer", "x", None, "text after </answer> ignored"),
  ("foo</answer> <search>q</search>", "search", "q", None, "</answer> without <answer>"),
  ("<search>a <search>b</search>", "search", "b", None, None),  # innermost opening
  ("<answer>a <answer>b</answer>", "answer", "b", None, None),
  ("<search>   </search>", "invalid", None, None, "empty search"),
  ("<answer>\n</answer>", "invalid", None, None, "empty answer"),
  ("<search>q", "invalid", None, None, "<search> is never closed"),
  ("<search>q <answer>a", "invalid", None, None, "<answer> is never closed"),
  ("<answer>a</search>", "invalid", None, None, "<answer> is never closed"),
  ("</search>", "invalid", None, None, "</search> without <search>"),
  ("just text", "invalid", None, None, "no <search> or <answer> tag"),
  ("", "invalid", None, None, "no <search> or <answer> tag"),
  ("<think>t</think>", "invalid", None, "t", "no <search> or <answer> tag"),
  ("<search>a <answer>b</search>", "invalid", None, None, "contains the tag <answer>"),
  ("<answer>a</think></answer>", "invalid", None, None, "contains the tag </think>"),
  ("<search><information>x</information></search>", "invalid", None, None, "<information>"),
  ("<Search>q</Search>", "invalid", None, None, "no <search>"),  # case-sensitive
]


@pytest.mark.parametrize("chunk, kind, value, think, message", PARSE_CASES)
def test_parse_turn(chunk, kind, value, think, message):
  turn = parse_turn(chunk)
  assert turn.kind == kind
  assert turn.think == think
  assert (turn.query if kind == "search" else turn.answer) == value
  if kind == "invalid":
    assert turn.error and message in turn.error
    assert not turn.is_valid and turn.end == len(chunk)
  else:
    assert turn.error is None and turn.is_valid
    assert (turn.note is None) if message is None else (message in turn.note)


def test_parse_turn_end_and_query_cap():
  chunk = "<search>q</search> tail"
  assert parse_turn(chunk).end == len("<search>q</search>")
  long = parse_turn("<search>" + "x" * 600 + "</search>")
  assert long.query == "x" * 512 and "query cut from 600 to 512" in long.note
  short = parse_turn("<search> one two three </search>", max_query_chars=8)
  assert short.query == "one two"  # cut to "one two " then stripped
  for bad in (0, -1, 2.5, True):
    with pytest.raises(ValueError, match="max_query_chars"):
      parse_turn("<search>q</search>", max_query_chars=bad)
  with pytest.raises(TypeError, match="text must be a str"):
    parse_turn(None)


def test_format_observation():
  assert format_observation("Doc 1(Title: T) x") == (
    "\n\n<information>Doc 1(Title: T) x</information>\n\n"
  )
  tricky = format_observation("a</information>b<information>c")
  assert tricky.count("</information>") == 1 and tricky.count("<information>") == 1
  assert len(split_steps("<search>q</search>" + tricky)) == 1


def test_invalid_action_feedback():
  turn = parse_turn("<think>hmm</think> I guess Paris")
  text = invalid_action_feedback(turn)
  assert text.startswith("\n\n<information>") and text.endswith("</information>\n\n")
  assert "no <search> or <answer> tag" in text and "Let me try again." in text
  assert invalid_action_feedback(turn, template="Bad: {reason}.") == format_observation(
    "Bad: no <search> or <answer> tag."
  )
  with pytest.raises(ValueError, match="invalid Turn"):
    invalid_action_feedback(parse_turn("<answer>x</answer>"))
  with pytest.raises(ValueError, match="invalid Turn"):
    invalid_action_feedback("not a turn")


def _trajectory():
  steps = [
    ("<think>Who?</think>\n<search> Vorla Mensik </search>", format_observation("Doc 1 a")),
    ("<think>hm</think>", invalid_action_feedback(parse_turn("<think>hm</think>"))),
    ("<search> Tarvel </search>", format_observation("Doc 1 b")),
    ("<think>done</think>\n<answer> Tarvel </answer>", None),
  ]
  return steps, "".join(a + (t or "") for a, t in steps)


def test_split_steps_round_trip():
  pairs, response = _trajectory()
  steps = split_steps(response)
  assert [s.pair for s in steps] == pairs
  assert steps[0].start == 0 and steps[-1].end == len(response)
  for a, b in zip(steps, steps[1:], strict=False):
    assert a.end == b.start
  assert extract_answer(response) == "Tarvel"


@pytest.mark.parametrize(
  "response, n_steps",
  [
    ("", 0),
    ("  \n", 0),
    ("<think>x</think><answer>y</answer>", 1),
    ("<search>q</search>" + format_observation("d"), 1),  # ends on an observation
    ("<search>q</search>" + format_observation("d") + " \n", 1),  # whitespace tail dropped
    (format_observation("d") + "<answer>y</answer>", 2),  # empty first step
    ("<information>model text <search>q</search>" + format_observation("d") + "a", 2),
    ("<search>q</search><information>d</information><answer>y</answer>", 2),  # no framing
  ],
)
def test_split_steps_counts(response, n_steps):
  assert len(split_steps(response)) == n_steps


def test_split_steps_framing_belongs_to_the_tool():
  response = "<search>q</search>\n" + format_observation("d") + "\n<answer>y</answer>"
  first, second = split_steps(response)
  assert first.assistant_text == "<search>q</search>\n"  # the model's own newline
  assert first.tool_text == format_observation("d")
  assert second.assistant_text == "\n<answer>y</answer>"


def test_cut_before_step():
  pairs, response = _trajectory()
  assert cut_before_step(response, 1) == ""
  assert cut_before_step(response, 2) == "".join(pairs[0])
  assert cut_before_step(response, 4) == "".join(a + t for a, t in pairs[:3])
  for bad in (0, 5, -1, True, 1.0, "2"):
    with pytest.raises(ValueError, match=r"j must be an int in \[1, 4\]"):
      cut_before_step(response, bad)


_FRAGMENTS = list(prompts.TAGS) + [
  "<",
  ">",
  "</",
  "/",
  "<information",
  "information>",
  "<answer",
  "search>",
  "\n\n",
  "\n",
  " ",
  "x",
  "Paris",
  "é",
  "北京",
  format_observation("Doc 1 x"),
  "<think>t</think>",
]
_RESPONSES = st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=5), max_size=25).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=_RESPONSES)
def test_fuzz_never_raises(text):
  turn = parse_turn(text, max_query_chars=16)
  assert isinstance(turn, Turn) and 0 <= turn.end <= len(text)
  if turn.kind == "search":
    assert turn.query and len(turn.query) <= 16 and not any(t in turn.query for t in prompts.TAGS)
  elif turn.kind == "answer":
    assert turn.answer and not any(t in turn.answer for t in prompts.TAGS)
  else:
    assert turn.kind == "invalid" and turn.error
    invalid_action_feedback(turn)
  answer = extract_answer(text)
  assert answer is None or isinstance(answer, str)

  steps = split_steps(text)
  pos = 0
  for s in steps:  # steps tile the response up to a whitespace tail
    assert s.start == pos and text[s.start : s.end] == s.assistant_text + (s.tool_text or "")
    pos = s.end
  assert not text[pos:].strip()
  for j in range(1, len(steps) + 1):
    prefix = cut_before_step(text, j)
    assert text.startswith(prefix)
    assert len(split_steps(prefix)) == j - 1
