"""GRPO math against hand-computed values (arithmetic in the comments)."""

import math

import jax
import numpy as np
import pytest

from sr2.configlib import ConfigError
from sr2.rl import grpo, logprobs

LN2 = math.log(2.0)

# Jitted once per static signature: eager op-by-op dispatch is ~5x slower on CPU.
_adv = jax.jit(grpo.group_advantages, static_argnames=("group_size", "eps", "scale_by_std"))
_policy = jax.jit(grpo.policy_loss, static_argnames=("clip_eps", "clip_eps_high", "agg"))
_kl = jax.jit(grpo.kl_penalty, static_argnames=("kind", "agg"))
_loss = jax.jit(grpo.grpo_loss, static_argnames="config")


def test_group_advantages_two_groups_and_a_flat_one():
  # Group 0: [1, 2, 3]: mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1].
  # Group 1: [0, 0, 4]: mean 4/3, deviations (-4/3, -4/3, 8/3), squares sum 96/9,
  #   /2 = 16/3, std = 4/sqrt(3) -> [-1/sqrt(3), -1/sqrt(3), 2/sqrt(3)].
  # Group 2: [0.1, 0.1, 0.1]: all equal -> exactly 0.
  rewards = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 4.0, 0.1, 0.1, 0.1], np.float32)
  adv, metrics = _adv(rewards, group_size=3, eps=0.0)
  s = 1 / math.sqrt(3)
  np.testing.assert_allclose(adv, [-1, 0, 1, -s, -s, 2 * s, 0, 0, 0], rtol=1e-6, atol=1e-7)
  assert np.all(np.asarray(adv[6:]) == 0.0)
  # Flat groups: 1 of 3.
  np.testing.assert_allclose(metrics["frac_flat_groups"], 1 / 3, rtol=1e-6)
  # Default eps=1e-6 only shrinks by std / (std + eps): group 0 -> 1 / (1 + 1e-6).
  adv_eps, _ = _adv(rewards, group_size=3)
  np.testing.assert_allclose(adv_eps[2], 1 / (1 + 1e-6), rtol=1e-7)


def test_group_advantages_dr_grpo_is_mean_centred_only():
  # R - mean: group 0 -> [-1, 0, 1]; group 1 (mean 4/3) -> [-4/3, -4/3, 8/3].
  rewards = np.array([1.0, 2.0, 3.0, 0.0, 0.0, 4.0], np.float32)
  adv, _ = _adv(rewards, group_size=3, scale_by_std=False)
  np.testing.assert_allclose(adv, [-1, 0, 1, -4 / 3, -4 / 3, 8 / 3], rtol=1e-6)


def test_group_advantages_rejects_bad_layout():
  with pytest.raises(ValueError, match="multiple"):
    grpo.group_advantages(np.zeros(5), 2)
  with pytest.raises(ValueError, match="at least 2"):
    grpo.group_advantages(np.zeros(4), 1)


def _two_by_three():
  """Ratios row 0 (A=+1): 1.5, 1.0, 0.5; row 1 (A=-1): 0.5, 1.1, masked (NaN garbage)."""
  old = np.full((2, 3), math.log(0.5), np.float32)
  logp = old + np.log(np.array([[1.5, 1.0, 0.5], [0.5, 1.1, 1.0]], np.float32))
  logp[1, 2] = np.nan
  mask = np.array([[1, 1, 1], [1, 1, 0]], np.int32)
  adv = np.array([1.0, -1.0], np.float32)
  return logp, old, adv, mask


def test_policy_loss_by_hand_both_aggregations():
  logp, old, adv, mask = _two_by_three()
  # eps = 0.2, per-token l = -min(r A, clip(r, 0.8, 1.2) A):
  # row 0, A=+1: r=1.5 -> -min(1.5, 1.2) = -1.2 (clipped); r=1 -> -1.0; r=0.5 -> -min(0.5, 0.8)
  #   = -0.5 (not clipped: A>0, r<1-eps keeps its gradient).
  # row 1, A=-1: r=0.5 -> -min(-0.5, -0.8) = 0.8 (clipped); r=1.1 -> 1.1.
  # seq-mean-token-mean: row means -2.7/3 = -0.9 and 1.9/2 = 0.95 -> (-0.9 + 0.95)/2 = 0.025.
  loss, m = _policy(logp, old, adv, mask)
  np.testing.assert_allclose(loss, 0.025, atol=1e-6)
  # token-mean: (-2.7 + 1.9) / 5 = -0.16.
  loss_tok, _ = _policy(logp, old, adv, mask, agg="token-mean")
  np.testing.assert_allclose(loss_tok, -0.16, atol=1e-6)
  # clip_frac 2/5; ratio mean (1.5+1+0.5+0.5+1.1)/5 = 0.92, min 0.5, max 1.5.
  np.testing.assert_allclose(m["clip_frac"], 0.4, atol=1e-7)
  np.testing.assert_allclose(m["ratio_mean"], 0.92, rtol=1e-6)
  np.testing.assert_allclose(m["ratio_min"], 0.5, rtol=1e-6)
  np.testing.assert_allclose(m["ratio_max"], 1.5, rtol=1e-6)
  # approx_kl = mean of r - 1 - ln r: 1.5 -> 0.5 - 0.405465 = 0.094535; 1 -> 0;
  #   0.5 -> -0.5 + 0.693147 = 0.193147 (twice); 1.1 -> 0.1 - 0.095310 = 0.004690.
  #   Sum 0.485519 / 5 = 0.0971038.
  np.testing.assert_allclose(m["approx_kl"], 0.0971038, rtol=1e-4)
  # Advantages +1, -1: mean 0, std 1.
  np.testing.assert_allclose([m["adv_mean"], m["adv_std"]], [0.0, 1.0], atol=1e-7)


def test_policy_loss_upper_clip_and_empty_rows():
  logp, old, adv, mask = _two_by_three()
  # eps_high = 0.6: r=1.5 is inside [0.8, 1.6] -> -1.5; row 0 mean (-1.5-1-0.5)/3 = -1.0;
  # (-1.0 + 0.95) / 2 = -0.025.
  loss, _ = _policy(logp, old, adv, mask, clip_eps_high=0.6)
  np.testing.assert_allclose(loss, -0.025, atol=1e-6)
  # A third row with no loss tokens is left out of the sequence mean: still 0.025.
  pad = lambda x, v: np.concatenate([x, np.full((1,) + x.shape[1:], v, x.dtype)])
  loss3, _ = _policy(pad(logp, 0.0), pad(old, 0.0), pad(adv, 5.0), pad(mask, 0))
  np.testing.assert_allclose(loss3, 0.025, atol=1e-6)


def test_kl_penalty_k3_and_k1_by_hand():
  # d = ref - logp per token: ln 2, -ln 2, 0 (third row token masked).
  # k3 = e^d - d - 1: 2 - ln2 - 1 = 0.306853; 0.5 + ln2 - 1 = 0.193147; 0.
  # Row mean (0.306853 + 0.193147 + 0) / 3 = 0.5 / 3 (the ln 2 terms cancel).
  logp = np.array([[-LN2, -LN2, -1.0, np.inf]], np.float32)
  ref = np.array([[0.0, -2 * LN2, -1.0, np.nan]], np.float32)
  mask = np.array([[1, 1, 1, 0]], np.int32)
  kl, m = _kl(logp, ref, mask)
  np.testing.assert_allclose(kl, 0.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(m["kl_max"], 1 - LN2, rtol=1e-6)
  # k1 = logp - ref: -ln2, +ln2, 0 -> mean 0.
  kl1, _ = _kl(logp, ref, mask, kind="k1")
  np.testing.assert_allclose(kl1, 0.0, atol=1e-7)
  # d = 5: e^5 - 6 = 142.4 -> clamped to verl's 10.
  kl_big, _ = _kl(np.full((1, 1), -5.0), np.zeros((1, 1)), np.ones((1, 1)))
  np.testing.assert_allclose(kl_big, grpo.K3_CLAMP)


def test_grpo_loss_gradient_zero_on_masked_tokens():
  logp, old, adv, mask = _two_by_three()
  logp[1, 2], old[1, 2] = np.inf, np.nan
  ref = logp.copy()  # ref = logp on loss tokens: k3 gradient 1 - e^0 = 0.
  ref[1, 2] = -np.inf
  config = grpo.GRPOConfig(group_size=2)
  grad_fn = jax.jit(jax.grad(lambda lp: grpo.grpo_loss(lp, old, ref, adv, mask, config)[0]))
  grad = grad_fn(logp)
  assert np.all(np.isfinite(grad))
  assert grad[1, 2] == 0.0
  # d l / d logp = -A r where unclipped, 0 where clipped, scaled by 1 / (L_i * num_rows):
  # row 0: r=1.5 clipped -> 0; r=1 -> -1 / (3*2) = -1/6; r=0.5 -> -0.5/6 = -1/12.
  # row 1: r=0.5 clipped -> 0; r=1.1 -> +1.1 / (2*2) = 0.275.
  np.testing.assert_allclose(grad, [[0, -1 / 6, -1 / 12], [0, 0.275, 0]], atol=1e-6)


def test_grpo_loss_adds_kl_and_jits():
  logp, old, adv, mask = _two_by_three()
  ref = old  # k3 with d = -ln r per token.
  config = grpo.GRPOConfig(group_size=2, kl_coef=0.5)
  loss, m = _loss(logp, old, ref, adv, mask, config=config)
  eager, _ = grpo.grpo_loss(logp, old, ref, adv, mask, config)
  np.testing.assert_allclose(loss, eager, rtol=1e-6)
  np.testing.assert_allclose(loss, m["pg_loss"] + 0.5 * m["kl_loss"], rtol=1e-6)
  assert set(m) >= {"loss", "pg_loss", "kl_loss", "clip_frac", "approx_kl"}
  with pytest.raises(ValueError, match="ref_logp"):
    grpo.grpo_loss(logp, old, None, adv, mask, config)
  no_kl = grpo.GRPOConfig(group_size=2, kl_coef=0.0, entropy_coef=0.1)
  loss_ent, m_ent = _loss(logp, old, None, adv, mask, config=no_kl, entropy=2.0)
  # 0.025 - 0.1 * 2 = -0.175.
  np.testing.assert_allclose(loss_ent, -0.175, atol=1e-6)
  assert "kl_loss" not in m_ent and m_ent["entropy"] == 2.0


def test_masked_mean_all_zero_mask():
  x = np.array([[1.0, np.nan], [np.inf, 3.0]], np.float32)
  zero = np.zeros((2, 2), np.float32)
  assert grpo.masked_mean(x, zero) == 0.0
  assert grpo.masked_sum(x, zero) == 0.0
  np.testing.assert_array_equal(grpo.masked_mean(x, zero, axis=-1), [0.0, 0.0])
  # Mask [[1,0],[0,1]]: (1 + 3) / 2 = 2.
  assert grpo.masked_mean(x, np.eye(2)) == 2.0


def test_entropy_and_token_logprobs():
  # Row 0: uniform over 4 -> ln 4; row 1: two -inf logits -> uniform over 2 -> ln 2.
  # Masked mean over both: (ln 4 + ln 2) / 2 = 1.5 ln 2.
  logits = np.array([[[0.0, 0.0, 0.0, 0.0]], [[1.0, 1.0, -np.inf, -np.inf]]], np.float32)
  mask = np.ones((2, 1), np.float32)
  mean_entropy = lambda lg, m: grpo.masked_mean(logprobs.token_entropy(lg, m), m)
  ent, grad = jax.jit(jax.value_and_grad(mean_entropy))(logits, mask)
  np.testing.assert_allclose(ent, 1.5 * LN2, rtol=1e-6)
  assert np.all(np.isfinite(grad))
  # logits (0, ln 3): softmax (1/4, 3/4); log p of target 1 = ln 0.75, of target 0 = ln 0.25.
  lg = np.array([[[0.0, math.log(3.0)], [0.0, math.log(3.0)]]], np.float32)
  lp = jax.jit(logprobs.target_logprobs)(lg, np.array([[1, 0]]))
  np.testing.assert_allclose(lp, [[math.log(0.75), math.log(0.25)]], rtol=1e-6)


def test_config_validation_and_group_advantages_jit():
  assert grpo.GRPOConfig().group_size == 5 and grpo.GRPOConfig().kl_coef == 0.001
  for bad in (
    dict(group_size=1),
    dict(loss_agg="sum"),
    dict(kl_kind="k2"),
    dict(clip_eps=0.0),
    dict(kl_coef=-1.0),
    dict(micro_batch_rows=-1),
    dict(micro_batch_rows=2.0),
  ):
    with pytest.raises(ConfigError):
      grpo.GRPOConfig(**bad)
  adv, _ = _adv(np.array([0.0, 1.0], np.float32), group_size=2)
  # [0, 1]: mean 0.5, sample std sqrt(0.5) -> -+0.5 / 0.70711 = -+0.70711.
  np.testing.assert_allclose(adv, [-math.sqrt(0.5), math.sqrt(0.5)], rtol=1e-5)
