"""The process and hybrid rewards: the paper's reward table, the judges, edge cases."""

import jax
import numpy as np
import pytest

from sr2 import models
from sr2.rewards import (
  Collection,
  JudgeItem,
  LexicalJudge,
  LLMJudge,
  density,
  hybrid_reward,
  lexical_labels,
)
from sr2.sampling import Sampler, SamplingConfig
from sr2.testing import tiny_byte_tokenizer

KELT = Collection(("p2",), "Doc 1(Title: Brezum) Brezum is a city in Kelt.")
VORLA = Collection(("p1",), "Doc 1(Title: Vorla) Vorla was born in Brezum.")
RIVER = Collection(("p4",), "Doc 1(Title: Mirod) Mirod is a river.")


def _item(*collections, titles=()):
  return JudgeItem("Where was Vorla born?", ("Kelt",), tuple(collections), titles)


def test_reward_table():
  judge = LexicalJudge()
  # Wrong answer: 0 whatever the searches.
  item = _item(KELT, KELT)
  assert hybrid_reward(0.0, judge([item], [0.0])[0]) == 0.0
  # Correct without a search: M = 0 -> process 0 -> R = 1.
  assert hybrid_reward(1.0, judge([_item()], [1.0])[0]) == 1.0
  # Correct with 3 searches, 2 useful and new: 1 * (1 + 2/3) = 1.667.
  item = _item(KELT, RIVER, Collection(("p3",), "Doc 1(Title: Kelt) Kelt is a country."))
  assert lexical_labels(item) == [1, 0, 1]
  assert hybrid_reward(1.0, judge([item], [1.0])[0]) == pytest.approx(1 + 2 / 3)


def test_repeat_search_is_not_new_even_with_the_answer():
  item = _item(KELT, KELT, Collection(("p2", "p4"), KELT.text + " Mirod is a river."))
  # The third adds p4 (new) and holds the answer (useful).
  assert lexical_labels(item) == [1, 0, 1]


def test_gold_titles_count_as_useful():
  assert lexical_labels(_item(VORLA)) == [0]
  assert lexical_labels(_item(VORLA, titles=("Vorla",))) == [1]


def test_normalisation_and_whole_words():
  item = JudgeItem("q", ("The Kelt!",), (Collection(("a",), "born in KELT, a land"),))
  assert lexical_labels(item) == [1]  # case, punctuation and articles are normalised away
  item = JudgeItem("q", ("Kelt",), (Collection(("a",), "the Keltic sea"),))
  assert lexical_labels(item) == [0]  # no partial-word matches


def test_density_edge_cases():
  assert density(0, 0) == 0.0 and density(5, 2) == 1.0 and density(-1, 3) == 0.0
  assert density(1, 4) == 0.25
  with pytest.raises(ValueError, match="m"):
    density(1, -1)


def test_hybrid_validates_and_vectorises():
  np.testing.assert_allclose(hybrid_reward([0, 1, 1], [1, 0, 0.5]), [0, 1, 1.5])
  with pytest.raises(ValueError, match="outcome"):
    hybrid_reward(2.0, 0.0)
  with pytest.raises(ValueError, match="process"):
    hybrid_reward(1.0, float("nan"))
  with pytest.raises(ValueError, match="shape"):
    hybrid_reward([1, 1], [0.5])


class _ScriptedJudgeSampler:
  """Replies with scripted text; records the prompts it was given."""

  def __init__(self, tokenizer, replies):
    self.tokenizer, self.replies, self.prompts = tokenizer, list(replies), []

  def prefill(self, params, prompts):
    self.prompts += [self.tokenizer.decode(p) for p in prompts]
    self._lens = [len(p) for p in prompts]
    return None

  def decode(self, params, state, max_new_tokens):
    rows = [self.tokenizer.encode(r) for r in self.replies[: len(self._lens)]]
    self.replies = self.replies[len(self._lens) :]
    width = max(n + len(r) for n, r in zip(self._lens, rows, strict=True))
    tokens = np.zeros((len(rows), width), np.int32)
    for i, (n, r) in enumerate(zip(self._lens, rows, strict=True)):
      tokens[i, n : n + len(r)] = r
    lengths = np.asarray([n + len(r) for n, r in zip(self._lens, rows, strict=True)])

    class S:
      pass

    s = S()
    s.tokens, s.lengths = tokens, lengths
    return s


def test_llm_judge_prompt_parse_clip_and_skips():
  tok = tiny_byte_tokenizer()
  sampler = _ScriptedJudgeSampler(tok, ["Final Answer: 1", "Final Answer: 7", "no idea"])
  judge = LLMJudge(sampler, None, chat=False)
  items = [_item(KELT, RIVER), _item(KELT), _item(KELT, KELT), _item(RIVER), _item()]
  # Item 3 has a wrong answer and item 4 no search: neither reaches the model.
  out = judge(items, [1.0, 1.0, 1.0, 0.0, 1.0])
  np.testing.assert_allclose(out, [0.5, 1.0, 0.0, 0.0, 0.0])  # 1/2; 7 clipped to 1/1; unparsable
  assert judge.calls == 3 and len(sampler.prompts) == 3
  p = sampler.prompts[0]
  assert "Question: Where was Vorla born?" in p and "Answer: Kelt" in p
  assert "<collection_1>" in p and "<collection_2>" in p and "Final Answer" in p


def test_llm_judge_runs_a_real_tiny_model():
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0))
  sampler = Sampler(config, tok, SamplingConfig(max_len=1024, stop_strings=()))
  judge = LLMJudge(sampler, params, max_new_tokens=8, chat=False)
  out = judge([_item(KELT, RIVER), _item(KELT)], [1.0, 1.0])
  assert out.shape == (2,) and np.all((out >= 0) & (out <= 1))
  with pytest.raises(ValueError, match="max_new_tokens"):
    LLMJudge(sampler, params, max_new_tokens=0)
