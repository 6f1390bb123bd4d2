"""Scanned layers, rematerialisation and the chunked LM head change no numbers.

Tolerances, all programs jitted: the forward pass agrees to 2e-6 (float32, the same
operations; XLA may fuse the scanned body differently); losses to 1e-6 relative;
gradients to 1e-5 of the largest entry of each leaf (remat recomputes the same operations;
the scan sums the layers' gradients in the same order).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr2 import models
from sr2.configlib import ConfigError
from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.rl import grpo, update

B, T = 4, 17


def _setup(qkv_bias=False, qk_norm=False):
  config = ModelConfig(
    vocab_size=61, d_model=32, d_ff=48, n_layers=3, qkv_bias=qkv_bias, qk_norm=qk_norm
  )
  params = transformer.init_params(config, jax.random.key(0), std=0.3)
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, config.vocab_size, (B, T)), jnp.int32)
  mask = jnp.asarray(rng.random((B, T - 1)) < 0.7, jnp.int32)
  batch = {
    "tokens": tokens,
    "mask": mask,
    "old_logp": jnp.asarray(-rng.random((B, T - 1)), jnp.float32) * mask,
    "ref_logp": jnp.asarray(-rng.random((B, T - 1)), jnp.float32) * mask,
    "adv": jnp.asarray(rng.standard_normal(B), jnp.float32),
  }
  return config, params, batch


def _variant(config, params, scan: bool, remat: str):
  c = dataclasses.replace(config, scan_layers=scan, remat=remat)
  return c, transformer.stack_layers(params) if scan else params


def test_stacked_layout_matches_param_shapes_and_round_trips():
  config, params, _ = _setup(qkv_bias=True)
  c = dataclasses.replace(config, scan_layers=True)
  stacked = transformer.stack_layers(params)
  shapes = jax.tree.map(lambda s: s[0], transformer.param_shapes(c), is_leaf=transformer._is_spec)
  assert jax.tree.map(jnp.shape, stacked) == shapes
  assert transformer.param_axes(c)["layers"]["q"] == ("layers", "embed", "heads", "head_dim")
  back = transformer.unstack_layers(stacked)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params), strict=True):
    np.testing.assert_array_equal(a, b)
  # A scanned model initialises directly in the stacked layout.
  init = transformer.init_params(c, jax.random.key(1))
  assert jax.tree.map(jnp.shape, init) == shapes


@pytest.mark.parametrize("remat", ["none", "full", "dots"])
@pytest.mark.parametrize("scan", [False, True])
def test_forward_is_the_same(scan, remat):
  config, params, batch = _setup(qk_norm=True)
  fwd = jax.jit(transformer.forward, static_argnums=0)
  want = fwd(config, params, batch["tokens"])
  c, p = _variant(config, params, scan, remat)
  got = fwd(c, p, batch["tokens"])
  np.testing.assert_allclose(got, want, atol=2e-6, rtol=2e-6)
  # Reading one position per row (the judgement's path) runs the last block apart.
  at = jnp.asarray([3, 16, 0, 9])
  hidden = jax.jit(transformer.forward_hidden, static_argnums=0)
  want_at = hidden(config, params, batch["tokens"], None, at)
  got_at = hidden(c, p, batch["tokens"], None, at)
  np.testing.assert_allclose(got_at, want_at, atol=2e-6, rtol=2e-6)


def test_cached_path_reads_stacked_layers():
  config, params, batch = _setup(qkv_bias=True)
  c, p = _variant(config, params, True, "full")
  pos = jnp.broadcast_to(jnp.arange(T), (B, T))
  cache = transformer.init_cache(config, B, 32)
  want, want_cache = transformer.forward_with_cache(config, params, batch["tokens"], pos, cache)
  got, got_cache = transformer.forward_with_cache(c, p, batch["tokens"], pos, cache)
  np.testing.assert_array_equal(got, want)
  for a, b in zip(jax.tree.leaves(got_cache), jax.tree.leaves(want_cache), strict=True):
    np.testing.assert_array_equal(a, b)


def _loss_and_grads(config, params, batch, chunk, micro):
  cfg = grpo.GRPOConfig(group_size=2, kl_coef=0.01, logprob_chunk=chunk, micro_batch_rows=micro)
  fn = jax.jit(update.loss_and_grads, static_argnums=(0, 1))
  (loss, metrics), grads = fn(config, cfg, params, batch)
  return float(loss), transformer.unstack_layers(grads)


@pytest.mark.parametrize(
  "scan,remat,chunk,micro",
  [
    (True, "none", 0, 0),
    (False, "full", 0, 0),
    (False, "dots", 5, 0),
    (True, "full", 5, 2),
    (True, "dots", 0, 2),
  ],
)
def test_grpo_loss_and_gradients_are_the_same(scan, remat, chunk, micro):
  config, params, batch = _setup(qkv_bias=True, qk_norm=True)
  want_loss, want = _loss_and_grads(config, params, batch, 0, 0)
  c, p = _variant(config, params, scan, remat)
  loss, got = _loss_and_grads(c, p, batch, chunk, micro)
  assert loss == pytest.approx(want_loss, rel=1e-6, abs=1e-7)
  for (path, g), w in zip(
    jax.tree_util.tree_flatten_with_path(got)[0], jax.tree.leaves(want), strict=True
  ):
    scale = float(jnp.abs(w).max()) or 1.0
    assert float(jnp.abs(g - w).max()) <= 1e-5 * scale, jax.tree_util.keystr(path)


def test_model_spec_builds_the_stacked_layout():
  spec = models.ModelSpec(source="preset:tiny", scan_layers=True, remat="full")
  model = models.build(spec)
  assert model.config.scan_layers and model.config.remat == "full"
  assert isinstance(model.params["layers"], dict)
  assert model.params["layers"]["q"].shape[0] == model.config.n_layers
  with pytest.raises(ConfigError, match="model.remat=.some."):
    models.ModelSpec(source="preset:tiny", remat="some")
