"""One GRPO batch from trajectories and, under joint optimisation, the refiner's decisions.

Alignment (`policy_batch`): a row is `prompt + response` right-padded to T tokens.
Position t of every [B, T-1] array is about predicting token t + 1, so the loss mask and
the sampler's log-probs (which sit on the sampled token) move one place left. Prompt,
observation and padding targets have mask 0.

Joint optimisation (the paper's §2.3; the row format is this codebase's reading): each
Meta-Refiner judgement is an extra (prompt, response) sample: the refiner prompt, and the
one token it emitted ("0" when it accepted, "j" when it flagged step j). It carries the
group-normalised advantage Â_i of the final trajectory i it produced, so a bad accept or a
bad cut is pushed down exactly as the Actor's tokens of that trajectory are. Its old
log-prob is the one the judgement computed. `decision_weight` (refiner.decision_weight,
beyond the paper) multiplies that advantage; as the clipped surrogate is linear in the
advantage, it scales the row's policy-gradient term (not its KL term) by the same factor.

The batch has a fixed number of rows, `rows`, so the jitted update compiles once: unused
rows are padding with an all-zero mask (no loss, no KL, no count in seq-mean).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sr2.agent.refiner import Decision
from sr2.agent.rollout import Trajectory
from sr2.sampling import bucket

BATCH_BUCKETS = (256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def policy_batch(
  prompts: Sequence[Sequence[int]],
  responses: Sequence[Sequence[int]],
  loss_masks: Sequence[Sequence[int]],
  logprobs: Sequence[Sequence[float]],
  advantages: Sequence[float],
  pad_id: int,
  length: int,
) -> dict[str, np.ndarray]:
  """Host arrays of one update: tokens [B, T]; mask, old_logp [B, T-1]; adv [B]."""
  b = len(prompts)
  tokens = np.full((b, length), pad_id, np.int32)
  mask = np.zeros((b, length - 1), np.int32)
  old_logp = np.zeros((b, length - 1), np.float32)
  for i, (p, r, m, lp) in enumerate(zip(prompts, responses, loss_masks, logprobs, strict=True)):
    n = len(p) + len(r)
    if n > length:
      raise ValueError(f"row {i} has {n} tokens; the batch length is {length}")
    if not len(r) == len(m) == len(lp):
      raise ValueError(f"row {i}: response, loss mask and log-probs differ in length")
    tokens[i, :n] = [*p, *r]
    # Target index t predicts token t + 1: response token j sits at t = len(p) + j - 1.
    mask[i, len(p) - 1 : n - 1] = m
    old_logp[i, len(p) - 1 : n - 1] = lp
  return {
    "tokens": tokens,
    "mask": mask,
    "old_logp": old_logp,
    "adv": np.asarray(advantages, np.float32),
  }


def decision_samples(
  decisions: Sequence[Sequence[Decision]], advantages: Sequence[float], weight: float = 1.0
) -> list[tuple[list[int], list[int], list[int], list[float], float]]:
  """(prompt, response, mask, old log-probs, weight · advantage) per decision, in row order."""
  if len(decisions) != len(advantages):
    raise ValueError(f"{len(decisions)} decision lists for {len(advantages)} advantages")
  out = []
  for ds, adv in zip(decisions, advantages, strict=True):
    for d in ds:
      out.append((list(d.prompt_ids), [d.token], [1], [d.logprob], weight * float(adv)))
  return out


def assemble_batch(
  trajectories: Sequence[Trajectory],
  advantages: Sequence[float],
  decisions: Sequence[Sequence[Decision]] | None,
  *,
  rows: int,
  pad_id: int,
  buckets: Sequence[int] = BATCH_BUCKETS,
  decision_weight: float = 1.0,
  length: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, float]]:
  """The host batch of one update (`policy_batch` layout) and its composition.

  With `decisions` the batch also holds "decision" [rows]: 1.0 on the decision rows.

  Args:
    trajectories: the final trajectories, one per rollout row.
    advantages: their advantages.
    decisions: per row, the refiner's decisions to train on (joint optimisation), or None.
    rows: the batch's row count (>= trajectories + decisions); the rest is padding.
    pad_id: the padding token.
    buckets: the token length is the smallest bucket holding the longest row.
    decision_weight: multiplies the decisions' advantages (refiner.decision_weight).
    length: the token length instead of the bucket (processes that assemble their own rows
      of one batch agree on the longest of their buckets).
  """
  samples = [
    (t.prompt_ids, t.response_ids, t.loss_mask, t.logprobs, float(a))
    for t, a in zip(trajectories, advantages, strict=True)
  ]
  if decisions is not None:
    samples += decision_samples(decisions, advantages, decision_weight)
  if len(samples) > rows:
    raise ValueError(f"{len(samples)} samples exceed the batch's {rows} rows")
  n_real = len(samples)
  samples += [([pad_id], [], [], [], 0.0)] * (rows - n_real)
  longest = max(len(p) + len(r) for p, r, *_ in samples)
  length = length or bucket(longest, buckets)
  prompts, responses, masks, logps, adv = zip(*samples, strict=True)
  batch = policy_batch(prompts, responses, masks, logps, np.asarray(adv), pad_id, length)
  if decisions is not None:  # which rows are decisions, for grpo.decision_balance
    batch["decision"] = np.zeros(rows, np.float32)
    batch["decision"][len(trajectories) : n_real] = 1.0
  info = {
    "batch_rows": float(n_real),
    "decision_rows": float(n_real - len(trajectories)),
    "batch_len": float(length),
  }
  return batch, info
