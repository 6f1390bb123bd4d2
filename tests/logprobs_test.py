"""Chunked next-token log-probs: same values and gradients as the full-logits path, less memory."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.rl import grpo, logprobs

B, T = 3, 13  # T - 1 = 12 scored positions


def _model(tie: bool, dtype: str = "float32"):
  config = ModelConfig(vocab_size=97, d_model=32, d_ff=64, tie_embeddings=tie, dtype=dtype)
  return config, transformer.init_params(config, jax.random.key(0), std=0.3)


def _batch(vocab: int):
  rng = np.random.default_rng(1)
  tokens = jnp.asarray(rng.integers(0, vocab, size=(B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T - 1)) < 0.6, jnp.int32).at[2].set(0)  # row 2 all masked
  return tokens, mask


@functools.partial(jax.jit, static_argnums=(0, 3))
def _both(config, params, tokens, chunk, mask):
  return logprobs.token_logprobs(
    config, params, tokens, chunk_size=chunk, with_entropy=True, entropy_mask_BxT=mask
  )


def test_forward_is_head_of_forward_hidden():
  config, params = _model(tie=False)
  tokens, _ = _batch(config.vocab_size)
  hidden = transformer.forward_hidden(config, params, tokens)
  assert hidden.shape == (B, T, config.d_model)
  np.testing.assert_array_equal(
    transformer.logits_from_hidden(config, params, hidden),
    transformer.forward(config, params, tokens),
  )


@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_plain_path_is_forward_then_target_logprobs(tie):
  config, params = _model(tie)
  tokens, mask = _batch(config.vocab_size)
  logp, ent = _both(config, params, tokens, None, mask)
  # Jitted vs eager: same math, rounding may differ in the last bit.
  logits = transformer.forward(config, params, tokens[:, :-1])
  np.testing.assert_allclose(logp, logprobs.target_logprobs(logits, tokens[:, 1:]), rtol=1e-6)
  h = logprobs.token_entropy(logits, mask)
  np.testing.assert_allclose(ent, grpo.masked_mean(h, mask), rtol=1e-6)
  assert logp.dtype == jnp.float32 and logp.shape == (B, T - 1)


# 4 and 12 divide T - 1 = 12; 1 is the extreme; 5 and 7 need padding; 100 > T - 1.
@pytest.mark.parametrize("chunk", [1, 4, 5, 7, 12, 100])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_chunked_values_match_plain(tie, chunk):
  config, params = _model(tie)
  tokens, mask = _batch(config.vocab_size)
  want_logp, want_ent = _both(config, params, tokens, None, mask)
  got_logp, got_ent = _both(config, params, tokens, chunk, mask)
  assert got_logp.shape == (B, T - 1) and got_logp.dtype == jnp.float32
  np.testing.assert_allclose(got_logp, want_logp, rtol=1e-6, atol=2e-6)
  np.testing.assert_allclose(got_ent, want_ent, rtol=1e-6, atol=1e-6)
  only_logp = logprobs.token_logprobs(config, params, tokens, chunk_size=chunk)
  np.testing.assert_allclose(only_logp, want_logp, rtol=1e-6, atol=2e-6)


@pytest.mark.parametrize("chunk", [4, 5])
@pytest.mark.parametrize("tie", [True, False], ids=["tied", "untied"])
def test_chunked_gradients_match_plain(tie, chunk):
  config, params = _model(tie)
  tokens, mask = _batch(config.vocab_size)

  @functools.partial(jax.jit, static_argnums=0)
  def grads(chunk_size, p):
    def loss(p):
      logp, ent = logprobs.token_logprobs(
        config, p, tokens, chunk_size=chunk_size, with_entropy=True, entropy_mask_BxT=mask
      )
      return grpo.masked_sum(logp, mask) + 3.0 * ent

    return jax.grad(loss)(p)

  want, got = grads(None, params), grads(chunk, params)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5), got, want)
  head = "embed" if tie else "head"
  assert float(jnp.abs(got[head]).max()) > 1e-3  # the head does receive a gradient


def test_bfloat16_chunked_as_accurate_as_plain():
  # bf16 rounding differs between any two compiled programs (eager vs jit plain already
  # differ by ~0.05 in log-prob here), so compare each path's error against the f32 model.
  config, params = _model(tie=True, dtype="bfloat16")
  tokens, mask = _batch(config.vocab_size)
  params32 = jax.tree.map(lambda a: a.astype(jnp.float32), params)
  ref_logp, ref_ent = _both(config.replace(dtype="float32"), params32, tokens, None, mask)
  plain_logp, plain_ent = _both(config, params, tokens, None, mask)
  got_logp, got_ent = _both(config, params, tokens, 5, mask)
  assert got_logp.dtype == jnp.float32
  err = lambda a, b: float(jnp.abs(a - b).max())
  assert err(got_logp, ref_logp) <= 1.5 * err(plain_logp, ref_logp) + 1e-2
  assert err(got_ent, ref_ent) <= 1.5 * err(plain_ent, ref_ent) + 1e-2


def test_token_entropy_is_nan_safe():
  # Row 0: a -inf logit (p = 0, must add 0, not NaN); row 1: garbage, masked out.
  # p = softmax(0, 1, -inf) = (1, e) / (1 + e); H = ln(1 + e) - e / (1 + e).
  logits = jnp.array([[[0.0, 1.0, -jnp.inf], [jnp.nan, jnp.inf, 2.0]]])
  mask = jnp.array([[1, 0]])
  mean = lambda x: grpo.masked_mean(logprobs.token_entropy(x, mask), mask)
  e = math.e
  np.testing.assert_allclose(mean(logits), math.log(1 + e) - e / (1 + e), rtol=1e-6)
  grad = jax.grad(mean)(logits)
  assert np.isfinite(np.asarray(grad)).all()


def test_bad_inputs_rejected():
  config, params = _model(tie=True)
  tokens, mask = _batch(config.vocab_size)
  for bad in (0, -3, 2.5, True):
    with pytest.raises(ValueError, match="chunk_size"):
      logprobs.token_logprobs(config, params, tokens, chunk_size=bad)
  with pytest.raises(ValueError, match="T >= 2"):
    logprobs.token_logprobs(config, params, tokens[:, :1], chunk_size=4)
  with pytest.raises(ValueError, match="expected"):
    logprobs.token_logprobs(config, params, tokens, with_entropy=True, entropy_mask_BxT=mask[:, 1:])
  with pytest.raises(ValueError, match="with_entropy"):
    logprobs.token_logprobs(config, params, tokens, entropy_mask_BxT=mask)


def test_chunked_loss_needs_less_memory():
  """Compiled temp memory of value_and_grad: the chunked path must not hold [B, T-1, V]."""
  config = ModelConfig(
    vocab_size=32768, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, d_ff=64, max_seq_len=512
  )
  b, t = 4, 512
  params = jax.eval_shape(lambda: transformer.init_params(config, jax.random.key(0)))
  tokens = jax.ShapeDtypeStruct((b, t), jnp.int32)
  mask = jax.ShapeDtypeStruct((b, t - 1), jnp.int32)

  def temp_bytes(chunk):
    def loss(p, tokens, mask):
      logp, ent = logprobs.token_logprobs(
        config, p, tokens, chunk_size=chunk, with_entropy=True, entropy_mask_BxT=mask
      )
      return -grpo.masked_mean(logp, mask) - 0.01 * ent

    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, tokens, mask).compile()
    stats = compiled.memory_analysis()
    if stats is None or not hasattr(stats, "temp_size_in_bytes"):
      pytest.skip(f"memory_analysis() is unavailable on {jax.default_backend()}")
    return stats.temp_size_in_bytes

  plain, chunked = temp_bytes(None), temp_bytes(64)
  logits_bytes = 4 * b * (t - 1) * config.vocab_size
  print(
    f"temp bytes: plain {plain / 2**20:.1f} MiB, chunked(64) {chunked / 2**20:.1f} MiB; "
    f"one f32 [B, T-1, V] = {logits_bytes / 2**20:.1f} MiB"
  )
  assert plain >= logits_bytes  # the plain path does materialise the logits
  assert chunked * 4 < plain, (plain, chunked)
