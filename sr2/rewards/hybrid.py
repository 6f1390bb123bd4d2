"""The hybrid reward with outcome gating (PAPER.md §3, Eq. 1 / 17).

  R(y) = r_outcome(y) · (1 + r_process(y))

A wrong answer gets 0 whatever the retrieval; a correct one gets 1 to 2, and 2 only when
every search brought useful, new evidence, so the process term cannot be farmed without
solving the task.
"""

from __future__ import annotations

import numpy as np


def hybrid_reward(outcome, process):
  """R = outcome · (1 + process), elementwise; outcome and process must lie in [0, 1]."""
  o, p = np.asarray(outcome, np.float64), np.asarray(process, np.float64)
  if o.shape != p.shape:
    raise ValueError(f"outcome {o.shape} and process {p.shape} differ in shape")
  for name, x in (("outcome", o), ("process", p)):
    if not np.all((x >= 0) & (x <= 1)):
      raise ValueError(
        f"{name} rewards must lie in [0, 1], got {x[(x < 0) | (x > 1) | np.isnan(x)]}"
      )
  r = o * (1.0 + p)
  return float(r) if r.ndim == 0 else r
