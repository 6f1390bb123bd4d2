"""Decoder parity with HF transformers and KV-cache properties."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import hf_logits, make_hf_model

from sr2 import models
from sr2.models import layers, transformer


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def hf_and_sr2(request, tmp_path_factory):
  arch = request.param
  hf = make_hf_model(arch)
  path = tmp_path_factory.mktemp(arch)
  hf.save_pretrained(path)
  return hf, models.load(path)


def test_logits_match_hf(hf_and_sr2):
  hf, m = hf_and_sr2
  tokens = np.random.default_rng(0).integers(0, m.config.vocab_size, size=(3, 17))
  want = hf_logits(hf, tokens)
  got = np.asarray(models.forward(m.config, m.params, jnp.asarray(tokens)))
  assert got.dtype == np.float32
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_logits_match_hf_over_several_attention_blocks(hf_and_sr2):
  """T = 150: three query blocks of the blocked causal attention (64, 64, 22)."""
  hf, m = hf_and_sr2
  assert transformer.causal_block(150) == 64
  tokens = np.random.default_rng(5).integers(0, m.config.vocab_size, size=(2, 150))
  want = hf_logits(hf, tokens)
  got = np.asarray(models.forward(m.config, m.params, jnp.asarray(tokens)))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("t,block", [(23, 7), (64, 64), (65, 64), (40, 100)])
def test_blocked_causal_attention_equals_masked_attention(t, block):
  c = models.preset("tiny")
  rng = np.random.default_rng(t)
  q = jnp.asarray(rng.normal(size=(2, t, c.n_heads, c.head_dim)), jnp.float32)
  k, v = (
    jnp.asarray(rng.normal(size=(2, t, c.n_kv_heads, c.head_dim)), jnp.float32) for _ in range(2)
  )
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (2, t, t))
  want = layers.attention(c, q, k, v, mask)
  got = layers.causal_attention(c, q, k, v, block)
  np.testing.assert_allclose(got, want, atol=1e-6, rtol=1e-5)


def test_default_positions_match_explicit_positions_with_gradients():
  """The blocked path (default positions) and the masked path agree in value and gradient."""
  c = models.preset("tiny")
  p = models.init_params(c, jax.random.key(1), std=0.1)
  tokens = jnp.asarray(np.random.default_rng(6).integers(0, c.vocab_size, (2, 150)))
  pos = jnp.broadcast_to(jnp.arange(150), (2, 150))

  def loss(p, positions):
    return jnp.mean(transformer.forward_hidden(c, p, tokens, positions) ** 2)

  (blocked, g_blocked), (masked, g_masked) = (
    jax.value_and_grad(loss)(p, positions) for positions in (None, pos)
  )
  np.testing.assert_allclose(blocked, masked, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(g_blocked), jax.tree.leaves(g_masked), strict=True):
    np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4)


def test_config_read_from_checkpoint(hf_and_sr2):
  hf, m = hf_and_sr2
  c = m.config
  assert c.arch == hf.config.model_type
  assert c.qkv_bias == (c.arch == "qwen2") and c.qk_norm == (c.arch == "qwen3")
  assert c.tie_embeddings == hf.config.tie_word_embeddings
  assert ("head" in m.params) == (not c.tie_embeddings)


def test_incremental_decoding_matches_uncached_forward(hf_and_sr2):
  _, m = hf_and_sr2
  c, p = m.config, m.params
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, c.vocab_size, size=(2, 12)))
  full = models.forward(c, p, tokens)
  cache = models.init_cache(c, batch=2, max_len=16)
  pos = jnp.broadcast_to(jnp.arange(5), (2, 5))
  logits, cache = models.forward_with_cache(c, p, tokens[:, :5], pos, cache)
  steps = [logits]
  for t in range(5, 12):
    logits, cache = models.forward_with_cache(
      c, p, tokens[:, t : t + 1], jnp.full((2, 1), t), cache
    )
    steps.append(logits)
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=1e-5, rtol=1e-5)


def test_ragged_rows_with_write_mask(hf_and_sr2):
  """Rows of different lengths in one batch: padding never leaks into real tokens."""
  _, m = hf_and_sr2
  c, p = m.config, m.params
  rng = np.random.default_rng(2)
  a, b = rng.integers(0, c.vocab_size, 9), rng.integers(0, c.vocab_size, 4)
  tokens = np.zeros((2, 9), np.int32)
  tokens[0], tokens[1, :4] = a, b
  tokens[1, 4:] = 7  # padding
  valid = np.arange(9)[None] < np.array([[9], [4]])
  cache = models.init_cache(c, batch=2, max_len=12)
  pos = jnp.broadcast_to(jnp.arange(9), (2, 9))
  logits, cache = models.forward_with_cache(
    c, p, jnp.asarray(tokens), pos, cache, jnp.asarray(valid)
  )
  # Next token for each row at its own position.
  nxt = jnp.asarray([[3], [5]])
  step, _ = models.forward_with_cache(c, p, nxt, jnp.asarray([[9], [4]]), cache)
  ref_b = models.forward(c, p, jnp.asarray(np.concatenate([b, [5]])[None]))
  ref_a = models.forward(c, p, jnp.asarray(np.concatenate([a, [3]])[None]))
  np.testing.assert_allclose(logits[1, :4], ref_b[0, :4], atol=1e-5)
  np.testing.assert_allclose(step[1, 0], ref_b[0, 4], atol=1e-5)
  np.testing.assert_allclose(step[0, 0], ref_a[0, 9], atol=1e-5)


def test_last_block_at_one_position_matches_hf(hf_and_sr2):
  """`at_B`: the last block only where it is read (T = 150, three attention blocks below)."""
  hf, m = hf_and_sr2
  c, p = m.config, m.params
  tokens = np.random.default_rng(8).integers(0, c.vocab_size, size=(4, 150))
  at = np.array([0, 63, 149, 100])
  want = hf_logits(hf, tokens)[np.arange(4), at]
  pos = jnp.broadcast_to(jnp.arange(150), (4, 150))
  for positions in (None, pos):  # the blocked and the masked path
    x = transformer.forward_hidden(c, p, jnp.asarray(tokens), positions, at_B=jnp.asarray(at))
    assert x.shape == (4, 1, c.d_model)
    got = np.asarray(transformer.logits_from_hidden(c, p, x))[:, 0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


def test_last_block_at_one_position_with_cache(hf_and_sr2):
  """`at_B` with a cache: the full call's output there, and the very same cache."""
  _, m = hf_and_sr2
  c, p = m.config, m.params
  rng = np.random.default_rng(9)
  cache = models.init_cache(c, batch=3, max_len=24)
  pos5 = jnp.broadcast_to(jnp.arange(5), (3, 5))
  _, cache = models.forward_with_cache(
    c, p, jnp.asarray(rng.integers(0, c.vocab_size, (3, 5))), pos5, cache
  )
  tokens = jnp.asarray(rng.integers(0, c.vocab_size, (3, 7)))
  pos = jnp.broadcast_to(jnp.arange(5, 12), (3, 7))
  valid = jnp.asarray(np.arange(7)[None] < np.array([[7], [3], [5]]))
  at = jnp.asarray([6, 2, 4])
  full, full_cache = transformer.forward_with_cache_hidden(c, p, tokens, pos, cache, valid, 16)
  one, one_cache = transformer.forward_with_cache_hidden(c, p, tokens, pos, cache, valid, 16, at)
  assert one.shape == (3, 1, c.d_model)
  np.testing.assert_allclose(one[:, 0], full[np.arange(3), at], atol=1e-5, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(full_cache), jax.tree.leaves(one_cache), strict=True):
    np.testing.assert_array_equal(a, b)


def test_causality():
  c = models.preset("tiny")
  p = models.init_params(c, jax.random.key(0))
  x = jnp.asarray(np.random.default_rng(3).integers(0, c.vocab_size, (1, 10)))
  y = x.at[0, 6].set((x[0, 6] + 1) % c.vocab_size)
  lx, ly = models.forward(c, p, x), models.forward(c, p, y)
  np.testing.assert_array_equal(lx[0, :6], ly[0, :6])
  assert not np.allclose(lx[0, 6:], ly[0, 6:])


@pytest.mark.parametrize("name", ["tiny", "smollm2-135m", "qwen2.5-7b", "qwen3-8b"])
def test_param_axes_cover_every_param(name):
  c = models.preset(name)
  shapes = jax.eval_shape(lambda: models.init_params(c, jax.random.key(0)))
  axes = models.param_axes(c)
  flat_s, tree_s = jax.tree.flatten(shapes)
  flat_a, tree_a = jax.tree.flatten(axes, is_leaf=lambda t: isinstance(t, tuple))
  assert tree_s == tree_a
  for s, a in zip(flat_s, flat_a, strict=True):
    assert len(a) == len(s.shape)
    assert set(a) <= {"embed", "heads", "kv_heads", "head_dim", "mlp", "vocab"}
  assert sum(np.prod(s.shape) for s in flat_s) == c.num_params()


def test_bfloat16_params_run_close_to_float32():
  c = models.preset("tiny")
  p = models.init_params(c, jax.random.key(0), std=0.2)
  c16 = c.replace(dtype="bfloat16")
  p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), p)
  x = jnp.asarray(np.random.default_rng(4).integers(0, c.vocab_size, (2, 8)))
  l32, l16 = models.forward(c, p, x), models.forward(c16, p16, x)
  chex.assert_type(l16, jnp.float32)
  chex.assert_tree_all_finite(l16)
  assert float(jnp.max(jnp.abs(l32 - l16))) < 0.1 * float(jnp.max(jnp.abs(l32)))


def test_jit_forward_with_donated_cache():
  c = models.preset("tiny")
  p = models.init_params(c, jax.random.key(0))
  step = jax.jit(
    lambda p, t, pos, cache: transformer.forward_with_cache(c, p, t, pos, cache),
    donate_argnums=(3,),
  )
  cache = models.init_cache(c, 2, 8)
  logits, cache = step(
    p, jnp.ones((2, 3), jnp.int32), jnp.broadcast_to(jnp.arange(3), (2, 3)), cache
  )
  chex.assert_shape(logits, (2, 3, c.vocab_size))
  chex.assert_shape(cache[0]["k"], (2, 8, c.n_kv_heads, c.head_dim))


def test_bad_tokens_rejected():
  c = models.preset("tiny")
  p = models.init_params(c, jax.random.key(0))
  with pytest.raises(ValueError, match=r"\[batch, time\]"):
    models.forward(c, p, jnp.ones((4,), jnp.int32))
  with pytest.raises(ValueError, match="integer"):
    models.forward(c, p, jnp.ones((1, 4), jnp.float32))


def test_forward_benchmark_times_both_paths_and_they_agree(capsys):
  from sr2.benchmarks.forward import forward_benchmark

  rows = forward_benchmark(
    ["--model", "tiny", "--batch", "2", "--length", "70", "--grad", "--repeats", "1"]
  )
  assert [r.get("path") for r in rows[:2]] == ["blocked", "masked"]
  assert rows[0]["attention_block"] == 64 and rows[0]["grad"]
  assert rows[2]["max_abs_difference"] < 1e-6
  assert len(capsys.readouterr().out.strip().splitlines()) == 3


def test_forward_benchmark_read_one_agrees_with_the_full_pass(capsys):
  from sr2.benchmarks.forward import forward_benchmark

  rows = forward_benchmark(
    ["--model", "tiny", "--batch", "3", "--length", "70", "--read-one", "--repeats", "1"]
  )
  assert [r.get("path") for r in rows[:2]] == ["blocked", "read_one"]
  assert rows[1]["read_one"] and not rows[1]["grad"]
  assert rows[2]["max_abs_difference"] < 1e-5
  assert len(capsys.readouterr().out.strip().splitlines()) == 3
  with pytest.raises(SystemExit):
    forward_benchmark(["--read-one", "--grad"])
