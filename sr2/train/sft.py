"""Supervised warm start on trajectories: next-token loss on model-written tokens only.

An example is the prompt followed by the response segments exactly as a rollout would
produce them: each assistant turn and each observation tokenised on its own and
concatenated, so a model trained here sees the token sequences it will meet when it
samples. The loss mask is 1 on assistant turns and 0 on the prompt and observations.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from sr2.models.config import ModelConfig
from sr2.rl.logprobs import token_logprobs
from sr2.sampling import bucket

# Batch lengths: an SFT batch pads to the smallest that holds its longest example.
SFT_BUCKETS = (128, 256, 320, 384, 448, 512, 576, 640, 768, 1024, 1280, 1536, 2048, 2560)


@dataclasses.dataclass(frozen=True)
class Example:
  """Token ids and a 0/1 mask of the same length (1 = the model should write this token)."""

  ids: tuple[int, ...]
  mask: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Choice:
  """Alternative demonstrations of one question; each time the question comes up in
  training one of them is drawn with probability proportional to its weight, so the
  warm start learns the demonstrator's rates rather than one fixed choice per question.
  """

  options: tuple[Example, ...]
  weights: tuple[float, ...]

  def __post_init__(self):
    if not self.options or len(self.options) != len(self.weights):
      raise ValueError(
        f"Choice needs as many weights as options (>= 1), got {len(self.options)} options "
        f"and {len(self.weights)} weights"
      )
    if any(not w >= 0 for w in self.weights) or not sum(self.weights) > 0:
      raise ValueError(f"Choice.weights must be >= 0 with a positive sum, got {self.weights}")

  def draw(self, rng: np.random.Generator) -> Example:
    p = np.asarray(self.weights, np.float64)
    return self.options[int(rng.choice(len(p), p=p / p.sum()))]


def example_from_segments(
  prompt_ids: Sequence[int], segments: Sequence[tuple[Sequence[int], bool]]
) -> Example:
  """Prompt (mask 0) followed by (ids, model_written) segments."""
  ids, mask = list(prompt_ids), [0] * len(prompt_ids)
  for seg, model_written in segments:
    ids.extend(seg)
    mask.extend([int(model_written)] * len(seg))
  return Example(tuple(ids), tuple(mask))


def trajectory_example(
  prompt_ids: Sequence[int], steps: Sequence[tuple[str, str | None]], tokenizer
) -> Example:
  """An example from rendered steps: (assistant text, observation text or None) pairs."""
  segments = []
  for assistant, observation in steps:
    segments.append((tokenizer.encode(assistant), True))
    if observation is not None:
      segments.append((tokenizer.encode(observation), False))
  return example_from_segments(prompt_ids, segments)


def batch(examples: Sequence[Example], pad_id: int, length: int) -> tuple[np.ndarray, np.ndarray]:
  """Right-pads examples to `length`: tokens int32 [B, length], mask int32 [B, length]."""
  tokens = np.full((len(examples), length), pad_id, np.int32)
  mask = np.zeros((len(examples), length), np.int32)
  for i, ex in enumerate(examples):
    if len(ex.ids) > length:
      raise ValueError(f"example {i} has {len(ex.ids)} tokens; the batch length is {length}")
    tokens[i, : len(ex.ids)] = ex.ids
    mask[i, : len(ex.mask)] = ex.mask
  return tokens, mask


def sft_loss(config: ModelConfig, params, tokens_BxT: jax.Array, mask_BxT: jax.Array):
  """Mean negative log-likelihood over masked target tokens.

  loss = -sum_{b,t} m[b,t] log p(x[b,t] | x[b,<t]) / sum m,  t >= 1.
  """
  logp = token_logprobs(config, params, tokens_BxT)  # [B, T-1], unchunked
  m = mask_BxT[:, 1:].astype(jnp.float32)
  n = jnp.maximum(m.sum(), 1.0)
  loss = -(logp * m).sum() / n
  acc = (jnp.exp(logp) > 0.5).astype(jnp.float32)  # greedy-correct whenever p > .5
  return loss, {"sft_loss": loss, "sft_tokens": m.sum(), "sft_token_acc": (acc * m).sum() / n}


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnums=(2, 3))
def sft_step(
  config: ModelConfig,
  optimizer: optax.GradientTransformation,
  params,
  opt_state,
  tokens_BxT,
  mask_BxT,
):
  """One jitted AdamW step on `sft_loss`; params and optimizer state are donated."""
  (_, metrics), grads = jax.value_and_grad(sft_loss, argnums=1, has_aux=True)(
    config, params, tokens_BxT, mask_BxT
  )
  updates, opt_state = optimizer.update(grads, opt_state, params)
  params = optax.apply_updates(params, updates)
  return params, opt_state, {**metrics, "grad_norm": optax.tree.norm(grads)}


def run_sft(
  config: ModelConfig,
  params,
  optimizer: optax.GradientTransformation,
  examples: Sequence[Example | Choice],
  *,
  steps: int,
  batch_size: int,
  pad_id: int,
  seed: int = 0,
  buckets: Sequence[int] = SFT_BUCKETS,
  log: Callable[[int, dict], None] | None = None,
):
  """Trains for `steps` steps on shuffled epochs of `examples`; returns (params, opt_state).

  A `Choice` is resolved to one of its options each time it is drawn (same `seed`, same
  draws).
  """
  if not examples:
    raise ValueError("no SFT examples")
  opt_state = optimizer.init(params)
  rng = np.random.default_rng(seed)
  order: list[int] = []
  for step in range(steps):
    while len(order) < batch_size:
      order.extend(rng.permutation(len(examples)).tolist())
    idx, order = order[:batch_size], order[batch_size:]
    chosen = [e.draw(rng) if isinstance(e, Choice) else e for e in (examples[i] for i in idx)]
    longest = max(len(e.ids) for e in chosen)
    length = bucket(longest, buckets)
    tokens, mask = batch(chosen, pad_id, length)
    params, opt_state, metrics = sft_step(
      config, optimizer, params, opt_state, jnp.asarray(tokens), jnp.asarray(mask)
    )
    if log is not None:
      log(step, metrics)
  return params, opt_state
