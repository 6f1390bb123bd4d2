"""The hybrid reward with outcome gating (the paper's §3, Eq. 1 / 17).

  R(y) = r_outcome(y) · (1 + r_process(y))

A wrong answer gets 0 whatever the retrieval; a correct one gets 1 to 2, and 2 only when
every search brought useful, new evidence, so the process term cannot be farmed without
solving the task.
"""

from __future__ import annotations

import numpy as np


def _unit_interval(x, name: str) -> np.ndarray:
  """`x` as float64, checked to lie in [0, 1] (NaN is out)."""
  try:
    a = np.array(x, np.float64)  # a copy: parts never alias the caller's arrays
  except (TypeError, ValueError) as e:
    raise ValueError(f"{name} must be a number or an array of numbers, got {x!r}") from e
  if not np.all((a >= 0) & (a <= 1)):
    raise ValueError(f"{name} rewards must lie in [0, 1], got {a[~((a >= 0) & (a <= 1))]}")
  return a


def _checked(outcome, process) -> tuple[np.ndarray, np.ndarray]:
  o, p = _unit_interval(outcome, "outcome"), _unit_interval(process, "process")
  if o.shape != p.shape:
    raise ValueError(f"outcome {o.shape} and process {p.shape} differ in shape")
  return o, p


def _out(x: np.ndarray):
  return float(x) if x.ndim == 0 else x


def hybrid_reward(outcome, process):
  """R = outcome · (1 + process), elementwise (Eq. 17).

  Args:
    outcome: r_outcome, a scalar or array in [0, 1] (EM is 0 or 1).
    process: r_process, same shape, in [0, 1].

  Returns:
    A float for scalar inputs, else a float64 array of their shape, in [0, 2].
  """
  o, p = _checked(outcome, process)
  return _out(o * (1.0 + p))


def reward_parts(outcome, process) -> dict:
  """The parts of R for logging: {"outcome", "process", "total"} (total = Eq. 17).

  Values are floats for scalar inputs, else float64 arrays of the inputs' shape; the
  process entry is the judge's r_process as given, also where the gate zeroes it.
  """
  o, p = _checked(outcome, process)
  return {"outcome": _out(o), "process": _out(p), "total": _out(o * (1.0 + p))}
