"""RL: GRPO math, optimiser and supervised warm start."""

from sr2.rl.grpo import (
  AGG_MODES,
  KL_KINDS,
  GRPOConfig,
  aggregate,
  entropy_from_logits,
  group_advantages,
  grpo_loss,
  kl_penalty,
  masked_mean,
  masked_sum,
  policy_loss,
  token_logprobs,
)

__all__ = [
  "AGG_MODES",
  "KL_KINDS",
  "GRPOConfig",
  "aggregate",
  "entropy_from_logits",
  "group_advantages",
  "grpo_loss",
  "kl_penalty",
  "masked_mean",
  "masked_sum",
  "policy_loss",
  "token_logprobs",
]
