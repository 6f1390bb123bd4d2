"""The Actor's tag protocol as pure functions over text (the paper's §1.3-1.4, §2.2).

The Actor writes `<think>...</think>` then either `<search> query </search>` or
`<answer> ... </answer>`; generation stops at either closing tag (or EOS). After a search
the environment appends `format_observation(docs)`; after an invalid turn it appends
`invalid_action_feedback(turn)`, which is wrapped the same way, so every environment text
in a response is one `<information>` block. That keeps answer tags quoted in the feedback
out of `extract_answer` and makes the feedback the TOOL output of the invalid step.

Model output is untrusted: `parse_turn`, `split_steps` and `cut_before_step` (for an index
in range) never raise on a str. Tags are matched exactly and case-sensitively.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Literal

from sr2.data import prompts  # the one home of the tags and stop strings

MAX_QUERY_CHARS = 512  # longer queries are cut to this many characters
# `{reason}` is replaced by `Turn.error`.
INVALID_ACTION_FEEDBACK = (
  "My previous action was invalid ({reason}). To search, I should write the query between "
  "<search> and </search>. To give the final answer, I should write it between <answer> and "
  "</answer>. Let me try again."
)

TurnKind = Literal["search", "answer", "invalid"]

_ACTION_OPEN = {
  prompts.SEARCH_CLOSE: prompts.SEARCH_OPEN,
  prompts.ANSWER_CLOSE: prompts.ANSWER_OPEN,
}
_ACTION_CLOSE = re.compile(f"{re.escape(prompts.SEARCH_CLOSE)}|{re.escape(prompts.ANSWER_CLOSE)}")
# One observation with the blank lines `format_observation` puts around it. The body holds
# no other `<information>`, so a stray opening tag in model text cannot swallow it.
_OBSERVATION = re.compile(
  f"(?:\n\n)?{re.escape(prompts.INFO_OPEN)}(?:(?!{re.escape(prompts.INFO_OPEN)}).)*?{re.escape(prompts.INFO_CLOSE)}"
  "(?:\n\n)?",
  re.S,
)


@dataclasses.dataclass(frozen=True)
class Turn:
  """One parsed assistant chunk."""

  kind: TurnKind  # "search", "answer" or "invalid".
  query: str | None = None  # the search query (whitespace collapsed, capped) when kind is "search".
  answer: str | None = None  # the stripped answer text when kind is "answer".
  # the complete `<think>` blocks before the action, joined by newlines; None if none.
  think: str | None = None
  error: str | None = None  # what was wrong, when kind is "invalid".
  # what was tolerated in a turn (truncated query, ignored text), else None.
  note: str | None = None
  end: int = 0  # offset just past the deciding closing tag; `len(text)` when invalid.

  @property
  def is_valid(self) -> bool:
    return self.kind != "invalid"


@dataclasses.dataclass(frozen=True)
class Step:
  """One assistant step of a response and the observation that followed it."""

  assistant_text: str  # what the Actor wrote in this turn.
  # the observation block after it, blank lines included; None for a last step.
  tool_text: str | None
  start: int  # offset of the step in the response.
  end: int  # offset just past its tool text (or assistant text when there is none).

  @property
  def pair(self) -> tuple[str, str | None]:
    """`(assistant_text, tool_text)`, the form `sr2.data.prompts.refiner_prompt` takes."""
    return (self.assistant_text, self.tool_text)


def _check_str(value: object, name: str) -> str:
  if not isinstance(value, str):
    raise TypeError(f"{name} must be a str, got {type(value).__name__}")
  return value


def _think(text: str, endpos: int) -> str | None:
  # str.find rather than a lazy regex: a regex rescans to the end for every unclosed
  # <think>, which is quadratic on degenerate output.
  blocks, pos = [], 0
  while (start := text.find(prompts.THINK_OPEN, pos, endpos)) >= 0:
    start += len(prompts.THINK_OPEN)
    if (stop := text.find(prompts.THINK_CLOSE, start, endpos)) < 0:
      break
    blocks.append(text[start:stop].strip())
    pos = stop + len(prompts.THINK_CLOSE)
  return "\n".join(blocks) if blocks else None


def _missing_action(text: str) -> str:
  search_at, answer_at = text.rfind(prompts.SEARCH_OPEN), text.rfind(prompts.ANSWER_OPEN)
  if max(search_at, answer_at) >= 0:
    tag = prompts.SEARCH_OPEN if search_at > answer_at else prompts.ANSWER_OPEN
    return f"{tag} is never closed"
  for close, open_tag in _ACTION_OPEN.items():
    if close in text:
      return f"{close} without {open_tag}"
  return f"no {prompts.SEARCH_OPEN} or {prompts.ANSWER_OPEN} tag"


def _action(
  text: str,
  close: str,
  body_start: int,
  body_end: int,
  end: int,
  notes: list[str],
  max_query_chars: int,
) -> Turn:
  open_tag = _ACTION_OPEN[close]
  kind = "search" if close == prompts.SEARCH_CLOSE else "answer"
  think = _think(text, body_start - len(open_tag))
  if text[end:].strip():
    notes.append(f"text after {close} ignored")
  body = text[body_start:body_end]
  tag = next((t for t in prompts.TAGS if t in body), None)
  if tag is not None:
    error = f"the {kind} contains the tag {tag}"
    return Turn("invalid", think=think, error=error, note="; ".join(notes) or None, end=len(text))
  if kind == "answer":
    value = body.strip()
  else:
    value = " ".join(body.split())
    if len(value) > max_query_chars:
      notes.append(f"query cut from {len(value)} to {max_query_chars} characters")
      value = value[:max_query_chars].rstrip()
  note = "; ".join(notes) or None
  if not value:
    return Turn("invalid", think=think, error=f"empty {kind}", note=note, end=len(text))
  if kind == "search":
    return Turn("search", query=value, think=think, note=note, end=end)
  return Turn("answer", answer=value, think=think, note=note, end=end)


def parse_turn(text: str, max_query_chars: int = MAX_QUERY_CHARS) -> Turn:
  """Parses one generated chunk (up to `</search>`, `</answer>` or EOS) into a `Turn`.

  The action is the complete `<search>`/`<answer>` pair whose closing tag comes first, as
  generation stops there; its body starts at the nearest opening tag of the same kind
  (`<search>a <search>b</search>` searches "b"). Closing tags with no opening before them
  are skipped and noted; text after the action is ignored and noted. A turn is invalid
  when no pair is complete, when the body is empty or whitespace, or when it contains
  another protocol tag (garbled). Queries have whitespace collapsed and are cut to
  `max_query_chars`. A missing `<think>` is allowed.

  Args:
    text: the chunk; any str.
    max_query_chars: the longest query passed on, in characters.

  Returns:
    The turn; never raises on a str.
  """
  _check_str(text, "text")
  ok = isinstance(max_query_chars, int) and not isinstance(max_query_chars, bool)
  if not ok or max_query_chars < 1:
    raise ValueError(f"max_query_chars must be a positive int, got {max_query_chars!r}")
  notes: list[str] = []
  first_open = {tag: text.find(tag) for tag in _ACTION_OPEN.values()}
  for m in _ACTION_CLOSE.finditer(text):
    open_tag = _ACTION_OPEN[m.group()]
    first = first_open[open_tag]
    # The first-opening check keeps a run of stray closing tags linear.
    start = -1 if first < 0 or first > m.start() else text.rfind(open_tag, 0, m.start())
    if start < 0:
      stray = f"{m.group()} without {open_tag} ignored"
      notes += [] if stray in notes else [stray]
      continue
    return _action(
      text, m.group(), start + len(open_tag), m.start(), m.end(), notes, max_query_chars
    )
  return Turn(
    "invalid",
    think=_think(text, len(text)),
    error=_missing_action(text),
    note="; ".join(notes) or None,
    end=len(text),
  )


# The environment's observation after a search; the one wrapper lives with the tags.
format_observation = prompts.wrap_information


def invalid_action_feedback(turn: Turn, template: str = INVALID_ACTION_FEEDBACK) -> str:
  """The observation appended after an invalid turn (Search-R1's "let me try again").

  Args:
    turn: an invalid `Turn` from `parse_turn`.
    template: the message; `{reason}` in it becomes `turn.error`.

  Returns:
    The message wrapped by `format_observation`.
  """
  if not isinstance(turn, Turn) or turn.kind != "invalid":
    raise ValueError(f"turn must be an invalid Turn, got {turn!r}")
  _check_str(template, "template")
  return format_observation(template.replace("{reason}", turn.error or "no action"))


def split_steps(response: str) -> list[Step]:
  """Splits a response into assistant steps, the unit the Meta-Refiner numbers.

  A step is the text up to and including the next observation (a complete
  `<information>...</information>` block with the blank lines around it), so step i's
  TOOL output is the observation after it. Text after the last observation is a final step
  without tool text unless it is empty or whitespace. Steps tile the response in order
  (`steps[i].end == steps[i + 1].start`), except a dropped whitespace tail. A complete
  block that the model wrote itself cannot be told apart from the environment's here; the
  rollout's own turn records are exact.

  Args:
    response: assistant text interleaved with observations; any str.

  Returns:
    The steps in order; [] when the response has no assistant text and no observation.
  """
  _check_str(response, "response")
  steps, pos = [], 0
  for m in _OBSERVATION.finditer(response):
    steps.append(Step(response[pos : m.start()], m.group(), pos, m.end()))
    pos = m.end()
  if response[pos:].strip():
    steps.append(Step(response[pos:], None, pos, len(response)))
  return steps


def cut_before_step(response: str, j: int) -> str:
  """The prefix of `response` that keeps steps 1..j-1 and their tool outputs.

  This is the Meta-Refiner's cut for "the earliest flawed step is j" (k = j-1 in the
  paper); the Actor regenerates from there. `j = 1` keeps nothing.

  Args:
    response: as for `split_steps`.
    j: the 1-based index of the first step to drop, in [1, number of steps].

  Returns:
    `response[:start of step j]`.
  """
  steps = split_steps(response)
  if isinstance(j, bool) or not isinstance(j, int) or not 1 <= j <= len(steps):
    raise ValueError(f"j must be an int in [1, {len(steps)}] (the response's steps), got {j!r}")
  return response[: steps[j - 1].start]
