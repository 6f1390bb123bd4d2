"""Prompts: required pieces, chat-template rendering, and the judge's count parser."""

import pytest

from sr2.data import prompts


class FakeChatTemplate:
  """Renders messages like a ChatML template and records the call."""

  def __init__(self):
    self.calls = []

  def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
    self.calls.append((messages, tokenize, add_generation_prompt))
    text = "".join(f"<|{m['role']}|>\n{m['content']}<|end|>\n" for m in messages)
    return text + ("<|assistant|>\n" if add_generation_prompt else "")


STEPS = [
  (
    "<think>I need X.</think>\n<search> Vorla Mensik </search>",
    prompts.wrap_information("Doc 1(Title: Vorla Mensik) Vorla Mensik was born in Tarvel."),
  ),
  ("<think>Vorla Mensik was born in Tarvel.</think>\n<answer> Tarvel </answer>", None),
]


def test_actor_prompt_has_the_protocol():
  text = prompts.actor_prompt("Where was Vorla Mensik born?")
  for piece in (
    "<think>",
    "</think>",
    "<search> query </search>",
    "<information>",
    "</information>",
    "<answer>",
    "</answer>",
    "<answer> Beijing </answer>",
    "as often as you need",
    "without any explanation",
  ):
    assert piece in text, piece
  assert text.rstrip().endswith("Question: Where was Vorla Mensik born?")
  # Thinking comes first and again after every new piece of information.
  assert "every time new information arrives" in text


def test_actor_prompt_through_chat_template():
  tok = FakeChatTemplate()
  text = prompts.actor_prompt("Who?", tokenizer=tok)
  messages, tokenize, add_gen = tok.calls[0]
  assert [m["role"] for m in messages] == ["user"] and not tokenize and add_gen
  assert messages[0]["content"] == prompts.actor_prompt("Who?")
  assert text.startswith("<|user|>\n") and text.endswith("<|assistant|>\n")


def test_refiner_prompt_layout():
  text = prompts.refiner_prompt("Where was Vorla Mensik born?", STEPS)
  assert "meta-thinker" in text and "between 0 and 2" in text and "0 means" in text
  lines = text.splitlines()
  labels = [line.split(":")[0] for line in lines if line.split(":")[0].isupper()]
  assert labels == ["ASSISTANT_CONTEXT", "USER", "ASSISTANT_STEP_1", "TOOL", "ASSISTANT_STEP_2"]
  assert lines[-1] == prompts.REFINER_QUESTION == "Problematic step index (0 = no issue):"
  assert "TOOL: <information>Doc 1(Title: Vorla Mensik)" in text
  assert text.index("ASSISTANT_STEP_1") < text.index("TOOL") < text.index("ASSISTANT_STEP_2")


def test_refiner_prompt_options_and_chat_template():
  text = prompts.refiner_prompt("Q?", STEPS, context="earlier turn", max_steps=4)
  assert "between 0 and 4" in text and "ASSISTANT_CONTEXT: earlier turn" in text
  tok = FakeChatTemplate()
  out = prompts.refiner_prompt("Q?", STEPS, tokenizer=tok)
  roles = [m["role"] for m in tok.calls[0][0]]
  assert roles == ["system", "user"] and out.endswith("<|assistant|>\n")
  assert tok.calls[0][0][1]["content"].endswith(prompts.REFINER_QUESTION)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(steps=[]), "at least one"),
    (dict(steps=STEPS, max_steps=1), "max_steps"),
    (dict(steps=[("only one",)]), "pair"),
    (dict(steps=[("", None)]), "steps\\[0\\]\\[0\\]"),
  ],
)
def test_refiner_prompt_rejects_bad_input(kwargs, message):
  with pytest.raises(ValueError, match=message):
    prompts.refiner_prompt("Q?", **kwargs)


def test_refiner_followup_asks_for_an_index_after_the_trajectory():
  text = prompts.refiner_followup(3)
  assert text.startswith("\n\n") and text.endswith("\n" + prompts.REFINER_QUESTION)
  assert "from 1 to 3" in text
  for bad in (0, True, 2.0):
    with pytest.raises(ValueError, match="max_steps"):
      prompts.refiner_followup(bad)


def test_judge_prompt_layout():
  text = prompts.judge_prompt(
    "Where was Vorla born?",
    ["Tarvel", "Tarvel City"],
    ["Doc 1(Title: A) a", ["first doc", "second doc"]],
  )
  for piece in (
    "useful",
    "not useful",
    "earlier collections",
    "Question: Where was Vorla born?",
    "Answer: Tarvel / Tarvel City",
    "2 collections of the tool responses:",
    "<collection_1> Doc 1(Title: A) a </collection_1>",
    "<collection_2> Doc 1: first doc Doc 2: second doc </collection_2>",
  ):
    assert piece in text, piece
  assert text.endswith("Final Answer: number")
  tok = FakeChatTemplate()
  prompts.judge_prompt("Q?", "A", ["d"], tokenizer=tok)
  assert [m["role"] for m in tok.calls[0][0]] == ["system", "user"]


def test_judge_prompt_rejects_bad_input():
  with pytest.raises(ValueError, match="collections"):
    prompts.judge_prompt("Q?", "A", [])
  with pytest.raises(ValueError, match="answer"):
    prompts.judge_prompt("Q?", [], ["d"])
  with pytest.raises(ValueError, match="apply_chat_template"):
    prompts.judge_prompt("Q?", "A", ["d"], tokenizer=object())


@pytest.mark.parametrize(
  "text, m, expected",
  [
    ("Final Answer: 2", 3, 2),
    ("<think>maybe Final Answer: 1</think> so Final Answer: 3", 3, 3),  # the last one counts
    ("**Final Answer:** 1", 3, 1),
    ("final answer: \\boxed{2}", 3, 2),
    ("Final Answer: two", 3, 2),
    ("Final Answer: 7", 3, 3),  # clipped to m
    ("Final Answer: -1", 3, 0),  # clipped to 0
    ("Final Answer: 2", 0, 0),  # no search, no process reward
    ("I think two collections help.", 3, 0),  # no prefix: unparsable
    ("Final Answer: none", 3, 0),
    ("", 2, 0),
    (None, 2, 0),
  ],
)
def test_parse_judge_count(text, m, expected):
  assert prompts.parse_judge_count(text, m) == expected


def test_parse_judge_count_rejects_bad_m():
  with pytest.raises(ValueError, match="m"):
    prompts.parse_judge_count("Final Answer: 1", -1)


def test_wrap_information():
  assert prompts.wrap_information("Doc 1(Title: t) x") == (
    "\n\n<information>Doc 1(Title: t) x</information>\n\n"
  )


def test_wrap_information_escapes_the_tags_inside():
  # Retrieved text holding the tags must not end the block early.
  assert prompts.wrap_information("a</information>b<information>c") == (
    "\n\n<information>a&lt;/information&gt;b&lt;information&gt;c</information>\n\n"
  )
  with pytest.raises(TypeError, match="text must be a str"):
    prompts.wrap_information(None)


@pytest.mark.parametrize("make", [prompts.direct_prompt, prompts.cot_prompt])
def test_baseline_prompts_ask_for_a_tagged_answer(make):
  text = make("Where was Vorla Mensik born?")
  assert "<answer>" in text and "</answer>" in text and "without any explanation" in text
  assert "<search>" not in text  # the baselines cannot search
  assert text.rstrip().endswith("Question: Where was Vorla Mensik born?")
  tok = FakeChatTemplate()
  out = make("Who?", tokenizer=tok)
  messages, tokenize, add_gen = tok.calls[0]
  assert [m["role"] for m in messages] == ["user"] and not tokenize and add_gen
  assert messages[0]["content"] == make("Who?") and out.endswith("<|assistant|>\n")


def test_direct_and_cot_differ_in_reasoning():
  assert "<think>" not in prompts.direct_prompt("Q?")
  assert "step by step inside <think> and </think>" in prompts.cot_prompt("Q?")


def test_rag_prompt_puts_documents_before_the_question():
  docs = "Doc 1(Title: Vorla Mensik) Vorla Mensik was born in Tarvel."
  text = prompts.rag_prompt("Where was Vorla Mensik born?", docs)
  assert "<answer>" in text and "<search>" not in text
  assert text.index("Documents:\n" + docs) < text.index("Question: Where was Vorla Mensik born?")
  assert prompts.NO_DOCUMENTS in prompts.rag_prompt("Q?", "  ")
  tok = FakeChatTemplate()
  out = prompts.rag_prompt("Q?", docs, tokenizer=tok)
  assert tok.calls[0][0][0]["content"] == prompts.rag_prompt("Q?", docs)
  assert out.endswith("<|assistant|>\n")


@pytest.mark.parametrize(
  "call, message",
  [
    (lambda: prompts.direct_prompt(" "), "question"),
    (lambda: prompts.cot_prompt(None), "question"),
    (lambda: prompts.rag_prompt("", "docs"), "question"),
    (lambda: prompts.rag_prompt("Q?", None), "docs_text"),
  ],
)
def test_baseline_prompts_reject_bad_input(call, message):
  with pytest.raises(ValueError, match=message):
    call()
