"""The GRPO update: trajectories -> a padded batch -> one jitted, sharded optimizer step.

Alignment: a row is `prompt + response` right-padded to T tokens. Position t of every
[B, T-1] array is about predicting token t + 1, so the loss mask and the sampler's
log-probs (which sit on the sampled token) move one place left. Prompt, observation and
padding targets have mask 0.

Sharding: params and optimizer state are laid out by their logical axes (parallel/rules.py)
and the batch along `batch`; the step is one `jax.jit` with explicit in/out shardings and
the params and optimizer state donated, so a step never holds two copies of them.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.parallel import AxisRules, tree_shardings
from sr2.rl import grpo, sft

BATCH_KEYS = ("tokens", "mask", "old_logp", "ref_logp", "adv")


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


def reference_logprobs(config: ModelConfig, ref_params, tokens_BxT) -> jax.Array:
  """log p_ref of every target token, [B, T-1] (computed once per step, no gradient)."""
  return sft.token_logprobs(config, ref_params, tokens_BxT)


def update_step(
  model: ModelConfig,
  cfg: grpo.GRPOConfig,
  optimizer: optax.GradientTransformation,
  params,
  opt_state,
  batch: dict,
):
  """One optimizer step on the GRPO loss of `batch` (see BATCH_KEYS)."""

  def loss_fn(p):
    logp = sft.token_logprobs(model, p, batch["tokens"])
    ref = batch["ref_logp"] if cfg.kl_coef else None
    return grpo.grpo_loss(logp, batch["old_logp"], ref, batch["adv"], batch["mask"], cfg)

  (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return params, opt_state, {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads)}


@dataclasses.dataclass(frozen=True)
class Shardings:
  """Where params, optimizer state and batch arrays live on a mesh."""

  params: object
  opt_state: object
  batch: dict


def make_shardings(
  model: ModelConfig,
  optimizer: optax.GradientTransformation,
  mesh: Mesh,
  rules: AxisRules | None = None,
  batch_rows: int | None = None,
) -> Shardings:
  """Shardings from logical axes; optimizer moments follow their params, scalars replicate."""
  rules = rules or AxisRules()
  shapes = jax.eval_shape(lambda: transformer.init_params(model, jax.random.key(0)))
  params = tree_shardings(transformer.param_axes(model), shapes, mesh, rules)
  opt_shapes = jax.eval_shape(optimizer.init, shapes)
  replicated = NamedSharding(mesh, PartitionSpec())
  opt_state = optax.tree_map_params(
    optimizer,
    lambda _, s: s,
    opt_shapes,
    params,
    transform_non_params=lambda _: replicated,
  )
  rows = rules.spec(("batch",), (batch_rows or mesh.size,), mesh)[0]
  two_d = NamedSharding(mesh, PartitionSpec(rows, None))
  batch = {k: two_d for k in ("tokens", "mask", "old_logp", "ref_logp")}
  batch["adv"] = NamedSharding(mesh, PartitionSpec(rows))
  return Shardings(params, opt_state, batch)


def make_update(
  model: ModelConfig,
  cfg: grpo.GRPOConfig,
  optimizer: optax.GradientTransformation,
  shardings: Shardings,
):
  """The jitted step `(params, opt_state, batch) -> (params, opt_state, metrics)`."""
  return jax.jit(
    functools.partial(update_step, model, cfg, optimizer),
    in_shardings=(shardings.params, shardings.opt_state, shardings.batch),
    out_shardings=(shardings.params, shardings.opt_state, None),
    donate_argnums=(0, 1),
  )


def init_sharded(
  model: ModelConfig, optimizer: optax.GradientTransformation, shardings: Shardings, rng: jax.Array
):
  """Params and optimizer state born sharded (no full copy on one device first)."""
  params = jax.jit(lambda k: transformer.init_params(model, k), out_shardings=shardings.params)(rng)
  opt_state = jax.jit(optimizer.init, out_shardings=shardings.opt_state)(params)
  return params, opt_state


def put_batch(batch: dict, shardings: Shardings) -> dict:
  """Moves a batch (host or device arrays) to its shardings."""
  return {k: jax.device_put(v, shardings.batch[k]) for k, v in batch.items()}
