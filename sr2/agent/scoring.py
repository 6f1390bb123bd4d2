"""Batched scoring of candidate next tokens: log p(c | prompt) for each prompt's choices.

The Meta-Refiner's judgement (agent/refiner.py) in its paper form is this over the refiner
prompts and the digit tokens "0".."n" (the continuation form reads the sampler's cache
instead, `Sampler.score_after`). One forward pass per prompt; the last block and the LM
head run only on the position read. Prompts go in padded passes (`score_choices`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import numpy as np

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.sampling.state import bucket


@functools.partial(jax.jit, static_argnums=(0,))
def _next_token_logprobs(config: ModelConfig, params, tokens_BxT, last_B, choices_BxC):
  """log softmax of the logits after position last[b], at the token ids choices[b].

  The last block and the LM head run on the one position read, not on all T (the judge
  needs one row of logits per prompt, not [B, T, V]).
  """
  hidden_Bx1xD = transformer.forward_hidden(config, params, tokens_BxT, at_B=last_B)
  return transformer.next_token_logprobs(config, params, hidden_Bx1xD, choices_BxC)


JUDGE_BUCKETS = (128, 256, 384, 512, 640, 768, 1024, 1280, 1536, 2048)


def score_choices(
  model: ModelConfig,
  params,
  prompts: Sequence[Sequence[int]],
  choices: Sequence[Sequence[int]],
  pad_id: int = 0,
  buckets: Sequence[int] = JUDGE_BUCKETS,
  rows_per_pass: int = 0,
) -> list[np.ndarray]:
  """log p(c | prompt) for each prompt's candidate next tokens, in batched passes.

  With `rows_per_pass` 0 all prompts go in one pass, padded to the smallest bucket that
  holds the longest. Otherwise the prompts are sorted by length and go `rows_per_pass` at
  a time (the last pass filled with one-token dummy rows), each pass padded to its own
  bucket, so short prompts are not padded to the longest. A run compiles one program per
  (rows, bucket) it reaches.
  Rows do not interact, so the scores are the same up to float rounding.
  """
  if len(prompts) != len(choices):
    raise ValueError(f"{len(prompts)} prompts for {len(choices)} lists of choices")
  if rows_per_pass < 0:
    raise ValueError(f"rows_per_pass={rows_per_pass}; expected >= 0 (0 = one pass)")
  if not prompts:
    return []
  empty = [i for i, p in enumerate(prompts) if not len(p)]
  if empty:
    raise ValueError(f"prompts {empty} are empty; each needs at least one token")
  n = len(prompts)
  size = rows_per_pass or n
  order = sorted(range(n), key=lambda i: len(prompts[i])) if rows_per_pass else list(range(n))
  width = max(len(c) for c in choices)
  passes = []
  for start in range(0, n, size):
    rows = order[start : start + size]
    longest = max(len(prompts[i]) for i in rows)
    length = bucket(longest, buckets)
    tokens = np.full((size, length), pad_id, np.int32)
    cand = np.zeros((size, width), np.int32)
    last = np.zeros((size,), np.int32)
    for j, i in enumerate(rows):
      tokens[j, : len(prompts[i])] = prompts[i]
      cand[j, : len(choices[i])] = choices[i]
      last[j] = len(prompts[i]) - 1
    # Dispatched without waiting: the passes queue on the device.
    passes.append((rows, _next_token_logprobs(model, params, tokens, last, cand)))
  out: list[np.ndarray] = [np.empty(0)] * n
  for rows, scores in passes:
    scores = np.asarray(scores)
    for j, i in enumerate(rows):
      out[i] = scores[j, : len(choices[i])]
  return out
