"""Process reward (Eq. 16) and hybrid reward (Eq. 17): the paper's reward table, the lexical
and llm judges, DESIGN.md's edge cases and bad input."""

import types

import jax
import numpy as np
import pytest

from sr2 import models
from sr2.rewards import (
  Collection,
  JudgeItem,
  LexicalJudge,
  LLMJudge,
  ProcessConfig,
  Verdict,
  density,
  hybrid_reward,
  lexical_labels,
  make_judge,
  process_rewards,
  reward_parts,
)
from sr2.testing import ScriptedSampler, tiny_byte_tokenizer

Q = "Where was Vorla born?"
BREZUM = Collection(("p2",), "Doc 1(Title: Brezum) Brezum is a city in Kelt.")
VORLA = Collection(("p1",), "Doc 1(Title: Vorla) Vorla was born in Brezum.")
RIVER = Collection(("p4",), "Doc 1(Title: Mirod) Mirod is a river.")
KELT = Collection(("p3",), "Doc 1(Title: Kelt) Kelt is a country.")


def _item(*collections, golds=("Kelt",), titles=()):
  return JudgeItem(Q, golds, tuple(collections), titles)


def _labels(*collections, golds=("Kelt",), titles=()):
  return lexical_labels(_item(*collections, golds=golds, titles=titles))


@pytest.fixture(scope="module")
def tok():
  return tiny_byte_tokenizer()


# ------------------------------------------------------------------ the reward table


def test_reward_table():
  judge = LexicalJudge()
  searched = _item(BREZUM, RIVER, KELT)
  # Wrong answer: R = 0 · (1 + 2/3) = 0, whatever the searches brought.
  assert hybrid_reward(0.0, judge([searched], [0.0])[0]) == 0.0
  # Correct without search: M = 0, so r_process = 0 and R = 1 · (1 + 0) = 1.
  assert hybrid_reward(1.0, judge([_item()], [1.0])[0]) == 1.0
  # Correct, searches 1 and 3 hold "Kelt" in passages not seen before, search 2 does not:
  # r_process = 2 / 3, R = 1 · (1 + 2/3) = 5/3 ≈ 1.667.
  (v,) = judge.verdicts([searched], [1.0])
  assert v == Verdict(count=2, m=3, labels=(1, 0, 1))
  assert hybrid_reward(1.0, v.process) == pytest.approx(5 / 3)
  # All useful and new is the ceiling: R = 1 · (1 + 3/3) = 2.
  assert hybrid_reward(1.0, judge([_item(BREZUM, KELT)])[0]) == 2.0


def test_repeat_search_is_not_new_even_with_the_answer():
  # The second search returns p2 again: it holds "Kelt" but nothing unseen.
  assert _labels(BREZUM, BREZUM) == [1, 0]
  # Same text under an already-seen id is still a repeat.
  assert _labels(BREZUM, Collection(("p2",), "Kelt, Kelt, Kelt")) == [1, 0]
  # One unseen id among seen ones makes the collection new.
  assert _labels(BREZUM, Collection(("p2", "p9"), BREZUM.text + " Doc 2 text")) == [1, 1]
  # A search that returned nothing is neither useful nor new.
  assert _labels(Collection((), ""), BREZUM) == [0, 1]
  # Newness is per trajectory: another trajectory's p2 is no reason to drop this one.
  assert LexicalJudge()([_item(BREZUM), _item(BREZUM)]).tolist() == [1.0, 1.0]


def test_gold_title_makes_a_collection_useful():
  assert _labels(VORLA) == [0]  # neither "Kelt" nor a gold title in it
  assert _labels(VORLA, titles=("Vorla",)) == [1]
  assert _labels(VORLA, titles=("The Vorla!",)) == [1]  # titles are normalised too
  assert _labels(RIVER, titles=("Vorla",)) == [0]
  assert _labels(VORLA, VORLA, titles=("Vorla",)) == [1, 0]  # and need newness as well


def test_normalisation_and_whole_words():
  one = lambda text, golds: _labels(Collection(("a",), text), golds=golds)[0]
  assert one("born in KELT, a land", ("The Kelt!",)) == 1  # case, punctuation, articles
  assert one("it lies in the  New-York area", ("new york",)) == 0  # "newyork" is one token
  assert one("it lies in New York City", ("New York",)) == 1  # a run of whole tokens
  assert one("the Keltic sea", ("Kelt",)) == 0  # no partial-word matches
  assert one("Skelt is here", ("Kelt",)) == 0
  assert one("York, New", ("New York",)) == 0  # tokens in order
  assert one("Doc 1(Title: Kelt) a country", ("Kelt",)) == 1  # titles in the doc header
  # yes/no golds are not looked for (any passage says "no"); a title still counts.
  assert one("There is no such river.", ("no",)) == 0
  assert _labels(VORLA, golds=("yes",), titles=("Vorla",)) == [1]
  # An alias that normalises to "" matches nothing rather than everything.
  assert one("a river", ("The", "Kelt")) == 0


# ------------------------------------------------------------------ edge cases and types


def test_density_and_verdict_edge_cases():
  assert density(0, 0) == 0.0  # M = 0 → 0
  assert density(5, 2) == 1.0  # clipped to M
  assert density(-1, 3) == 0.0 and density(1, 4) == 0.25
  assert Verdict(0, 0, ()).process == 0.0
  np.testing.assert_allclose(process_rewards([Verdict(1, 2), Verdict(0, 0)]), [0.5, 0.0])
  assert process_rewards([]).shape == (0,)
  with pytest.raises(ValueError, match="m"):
    density(1, -1)
  with pytest.raises(ValueError, match="count"):
    Verdict(3, 2)
  with pytest.raises(ValueError, match="labels"):
    Verdict(1, 2, (1, 1))


def test_bad_input_is_named():
  with pytest.raises(ValueError, match="golds"):
    JudgeItem(Q, (), ())
  with pytest.raises(ValueError, match="golds"):
    JudgeItem(Q, ("  ",), ())
  with pytest.raises(ValueError, match="question"):
    JudgeItem("", ("Kelt",), ())
  with pytest.raises(TypeError, match=r"collections\[0\]"):
    JudgeItem(Q, ("Kelt",), ("Doc 1 text",))
  with pytest.raises(TypeError, match="gold_titles"):
    JudgeItem(Q, ("Kelt",), (), "Kelt")
  with pytest.raises(TypeError, match="doc_ids"):
    Collection("p1", "text")  # a str is not a tuple of ids
  with pytest.raises(TypeError, match="text"):
    Collection(("p1",), None)
  # Lists are accepted and stored as tuples; a single gold str becomes a 1-tuple.
  item = JudgeItem(Q, "Kelt", [Collection(["p1"], "x")], ["T"])
  assert item.golds == ("Kelt",) and item.collections[0].doc_ids == ("p1",)
  judge = LexicalJudge()
  with pytest.raises(TypeError, match=r"items\[0\]"):
    judge([("q", "a")])
  with pytest.raises(ValueError, match="one per item"):
    judge([_item(), _item()], [1.0])
  with pytest.raises(ValueError, match=r"\[0, 1\]"):
    judge([_item()], [2.0])


def test_hybrid_reward_and_parts():
  assert hybrid_reward(1, 0.5) == 1.5 and isinstance(hybrid_reward(1, 0.5), float)
  # Gate: [0·(1+1), 1·(1+0), 1·(1+0.5), 1·(1+1)] = [0, 1, 1.5, 2].
  np.testing.assert_allclose(hybrid_reward([0, 1, 1, 1], [1, 0, 0.5, 1]), [0, 1, 1.5, 2])
  o, p = np.array([[1.0, 0.0]]), np.array([[0.25, 1.0]])
  parts = reward_parts(o, p)
  assert set(parts) == {"outcome", "process", "total"}
  np.testing.assert_allclose(parts["total"], [[1.25, 0.0]])
  np.testing.assert_allclose(parts["process"], p)
  assert parts["outcome"] is not o  # no aliasing of the caller's arrays
  assert reward_parts(True, 0.0) == {"outcome": 1.0, "process": 0.0, "total": 1.0}
  for bad, name in [((1.5, 0.0), "outcome"), ((1.0, -0.1), "process"), ((1.0, np.nan), "process")]:
    with pytest.raises(ValueError, match=name):
      hybrid_reward(*bad)
  with pytest.raises(ValueError, match="shape"):
    hybrid_reward([1, 1], [0.5])
  with pytest.raises(ValueError, match="outcome must be a number"):
    reward_parts("yes", 0.0)


def test_process_config_and_factory(tok):
  assert isinstance(make_judge(ProcessConfig()), LexicalJudge)  # lexical is the default
  for bad, match in [
    (dict(judge="gpt"), "judge"),
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(batch_size=2.5), "batch_size"),
    (dict(max_new_tokens=64, max_len=64), "no room"),
    (dict(chat="yes"), "chat"),
  ]:
    with pytest.raises(ValueError, match=match):
      ProcessConfig(**bad)
  llm = ProcessConfig(judge="llm")
  with pytest.raises(ValueError, match="tokenizer"):
    make_judge(llm)
  with pytest.raises(ValueError, match="params"):
    make_judge(llm, sampler=ScriptedSampler(tok, []))
  with pytest.raises(TypeError, match="ProcessConfig"):
    make_judge({"judge": "lexical"})
  judge = make_judge(llm, sampler=ScriptedSampler(tok, []), params={})
  assert isinstance(judge, LLMJudge) and judge.batch_size == 8 and judge.max_new_tokens == 64


# ------------------------------------------------------------------ the llm judge


class _RecordingSampler(ScriptedSampler):
  """The scripted sampler, also recording each prefill's prompts (as text) and batch."""

  def __init__(self, tokenizer, scripts, **kw):
    super().__init__(tokenizer, scripts, stop_strings=(), **kw)
    self.prompts, self.batches = [], []

  def prefill(self, params, prompts, rng=None, batch=None):
    self.prompts += [self.tokenizer.decode(p) for p in prompts]
    self.batches.append((len(prompts), batch))
    return super().prefill(params, prompts, rng, batch)


def test_llm_judge_prompt_parse_clip_and_skips(tok):
  # Row r of each decode replies with the next text of scripts[r]; batches of 2 rows.
  sampler = _RecordingSampler(tok, [["Final Answer: 1", "I cannot tell."], ["Final Answer: 7"]])
  judge = LLMJudge(sampler, None, chat=False, batch_size=2)
  items = [
    _item(BREZUM, RIVER),  # "1" of 2
    _item(BREZUM),  # "7" clipped to M = 1
    _item(BREZUM, BREZUM),  # unparsable → 0
    _item(RIVER),  # wrong answer: not sent
    _item(),  # M = 0: not sent
  ]
  got = judge.verdicts(items, [1.0, 1.0, 1.0, 0.0, 1.0])
  assert [(v.count, v.m, v.judged) for v in got] == [
    (1, 2, True),
    (1, 1, True),
    (0, 2, True),
    (0, 1, False),
    (0, 0, False),
  ]
  assert all(v.labels is None for v in got)  # the paper's judge gives only a count
  np.testing.assert_allclose(process_rewards(got), [0.5, 1.0, 0.0, 0.0, 0.0])
  # Three prompts in two decodes; the short last batch is padded to the batch size.
  assert judge.calls == 3 and sampler.decode_calls == 2
  assert sampler.batches == [(2, None), (1, 2)]
  p = sampler.prompts[0]
  assert p == judge.prompt(items[0])
  assert f"Question: {Q}" in p and "Answer: Kelt" in p and "2 collections" in p
  assert f"<collection_1> {BREZUM.text} </collection_1>" in p
  assert f"<collection_2> {RIVER.text} </collection_2>" in p
  assert "<collection_3>" not in p and "Final Answer: number" in p


def test_llm_judge_no_model_call_when_outcome_zero_or_no_search(tok):
  sampler = _RecordingSampler(tok, [["Final Answer: 1"]])
  judge = LLMJudge(sampler, None, chat=False)
  out = judge([_item(BREZUM), _item(), _item(KELT)], [0.0, 1.0, 0.0])
  assert out.tolist() == [0.0, 0.0, 0.0]
  assert judge.calls == 0 and sampler.decode_calls == 0 and sampler.prompts == []


def test_llm_judge_aliases_and_overflow(tok):
  sampler = _RecordingSampler(tok, [["Final Answer: 2"]], max_len=900)
  judge = LLMJudge(sampler, None, max_new_tokens=16, chat=False)
  long_item = _item(*[Collection((f"p{i}",), "Kelt " * 40) for i in range(3)])
  got = judge.verdicts([_item(BREZUM, KELT, golds=("Kelt", "Keltland")), long_item])
  assert (got[0].count, got[0].judged) == (2, True)
  assert "Answer: Kelt / Keltland" in sampler.prompts[0]
  # The long prompt plus its reply budget does not fit 900 tokens: not sent, count 0.
  assert (got[1].count, got[1].judged) == (0, False) and judge.overflows == 1
  assert judge.calls == 1
  with pytest.raises(ValueError, match="max_new_tokens"):
    LLMJudge(sampler, None, max_new_tokens=0)
  with pytest.raises(ValueError, match="batch_size"):
    LLMJudge(sampler, None, batch_size=0)
  with pytest.raises(ValueError, match="tokenizer"):
    LLMJudge(types.SimpleNamespace(tokenizer=None), None)


def test_llm_judge_uses_the_chat_template(tok):
  class ChatTok:
    has_chat_template = True

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
      return "".join(f"<|{m['role']}|>{m['content']}" for m in messages) + "<|assistant|>"

  sampler = types.SimpleNamespace(tokenizer=ChatTok())
  p = LLMJudge(sampler, None, chat=True).prompt(_item(BREZUM))
  assert p.startswith("<|system|>") and p.endswith("<|assistant|>") and "<|user|>Question" in p
  assert "<|system|>" not in LLMJudge(sampler, None, chat=False).prompt(_item(BREZUM))


def test_llm_judge_runs_a_tiny_random_model(tok):
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  model = types.SimpleNamespace(
    config=config, params=models.init_params(config, jax.random.key(0)), tokenizer=tok
  )
  cfg = ProcessConfig(judge="llm", max_new_tokens=8, max_len=1024, batch_size=4, chat=False)
  judge = make_judge(cfg, model)
  items = [_item(BREZUM, RIVER), _item(BREZUM), _item(KELT, RIVER, VORLA)]
  got = judge.verdicts(items, [1.0, 1.0, 1.0])
  assert judge.calls == 3 and all(v.judged for v in got)
  for v, it in zip(got, items, strict=True):
    assert isinstance(v.count, int) and 0 <= v.count <= v.m == len(it.collections)
  r = judge(items, [1.0, 0.0, 1.0])
  assert r.shape == (3,) and r.dtype == np.float64 and np.all((r >= 0) & (r <= 1))
  assert r[1] == 0.0
