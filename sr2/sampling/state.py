"""Sampling configuration and the fixed-size state the sampler's kernels update.

`SamplingState` is a pytree of buffers (tokens, log-probs, lengths, done flags, finish codes,
stop automaton states, KV cache, one PRNG key per row); see sampler.py for the conventions
that keep ragged rows, appends and cuts uniform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax

from sr2.configlib import ConfigError, check_keys
from sr2.data.prompts import STOP_STRINGS as DEFAULT_STOP_STRINGS  # the agent's turn ends
from sr2.sampling import methods as methods_lib

# Why a row stopped.
RUNNING, EOS, STOP_STRING, MAX_NEW_TOKENS, CONTEXT_FULL = 0, 1, 2, 3, 4
FINISH_NAMES = {
  RUNNING: "running",
  EOS: "eos",
  STOP_STRING: "stop_string",
  MAX_NEW_TOKENS: "max_new_tokens",
  CONTEXT_FULL: "context_full",
}
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


def bucket(n: int, buckets: Sequence[int], cap: int | None = None) -> int:
  """The smallest of `buckets` that holds `n` tokens, so a run compiles few shapes.

  Past the largest bucket: `n` itself, or `cap` when given; the result never exceeds `cap`.
  """
  b = next((b for b in buckets if b >= n), n if cap is None else cap)
  return b if cap is None else min(b, cap)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the sampler decodes."""

  max_len: int = 1024  # capacity of a row in tokens (prompt + everything generated or appended).
  method: methods_lib.Method = methods_lib.Greedy()  # a sampling method from methods.py.
  # strings that end a turn when the generated text completes one.
  stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
  stop_on_eos: bool = True  # end a row on any of the tokenizer's end-of-turn ids.
  # "sampling" stores log-probs under the distribution sampled from; "raw" stores the model's
  # temperature-1, unfiltered log-probs (what the RL loss uses).
  logprobs: str = "sampling"
  # chunk lengths prefill/append pad to, so few programs compile.
  buckets: tuple[int, ...] = DEFAULT_BUCKETS

  def __post_init__(self):
    if self.max_len < 2:
      raise ValueError(f"sampling.max_len={self.max_len}; expected >= 2")
    if self.logprobs not in ("sampling", "raw"):
      raise ValueError(f"sampling.logprobs={self.logprobs!r}; expected 'sampling' or 'raw'")
    if not isinstance(self.method, methods_lib.Method):
      raise ValueError(f"sampling.method={self.method!r} is not a sampling method")
    if list(self.buckets) != sorted(set(self.buckets)) or not self.buckets or self.buckets[0] < 1:
      raise ValueError(f"sampling.buckets={self.buckets}; expected increasing positive ints")


_CONFIG_FIELDS = (
  "method",
  "temperature",
  "top_k",
  "top_p",
  "max_len",
  "stop_strings",
  "stop_on_eos",
  "logprobs",
  "buckets",
)


def sampling_config(cfg, where: str = "config.sampling", **overrides) -> SamplingConfig:
  """SamplingConfig from a config group with a method *name* and its parameters.

  Keys: method (greedy|temperature|top_k|top_p), temperature, top_k, top_p, max_len,
  stop_strings, stop_on_eos, logprobs, buckets; unknown keys are rejected.
  """
  values = {**(cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)), **overrides}
  check_keys(values.keys(), _CONFIG_FIELDS, where)
  method = methods_lib.parse_method(
    values.pop("method", "greedy"),
    values.pop("temperature", 1.0),
    values.pop("top_k", 50),
    values.pop("top_p", 0.9),
  )
  for key in ("stop_strings", "buckets"):
    if key in values:
      values[key] = tuple(values[key])
  try:
    return SamplingConfig(method=method, **values)
  except ValueError as e:
    raise ConfigError(f"{where}: {e}") from None


# The per-row fields of a SamplingState besides the KV cache ([B, ...] arrays).
ROW_FIELDS = ("tokens", "logprobs", "lengths", "turn_start", "done", "finish", "stop_state", "rng")


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SamplingState:
  """Fixed-size buffers of a batch being sampled (a pytree; donate it to jitted calls)."""

  tokens: jax.Array  # int32 [B, L]
  logprobs: jax.Array  # float32 [B, L]
  lengths: jax.Array  # int32 [B]
  turn_start: jax.Array  # int32 [B]: length when the current decode call began
  done: jax.Array  # bool [B]
  finish: jax.Array  # int32 [B]: one of the finish codes
  stop_state: jax.Array  # int32 [B, S]: automaton state per stop string
  cache: list
  rng: jax.Array  # key [B]: each row's own PRNG key, split at each token it samples

  @property
  def batch(self) -> int:
    return self.tokens.shape[0]

  @property
  def max_len(self) -> int:
    return self.tokens.shape[1]
