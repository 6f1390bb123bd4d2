"""The RL algorithm as small pure functions: GRPO math, log-probs, batches, the update.

  grpo.py      advantages, the clipped policy loss, the KL penalty, aggregation (Eq. 2)
  logprobs.py  per-token log-probs and entropy (plain or with a chunked LM head)
  micro.py     the loss over micro-batches, equal to the loss of their union
  batch.py     the padded host batch: trajectories plus the refiner's decision rows
  update.py    the jitted, sharded optimizer step (PPO epochs x mini-batches)
  optim.py     the optax chain
  drivers.py   the paper's three drivers of the Meta-Refiner's gain

The experiment around it (the training loop, collection, SFT, tasks) is `sr2.train`.
"""

from sr2.rl.grpo import (
  AGG_MODES,
  KL_KINDS,
  GRPOConfig,
  aggregate,
  group_advantages,
  grpo_loss,
  kl_penalty,
  masked_mean,
  masked_sum,
  policy_loss,
)
from sr2.rl.logprobs import target_logprobs, token_entropy, token_logprobs

__all__ = [
  "AGG_MODES",
  "KL_KINDS",
  "GRPOConfig",
  "aggregate",
  "group_advantages",
  "grpo_loss",
  "kl_penalty",
  "masked_mean",
  "masked_sum",
  "policy_loss",
  "target_logprobs",
  "token_entropy",
  "token_logprobs",
]
