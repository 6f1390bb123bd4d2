"""The Meta-Refiner: the gate, the cut, regeneration, and the batched judgement."""

import types

import jax
import numpy as np
import pytest

from sr2 import models
from sr2.agent import refiner, refiner_prompts, rollout
from sr2.agent.refiner import Decision, RefinerConfig
from sr2.agent.rollout import RolloutConfig
from sr2.data.prompts import actor_prompt, wrap_information
from sr2.retrieval import BM25Index
from sr2.sampling import Sampler, SamplingConfig, Temperature
from sr2.testing import ListRetriever, ScriptedSampler, tiny_byte_tokenizer

PASSAGES = [
  {"id": "p1", "title": "Vorla", "text": "Vorla was born in Brezum."},
  {"id": "p2", "title": "Brezum", "text": "Brezum is a city in Kelt."},
  {"id": "p3", "title": "Kelt", "text": "Kelt is a country."},
  {"id": "p4", "title": "Mirod", "text": "Mirod is a river."},
]
TOK = tiny_byte_tokenizer()
T1 = "<think>Vorla first.</think>\n<search> Vorla </search>"
T2_BAD = "<think>Wrong lead.</think>\n<search> Mirod </search>"
T3_BAD = "<think>So a river.</think>\n<answer> Mirod </answer>"
T2_GOOD = "<think>Now Brezum.</think>\n<search> Brezum </search>"
T3_GOOD = "<think>So Kelt.</think>\n<answer> Kelt </answer>"


def _scripted(flag):
  """A scripted refiner: `flag(i, round)` is the step it flags (0 accepts)."""
  rounds = {"n": 0}

  def judge_fn(items, rng):
    out = []
    for i, (_question, steps) in enumerate(items):
      j = flag(i, rounds["n"], steps)
      lp = np.full(len(steps) + 1, -5.0)
      lp[j] = -0.1
      out.append(Decision((1, 2), tuple(lp), j > 0, j, 100 + j, float(lp[j])))
    rounds["n"] += 1
    return out

  return judge_fn


def _draft(scripts, max_turns=4):
  sampler = ScriptedSampler(TOK, scripts)
  retriever = ListRetriever(PASSAGES)
  prompts = [TOK.encode(f"Question {i}: where was Vorla born?\n") for i in range(len(scripts))]
  cfg = RolloutConfig(max_turns=max_turns)
  state, records = rollout.run(rollout.Agent(sampler, retriever, cfg), None, prompts)
  return sampler, retriever, state, records, cfg


def _refine_scripted(drafted, flag, config=None):
  """Runs `refine` on a `_draft` result with the scripted refiner `flag`."""
  sampler, retriever, state, records, cfg = drafted
  questions = [f"q{i}" for i in range(len(records))]
  return refiner.refine(
    rollout.Agent(sampler, retriever, cfg),
    None,
    state,
    records,
    questions,
    config or RefinerConfig(),
    judge_fn=_scripted(flag),
  )


def test_scripted_flag_regenerates_exactly_from_step_j():
  # Row 0 drafts T1, T2_BAD, T3_BAD, then (after the cut at step 2) writes T2_GOOD, T3_GOOD.
  sampler, retriever, state, records, cfg = _draft(
    [[T1, T2_BAD, T3_BAD, T2_GOOD, T3_GOOD], [T1, T2_GOOD, T3_GOOD]]
  )
  draft = rollout.finish(state, records, TOK)
  out = _refine_scripted(
    (sampler, retriever, state, records, cfg), lambda i, n, steps: 2 if i == 0 else 0
  )
  new, old = out.trajectories[0], draft[0]
  cut = old.steps[1][0]  # step 2 starts here
  assert new.response_ids[:cut] == old.response_ids[:cut]
  assert new.loss_mask[:cut] == old.loss_mask[:cut]
  assert new.logprobs[:cut] == old.logprobs[:cut]
  assert new.answer == "Kelt" and old.answer == "Mirod"
  assert new.queries == ["Vorla", "Brezum"] and new.doc_ids == [["p1"], ["p2"]]
  assert new.num_turns == 3 and new.steps[0] == old.steps[0]
  assert TOK.decode(new.response_ids[cut:]).startswith(T2_GOOD)
  assert out.trajectories[1] == draft[1]  # accepted: identical
  assert out.drafts == draft
  assert [len(d) for d in out.decisions] == [1, 1] and out.revised.tolist() == [True, False]
  assert retriever.calls[-1] == ["Brezum"]  # only the cut row searched again
  assert out.judge_s > 0 and out.regenerate_s > 0


def test_scripted_accept_leaves_trajectories_identical():
  sampler, retriever, state, records, cfg = _draft([[T1, T2_GOOD, T3_GOOD]])
  draft = rollout.finish(state, records, TOK)
  calls = sampler.decode_calls
  out = _refine_scripted(
    (sampler, retriever, state, records, cfg), lambda i, n, steps: 0, RefinerConfig(max_revisions=3)
  )
  assert out.trajectories == draft and sampler.decode_calls == calls
  assert out.judge_s > 0 and out.regenerate_s == 0.0  # nothing regenerated
  assert len(out.decisions[0]) == 1 and out.decisions[0][0].step == 0


def test_cut_keeps_turn_budget_and_rounds_judge_only_revised_rows():
  # max_turns=3: a cut at step 3 leaves exactly one turn; round 2 judges only row 0.
  sampler, retriever, state, records, cfg = _draft(
    [[T1, T2_GOOD, T3_BAD, T3_GOOD, T3_GOOD], [T1, T2_GOOD, T3_GOOD]], max_turns=3
  )
  out = _refine_scripted(
    (sampler, retriever, state, records, cfg),
    lambda i, n, steps: 3 if i == 0 else 0,  # i indexes the judged rows
    RefinerConfig(max_revisions=2),
  )
  t = out.trajectories[0]
  assert t.num_turns == 3 and t.answer == "Kelt" and t.queries == ["Vorla", "Brezum"]
  # Round 0 judged both rows, round 1 only the revised one; the last revision is not judged.
  assert [len(d) for d in out.decisions] == [2, 1]
  assert [d.step for d in out.decisions[0]] == [3, 3]


def test_revised_rows_of_a_large_batch_regenerate_in_their_own_batch():
  # 10 rows > the 8-row batch the 2 revised rows regenerate in: each keeps its own script.
  scripts = [[T1, T2_GOOD, T3_GOOD] for _ in range(10)]
  scripts[3] = [T1, T2_BAD, T3_BAD, T2_GOOD, T3_GOOD]
  scripts[9] = [T1, T3_BAD, T2_GOOD, T3_GOOD]
  sampler, retriever, state, records, cfg = _draft(scripts)
  draft = rollout.finish(state, records, TOK)
  out = _refine_scripted(
    (sampler, retriever, state, records, cfg), lambda i, n, steps: 2 if i in (3, 9) else 0
  )
  for r in (3, 9):
    new, old = out.trajectories[r], draft[r]
    cut = old.steps[1][0]
    assert new.response_ids[:cut] == old.response_ids[:cut] and old.answer == "Mirod"
    assert new.answer == "Kelt" and new.queries == ["Vorla", "Brezum"]
  assert all(out.trajectories[r] == draft[r] for r in range(10) if r not in (3, 9))
  assert retriever.calls[-1] == ["Brezum", "Brezum"]


def _greedy_batch(texts):
  """A greedy rollout of the tiny random model on `texts` (its draft, and what it needs)."""
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  sampler = Sampler(config, tok, SamplingConfig(max_len=256))
  index = BM25Index.build(PASSAGES)
  cfg = RolloutConfig(max_turns=3, max_turn_tokens=12)
  prompts = [tok.encode(t) for t in texts]
  state, records = rollout.run(rollout.Agent(sampler, index, cfg), params, prompts)
  return tok, sampler, params, index, cfg, state, records


def test_regenerate_in_a_small_batch_equals_the_full_batch():
  texts = ["<search> Vorla </search>", "Kelt? <search>", "<search> Mirod", "Brezum <search> K"]
  tok, sampler, params, index, cfg, state, records = _greedy_batch(
    [texts[i % 4] + " " * (i // 4) for i in range(12)]
  )
  draft = rollout.finish(state, records, tok)
  rows = [r for r, t in enumerate(draft) if len(t.steps) >= 2][:3]
  assert len(rows) >= 2, "the tiny model should take two turns in several rows"
  others = [r for r in range(12) if r not in rows]
  cache_before = [np.asarray(layer["k"])[others] for layer in state.cache]
  shapes = set(sampler._shapes)
  state = rollout.regenerate(
    rollout.Agent(sampler, index, cfg), params, state, records, rows, [2] * len(rows)
  )
  assert ("take_rows", 12, 8) in sampler._shapes - shapes  # ran in a batch of 8
  # Greedy from intact prefixes writes the same suffixes; the other rows are untouched.
  assert rollout.finish(state, records, tok) == draft
  for b, layer in zip(cache_before, state.cache, strict=True):
    np.testing.assert_array_equal(b, np.asarray(layer["k"])[others])


def test_regenerate_refuses_other_running_rows():
  tok, sampler, params, index, cfg, state, records = _greedy_batch(["<search> Vorla </search>"] * 4)
  state = rollout.rewind(sampler, state, records, [0, 1], [1, 1])
  with pytest.raises(ValueError, match=r"rows \[1\] are still running"):
    rollout.regenerate(rollout.Agent(sampler, index, cfg), params, state, records, [0], [1])


def test_rewind_rejects_steps_out_of_range():
  sampler, _, state, records, _ = _draft([[T1, T3_GOOD]])
  with pytest.raises(ValueError, match=r"step must be an int in \[1, 2\]"):
    rollout.rewind(sampler, state, records, [0], [3])


def test_decide_gate_aggregate_margin_and_cut():
  lp = np.log([0.4, 0.35, 0.25])  # p("0")=.4, p(revise)=.6 summed, best single .35
  assert refiner.decide(lp, RefinerConfig(), None) == (True, 1)
  assert refiner.decide(lp, RefinerConfig(aggregate="max"), None) == (False, 0)
  # log(.6/.4) = 0.405: a margin of 0.5 keeps the draft, 0.4 revises.
  assert refiner.decide(lp, RefinerConfig(margin=0.5), None) == (False, 0)
  assert refiner.decide(lp, RefinerConfig(margin=0.4), None)[0]
  # Sampled cuts follow softmax(lp_1..n) = (.583, .417).
  rng = np.random.default_rng(0)
  draws = [refiner.decide(lp, RefinerConfig(), rng)[1] for _ in range(4000)]
  assert abs(np.mean(np.asarray(draws) == 1) - 0.35 / 0.6) < 0.03


def test_judge_scores_equal_a_forward_pass_and_batch():
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  items = [
    (
      "Where was Vorla born?",
      [(T1, "Doc 1(Title: Vorla) Vorla was born in Brezum."), (T3_BAD, None)],
    ),
    ("Where?", [(T3_GOOD, None)]),
  ]
  ds = refiner.judge(config, params, tok, items, RefinerConfig(), None)
  for (q, steps), d in zip(items, ds, strict=True):
    ids = refiner_prompts.prompt_ids(tok, q, steps)
    logits = models.forward(config, params, np.asarray([ids], np.int32))[0, -1]
    want = jax.nn.log_softmax(logits)[np.asarray(refiner_prompts.choice_ids(tok, len(steps)))]
    np.testing.assert_allclose(d.choice_logprobs, want, atol=1e-5)
    choices = refiner_prompts.choice_ids(tok, len(steps))
    assert d.prompt_ids == tuple(ids) and d.token == choices[d.step]
    assert d.logprob == pytest.approx(d.choice_logprobs[d.step])
  # Too long a prompt is not judged.
  assert refiner.judge(config, params, tok, items, RefinerConfig(max_prompt_tokens=8)) == [
    None,
    None,
  ]


def _continuation_batch():
  """A greedy 3-turn rollout of the tiny random model, with room for the refiner question."""
  tok = tiny_byte_tokenizer()  # bytes: text and tokens map one to one
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  sampler = Sampler(config, tok, SamplingConfig(max_len=2048))
  index = BM25Index.build(PASSAGES)
  cfg = RolloutConfig(max_turns=3, max_turn_tokens=12)
  questions = ["Where was Vorla born?", "Where is Kelt?", "What is Mirod?"]
  prompts = [tok.encode(actor_prompt(q)) for q in questions]
  state, records = rollout.run(rollout.Agent(sampler, index, cfg), params, prompts)
  return tok, sampler, params, index, cfg, state, records, questions


def test_continuation_judge_reads_the_cache_and_equals_a_forward_pass():
  tok, sampler, params, _, _, state, records, _ = _continuation_batch()
  draft = rollout.finish(state, records, tok)
  config = RefinerConfig(prompt="continuation")
  kept = jax.device_get((state.tokens, state.logprobs, state.lengths, state.done, state.finish))
  state, ds = refiner.judge_in_cache(sampler, params, state, [0, 1, 2], draft, config, None)
  # Only cache slots past the rows' ends changed: the rows are as they were.
  again = jax.device_get((state.tokens, state.logprobs, state.lengths, state.done, state.finish))
  for a, b in zip(kept, again, strict=True):
    np.testing.assert_array_equal(a, b)
  for t, d in zip(draft, ds, strict=True):
    n = len(t.steps)
    ids = t.prompt_ids + t.response_ids + refiner_prompts.followup_ids(tok, n)
    assert d.prompt_ids == tuple(ids)
    logits = models.forward(sampler.model, params, np.asarray([ids], np.int32))[0, -1]
    want = jax.nn.log_softmax(logits)[np.asarray(refiner_prompts.choice_ids(tok, n))]
    np.testing.assert_allclose(d.choice_logprobs, want, atol=1e-4)
    assert d.token == refiner_prompts.choice_ids(tok, n)[d.step]
  # Rows whose tokens and question exceed max_prompt_tokens are not judged.
  short = RefinerConfig(prompt="continuation", max_prompt_tokens=len(draft[0].prompt_ids) + 1)
  assert refiner.judge_in_cache(sampler, params, state, [0, 2], draft, short)[1] == [None, None]


def test_continuation_text_form_scores_as_the_cache_does():
  """`judge` on (question, steps) text encodes what a rollout holds, and scores the same."""
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  info = wrap_information("Doc 1(Title: Vorla) Vorla was born in Brezum.")
  q, steps = "Where was Vorla born?", [(T1, info), (T3_BAD, None)]
  body = tok.encode(actor_prompt(q)) + tok.encode(T1) + tok.encode(info) + tok.encode(T3_BAD)
  followup = refiner_prompts.followup_ids(tok, 2)
  assert refiner_prompts.prompt_ids(tok, q, steps, "continuation") == body + followup
  (d,) = refiner.judge(config, params, tok, [(q, steps)], RefinerConfig(prompt="continuation"))
  sampler = Sampler(config, tok, SamplingConfig(max_len=2048))
  state = sampler.prefill(params, [body, tok.encode("Kelt")])
  choices = refiner_prompts.choice_ids(tok, 2)
  _, (lp,) = sampler.score_after(params, state, [0], [followup], [choices])
  np.testing.assert_allclose(d.choice_logprobs, lp, atol=1e-4)


def test_continuation_judge_leaves_the_cache_intact_for_the_cut():
  """Judged in the cache, then cut at the last step and regenerated greedily: the same.

  The rows' cache entries (slots < length - 1) are bit for bit what they were, and greedy
  decoding from the cut writes the same last turn: the question's scratch entries past
  each row's end do not leak into what follows.
  """
  tok, sampler, params, index, cfg, state, records, _ = _continuation_batch()
  draft = rollout.finish(state, records, tok)
  lengths = np.asarray(state.lengths)
  before = [(np.asarray(c["k"]), np.asarray(c["v"])) for c in state.cache]
  config = RefinerConfig(prompt="continuation")
  state, ds = refiner.judge_in_cache(sampler, params, state, [0, 1, 2], draft, config)
  assert all(d is not None for d in ds)
  for (k, v), c in zip(before, state.cache, strict=True):
    for r, n in enumerate(lengths):
      np.testing.assert_array_equal(k[r, : n - 1], np.asarray(c["k"])[r, : n - 1])
      np.testing.assert_array_equal(v[r, : n - 1], np.asarray(c["v"])[r, : n - 1])
  state = rollout.rewind(sampler, state, records, [0, 1, 2], [len(t.steps) for t in draft])
  state = rollout.continue_rollout(rollout.Agent(sampler, index, cfg), params, state, records)
  for new, old in zip(rollout.finish(state, records, tok), draft, strict=True):
    assert new.response_ids == old.response_ids
    np.testing.assert_allclose(new.logprobs, old.logprobs, atol=1e-5)


def test_continuation_judge_skips_rows_without_room_for_the_question():
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  sampler = Sampler(config, tok, SamplingConfig(max_len=256))
  room = 256 - len(refiner_prompts.followup_ids(tok, 1))
  rows = [[7] * (room + 1), [7] * room]  # one token too many; just enough
  state = sampler.prefill(params, rows)
  trajs = [types.SimpleNamespace(prompt_ids=r, response_ids=[], steps=[(0, 1)]) for r in rows]
  big = RefinerConfig(prompt="continuation", max_prompt_tokens=4096)
  _, ds = refiner.judge_in_cache(sampler, params, state, [0, 1], trajs, big)
  assert ds[0] is None and len(ds[1].prompt_ids) == 256


def test_continuation_refine_judges_in_the_cache_and_regenerates():
  tok, sampler, params, index, cfg, state, records, questions = _continuation_batch()
  draft = rollout.finish(state, records, tok)
  config = RefinerConfig(prompt="continuation", margin=-1e9)  # always revise
  out = refiner.refine(
    rollout.Agent(sampler, index, cfg), params, state, records, questions, config
  )
  for t, ds, new in zip(draft, out.decisions, out.trajectories, strict=True):
    assert len(ds) == 1 and ds[0].revise and 1 <= ds[0].step <= len(t.steps)
    assert ds[0].prompt_ids[-len(refiner_prompts.followup_ids(tok, len(t.steps))) :] == tuple(
      refiner_prompts.followup_ids(tok, len(t.steps))
    )
    # Greedy from the cut writes the same tokens; rows cut at other steps share decode
    # calls of another attention span, so the log-probs agree up to float reassociation.
    assert new.response_ids == t.response_ids
    np.testing.assert_allclose(new.logprobs, t.logprobs, atol=1e-5)


def test_real_sampler_cut_keeps_cache_and_greedy_regenerates_the_same():
  tok, sampler, params, index, cfg, state, records = _greedy_batch(
    ["<search> Vorla </search>", "Kelt? <search>"]
  )
  draft = rollout.finish(state, records, tok)
  rows = [r for r, t in enumerate(draft) if len(t.steps) >= 2]
  assert rows, "the tiny model should take at least two turns somewhere"
  r = rows[0]
  cut = records[r].prompt_len + draft[r].steps[1][0]
  before = [np.asarray(layer["k"][r, : cut - 1]) for layer in state.cache]
  state = rollout.rewind(sampler, state, records, [r], [2])
  # The prefix's cache entries survive the rewind untouched (no re-encoding).
  for b, layer in zip(before, state.cache, strict=True):
    np.testing.assert_array_equal(b, np.asarray(layer["k"][r, : cut - 1]))
  assert int(state.lengths[r]) == cut and records[r].turns == 1
  state = rollout.continue_rollout(rollout.Agent(sampler, index, cfg), params, state, records)
  again = rollout.finish(state, records, tok)
  # Greedy from the same prefix with an intact cache writes the same suffix again.
  assert again[r] == draft[r]


def test_sampled_regeneration_changes_only_the_suffix():
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(0), std=0.3)
  sampler = Sampler(
    config, tok, SamplingConfig(max_len=256, method=Temperature(1.0), logprobs="raw")
  )
  index = BM25Index.build(PASSAGES)
  cfg = RolloutConfig(max_turns=3, max_turn_tokens=12)
  prompts = [tok.encode("<search> Vorla </search>")] * 4
  state, records = rollout.run(
    rollout.Agent(sampler, index, cfg), params, prompts, rng=jax.random.key(3)
  )
  out = refiner.refine(
    rollout.Agent(sampler, index, cfg),
    params,
    state,
    records,
    ["q"] * 4,
    RefinerConfig(),
    judge_fn=_scripted(lambda i, n, steps: 1),
  )
  for new, old in zip(out.trajectories, out.drafts, strict=True):
    assert new.prompt_ids == old.prompt_ids
  assert any(
    n.response_ids != o.response_ids for n, o in zip(out.trajectories, out.drafts, strict=True)
  )


def test_choice_ids_need_single_tokens():
  assert len(refiner_prompts.choice_ids(TOK, 4)) == 5
  with pytest.raises(ValueError, match="1 to 9 steps"):
    refiner_prompts.choice_ids(TOK, 10)

  class Wide:
    def encode(self, s):
      return [1, 2]

  with pytest.raises(ValueError, match="single-token digits"):
    refiner_prompts.choice_ids(Wide(), 2)


def test_config_validation():
  for bad in (-1, True, 2.0):
    with pytest.raises(ValueError, match="judge_rows"):
      RefinerConfig(judge_rows=bad)
  with pytest.raises(ValueError, match="max_revisions"):
    RefinerConfig(max_revisions=0)
  with pytest.raises(ValueError, match="aggregate"):
    RefinerConfig(aggregate="mean")
  with pytest.raises(ValueError, match="refiner.prompt"):
    RefinerConfig(prompt="suffix")
  with pytest.raises(ValueError, match="prompt form"):
    refiner_prompts.prompt_ids(TOK, "q", [(T1, None)], "suffix")
