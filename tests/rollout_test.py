"""The agent loop: observations, masks and endings with scripted and real models."""

import jax
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sr2 import models
from sr2.agent import protocol
from sr2.agent import rollout as rollout_lib
from sr2.agent.rollout import RolloutConfig
from sr2.retrieval import BM25Index, format_documents
from sr2.rewards import exact_match
from sr2.sampling import Sampler, SamplingConfig, Temperature
from sr2.testing import ListRetriever, ScriptedSampler, tiny_byte_tokenizer

PASSAGES = [
  {"id": "p1", "title": "Vorla", "text": "Vorla was born in Brezum."},
  {"id": "p2", "title": "Brezum", "text": "Brezum is a city in Kelt."},
  {"id": "p3", "title": "Kelt", "text": "Kelt is a country."},
]
TOK = tiny_byte_tokenizer()


def rollout(sampler, params, prompts, retriever, config, rng=None, batch=None):
  """`rollout.run` then `rollout.finish`: the trajectories."""
  agent = rollout_lib.Agent(sampler, retriever, config)
  state, records = rollout_lib.run(agent, params, prompts, rng=rng, batch=batch)
  return rollout_lib.finish(state, records, sampler.tokenizer)


def _obs(titles):
  hits = ListRetriever(PASSAGES).search([" ".join(titles)], k=3)[0]
  return protocol.format_observation(format_documents(hits, tokenizer=TOK, max_tokens=500))


def test_scripted_search_then_answer():
  script = [
    "<think>I need Vorla's city.</think>\n<search> Vorla </search>",
    "<think>Now the country of Brezum.</think>\n<search> Brezum </search>",
    "<think>So Kelt.</think>\n<answer> Kelt </answer><eos>",
  ]
  sampler = ScriptedSampler(TOK, [script])
  retriever = ListRetriever(PASSAGES)
  prompt = TOK.encode("Question: In which country was Vorla born?\n")
  (traj,) = rollout(sampler, None, [prompt], retriever, RolloutConfig(max_turns=4))
  assert traj.finish == "answer" and traj.answer == "Kelt" and traj.num_turns == 3
  assert traj.queries == ["Vorla", "Brezum"] and traj.doc_ids == [["p1"], ["p2"]]
  assert retriever.calls == [["Vorla"], ["Brezum"]]
  # The response is exactly: turn 1, its observation, turn 2, its observation, turn 3
  # (cut at the token completing </answer>, so '<eos>' is never written).
  want = script[0] + _obs(["Vorla"]) + script[1] + _obs(["Brezum"]) + script[2].replace("<eos>", "")
  assert traj.response == want
  assert exact_match(traj.answer, ["kelt"]) == 1.0
  assert (
    len(traj.steps) == 3 and traj.steps[0][0] == 0 and traj.steps[-1][1] == len(traj.response_ids)
  )
  # Each step = the model's tokens then its observation; mask is 1 on the model's part only.
  s1 = TOK.decode(traj.response_ids[traj.steps[0][0] : traj.steps[0][1]])
  assert s1 == script[0] + _obs(["Vorla"])
  assert [s.pair for s in protocol.split_steps(traj.response)][0][0] == script[0]


def test_invalid_turn_gets_feedback_and_eos_ends():
  scripts = [["I am not sure.", "<answer> x </answer>"], ["<eos>"], ["<search>   </search>", "no"]]
  sampler = ScriptedSampler(TOK, scripts)
  out = rollout(
    sampler,
    None,
    [TOK.encode("Q1"), TOK.encode("Q2"), TOK.encode("Q3")],
    ListRetriever(PASSAGES),
    RolloutConfig(max_turns=2),
  )
  a, b, c = out
  assert a.finish == "answer" and a.invalid_turns == 1 and "invalid" in a.response
  assert b.finish == "eos" and b.num_turns == 1 and b.loss_mask == [1]
  assert c.finish == "max_turns" and c.invalid_turns == 2 and c.answer is None  # both turns


def test_context_overflow_finishes_the_row_and_others_go_on():
  long_doc = [{"id": "big", "title": "Vorla", "text": "word " * 400}]
  scripts = [["<search> Vorla </search>", "<answer> a </answer>"], ["<answer> b </answer>"]]
  sampler = ScriptedSampler(TOK, scripts, max_len=200)
  a, b = rollout(
    sampler,
    None,
    [TOK.encode("Q"), TOK.encode("Q")],
    ListRetriever(long_doc),
    RolloutConfig(max_obs_tokens=1000),
  )
  assert a.finish == "context_full" and a.queries == ["Vorla"]
  assert b.finish == "answer" and b.answer == "b"


_TURNS = st.sampled_from(
  [
    "<think>go</think><search> Vorla </search>",
    "<think>hm</think><search> Kelt </search>",
    "<answer> Kelt </answer>",
    "garbage <search>",
    "<search></search>",
    "<eos>",
    "<think>x</think>",
    "</answer> <answer>",
    "text <information>fake</information> more",
  ]
)


@settings(max_examples=60, deadline=None)
@given(
  st.lists(st.lists(_TURNS, min_size=0, max_size=5), min_size=1, max_size=4), st.integers(1, 4)
)
def test_mask_is_one_exactly_on_model_written_tokens(scripts, max_turns):
  sampler = ScriptedSampler(TOK, scripts, max_len=600)
  prompts = [TOK.encode(f"Question {i}?") for i in range(len(scripts))]
  out = rollout(sampler, None, prompts, ListRetriever(PASSAGES), RolloutConfig(max_turns=max_turns))
  for r, traj in enumerate(out):
    p = len(prompts[r])
    written = sorted(i - p for i in sampler.written[r])
    assert [i for i, m in enumerate(traj.loss_mask) if m] == written
    assert all((lp != 0) == bool(m) for lp, m in zip(traj.logprobs, traj.loss_mask, strict=True))
    assert traj.num_turns <= max_turns and traj.finish != "running"
    assert traj.steps[0][0] == 0 and traj.steps[-1][1] == len(traj.response_ids)


def test_real_sampler_and_bm25_run_a_batch():
  config = models.preset("tiny", vocab_size=len(TOK), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  sampler = Sampler(
    config, TOK, SamplingConfig(max_len=256, method=Temperature(1.0), logprobs="raw")
  )
  index = BM25Index.build(PASSAGES)
  prompts = [TOK.encode("<search> Vorla"), TOK.encode("Where is Kelt? <search>")] * 2
  out = rollout(
    sampler,
    params,
    prompts,
    index,
    RolloutConfig(max_turns=3, max_turn_tokens=24),
    rng=jax.random.key(1),
  )
  for traj in out:
    mask = np.asarray(traj.loss_mask)
    assert mask.sum() > 0 and len(mask) == len(traj.response_ids) == len(traj.logprobs)
    assert np.all(np.asarray(traj.logprobs)[mask == 0] == 0)
    assert traj.finish in {"answer", "max_turns", "eos", "context_full", "invalid"}
    for s, e in traj.steps:
      assert TOK.decode(traj.response_ids[s:e]).count("<information>") <= 1


def test_rollout_requires_protocol_stops():
  sampler = Sampler(
    models.preset("tiny", vocab_size=len(TOK)), TOK, SamplingConfig(stop_strings=("x",))
  )
  with pytest.raises(ValueError, match="must stop on"):
    rollout(sampler, None, [[1]], ListRetriever(PASSAGES), RolloutConfig())


def test_prompt_too_long_row_is_counted_and_batch_goes_on():
  scripts = [["<answer> a </answer>"], ["<answer> b </answer>"]]
  sampler = ScriptedSampler(TOK, scripts, max_len=64)
  long_prompt, short = TOK.encode("x" * 200), TOK.encode("Q?")
  a, b = rollout(sampler, None, [long_prompt, short], ListRetriever(PASSAGES), RolloutConfig())
  assert a.finish == "prompt_too_long" and a.response_ids == [] and a.answer is None
  assert b.finish == "answer" and b.answer == "b"


def test_answer_comes_from_a_valid_answer_turn():
  # Tags inside the answer make the turn invalid; its text must not become the answer.
  scripts = [["<answer> Paris <search> </answer>", "<think>x</think>"]]
  (t,) = rollout(
    ScriptedSampler(TOK, scripts),
    None,
    [TOK.encode("Q")],
    ListRetriever(PASSAGES),
    RolloutConfig(max_turns=2),
  )
  assert t.finish == "max_turns" and t.answer is None and t.invalid_turns == 2
