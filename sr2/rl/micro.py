"""A GRPO loss over K micro-batches that equals the loss of their union.

`update.loss_and_grads` runs the forward and backward pass on slices of a mini-batch's
rows and sums the results. Each slice's `grpo.grpo_loss` is a mean over its own rows or
tokens, so the sum needs weights (`weights`), a per-slice objective built from the slice's
metrics (`objective`), and a rule per metric to merge the slices' metrics (`MERGE`,
`merge_metrics`). With them loss, gradients and metrics are those of one pass over the
union, up to float reassociation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from sr2.rl import grpo
from sr2.rl.grpo import GRPOConfig, Metrics

# How each `grpo_loss` metric of K micro-batches combines into that of their union:
# "w": weighted by the micro-batches' shares of the aggregation (`weights`), "u": by
# their shares of masked tokens, "min"/"max" over micro-batches that have masked tokens,
# "adv": recomputed on the union (it does not depend on the params), "loss": the summed
# objective. Exact up to float reassociation.
MERGE = {
  "pg_loss": "w",
  "kl_loss": "w",
  "loss": "loss",
  "clip_frac": "u",
  "approx_kl": "u",
  "ratio_mean": "u",
  "entropy": "u",
  "ratio_min": "min",
  "ratio_max": "max",
  "kl_max": "max",
  "adv_mean": "adv",
  "adv_std": "adv",
}


def weights(mask_KxBxT: jax.Array, agg: str) -> tuple[jax.Array, jax.Array]:
  """(w [K], u [K]): what each of K micro-batches weighs in the loss of their union.

  The union's aggregate is Σ_k w_k · aggregate_k (the policy loss and the KL term), and
  its masked token mean is Σ_k u_k · token_mean_k (the entropy): u_k is micro-batch k's
  share of the masked tokens; w_k equals u_k under "token-mean", and under
  "seq-mean-token-mean" is its share of the rows that have masked tokens.
  """
  m = mask_KxBxT != 0
  tokens_K = jnp.sum(m, axis=(1, 2)).astype(jnp.float32)
  u_K = tokens_K / jnp.maximum(tokens_K.sum(), 1.0)
  if agg == "token-mean":
    return u_K, u_K
  if agg == "seq-mean-token-mean":
    rows_K = jnp.sum(jnp.any(m, axis=-1), axis=-1).astype(jnp.float32)
    return rows_K / jnp.maximum(rows_K.sum(), 1.0), u_K
  raise ValueError(f"agg={agg!r}; expected one of {grpo.AGG_MODES}")


def objective(metrics: Metrics, w: jax.Array, u: jax.Array, config: GRPOConfig) -> jax.Array:
  """Micro-batch k's term of the union's loss: w_k (L_clip + β KL) − c_ent u_k H.

  Summed over the micro-batches (values and gradients), this is `grpo_loss` of the union.
  """
  out = w * metrics["pg_loss"]
  if "kl_loss" in metrics:
    out = out + w * config.kl_coef * metrics["kl_loss"]
  if config.entropy_coef > 0:
    out = out - config.entropy_coef * u * metrics["entropy"]
  return out


def merge_metrics(
  metrics_K: Metrics,
  objective_K: jax.Array,
  mask_KxBxT: jax.Array,
  adv_B: jax.Array,
  mask_BxT: jax.Array,
  agg: str,
) -> Metrics:
  """The union's `grpo_loss` metrics from K micro-batches' (values stacked on axis 0).

  `adv_B` and `mask_BxT` are the union's (for the advantage stats). A metric missing from
  `MERGE` raises: each one must say how it combines.
  """
  unknown = sorted(set(metrics_K) - set(MERGE))
  if unknown:
    raise KeyError(f"micro.MERGE does not say how to merge the metrics {unknown}")
  w_K, u_K = weights(mask_KxBxT, agg)
  has_K = jnp.any(mask_KxBxT != 0, axis=(1, 2))
  any_token = jnp.any(has_K)
  adv = grpo.advantage_stats(adv_B, mask_BxT)
  out = {}
  for name, v_K in metrics_K.items():
    rule = MERGE[name]
    if rule == "w":
      out[name] = jnp.sum(w_K * v_K)
    elif rule == "u":  # with no masked token anywhere, every micro-batch holds the default
      out[name] = jnp.where(any_token, jnp.sum(u_K * v_K), v_K[0])
    elif rule == "min":
      out[name] = jnp.where(any_token, jnp.min(jnp.where(has_K, v_K, jnp.inf)), v_K[0])
    elif rule == "max":
      out[name] = jnp.where(any_token, jnp.max(jnp.where(has_K, v_K, -jnp.inf)), v_K[0])
    elif rule == "adv":
      out[name] = adv[name]
    else:
      out[name] = jnp.sum(objective_K)
  return out
