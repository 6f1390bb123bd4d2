"""Prompts: the Actor's search instruction, the Meta-Refiner and the process-reward judge.

Wording is sr2's own; the content follows the paper's §1.3, §2.2 and §3. Wire strings (tags,
labels, the refiner's last line, the judge's answer prefix) are module constants so the
agent, refiner and reward code parse exactly what is written here.

Every `*_prompt` function returns a plain string when `tokenizer` is None, or the text of
`tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Protocol

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SEARCH_OPEN, SEARCH_CLOSE = "<search>", "</search>"
INFO_OPEN, INFO_CLOSE = "<information>", "</information>"
ANSWER_OPEN, ANSWER_CLOSE = "<answer>", "</answer>"
STOP_STRINGS = (SEARCH_CLOSE, ANSWER_CLOSE)  # the Actor's turn ends at either
TAGS = (
  THINK_OPEN,
  THINK_CLOSE,
  SEARCH_OPEN,
  SEARCH_CLOSE,
  INFO_OPEN,
  INFO_CLOSE,
  ANSWER_OPEN,
  ANSWER_CLOSE,
)
# Escaped forms keep retrieved text from opening or closing an observation early.
_DEFUSED = {INFO_OPEN: "&lt;information&gt;", INFO_CLOSE: "&lt;/information&gt;"}

ACTOR_INSTRUCTION = (
  "Answer the question below. Think inside <think> and </think> before you act, and think "
  "again every time new information arrives. If some knowledge is missing, query the "
  "search engine by writing <search> query </search>; its top results come back between "
  "<information> and </information>. You may search as often as you need. Once no more "
  "outside knowledge is needed, write only the final answer inside <answer> and </answer>, "
  "without any explanation, for example <answer> Beijing </answer>. "
  "Question: {question}\n"
)

REFINER_INSTRUCTION = (
  "You are a meticulous meta-thinker. Go through the numbered ASSISTANT_STEP entries and "
  "find the earliest step that is flawed. Reply with a single integer between 0 and "
  "{max_steps}, where 0 means that every step is acceptable."
)
REFINER_CONTEXT_LABEL = "ASSISTANT_CONTEXT"
REFINER_USER_LABEL = "USER"
REFINER_STEP_LABEL = "ASSISTANT_STEP_{i}"
REFINER_TOOL_LABEL = "TOOL"
REFINER_QUESTION = "Problematic step index (0 = no issue):"
# Beyond the paper (refiner.prompt="continuation"): the question put after the Actor's own
# trajectory, so the refiner reads the rollout's KV cache instead of a re-written copy of
# the trajectory. Short, because every token of it is encoded for every trajectory.
REFINER_FOLLOWUP = (
  "Review the turns above, numbered from 1 to {max_steps}, and find the earliest flawed one."
)

JUDGE_INSTRUCTION = (
  "You grade numbered collections of retrieved documents; collection i is wrapped in "
  "<collection_i> and </collection_i>. You are given a question and its correct answer. "
  "Decide for each collection whether it is useful:\n"
  "1. It is useful if it holds information or clues that help to find the correct answer, "
  "even partly.\n"
  "2. It is not useful if it has nothing to do with the question.\n"
  "3. It is not useful if it only repeats what earlier collections already said and adds "
  "nothing new, even when it is relevant.\n"
  "Then count the useful collections."
)
JUDGE_ANSWER_PREFIX = "Final Answer:"
JUDGE_FORMAT = f"Give your answer strictly in the format: {JUDGE_ANSWER_PREFIX} number"


class ChatTemplate(Protocol):
  """Anything with HF-style `apply_chat_template` (e.g. a transformers tokenizer)."""

  def apply_chat_template(self, messages: list[dict[str, str]], **kwargs: Any) -> Any: ...


def chat_of(tokenizer: Any) -> ChatTemplate | None:
  """`tokenizer` when it has a chat template, else None: what the `*_prompt` functions take.

  Training and evaluation both build the Actor's prompt as
  `actor_prompt(question, chat_of(tokenizer))`, so a model meets the same prompt in both.
  """
  return tokenizer if getattr(tokenizer, "has_chat_template", False) else None


def _render(messages: list[dict[str, str]], tokenizer: ChatTemplate | None) -> str:
  if tokenizer is None:
    return "\n\n".join(m["content"] for m in messages)
  if not hasattr(tokenizer, "apply_chat_template"):
    raise ValueError(f"tokenizer must have apply_chat_template, got {type(tokenizer).__name__}")
  out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
  if not isinstance(out, str):
    raise ValueError(f"apply_chat_template(tokenize=False) must return str, got {type(out)}")
  return out


def _nonempty(value: Any, name: str) -> str:
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{name} must be a non-empty string, got {value!r}")
  return value.strip()


def wrap_information(text: str) -> str:
  """`text` as appended after `</search>`: `\\n\\n<information>...</information>\\n\\n`.

  `<information>`/`</information>` inside `text` are HTML-escaped so that retrieved text
  cannot end the block early and shift the step boundaries.
  """
  if not isinstance(text, str):
    raise TypeError(f"text must be a str, got {type(text).__name__}")
  for tag, escaped in _DEFUSED.items():
    text = text.replace(tag, escaped)
  return f"\n\n{INFO_OPEN}{text}{INFO_CLOSE}\n\n"


def actor_prompt(question: str, tokenizer: ChatTemplate | None = None) -> str:
  """The Search-R1-style instruction ending with `Question: {question}` (one user turn)."""
  text = ACTOR_INSTRUCTION.format(question=_nonempty(question, "question"))
  return _render([{"role": "user", "content": text}], tokenizer)


def refiner_prompt(
  user_message: str,
  steps: Sequence[tuple[str, str | None]],
  context: str = "",
  max_steps: int | None = None,
  tokenizer: ChatTemplate | None = None,
) -> str:
  """The Meta-Refiner prompt over a trajectory's assistant steps.

  Args:
    user_message: the user turn the Actor answered (its prompt text or the question).
    steps: one `(assistant_text, tool_text or None)` pair per assistant turn.
    context: assistant turns before the current rollout (usually empty).
    max_steps: the largest index the refiner may answer; defaults to `len(steps)`.
    tokenizer: None for plain text, else an object with `apply_chat_template`.

  Returns:
    The prompt; the reply is expected right after `REFINER_QUESTION`.
  """
  if not steps:
    raise ValueError("steps must hold at least one (assistant_text, tool_text) pair")
  max_steps = len(steps) if max_steps is None else max_steps
  if not isinstance(max_steps, int) or max_steps < len(steps):
    raise ValueError(f"max_steps must be an int >= len(steps)={len(steps)}, got {max_steps!r}")
  lines = [
    f"{REFINER_CONTEXT_LABEL}: {context.strip()}".rstrip(),
    f"{REFINER_USER_LABEL}: {_nonempty(user_message, 'user_message')}",
  ]
  for i, step in enumerate(steps, start=1):
    if not (isinstance(step, tuple | list) and len(step) == 2):
      raise ValueError(f"steps[{i - 1}] must be an (assistant_text, tool_text) pair")
    assistant, tool = step
    lines.append(f"{REFINER_STEP_LABEL.format(i=i)}: {_nonempty(assistant, f'steps[{i - 1}][0]')}")
    if tool is not None:
      lines.append(f"{REFINER_TOOL_LABEL}: {tool.strip()}")
  lines.append(REFINER_QUESTION)
  return _render(
    [
      {"role": "system", "content": REFINER_INSTRUCTION.format(max_steps=max_steps)},
      {"role": "user", "content": "\n".join(lines)},
    ],
    tokenizer,
  )


def refiner_followup(max_steps: int) -> str:
  """The Meta-Refiner's question in the continuation form, put right after the trajectory.

  Plain text: a blank line, `REFINER_FOLLOWUP` and `REFINER_QUESTION`; the reply (one
  integer in 0..max_steps) is expected right after it, as with `refiner_prompt`.
  """
  if isinstance(max_steps, bool) or not isinstance(max_steps, int) or max_steps < 1:
    raise ValueError(f"max_steps must be an int >= 1, got {max_steps!r}")
  return f"\n\n{REFINER_FOLLOWUP.format(max_steps=max_steps)}\n{REFINER_QUESTION}"


def _collection_text(c: str | Sequence[str], where: str) -> str:
  if isinstance(c, str):
    return c.strip()
  if not all(isinstance(d, str) for d in c):
    raise ValueError(f"{where} must be a string or a list of document strings")
  return " ".join(f"Doc {j}: {d.strip()}" for j, d in enumerate(c, start=1))


def judge_prompt(
  question: str,
  answer: str | Sequence[str],
  collections: Sequence[str | Sequence[str]],
  tokenizer: ChatTemplate | None = None,
) -> str:
  """The process-reward judge prompt (the paper's §3, step 2).

  Args:
    question: the question.
    answer: the correct answer, or its aliases (joined with " / ").
    collections: per search call, its formatted documents or a list of document texts.
    tokenizer: None for plain text, else an object with `apply_chat_template`.

  Returns:
    The prompt; parse the reply with `parse_judge_count`.
  """
  answers = [answer] if isinstance(answer, str) else list(answer)
  gold = " / ".join(_nonempty(a, "answer") for a in answers) if answers else ""
  if not gold:
    raise ValueError("answer must be a non-empty string or list of strings")
  if not collections:
    raise ValueError("collections must be non-empty (with no search the reward is 0)")
  blocks = [
    f"<collection_{i}> {_collection_text(c, f'collections[{i - 1}]')} </collection_{i}>"
    for i, c in enumerate(collections, start=1)
  ]
  user = "\n".join(
    [
      f"Question: {_nonempty(question, 'question')}",
      f"Answer: {gold}",
      f"{len(collections)} collections of the tool responses:",
      *blocks,
      JUDGE_FORMAT,
    ]
  )
  return _render(
    [{"role": "system", "content": JUDGE_INSTRUCTION}, {"role": "user", "content": user}], tokenizer
  )


_WORDS = {
  w: i for i, w in enumerate("zero one two three four five six seven eight nine ten".split())
}
_COUNT_RE = re.compile(
  r"final\s+answer\s*[:：]?[\s*_`$]*(?:\\boxed\{\s*)?([-+]?\d+|" + "|".join(_WORDS) + r")\b",
  re.IGNORECASE,
)


def parse_judge_count(text: str, m: int) -> int:
  """The judge's count of useful collections: the last `Final Answer: N`, clipped to [0, m].

  Unparsable text gives 0 (the paper's §3; this edge case is sr2's decision).
  """
  if not isinstance(m, int) or m < 0:
    raise ValueError(f"m (number of collections) must be an int >= 0, got {m!r}")
  matches = _COUNT_RE.findall(text or "")
  if not matches:
    return 0
  token = matches[-1].lower()
  n = _WORDS[token] if token in _WORDS else int(token)
  return max(0, min(m, n))


# ---------------------------------------------------------------------------------------
# Training-free baselines (evaluation): answer directly, reason then answer, answer from
# retrieved documents. They share the Actor's answer format so `extract_answer` reads all.

DIRECT_INSTRUCTION = (
  "Answer the question below with a short answer and nothing else. Write the final answer "
  "inside <answer> and </answer>, without any explanation, for example <answer> Beijing "
  "</answer>. Question: {question}\n"
)

COT_INSTRUCTION = (
  "Answer the question below. First reason about it step by step inside <think> and "
  "</think>. Then write only the final answer inside <answer> and </answer>, without any "
  "explanation, for example <answer> Beijing </answer>. Question: {question}\n"
)

RAG_INSTRUCTION = (
  "Answer the question below with the help of the documents a search engine returned for "
  "it. Write only the final answer inside <answer> and </answer>, without any explanation, "
  "for example <answer> Beijing </answer>.\n"
  "Documents:\n{documents}\n"
  "Question: {question}\n"
)
NO_DOCUMENTS = "(no documents found)"


def direct_prompt(question: str, tokenizer: ChatTemplate | None = None) -> str:
  """Direct answering: the short answer inside `<answer>` tags, no reasoning (one user turn)."""
  text = DIRECT_INSTRUCTION.format(question=_nonempty(question, "question"))
  return _render([{"role": "user", "content": text}], tokenizer)


def cot_prompt(question: str, tokenizer: ChatTemplate | None = None) -> str:
  """Chain of thought: reasoning inside `<think>`, then the answer inside `<answer>`."""
  text = COT_INSTRUCTION.format(question=_nonempty(question, "question"))
  return _render([{"role": "user", "content": text}], tokenizer)


def rag_prompt(question: str, docs_text: str, tokenizer: ChatTemplate | None = None) -> str:
  """Retrieve-then-answer: `docs_text` (e.g. `format_documents` of the hits) before the question.

  An empty `docs_text` (no hits) is shown as `NO_DOCUMENTS`.
  """
  if not isinstance(docs_text, str):
    raise ValueError(f"docs_text must be a str, got {type(docs_text).__name__}")
  text = RAG_INSTRUCTION.format(
    question=_nonempty(question, "question"), documents=docs_text.strip() or NO_DOCUMENTS
  )
  return _render([{"role": "user", "content": text}], tokenizer)
