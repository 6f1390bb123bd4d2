"""GRPO update: a golden step, and equality across device meshes."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr2 import models
from sr2.parallel import MeshConfig, make_mesh
from sr2.rl import batch as batch_lib
from sr2.rl import grpo, micro, update
from sr2.rl.optim import OptConfig, make_optimizer


def _setup():
  model = models.preset("tiny")
  cfg = grpo.GRPOConfig(group_size=4, kl_coef=0.01)
  opt = make_optimizer(OptConfig(lr=1e-3, weight_decay=0.0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 256, 5).tolist() for _ in range(8)]
  responses = [rng.integers(0, 256, n).tolist() for n in (3, 7, 4, 9, 2, 6, 8, 5)]
  masks = [(rng.random(len(r)) < 0.7).astype(int).tolist() for r in responses]
  logps = [(-rng.random(len(r)) * m).tolist() for r, m in zip(responses, masks, strict=True)]
  adv, _ = grpo.group_advantages(jnp.asarray([1, 0, 0, 1, 2, 1, 1, 0], jnp.float32), 4)
  batch = batch_lib.policy_batch(prompts, responses, masks, logps, np.asarray(adv), 0, 16)
  return model, cfg, opt, batch


def test_golden_one_step():
  model, cfg, opt, batch = _setup()
  mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
  sh = update.make_shardings(model, opt, mesh, batch_rows=8)
  params, opt_state = update.init_sharded(model, opt, sh, jax.random.key(0))
  ref = update.reference_logprobs(model, params, jnp.asarray(batch["tokens"]))
  step = update.make_update(model, cfg, opt, sh)
  params, opt_state, m = step(params, opt_state, {**batch, "ref_logp": ref})
  # Golden values of this tiny config. A change here means the loss, the alignment, the
  # init or the optimizer changed: check that it is intended, then update the numbers.
  np.testing.assert_allclose(float(m["loss"]), GOLDEN_LOSS, rtol=1e-5)
  np.testing.assert_allclose(float(jnp.sum(params["layers"][0]["q"])), GOLDEN_Q_SUM, rtol=1e-4)
  # The scripted old log-probs are not the model's, so some ratios clip.
  assert 0 < float(m["clip_frac"]) < 1 and float(m["kl_loss"]) == 0.0  # params == ref params


GOLDEN_LOSS = 0.29309502243995667
GOLDEN_Q_SUM = 1.666508436203003

_SCRIPT = textwrap.dedent(
  """
  import dataclasses, sys, jax, jax.numpy as jnp, numpy as np
  sys.path.insert(0, "tests")
  from update_test import _setup
  from sr2.parallel import MeshConfig, make_mesh
  from sr2.rl import update
  assert len(jax.devices()) == 4
  model, cfg, opt, batch = _setup()
  out = {}
  for name, mc, devs in [("one", MeshConfig(data=1), jax.devices()[:1]),
                         ("data4", MeshConfig(data=4), None),
                         ("data2_fsdp2", MeshConfig(data=2, fsdp=2), None),
                         ("data2_tensor2", MeshConfig(data=2, tensor=2), None),
                         ("data4_micro4", MeshConfig(data=4), None)]:
    mesh = make_mesh(mc, devices=devs)
    sh = update.make_shardings(model, opt, mesh, batch_rows=8)
    params, opt_state = update.init_sharded(model, opt, sh, jax.random.key(0))
    ref = update.reference_logprobs(model, params, jnp.asarray(batch["tokens"]))
    c = dataclasses.replace(cfg, micro_batch_rows=4) if "micro" in name else cfg
    step = update.make_update(model, c, opt, sh)
    sharded = update.put_batch({**batch, "ref_logp": ref}, sh)
    for _ in range(2):
      params, opt_state, m = step(params, opt_state, sharded)
    out[name] = (float(m["loss"]), np.asarray(params["layers"][1]["down"]))
    print(name, out[name][0], params["layers"][0]["q"].sharding.spec)
  for name in out:
    np.testing.assert_allclose(out[name][0], out["one"][0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[name][1], out["one"][1], rtol=1e-4, atol=1e-6)
  print("equal")
  """
)


def test_update_equal_across_meshes():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
    [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True, cwd=root
  )
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
  assert proc.stdout.strip().endswith("equal"), proc.stdout


def _one_device(model, opt):
  mesh = make_mesh(MeshConfig(data=1), devices=jax.devices()[:1])
  sh = update.make_shardings(model, opt, mesh, batch_rows=8)
  return sh, update.init_sharded(model, opt, sh, jax.random.key(0))


def test_epochs_and_minibatches_equal_sequential_updates():
  model, _, opt, batch = _setup()
  cfg = grpo.GRPOConfig(group_size=4, kl_coef=0.01, ppo_epochs=2, num_minibatches=2)
  one = grpo.GRPOConfig(group_size=4, kl_coef=0.01)
  sh, (params, opt_state) = _one_device(model, opt)
  batch = {
    **batch,
    "ref_logp": np.asarray(update.reference_logprobs(model, params, batch["tokens"])),
  }
  # Reference: four single updates, rows 0-3, 4-7, 0-3, 4-7 (no key: fixed order).
  p_ref, s_ref = jax.tree.map(jnp.copy, (params, opt_state))
  for half in (slice(0, 4), slice(4, 8)) * 2:
    p_ref, s_ref, _ = update.update_step(
      model, one, opt, p_ref, s_ref, {k: v[half] for k, v in batch.items()}
    )
  step = update.make_update(model, cfg, opt, sh)
  params, opt_state, m = step(params, opt_state, batch)
  np.testing.assert_allclose(
    np.asarray(params["layers"][0]["q"]), np.asarray(p_ref["layers"][0]["q"]), atol=1e-6
  )
  assert float(m["nonfinite"]) == 0


def test_minibatch_order_follows_the_key():
  model, _, opt, batch = _setup()
  cfg = grpo.GRPOConfig(group_size=4, kl_coef=0.0, num_minibatches=2)
  sh, _ = _one_device(model, opt)
  step = update.make_update(model, cfg, opt, sh)
  q = []
  for key in (jax.random.key(1), jax.random.key(1), jax.random.key(2)):
    params, opt_state = update.init_sharded(model, opt, sh, jax.random.key(0))
    params, _, _ = step(params, opt_state, batch, key)
    q.append(np.asarray(params["layers"][0]["q"]))
  np.testing.assert_array_equal(q[0], q[1])
  assert not np.array_equal(q[0], q[2])


def test_nonfinite_update_is_skipped():
  model, _, opt, batch = _setup()
  cfg = grpo.GRPOConfig(group_size=4, kl_coef=0.0, num_minibatches=2)
  sh, (params, opt_state) = _one_device(model, opt)
  before = jax.tree.map(np.asarray, (params, opt_state))
  bad = dict(batch, adv=np.where(np.arange(8) < 4, np.nan, batch["adv"]).astype(np.float32))
  params, opt_state, m = update.make_update(model, cfg, opt, sh)(params, opt_state, bad)
  assert float(m["nonfinite"]) == 1  # the first mini-batch (rows 0-3) was skipped
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves((params, opt_state)))
  # The finite mini-batch (rows 4-7) still moved the params.
  assert not np.array_equal(np.asarray(params["layers"][0]["q"]), before[0]["layers"][0]["q"])


def test_all_nonfinite_leaves_state_untouched():
  model, _, opt, batch = _setup()
  cfg = grpo.GRPOConfig(group_size=4, kl_coef=0.0)
  sh, (params, opt_state) = _one_device(model, opt)
  before = jax.tree.map(np.asarray, (params, opt_state))
  bad = dict(batch, adv=np.full(8, np.inf, np.float32))
  params, opt_state, m = update.make_update(model, cfg, opt, sh)(params, opt_state, bad)
  assert float(m["nonfinite"]) == 1
  for a, b in zip(jax.tree.leaves(before), jax.tree.leaves((params, opt_state)), strict=True):
    np.testing.assert_array_equal(a, np.asarray(b))


def _micro_case(agg: str, masks_off=(1, 5)):
  """Params, a batch with rows `masks_off` masked out, and a config with KL and entropy."""
  model, _, _, batch = _setup()
  params = models.init_params(model, jax.random.key(0))
  ref = np.asarray(update.reference_logprobs(model, params, batch["tokens"]))
  batch = {k: jnp.asarray(v) for k, v in {**batch, "ref_logp": ref + 0.05}.items()}
  for r in masks_off:
    batch["mask"] = batch["mask"].at[r].set(0)
  cfg = grpo.GRPOConfig(group_size=4, kl_coef=0.01, entropy_coef=0.01, loss_agg=agg)
  return model, params, batch, cfg


@pytest.mark.parametrize("agg", grpo.AGG_MODES)
def test_micro_batches_give_the_one_pass_loss_gradients_and_metrics(agg):
  # Rows 1 and 5 have no loss tokens: with 2-row micro-batches (rows k and k + 4), micro-
  # batch 1 is empty, which the weights and the min/max merges must ignore.
  model, params, batch, cfg = _micro_case(agg)
  loss_grads = jax.jit(update.loss_and_grads, static_argnums=(0, 1))
  (loss, metrics), grads = loss_grads(model, cfg, params, batch)
  for rows in (1, 2, 4):
    micro = dataclasses.replace(cfg, micro_batch_rows=rows)
    (loss_k, m), g = loss_grads(model, micro, params, batch)
    np.testing.assert_allclose(float(loss_k), float(loss), rtol=1e-5, atol=1e-7)
    assert set(m) == set(metrics)
    for name in metrics:
      np.testing.assert_allclose(float(m[name]), float(metrics[name]), rtol=1e-5, atol=1e-6)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(grads), strict=True):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-8)
  assert float(metrics["entropy"]) > 0 and float(metrics["kl_loss"]) > 0


def test_micro_batches_with_no_loss_tokens_keep_the_defaults():
  model, params, batch, cfg = _micro_case("seq-mean-token-mean", masks_off=range(8))
  (_, one), _ = update.loss_and_grads(model, cfg, params, batch)
  (_, micro), grads = update.loss_and_grads(
    model, dataclasses.replace(cfg, micro_batch_rows=2), params, batch
  )
  assert float(micro["ratio_mean"]) == float(one["ratio_mean"]) == 1.0
  assert float(micro["ratio_min"]) == float(one["ratio_min"]) == 1.0
  assert float(micro["loss"]) == float(one["loss"]) == 0.0
  assert all(float(jnp.abs(g).max()) == 0.0 for g in jax.tree.leaves(grads))


def test_micro_batch_rows_must_split_the_minibatch():
  model, params, batch, cfg = _micro_case("token-mean")
  with pytest.raises(ValueError, match="micro-batches of 3 rows"):
    update.loss_and_grads(model, dataclasses.replace(cfg, micro_batch_rows=3), params, batch)
  opt = make_optimizer(OptConfig(lr=1e-3))
  cfg = dataclasses.replace(cfg, num_minibatches=2, micro_batch_rows=3)
  with pytest.raises(ValueError, match="mini-batches of 4 rows do not split"):
    update.update_step(model, cfg, opt, params, opt.init(params), batch)


def test_merge_names_a_metric_without_a_rule():
  m = {"pg_loss": jnp.zeros(2), "new_metric": jnp.zeros(2)}
  with pytest.raises(KeyError, match="new_metric"):
    micro.merge_metrics(
      m, jnp.zeros(2), jnp.ones((2, 1, 3)), jnp.zeros(2), jnp.ones((2, 3)), "token-mean"
    )


def test_update_benchmark_times_each_micro_batch_size_and_they_agree(capsys):
  from sr2.benchmarks.training import update_benchmark

  rows = update_benchmark(["--batch", "4", "--length", "160", "--micro", "0,2", "--repeats", "1"])
  assert [r["micro_batch_rows"] for r in rows] == [0, 2]
  assert all(r["seconds_median"] > 0 for r in rows)
  assert rows[1]["grad_norm_rel_difference"] < 1e-5 and rows[0]["grad_norm"] > 0
  assert abs(rows[1]["loss"] - rows[0]["loss"]) < 1e-6
  assert capsys.readouterr().out.count('"benchmark": "update"') == 2


def test_compile_clock_counts_compilation_not_cached_calls():
  from sr2.benchmarks.training import CompileClock

  fn = jax.jit(lambda x: jnp.tanh(x) * 3.0 + 1.0)
  with CompileClock() as first:
    jax.block_until_ready(fn(jnp.ones(7)))
  with CompileClock() as again:
    jax.block_until_ready(fn(jnp.ones(7)))
  assert first.seconds > 0 and again.seconds == 0
  jax.block_until_ready(fn(jnp.ones(9)))  # outside the context: not counted
  assert first.seconds > 0 and again.seconds == 0


def test_micro_batch_gradients_of_bfloat16_params_are_summed_in_float32():
  model, _, batch, cfg = _micro_case("seq-mean-token-mean")
  model = dataclasses.replace(model, dtype="bfloat16")
  params = models.init_params(model, jax.random.key(0))
  (_, one), g_one = update.loss_and_grads(model, cfg, params, batch)
  micro = dataclasses.replace(cfg, micro_batch_rows=2)
  (_, m), g = update.loss_and_grads(model, micro, params, batch)
  assert all(a.dtype == jnp.bfloat16 for a in jax.tree.leaves(g))
  np.testing.assert_allclose(float(m["loss"]), float(one["loss"]), rtol=2e-2)
  for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_one), strict=True):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    assert np.abs(a - b).max() <= 0.05 * np.abs(b).max() + 1e-6


def test_reference_in_micro_passes_equals_one_pass():
  """Strided passes of 2 rows (rows k, k + 4) score each row as one pass does."""
  model, _, _, batch = _setup()
  params = models.init_params(model, jax.random.key(0))
  tokens = jnp.asarray(batch["tokens"])
  want = np.asarray(update.reference_logprobs(model, params, tokens))
  got = np.asarray(update.reference_logprobs(model, params, tokens, None, 2))
  np.testing.assert_allclose(got, want, atol=1e-6)
  chunked = np.asarray(update.reference_logprobs(model, params, tokens, 5, 4))
  np.testing.assert_allclose(chunked, want, atol=1e-6)
  with pytest.raises(ValueError, match="do not split into reference passes of 3 rows"):
    update.reference_logprobs(model, params, tokens, None, 3)
