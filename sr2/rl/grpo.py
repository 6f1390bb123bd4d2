"""GRPO math (the paper's §2.3, Eq. 2): group advantages, clipped surrogate, k3 KL, entropy.

Small pure jnp functions, all jit-able. Shapes: B sequences, T tokens, V vocab, G group
size. Masks are 0/1 (any nonzero counts as 1): 1 on tokens the model wrote, 0 on prompt,
retrieved/feedback and padding tokens. Masked-out entries never reach a result or a
gradient, even when they hold garbage (inf/NaN), because inputs are zeroed with
`jnp.where` before any arithmetic.

Batch layout for advantages: rows b*G .. b*G+G-1 are the G samples of prompt b.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from sr2.configlib import ConfigError, check_choices, check_ints
from sr2.rl.balance import BALANCES

AGG_MODES = ("seq-mean-token-mean", "token-mean")
KL_KINDS = ("k1", "k3")
K3_CLAMP = 10.0  # verl's low_var_kl clamps the per-token k3 value to [-10, 10].
_LOG_RATIO_CLAMP = 20.0  # exp(±20) stays finite in float32; verl clamps the same way.

Metrics = dict[str, jax.Array]


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """sum(x * m) over `axis`, ignoring masked entries even if they are not finite."""
  return jnp.sum(jnp.where(mask != 0, x, 0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """sum(x * m) / max(sum(m), 1): 0 (finite) where the mask is all zero."""
  count = jnp.sum((mask != 0).astype(jnp.float32), axis=axis)
  return masked_sum(x, mask, axis) / jnp.maximum(count, 1.0)


def aggregate(loss_BxT: jax.Array, mask_BxT: jax.Array, agg: str) -> jax.Array:
  """Reduces per-token values to a scalar.

  seq-mean-token-mean (Eq. 2): (1/|S|) Σ_{i∈S} (1/L_i) Σ_t m_it x_it, S = rows with L_i > 0.
  token-mean: Σ_it m_it x_it / Σ_it m_it.
  """
  if agg == "token-mean":
    return masked_mean(loss_BxT, mask_BxT)
  if agg == "seq-mean-token-mean":
    seq_B = masked_mean(loss_BxT, mask_BxT, axis=-1)
    has_tokens_B = jnp.any(mask_BxT != 0, axis=-1)
    return masked_mean(seq_B, has_tokens_B)
  raise ValueError(f"agg={agg!r}; expected one of {AGG_MODES}")


def group_advantages(
  rewards_B: jax.Array, group_size: int, *, eps: float = 1e-6, scale_by_std: bool = True
) -> tuple[jax.Array, Metrics]:
  """GRPO advantages, one per sequence, normalised within each prompt's group of G rows.

  Â_i = (R_i − mean_g R) / (std_g R + eps)   (GRPO; scale_by_std=True)
  Â_i =  R_i − mean_g R                      (Dr.GRPO; scale_by_std=False)

  std is the *sample* std (ddof=1, Bessel-corrected), as verl's torch.std and TRL's
  `.std()` compute it. A group whose rewards are all equal gets exactly 0.

  Args:
    rewards_B: [B] rewards, B = num_prompts * G, rows b*G..b*G+G-1 one prompt's group.
    group_size: G >= 2 (static).
    eps: added to the std.
    scale_by_std: divide by the group std (GRPO) or not (Dr.GRPO).

  Returns:
    (advantages [B] float32, metrics).
  """
  if group_size < 2:
    raise ValueError(f"group_size={group_size}; GRPO needs at least 2 samples per prompt")
  (b,) = rewards_B.shape
  if b % group_size:
    raise ValueError(f"batch of {b} rewards is not a multiple of group_size={group_size}")
  r_NxG = rewards_B.astype(jnp.float32).reshape(-1, group_size)
  mean_N1 = jnp.mean(r_NxG, axis=1, keepdims=True)
  std_N1 = jnp.std(r_NxG, axis=1, keepdims=True, ddof=1)
  adv_NxG = r_NxG - mean_N1
  if scale_by_std:
    adv_NxG = adv_NxG / (std_N1 + eps)
  # Exact zero for all-equal groups: a rounded mean would otherwise leave ~ulp/eps noise.
  flat_N1 = jnp.max(r_NxG, axis=1, keepdims=True) == jnp.min(r_NxG, axis=1, keepdims=True)
  adv_NxG = jnp.where(flat_N1, 0.0, adv_NxG)
  metrics = {
    "reward_mean": jnp.mean(r_NxG),
    "reward_min": jnp.min(r_NxG),
    "reward_max": jnp.max(r_NxG),
    "reward_group_std": jnp.mean(std_N1),
    "frac_flat_groups": jnp.mean(flat_N1.astype(jnp.float32)),
  }
  return adv_NxG.reshape(b), metrics


def policy_loss(
  logp_BxT: jax.Array,
  old_logp_BxT: jax.Array,
  adv_B: jax.Array,
  mask_BxT: jax.Array,
  *,
  clip_eps: float = 0.2,
  clip_eps_high: float | None = None,
  agg: str = "seq-mean-token-mean",
) -> tuple[jax.Array, Metrics]:
  """PPO clipped surrogate with one advantage per sequence (Eq. 2 without the KL term).

  r_it = exp(logp_it − old_logp_it)
  ℓ_it = −min(r_it Â_i, clip(r_it, 1−ε, 1+ε_high) Â_i),  ε_high = ε unless given
  loss = aggregate(ℓ, m, agg)

  Metrics: clip_frac = fraction of masked tokens where the clipped term is the smaller
  (the gradient is cut there); approx_kl = masked mean of k3 = (r−1) − log r, which
  estimates KL(π_old ‖ π_θ) on samples from π_old; ratio mean/min/max over masked tokens
  (1 when there are none); adv mean/std over rows with at least one masked token.
  old_logp and adv are treated as constants (stop_gradient).
  """
  eps_high = clip_eps if clip_eps_high is None else clip_eps_high
  m = mask_BxT != 0
  logp = jnp.where(m, logp_BxT.astype(jnp.float32), 0.0)
  old = jnp.where(m, jax.lax.stop_gradient(old_logp_BxT).astype(jnp.float32), 0.0)
  adv_Bx1 = jax.lax.stop_gradient(adv_B).astype(jnp.float32)[:, None]
  log_ratio = jnp.clip(logp - old, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * adv_Bx1
  clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + eps_high) * adv_Bx1
  loss_BxT = -jnp.minimum(unclipped, clipped)
  loss = aggregate(loss_BxT, m, agg)

  any_token = jnp.any(m)
  metrics = {
    "pg_loss": loss,
    "clip_frac": masked_mean((clipped < unclipped).astype(jnp.float32), m),
    "approx_kl": masked_mean(ratio - 1.0 - log_ratio, m),
    "ratio_mean": jnp.where(any_token, masked_mean(ratio, m), 1.0),
    "ratio_min": jnp.where(any_token, jnp.min(jnp.where(m, ratio, jnp.inf)), 1.0),
    "ratio_max": jnp.where(any_token, jnp.max(jnp.where(m, ratio, -jnp.inf)), 1.0),
    **advantage_stats(adv_B, m),
  }
  return loss, metrics


def advantage_stats(adv_B: jax.Array, mask_BxT: jax.Array) -> Metrics:
  """adv mean and std over the rows with at least one masked token."""
  has_tokens_B = jnp.any(mask_BxT != 0, axis=-1)
  adv_mean = masked_mean(adv_B, has_tokens_B)
  adv_var = masked_mean(jnp.square(adv_B - adv_mean), has_tokens_B)
  return {"adv_mean": adv_mean, "adv_std": jnp.sqrt(adv_var)}


def kl_penalty(
  logp_BxT: jax.Array,
  ref_logp_BxT: jax.Array,
  mask_BxT: jax.Array,
  *,
  kind: str = "k3",
  agg: str = "seq-mean-token-mean",
) -> tuple[jax.Array, Metrics]:
  """Per-token estimate of KL(π_θ ‖ π_ref), aggregated like the policy loss.

  k3 ("low_var_kl"): d = ref − logp (clamped to ±20), kl = clip(exp(d) − d − 1, −10, 10)
  k1:                kl = logp − ref
  The ±10 clamp is verl's (K3_CLAMP); k3 >= 0, so only the upper bound ever acts, and it
  zeroes the gradient of tokens whose KL already exceeds 10. ref_logp is a constant.
  """
  m = mask_BxT != 0
  logp = jnp.where(m, logp_BxT.astype(jnp.float32), 0.0)
  ref = jnp.where(m, jax.lax.stop_gradient(ref_logp_BxT).astype(jnp.float32), 0.0)
  if kind == "k3":
    d = jnp.clip(ref - logp, -_LOG_RATIO_CLAMP, _LOG_RATIO_CLAMP)
    kl_BxT = jnp.clip(jnp.exp(d) - d - 1.0, -K3_CLAMP, K3_CLAMP)
  elif kind == "k1":
    kl_BxT = logp - ref
  else:
    raise ValueError(f"kind={kind!r}; expected one of {KL_KINDS}")
  loss = aggregate(kl_BxT, m, agg)
  kl_max = jnp.where(jnp.any(m), jnp.max(jnp.where(m, kl_BxT, -jnp.inf)), 0.0)
  return loss, {"kl_loss": loss, "kl_max": kl_max}


NONFINITE_POLICIES = ("skip", "stop")


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """GRPO hyperparameters (the paper's §4; ε is not reported, verl's default 0.2)."""

  group_size: int = 5  # G rollouts per prompt
  clip_eps: float = 0.2  # lower (and default upper) clip range ε
  clip_eps_high: float | None = None  # DAPO-style upper range; None = clip_eps
  kl_coef: float = 0.001  # β on the KL loss term (not in the reward)
  kl_kind: str = "k3"  # "k3" (verl low_var_kl) | "k1"
  loss_agg: str = "seq-mean-token-mean"  # Eq. 2 | "token-mean"
  scale_by_std: bool = True  # False = Dr.GRPO advantages
  adv_eps: float = 1e-6  # added to the group std
  entropy_coef: float = 0.0  # paper: entropy bonus disabled
  ppo_epochs: int = 1  # passes over each step's rollouts (paper, inferred: 1)
  num_minibatches: int = 1  # optimizer updates per pass (paper, inferred: 1)
  nonfinite: str = "skip"  # a NaN/Inf loss or gradient: "skip" the update, or "stop"
  logprob_chunk: int = 0  # positions per chunk of the LM head in the loss; 0 = unchunked
  micro_batch_rows: int = 0  # rows per forward/backward pass, gradients summed; 0 = all
  # Joint optimisation: how the Actor's and the decisions' gradients combine (rl/balance.py):
  # "none" (their sum, the paper) | "clip" (each clipped to the scale) | "ratio" (decisions
  # at most scale x the Actor's norm).
  decision_balance: str = "none"
  decision_balance_scale: float = 1.0

  def __post_init__(self):
    check_ints(self, "grpo", ("group_size",), minimum=2)
    if not 0 < self.clip_eps < 1:
      raise ConfigError(f"grpo.clip_eps={self.clip_eps}; expected 0 < clip_eps < 1")
    if self.clip_eps_high is not None and not self.clip_eps_high > 0:
      raise ConfigError(f"grpo.clip_eps_high={self.clip_eps_high}; expected > 0 or None")
    if not self.kl_coef >= 0:
      raise ConfigError(f"grpo.kl_coef={self.kl_coef}; expected >= 0")
    choices = {"kl_kind": KL_KINDS, "loss_agg": AGG_MODES, "nonfinite": NONFINITE_POLICIES}
    choices["decision_balance"] = BALANCES
    check_choices(self, "grpo", choices)
    if not self.adv_eps > 0:
      raise ConfigError(f"grpo.adv_eps={self.adv_eps}; expected > 0")
    if not self.entropy_coef >= 0:
      raise ConfigError(f"grpo.entropy_coef={self.entropy_coef}; expected >= 0")
    check_ints(self, "grpo", ("ppo_epochs", "num_minibatches"))
    mb = self.micro_batch_rows
    if not isinstance(mb, int) or isinstance(mb, bool) or mb < 0:
      raise ConfigError(
        f"grpo.micro_batch_rows={mb!r}; expected an integer >= 0 (0 = the whole mini-batch)"
      )
    if self.logprob_chunk < 0:
      raise ConfigError(f"grpo.logprob_chunk={self.logprob_chunk}; expected >= 0 (0 = off)")
    if not self.decision_balance_scale > 0:
      raise ConfigError(f"grpo.decision_balance_scale={self.decision_balance_scale}; expected > 0")
    if self.decision_balance != "none" and self.entropy_coef:
      raise ConfigError(
        f"grpo.decision_balance={self.decision_balance!r} needs grpo.entropy_coef=0: the "
        "entropy bonus is a mean over all rows, not split between the two gradients"
      )


def grpo_loss(
  logp_BxT: jax.Array,
  old_logp_BxT: jax.Array,
  ref_logp_BxT: jax.Array | None,
  adv_B: jax.Array,
  mask_BxT: jax.Array,
  config: GRPOConfig,
  *,
  entropy: jax.Array | None = None,
) -> tuple[jax.Array, Metrics]:
  """Negated Eq. 2: loss = L_clip + β · KL(π_θ ‖ π_ref) − c_ent · H.

  ref_logp may be None only when config.kl_coef == 0 (no reference forward pass).
  `entropy` is a scalar, the masked mean of `logprobs.token_entropy` (it needs the full
  logits, which this function does not see); it enters the loss only if entropy_coef > 0,
  and is logged whenever given.
  """
  loss, metrics = policy_loss(
    logp_BxT,
    old_logp_BxT,
    adv_B,
    mask_BxT,
    clip_eps=config.clip_eps,
    clip_eps_high=config.clip_eps_high,
    agg=config.loss_agg,
  )
  if ref_logp_BxT is not None:
    kl, kl_metrics = kl_penalty(
      logp_BxT, ref_logp_BxT, mask_BxT, kind=config.kl_kind, agg=config.loss_agg
    )
    loss = loss + config.kl_coef * kl
    metrics |= kl_metrics
  elif config.kl_coef > 0:
    raise ValueError(f"kl_coef={config.kl_coef} > 0 needs ref_logp")
  if entropy is not None:
    metrics["entropy"] = entropy
    if config.entropy_coef > 0:
      loss = loss - config.entropy_coef * entropy
  elif config.entropy_coef > 0:
    raise ValueError(f"entropy_coef={config.entropy_coef} > 0 needs entropy")
  metrics["loss"] = loss
  return loss, metrics
