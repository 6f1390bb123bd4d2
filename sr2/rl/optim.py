"""The optimizer: one `make_optimizer(OptConfig)` returning an optax chain."""

from __future__ import annotations

import dataclasses

import optax


@dataclasses.dataclass(frozen=True)
class OptConfig:
  """AdamW, linear warmup then a constant rate (verl's schedule) or a cosine decay; clipping."""

  lr: float = 1e-6  # peak learning rate (the paper: 1e-6 for 7B+ models).
  warmup_steps: int = 0  # steps of linear warmup from 0 (the paper: ratio 0.285 of 300 steps).
  weight_decay: float = 0.01  # decoupled weight decay.
  b1: float = 0.9  # Adam moments.
  b2: float = 0.999  # Adam moments.
  eps: float = 1e-8  # Adam moments.
  grad_clip: float = 1.0  # global-norm clip; 0 disables.
  # 0 keeps the peak rate after warmup (verl); > 0 decays it along a cosine to `lr * final_lr_ratio`
  # at step `decay_steps` (warmup included) and holds it there.
  decay_steps: int = 0
  final_lr_ratio: float = 0.1  # the cosine's end point as a fraction of `lr`.

  def __post_init__(self):
    if not self.lr > 0:
      raise ValueError(f"opt.lr={self.lr}; expected > 0")
    if self.warmup_steps < 0 or self.grad_clip < 0 or self.weight_decay < 0:
      raise ValueError("opt.warmup_steps, opt.grad_clip and opt.weight_decay must be >= 0")
    if self.decay_steps and self.decay_steps <= self.warmup_steps:
      raise ValueError(
        f"opt.decay_steps={self.decay_steps} must exceed "
        f"opt.warmup_steps={self.warmup_steps} (or be 0)"
      )
    if not 0 <= self.final_lr_ratio <= 1:
      raise ValueError(f"opt.final_lr_ratio={self.final_lr_ratio}; expected within [0, 1]")


def schedule(config: OptConfig) -> optax.Schedule:
  """Learning rate by step: linear warmup from 0, then constant or cosine (see OptConfig)."""
  if config.decay_steps:
    return optax.warmup_cosine_decay_schedule(
      0.0,
      config.lr,
      config.warmup_steps,
      config.decay_steps,
      end_value=config.lr * config.final_lr_ratio,
    )
  if config.warmup_steps == 0:
    return optax.constant_schedule(config.lr)
  return optax.linear_schedule(0.0, config.lr, config.warmup_steps)


def make_optimizer(config: OptConfig) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(config.grad_clip)] if config.grad_clip else []
  parts.append(
    optax.adamw(
      schedule(config), b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay
    )
  )
  return optax.chain(*parts)
