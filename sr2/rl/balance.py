"""Balancing the Actor's gradient against the Meta-Refiner's decisions' under joint training.

Under joint optimisation (full Search-R2) a batch holds the Actor's trajectories and the
refiner's decision rows, and one loss sums them. A decision row is one trained token, yet
under "seq-mean-token-mean" it weighs as much as a whole trajectory, so its token carries
a trajectory's weight: on the synthetic world the decisions' gradient was about 40 times
the Actor's, and through the global-norm clip and Adam's normaliser it crowded the Actor
out (results/README.md, "The ablation"). Scaling the decisions' advantages
(`refiner.decision_weight`) restores the Actor but scales the gate's learning signal by the
same constant for the whole run.

`grpo.decision_balance` instead takes the two gradients apart (`update.loss_and_grads`
runs one forward pass and two backward passes per micro-batch) and combines them:
  "none"   g_A + g_D, the paper's single loss;
  "clip"   min(1, c/‖g_A‖) g_A + min(1, c/‖g_D‖) g_D, each clipped to global norm c on
           its own (c = `grpo.decision_balance_scale`), so neither can exceed the other by
           more than what it is worth on its own;
  "ratio"  g_A + min(1, ρ‖g_A‖/‖g_D‖) g_D: the decisions' gradient at most ρ times the
           Actor's (ρ = `grpo.decision_balance_scale`), whatever their scales do over the
           run.
Norms are global L2 norms over the whole params tree, in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax

BALANCES = ("none", "clip", "ratio")


def _shrink(limit: jax.Array, norm: jax.Array) -> jax.Array:
  """min(1, limit / norm), and 1 for a zero norm."""
  return jnp.where(norm > limit, limit / jnp.maximum(norm, 1e-30), 1.0)


def combine(g_actor: Any, g_decision: Any, how: str, scale: float) -> tuple[Any, dict]:
  """The update's gradient from the Actor's and the decisions' (see the module docstring).

  Returns the combined tree (in g_actor's dtypes) and metrics: both norms and the factor
  each gradient was multiplied by.
  """
  if how not in BALANCES:
    raise ValueError(f"decision_balance={how!r}; expected one of {BALANCES}")
  f32 = lambda t: jax.tree.map(lambda x: x.astype(jnp.float32), t)
  n_a, n_d = optax.tree.norm(f32(g_actor)), optax.tree.norm(f32(g_decision))
  one = jnp.float32(1.0)
  if how == "clip":
    s_a, s_d = _shrink(jnp.float32(scale), n_a), _shrink(jnp.float32(scale), n_d)
  elif how == "ratio":
    s_a, s_d = one, _shrink(jnp.float32(scale) * n_a, n_d)
  else:
    s_a, s_d = one, one
  grads = jax.tree.map(
    lambda a, d: (s_a * a.astype(jnp.float32) + s_d * d.astype(jnp.float32)).astype(a.dtype),
    g_actor,
    g_decision,
  )
  metrics = {
    "grad_norm_actor": n_a,
    "grad_norm_decision": n_d,
    "actor_grad_scale": s_a,
    "decision_grad_scale": s_d,
  }
  return grads, metrics
