"""Sampler: HF parity, append/truncate equivalences, logprobs, stop strings, compile budget."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import make_hf_model

from sr2 import models
from sr2.sampling import (
  Greedy,
  Sampler,
  SamplingConfig,
  Temperature,
  TopK,
  TopP,
  kernels,
  sampler,
  stops,
)
from sr2.testing import tiny_byte_tokenizer

NO_STOP = dict(stop_strings=(), stop_on_eos=False)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  hf = make_hf_model("llama", vocab_size=300)
  path = tmp_path_factory.mktemp("llama")
  hf.save_pretrained(path)
  return hf, models.load(path)


def _hf_greedy(hf, prompt, n):
  import torch

  with torch.no_grad():
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, min_new_tokens=n, do_sample=False)
  return out[0, len(prompt) :].tolist()


def test_greedy_equals_hf_generate_on_ragged_batch(llama):
  hf, m = llama
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 300, n).tolist() for n in (5, 17, 9)]
  s = Sampler(m.config, None, SamplingConfig(max_len=64, **NO_STOP))
  out = s.generate(m.params, prompts, max_new_tokens=20)
  for p, o in zip(prompts, out, strict=True):
    assert o["tokens"] == _hf_greedy(hf, p, 20)
    assert o["finish"] == "max_new_tokens"


def _fresh_greedy(m, prompt, n, max_len=64):
  s = Sampler(m.config, None, SamplingConfig(max_len=max_len, **NO_STOP))
  return s.generate(m.params, [prompt], n)[0]


def test_append_then_decode_equals_fresh_prefill(llama):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=96, **NO_STOP))
  prompts = [[1, 2, 3, 4, 5], [7, 8, 9]]
  st = s.prefill(m.params, prompts)
  st = s.decode(m.params, st, 6)
  first = sampler.rows_since(st, [0, 0])
  obs = [list(range(40, 52)), list(range(60, 63))]
  # Append only to row 1 first, then row 0: other rows must be untouched.
  before_row0 = np.asarray(st.tokens[0])
  st = s.append(m.params, st, [1], [obs[1]])
  np.testing.assert_array_equal(st.tokens[0], before_row0)
  st = s.append(m.params, st, [0], [obs[0]])
  lens = np.asarray(st.lengths).tolist()
  st = s.decode(m.params, st, 8)
  got = sampler.rows_since(st, lens)
  for i in range(2):
    concat = first[i]["tokens"] + obs[i]
    want = _fresh_greedy(m, concat, 8)
    assert got[i]["tokens"] == want["tokens"]
    np.testing.assert_allclose(got[i]["logprobs"], want["logprobs"], atol=1e-5)
  logprobs = np.asarray(st.logprobs)
  # Appended tokens were not written by the model: log-prob 0.
  assert np.all(logprobs[0, 11:23] == 0) and np.all(logprobs[0, 5:11] != 0)


def test_truncate_then_decode_equals_fresh_prefill_of_prefix(llama):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=64, method=Temperature(1.0), **NO_STOP))
  st = s.prefill(m.params, [[3, 1, 4, 1, 5], [9, 2, 6]], rng=jax.random.key(1))
  st = s.decode(m.params, st, 12)
  full = np.asarray(st.tokens)
  st = s.truncate(st, [0], [8])  # keep prompt + 3 sampled tokens of row 0
  assert not bool(st.done[0]) and bool(st.done[1])
  greedy = Sampler(m.config, None, SamplingConfig(max_len=64, **NO_STOP))
  st = greedy.decode(m.params, st, 10)
  got = sampler.rows_since(st, [8, 0])
  want = _fresh_greedy(m, full[0, :8].tolist(), 10)
  assert got[0]["tokens"] == want["tokens"]
  np.testing.assert_allclose(got[0]["logprobs"], want["logprobs"], atol=1e-5)
  np.testing.assert_array_equal(np.asarray(st.tokens[1]), full[1])  # row 1 untouched


@pytest.mark.parametrize(
  "method, mode",
  [
    (Temperature(0.7), "sampling"),
    (Temperature(0.7), "raw"),
    (TopK(5, 1.3), "sampling"),
    (TopP(0.8, 1.0), "sampling"),
    (Greedy(), "sampling"),
  ],
)
def test_logprobs_equal_a_forward_pass(llama, method, mode):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=48, method=method, logprobs=mode, **NO_STOP))
  prompt = [5, 6, 7, 8]
  st = s.prefill(m.params, [prompt], rng=jax.random.key(3))
  st = s.decode(m.params, st, 16)
  out = sampler.rows_since(st, [len(prompt)])[0]
  seq = jnp.asarray([prompt + out["tokens"]])
  logits = models.forward(m.config, m.params, seq)[0, len(prompt) - 1 : -1]
  from sr2.sampling.methods import filtered_logits

  dist = logits if mode == "raw" else filtered_logits(method, logits)
  want = jnp.take_along_axis(jax.nn.log_softmax(dist), jnp.asarray(out["tokens"])[:, None], 1)
  np.testing.assert_allclose(out["logprobs"], want[:, 0], atol=2e-5)


def test_filtered_logits_by_hand():
  from sr2.sampling.methods import filtered_logits

  logits = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4]]))
  keep = lambda x: np.isfinite(np.asarray(x)) & (np.asarray(x) > -1e29)
  # top-2 keeps the two largest.
  assert keep(filtered_logits(TopK(2), logits)).tolist() == [[False, False, True, True]]
  # top-p 0.5: sorted mass before each token is 0, .4, .7, .9 -> keep .4 and .3.
  assert keep(filtered_logits(TopP(0.5), logits)).tolist() == [[False, False, True, True]]
  # top-p 0.4: only the first token has mass-before < .4.
  assert keep(filtered_logits(TopP(0.4), logits)).tolist() == [[False, False, False, True]]


@pytest.fixture(scope="module")
def tok_model():
  tok = tiny_byte_tokenizer()
  config = models.preset("tiny", vocab_size=len(tok), n_layers=2)
  params = models.init_params(config, jax.random.key(7), std=0.5)
  return tok, config, params


def test_stop_string_split_across_tokens(tok_model):
  tok, config, params = tok_model
  pieces = stops.token_bytes(tok, config.vocab_size)
  free = Sampler(config, tok, SamplingConfig(max_len=96, **NO_STOP))
  prompts = [tok.encode("<search> a"), tok.encode("xyz")]
  ref = free.generate(params, prompts, 60)
  gen = ref[0]["tokens"]
  text = b"".join(pieces[i] for i in gen)
  # A stop string that starts inside one token and ends inside a later one.
  bounds = np.cumsum([len(pieces[i]) for i in gen])
  stop = None
  for t in range(5, len(gen) - 3):
    a, b = bounds[t] - 1, bounds[t + 1] + 1  # one byte before a boundary to one after the next
    cand = text[a:b]
    if (
      len(pieces[gen[t]])
      and 3 <= len(cand)
      and cand.isascii()
      and cand.decode().strip() == cand.decode()
    ):
      stop = cand.decode()
      break
  assert stop is not None, "random model produced no usable ASCII window"
  want_at = stops.match_text(pieces, gen, [stop])
  assert want_at is not None and want_at > t  # completed in a later token than it started
  s = Sampler(config, tok, SamplingConfig(max_len=96, stop_strings=(stop,), stop_on_eos=False))
  out = s.generate(params, prompts, 60)
  assert out[0]["tokens"] == gen[: want_at + 1] and out[0]["finish"] == "stop_string"
  # The other row stops only if its own text completes the string; else it runs on.
  other_at = stops.match_text(pieces, ref[1]["tokens"], [stop])
  n = len(ref[1]["tokens"]) if other_at is None else other_at + 1
  assert out[1]["tokens"] == ref[1]["tokens"][:n]


def test_stop_inside_a_merged_token():
  tok = tiny_byte_tokenizer()
  pieces = stops.token_bytes(tok, len(tok))
  tables = stops.build_stop_tables(pieces, ["search>", "</answer>"])
  ids = tok.encode("x </search> y")
  q, hit = 0, None
  for t, i in enumerate(ids):
    q = tables.next_state[0, q, i]
    if q == tables.lengths[0]:
      hit = t
      break
  assert tok.id_to_token(ids[hit]) == "</search>" and hit == stops.match_text(
    pieces, ids, ["search>"]
  )


def test_eos_stops_and_rows_stay_finished(tok_model):
  tok, config, params = tok_model
  # Make EOS the argmax everywhere for row inputs by biasing its embedding: use a model whose
  # head strongly prefers <eos>.
  p = jax.tree.map(lambda x: x, params)
  p["embed"] = p["embed"].at[tok.eos_id].set(p["final_norm"] * 50.0)
  s = Sampler(config, tok, SamplingConfig(max_len=64, stop_strings=()))
  out = s.generate(p, [tok.encode("abc"), tok.encode("de")], 30)
  for o in out:
    assert o["finish"] == "eos" and o["tokens"][-1] == tok.eos_id
    assert tok.eos_id not in o["tokens"][:-1]


def test_context_full_and_bad_input(llama):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=16, **NO_STOP))
  out = s.generate(m.params, [[1] * 10], 30)[0]
  assert out["finish"] == "context_full" and len(out["tokens"]) == 6
  st = s.prefill(m.params, [[1] * 10])
  with pytest.raises(ValueError, match="exceed the row capacity 16"):
    s.append(m.params, st, [0], [[2] * 7])
  with pytest.raises(ValueError, match="cannot truncate to 11 tokens"):
    s.truncate(st, [0], [11])
  with pytest.raises(ValueError, match="empty token chunk"):
    s.append(m.params, st, [0], [[]])


def test_score_after_reads_past_the_row_and_keeps_it(llama):
  """log p(c | row + chunk) equals a forward pass over both; the row is left as it was."""
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=64, **NO_STOP))
  rows = [[5, 6, 7, 8, 9], [11, 12, 13], [3, 4]]
  chunks = [[21, 22, 23], [24], [25, 26]]
  choices = [[1, 2, 3], [4, 5], [6]]
  st = s.prefill(m.params, rows)
  kept = jax.device_get((st.tokens, st.logprobs, st.lengths, st.done))
  st, scores = s.score_after(m.params, st, [2, 0], [chunks[2], chunks[0]], [choices[2], choices[0]])
  for r, got in zip([2, 0], scores, strict=True):
    logits = models.forward(m.config, m.params, jnp.asarray([rows[r] + chunks[r]]))[0, -1]
    np.testing.assert_allclose(got, jax.nn.log_softmax(logits)[jnp.asarray(choices[r])], atol=1e-5)
  for a, b in zip(kept, jax.device_get((st.tokens, st.logprobs, st.lengths, st.done)), strict=True):
    np.testing.assert_array_equal(a, b)
  # Appending and decoding go on as if nothing had been read.
  fresh = s.append(m.params, s.prefill(m.params, rows), [0, 2], [[30, 31], [32]])
  after = s.append(m.params, st, [0, 2], [[30, 31], [32]])
  fresh, after = s.decode(m.params, fresh, 6), s.decode(m.params, after, 6)
  np.testing.assert_array_equal(np.asarray(after.tokens), np.asarray(fresh.tokens))
  np.testing.assert_allclose(np.asarray(after.logprobs), np.asarray(fresh.logprobs), atol=1e-5)
  assert s.score_after(m.params, after, [], [], []) == (after, [])


def test_score_after_rejects_bad_input(llama):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=16, **NO_STOP))
  st = s.prefill(m.params, [[1] * 10], batch=2)
  with pytest.raises(ValueError, match="1 rows, 2 chunks and 1 choice lists"):
    s.score_after(m.params, st, [0], [[2], [3]], [[1]])
  with pytest.raises(ValueError, match="row 1 is empty"):
    s.score_after(m.params, st, [1], [[2]], [[1]])
  with pytest.raises(ValueError, match="row 0: empty chunk or no choices"):
    s.score_after(m.params, st, [0], [[2]], [[]])
  with pytest.raises(ValueError, match="exceed the row capacity 16"):
    s.score_after(m.params, st, [0], [[2] * 7], [[1]])
  with pytest.raises(ValueError, match="repeat a row"):
    s.score_after(m.params, st, [0, 0], [[2], [2]], [[1], [1]])


def test_compile_budget_over_a_multi_turn_rollout(llama):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=256, buckets=(16, 64, 256), **NO_STOP))
  rng = np.random.default_rng(5)
  before = kernels.extend._cache_size() + kernels.decode._cache_size()
  for lens in [(3, 12, 7, 11), (30, 2, 9, 14), (5, 5, 60, 1)]:
    st = s.prefill(m.params, [rng.integers(0, 300, n).tolist() for n in lens])
    for turn in range(3):
      st = s.decode(m.params, st, 5)
      rows = [r for r in range(4) if (r + turn) % 2]
      st = s.append(m.params, st, rows, [rng.integers(0, 300, 3 + 7 * r).tolist() for r in rows])
    st = s.truncate(st, [0, 2], [4, 2])
    st = s.decode(m.params, st, 5)
  compiled = kernels.extend._cache_size() + kernels.decode._cache_size() - before
  # 12 prefills/appends and 12 decodes of mixed lengths: extend programs are keyed by
  # (chunk bucket, span bucket) and decode by span bucket, 3 buckets each here; the
  # sampler's own count agrees with XLA's (truncate is the one program XLA counts apart).
  assert compiled == s.num_programs - 1
  assert 3 <= s.num_programs <= 3 * 3 + 3 + 1


def test_select_then_merge_round_trips_and_checks_rows(llama):
  _, m = llama
  s = Sampler(m.config, None, SamplingConfig(max_len=48, **NO_STOP))
  rng = np.random.default_rng(7)
  state = s.prefill(m.params, [rng.integers(0, 300, n).tolist() for n in (5, 9, 3, 7, 4)])
  state = s.decode(m.params, state, 6)
  host = lambda st: jax.tree.map(np.asarray, dataclasses.replace(st, rng=None))
  snap = host(state)
  sub = s.select(state, [3, 1], 4)
  assert sub.batch == 4 and np.asarray(sub.done)[2:].all()
  np.testing.assert_array_equal(np.asarray(sub.tokens)[:2], snap.tokens[[3, 1]])
  np.testing.assert_array_equal(np.asarray(sub.cache[0]["v"])[:2], snap.cache[0]["v"][[3, 1]])
  back = s.merge(state, sub, [3, 1])
  for a, b in zip(jax.tree.leaves(host(back)), jax.tree.leaves(snap), strict=True):
    np.testing.assert_array_equal(np.asarray(a), b)
  # Rows decoded in the small batch land in their own rows of the big one.
  back = s.truncate(back, [4], [int(snap.lengths[4]) - 2])
  sub = s.decode(m.params, s.select(back, [4], 2), 3)
  merged = s.merge(back, sub, [4])
  out = host(merged)
  assert out.lengths.tolist() == (snap.lengths + [0, 0, 0, 0, 1]).tolist()
  np.testing.assert_array_equal(out.tokens[:4], snap.tokens[:4])
  np.testing.assert_array_equal(out.tokens[4], np.asarray(sub.tokens)[0])
  with pytest.raises(ValueError, match="repeat a row"):
    s.select(merged, [1, 1], 4)
  with pytest.raises(ValueError, match=r"rows \[5\] out of range"):
    s.select(merged, [5], 4)
  with pytest.raises(ValueError, match="do not fit a batch of 1"):
    s.select(merged, [0, 1], 1)


def test_a_row_samples_the_same_tokens_in_any_batch(llama):
  """Each row draws from its own key (`rng` folded with its number), so a row numbered 2
  samples the same tokens in a batch of 4, in a chunk of its own (first_row=2), and beside
  rows that stop early: the property that makes chunked and multi-process collection equal
  one process's. Logits match to float rounding across batch sizes; the tokens exactly."""
  _, m = llama
  rng = np.random.default_rng(3)
  prompts = [rng.integers(0, 300, n).tolist() for n in (6, 11, 4, 9)]
  s = Sampler(m.config, None, SamplingConfig(max_len=64, method=Temperature(1.0), **NO_STOP))
  key = jax.random.key(7)
  whole = sampler.rows_since(s.decode(m.params, s.prefill(m.params, prompts, key), 16), [0] * 4)
  tail = s.prefill(m.params, prompts[2:], key, first_row=2)
  tail = sampler.rows_since(s.decode(m.params, tail, 16), [0, 0])
  assert [r["tokens"] for r in tail] == [r["tokens"] for r in whole[2:]]
  # Rows 0 and 1 differ from rows 2 and 3 (their own keys), and a new key changes them.
  other = s.prefill(m.params, prompts[2:], jax.random.key(8), first_row=2)
  other = sampler.rows_since(s.decode(m.params, other, 16), [0, 0])
  assert [r["tokens"] for r in other] != [r["tokens"] for r in tail]
  # A row's key moves only when the row samples: row 0 fills its capacity after 4 tokens
  # while row 1 runs 16; cut back and resumed, row 0 draws what it draws alone.
  long = rng.integers(0, 300, 60).tolist()

  def resumed(batch_prompts):
    st = s.prefill(m.params, batch_prompts, key)
    st = s.decode(m.params, st, 16)
    st = s.truncate(st, [0], [62])
    return sampler.rows_since(s.decode(m.params, st, 16), [62])[0]["tokens"]

  assert resumed([long, prompts[1]]) == resumed([long])
