"""Joint optimisation's gradient balance: hand arithmetic, and the two gradients apart."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sr2 import models
from sr2.configlib import ConfigError
from sr2.rl import balance, grpo, update
from sr2.rl import batch as batch_lib

G_ACTOR = {"w": jnp.asarray([3.0, 0.0]), "b": jnp.asarray([4.0])}  # norm 5
G_DECISION = {"w": jnp.asarray([0.0, 24.0]), "b": jnp.asarray([18.0])}  # norm 30


@pytest.mark.parametrize(
  ("how", "scale", "w", "b", "s_a", "s_d"),
  [
    ("none", 1.0, [3.0, 24.0], [22.0], 1.0, 1.0),
    # Each clipped to norm 1 on its own: 1/5 of the Actor's, 1/30 of the decisions'.
    ("clip", 1.0, [0.6, 0.8], [0.8 + 0.6], 0.2, 1 / 30),
    ("clip", 10.0, [3.0, 8.0], [4.0 + 6.0], 1.0, 1 / 3),
    # The decisions' norm at most 0.5 x 5 = 2.5: 2.5/30 = 1/12 of it.
    ("ratio", 0.5, [3.0, 2.0], [4.0 + 1.5], 1.0, 1 / 12),
    ("ratio", 10.0, [3.0, 24.0], [22.0], 1.0, 1.0),  # 30 <= 50: left as it is
  ],
)
def test_combine_by_hand(how, scale, w, b, s_a, s_d):
  g, m = balance.combine(G_ACTOR, G_DECISION, how, scale)
  np.testing.assert_allclose(g["w"], w, rtol=1e-6)
  np.testing.assert_allclose(g["b"], b, rtol=1e-6)
  np.testing.assert_allclose([m["grad_norm_actor"], m["grad_norm_decision"]], [5.0, 30.0])
  np.testing.assert_allclose([m["actor_grad_scale"], m["decision_grad_scale"]], [s_a, s_d])


def test_combine_with_no_decision_rows_and_a_bad_mode():
  zero = jax.tree.map(jnp.zeros_like, G_DECISION)
  g, m = balance.combine(G_ACTOR, zero, "ratio", 0.5)
  np.testing.assert_allclose(g["w"], [3.0, 0.0])
  assert float(m["decision_grad_scale"]) == 1.0
  with pytest.raises(ValueError, match="decision_balance='mean'"):
    balance.combine(G_ACTOR, zero, "mean", 1.0)


def _joint_case():
  """A tiny model and 8 rows with KL, row 5 without loss tokens, rows 2 and 6 decisions
  (one trained token each, as a refiner's decision row)."""
  model = models.preset("tiny")
  params = models.init_params(model, jax.random.key(0))
  rng = np.random.default_rng(0)
  prompts = [rng.integers(0, 256, 5).tolist() for _ in range(8)]
  responses = [rng.integers(0, 256, n).tolist() for n in (3, 7, 1, 9, 2, 6, 1, 5)]
  masks = [(rng.random(len(r)) < 0.7).astype(int).tolist() for r in responses]
  masks[2], masks[5], masks[6] = [1], [0] * 6, [1]
  logps = [
    (-rng.random(len(r)) * np.asarray(m)).tolist() for r, m in zip(responses, masks, strict=True)
  ]
  adv, _ = grpo.group_advantages(jnp.asarray([1, 0, 0, 1, 2, 1, 1, 0], jnp.float32), 4)
  batch = batch_lib.policy_batch(prompts, responses, masks, logps, np.asarray(adv), 0, 16)
  ref = np.asarray(update.reference_logprobs(model, params, jnp.asarray(batch["tokens"])))
  batch = {k: jnp.asarray(v) for k, v in {**batch, "ref_logp": ref + 0.05}.items()}
  batch["decision"] = jnp.zeros(8).at[jnp.asarray([2, 6])].set(1.0)
  return model, params, batch, grpo.GRPOConfig(group_size=4, kl_coef=0.01)


def _part_grads(model, params, batch, cfg, rows):
  """Gradient of the whole batch's loss with only `rows`' tokens counted, times their
  share of the rows with tokens (seq-mean-token-mean): that part of the loss."""
  mask = batch["mask"] * jnp.zeros(8).at[jnp.asarray(rows)].set(1.0)[:, None].astype(jnp.int32)
  part = {**batch, "mask": mask}
  del part["decision"]
  with_tokens = lambda m: float(jnp.sum(jnp.any(m != 0, axis=-1)))
  share = with_tokens(mask) / with_tokens(batch["mask"])
  (_, _), g = update.loss_and_grads(
    model, dataclasses.replace(cfg, decision_balance="none"), params, part
  )
  return jax.tree.map(lambda x: share * x, g)


@pytest.mark.parametrize("micro_rows", [0, 2, 4])
@pytest.mark.parametrize(("how", "scale"), [("clip", 0.001), ("clip", 0.01), ("ratio", 0.05)])
def test_grouped_gradients_are_the_parts_of_the_loss(how, scale, micro_rows):
  model, params, batch, cfg = _joint_case()
  g_a = _part_grads(model, params, batch, cfg, [0, 1, 3, 4, 5, 7])
  g_d = _part_grads(model, params, batch, cfg, [2, 6])
  want, want_m = balance.combine(g_a, g_d, how, scale)
  cfg = dataclasses.replace(cfg, decision_balance=how, decision_balance_scale=scale)
  cfg = dataclasses.replace(cfg, micro_batch_rows=micro_rows)
  (loss, m), got = jax.jit(update.loss_and_grads, static_argnums=(0, 1))(model, cfg, params, batch)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-8)
  for k in ("grad_norm_actor", "grad_norm_decision", "decision_grad_scale"):
    np.testing.assert_allclose(float(m[k]), float(want_m[k]), rtol=1e-4)
  assert float(want_m["decision_grad_scale"]) < 1.0 or float(want_m["actor_grad_scale"]) < 1.0
  # The loss and its metrics are the batch's, as without balancing.
  plain = dataclasses.replace(cfg, decision_balance="none")
  (loss0, m0), _ = update.loss_and_grads(model, plain, params, batch)
  np.testing.assert_allclose(float(loss), float(loss0), rtol=1e-5, atol=1e-7)
  for name in m0:
    np.testing.assert_allclose(float(m[name]), float(m0[name]), rtol=1e-5, atol=1e-6)


def test_balance_config_is_checked():
  with pytest.raises(ConfigError, match="decision_balance"):
    grpo.GRPOConfig(decision_balance="mean")
  with pytest.raises(ConfigError, match="decision_balance_scale=0"):
    grpo.GRPOConfig(decision_balance="clip", decision_balance_scale=0)
  with pytest.raises(ConfigError, match="needs grpo.entropy_coef=0"):
    grpo.GRPOConfig(decision_balance="clip", entropy_coef=0.01)
