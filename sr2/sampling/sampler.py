"""The sampler: a fixed-size state, jitted extend (prefill/append), decode and truncate.

State layout (row b, capacity L tokens):
  tokens[b, :lengths[b]]  every token of the row: prompt, generated, appended.
  logprobs[b, t]          log-prob of token t if the model sampled it, else 0.
  cache                   KV cache; slot t holds token t for t < lengths[b] - 1.

The last token of a row is deliberately *not* in the cache: a decode step feeds it, writes
its keys/values and samples the next token. That one convention makes every operation on
ragged rows uniform:
  * extend (prefill or append observations): write the chunk after the row's tokens, feed
    the old last token plus all but the last chunk token. Nothing before is re-encoded.
  * truncate to n: set lengths = n. Slots >= n - 1 hold stale entries that are never
    attended (keys at slot s are seen only by queries at position >= s) and get
    overwritten by the next decode step. Nothing is re-encoded.
  * decode: a `lax.while_loop` of single-token steps; a row stops on EOS, on completing a
    stop string (stops.py), on its new-token budget or when its buffer is full, and stays
    stopped while the others go on.

Decode and extend attend only to the first `span` cache slots, `span` being the bucket
above the longest length any row reaches in the call: a short prefix of a long row costs
what its length costs, not the row capacity.

Programs compiled, per batch size and capacity: one decode per span bucket, one extend per
(chunk bucket, span bucket), one truncate. `Sampler.num_programs` reports the count.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from sr2.configlib import ConfigError, check_keys
from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.sampling import methods as methods_lib
from sr2.sampling import stops as stops_lib

# Why a row stopped.
RUNNING, EOS, STOP_STRING, MAX_NEW_TOKENS, CONTEXT_FULL = 0, 1, 2, 3, 4
FINISH_NAMES = {
  RUNNING: "running",
  EOS: "eos",
  STOP_STRING: "stop_string",
  MAX_NEW_TOKENS: "max_new_tokens",
  CONTEXT_FULL: "context_full",
}
DEFAULT_STOP_STRINGS = ("</search>", "</answer>")
DEFAULT_BUCKETS = (16, 32, 64, 128, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How the sampler decodes.

  Attributes:
    max_len: capacity of a row in tokens (prompt + everything generated or appended).
    method: a sampling method from methods.py.
    stop_strings: strings that end a turn when the generated text completes one.
    stop_on_eos: end a row on any of the tokenizer's end-of-turn ids.
    logprobs: "sampling" stores log-probs under the distribution sampled from; "raw"
      stores the model's temperature-1, unfiltered log-probs (what the RL loss uses).
    buckets: chunk lengths prefill/append pad to, so few programs compile.
  """

  max_len: int = 1024
  method: methods_lib.Method = methods_lib.Greedy()
  stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
  stop_on_eos: bool = True
  logprobs: str = "sampling"
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
  rng: jax.Array

  @property
  def batch(self) -> int:
    return self.tokens.shape[0]

  @property
  def max_len(self) -> int:
    return self.tokens.shape[1]


# --------------------------------------------------------------------------- jitted kernels


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnames=("state",))
def _extend(model: ModelConfig, span: int, params, state: SamplingState, chunk_BxC, chunk_len_B):
  b, c = chunk_BxC.shape
  L = state.max_len
  rows = jnp.arange(b)
  old = state.lengths
  new = old + chunk_len_B
  t_C = jnp.arange(c)
  write_at = jnp.where(t_C[None] < chunk_len_B[:, None], old[:, None] + t_C[None], L)
  tokens = state.tokens.at[rows[:, None], write_at].set(chunk_BxC, mode="drop")
  logprobs = state.logprobs.at[rows[:, None], write_at].set(0.0, mode="drop")
  # Feed the old last token and all chunk tokens but the last.
  feed_start = jnp.maximum(old - 1, 0)
  pos_BxC = feed_start[:, None] + t_C[None]
  feed_valid = (pos_BxC < new[:, None] - 1) & (chunk_len_B[:, None] > 0)
  feed = jnp.take_along_axis(tokens, jnp.minimum(pos_BxC, L - 1), axis=1)
  _, cache = transformer.forward_with_cache(
    model, params, feed, jnp.minimum(pos_BxC, span - 1), state.cache, feed_valid, span
  )
  touched = chunk_len_B > 0
  return dataclasses.replace(
    state,
    tokens=tokens,
    logprobs=logprobs,
    lengths=new,
    done=jnp.where(touched, False, state.done),
    finish=jnp.where(touched, RUNNING, state.finish),
    stop_state=jnp.where(touched[:, None], 0, state.stop_state),
    cache=cache,
  )


@functools.partial(jax.jit, donate_argnames=("state",))
def _truncate(state: SamplingState, new_len_B, mask_B):
  lengths = jnp.where(mask_B, new_len_B, state.lengths)
  keep = jnp.arange(state.max_len)[None] < lengths[:, None]
  return dataclasses.replace(
    state,
    tokens=jnp.where(keep, state.tokens, 0),
    logprobs=jnp.where(keep, state.logprobs, 0.0),
    lengths=lengths,
    done=jnp.where(mask_B, False, state.done),
    finish=jnp.where(mask_B, RUNNING, state.finish),
    stop_state=jnp.where(mask_B[:, None], 0, state.stop_state),
  )


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnames=("state",))
def _decode(
  model: ModelConfig,
  cfg: SamplingConfig,
  span: int,
  params,
  state: SamplingState,
  max_new,
  next_state_SxQxV,
  stop_len_S,
  eos_ids,
):
  b, L = state.tokens.shape
  rows = jnp.arange(b)
  n_stop = stop_len_S.shape[0]
  state = dataclasses.replace(
    state, turn_start=jnp.where(state.done, state.turn_start, state.lengths)
  )

  def cond(carry):
    st, i = carry
    return (i < max_new) & jnp.any(~st.done)

  def body(carry):
    st, i = carry
    active = ~st.done
    pos = jnp.maximum(st.lengths - 1, 0)
    cur = st.tokens[rows, pos]
    logits, cache = transformer.forward_with_cache(
      model, params, cur[:, None], pos[:, None], st.cache, active[:, None], span
    )
    rng, key = jax.random.split(st.rng)
    tok, lp, raw = methods_lib.sample(cfg.method, logits[:, 0], key)
    lp = raw if cfg.logprobs == "raw" else lp
    at = jnp.where(active, st.lengths, L)
    tokens = st.tokens.at[rows, at].set(tok, mode="drop")
    logprobs = st.logprobs.at[rows, at].set(lp, mode="drop")
    lengths = st.lengths + active.astype(jnp.int32)
    if n_stop:
      s_idx = jnp.arange(n_stop)[None]
      stop_state = next_state_SxQxV[s_idx, st.stop_state, tok[:, None]]
      hit_stop = jnp.any(stop_state == stop_len_S[None], axis=1)
      stop_state = jnp.where(active[:, None], stop_state, st.stop_state)
    else:
      stop_state, hit_stop = st.stop_state, jnp.zeros((b,), bool)
    hit_eos = (
      jnp.any(tok[:, None] == eos_ids[None], axis=1) if cfg.stop_on_eos else hit_stop & False
    )
    full = lengths >= L
    out_of_budget = lengths - st.turn_start >= max_new
    reason = jnp.select(
      [hit_eos, hit_stop, full, out_of_budget],
      [EOS, STOP_STRING, CONTEXT_FULL, MAX_NEW_TOKENS],
      RUNNING,
    )
    stops_now = active & (reason != RUNNING)
    st = dataclasses.replace(
      st,
      tokens=tokens,
      logprobs=logprobs,
      lengths=lengths,
      stop_state=stop_state,
      done=st.done | stops_now,
      finish=jnp.where(stops_now, reason, st.finish),
      cache=cache,
      rng=rng,
    )
    return st, i + 1

  state, _ = jax.lax.while_loop(cond, body, (state, jnp.int32(0)))
  return state


# --------------------------------------------------------------------------- host API


class Sampler:
  """Host-side driver: pads chunks to buckets, holds stop tables, counts programs.

  Params are passed to each call (they change between RL steps); the static model and
  sampling configs are fixed per sampler.
  """

  def __init__(self, model: ModelConfig, tokenizer, config: SamplingConfig = SamplingConfig()):
    if config.max_len > model.max_seq_len:
      raise ValueError(
        f"sampling.max_len={config.max_len} exceeds model.max_seq_len={model.max_seq_len}"
      )
    self.model = model
    self.config = config
    self.tokenizer = tokenizer
    if config.stop_strings and tokenizer is None:
      raise ValueError("stop strings need a tokenizer (to know each token's bytes)")
    tables = (
      stops_lib.stop_tables_for(tokenizer, model.vocab_size, config.stop_strings)
      if config.stop_strings
      else stops_lib.build_stop_tables([b""] * model.vocab_size, ())
    )
    self._next_state = jnp.asarray(tables.next_state)
    self._stop_len = jnp.asarray(tables.lengths)
    eos = sorted(tokenizer.eos_ids) if tokenizer is not None and config.stop_on_eos else []
    self._eos = jnp.asarray(eos or [-1], jnp.int32)
    self._shapes: set[tuple] = set()

  # ------------------------------------------------------------------ state

  def init_state(self, batch: int, rng: jax.Array | None = None) -> SamplingState:
    """Empty rows (length 0, done) with a cache of `config.max_len` slots."""
    L = self.config.max_len
    return SamplingState(
      tokens=jnp.zeros((batch, L), jnp.int32),
      logprobs=jnp.zeros((batch, L), jnp.float32),
      lengths=jnp.zeros((batch,), jnp.int32),
      turn_start=jnp.zeros((batch,), jnp.int32),
      done=jnp.ones((batch,), bool),
      finish=jnp.zeros((batch,), jnp.int32),
      stop_state=jnp.zeros((batch, len(self.config.stop_strings)), jnp.int32),
      cache=transformer.init_cache(self.model, batch, L),
      rng=rng if rng is not None else jax.random.key(0),
    )

  def attention_span(self, n: int) -> int:
    """Cache slots attended when no position reaches `n`: a bucket, so few programs."""
    return self._bucket(n)

  def _bucket(self, n: int) -> int:
    for b in self.config.buckets:
      if b >= n:
        return min(b, self.config.max_len)
    return self.config.max_len

  def append(
    self, params, state: SamplingState, rows: Sequence[int], token_chunks: Sequence[Sequence[int]]
  ) -> SamplingState:
    """Adds tokens after chosen rows' last tokens and prefills them into those rows' caches.

    The other rows are untouched. Appended tokens get log-prob 0 (the model did not
    write them). Rows that get tokens are no longer done.
    """
    if len(rows) != len(token_chunks):
      raise ValueError(f"append got {len(rows)} rows but {len(token_chunks)} chunks")
    b = state.batch
    lengths = np.asarray(jax.device_get(state.lengths))
    chunk_len = np.zeros((b,), np.int32)
    for r, chunk in zip(rows, token_chunks, strict=True):
      if not 0 <= r < b:
        raise ValueError(f"row {r} out of range for batch {b}")
      if chunk_len[r]:
        raise ValueError(f"row {r} appears twice in one append")
      if len(chunk) == 0:
        raise ValueError(f"row {r}: empty token chunk")
      if lengths[r] + len(chunk) > state.max_len:
        raise ValueError(
          f"row {r}: {lengths[r]} + {len(chunk)} tokens exceed the row capacity "
          f"{state.max_len}; finish the row or raise sampling.max_len"
        )
      chunk_len[r] = len(chunk)
    width = self._bucket(int(chunk_len.max()))
    arr = np.zeros((b, width), np.int32)
    for r, chunk in zip(rows, token_chunks, strict=True):
      arr[r, : len(chunk)] = chunk
    span = self.attention_span(int((lengths + chunk_len).max()))
    self._shapes.add(("extend", b, width, span))
    return _extend(self.model, span, params, state, jnp.asarray(arr), jnp.asarray(chunk_len))

  def prefill(
    self,
    params,
    prompts: Sequence[Sequence[int]],
    rng: jax.Array | None = None,
    batch: int | None = None,
  ) -> SamplingState:
    """A fresh state with one prompt per row (rows beyond the prompts stay empty and done)."""
    if not prompts:
      raise ValueError("prefill needs at least one prompt")
    batch = batch or len(prompts)
    if len(prompts) > batch:
      raise ValueError(f"{len(prompts)} prompts for a batch of {batch}")
    state = self.init_state(batch, rng)
    return self.append(params, state, list(range(len(prompts))), prompts)

  def truncate(
    self, state: SamplingState, rows: Sequence[int], lengths: Sequence[int]
  ) -> SamplingState:
    """Moves chosen rows back to a prefix of `lengths[i]` tokens; decoding continues there."""
    cur = np.asarray(jax.device_get(state.lengths))
    new = cur.copy()
    mask = np.zeros_like(cur, dtype=bool)
    for r, n in zip(rows, lengths, strict=True):
      if not 1 <= n <= cur[r]:
        raise ValueError(f"row {r}: cannot truncate to {n} tokens (row holds {cur[r]})")
      new[r], mask[r] = n, True
    self._shapes.add(("truncate", state.batch))
    return _truncate(state, jnp.asarray(new), jnp.asarray(mask))

  def decode(self, params, state: SamplingState, max_new_tokens: int) -> SamplingState:
    """Generates for every row that is not done, until each stops."""
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    lengths, done = jax.device_get((state.lengths, state.done))
    live = lengths[~done]
    # Attend only as far as any live row can reach in this call.
    span = self.attention_span(int(live.max()) + max_new_tokens if live.size else 1)
    self._shapes.add(("decode", state.batch, span))
    return _decode(
      self.model,
      self.config,
      span,
      params,
      state,
      jnp.int32(max_new_tokens),
      self._next_state,
      self._stop_len,
      self._eos,
    )

  @property
  def num_programs(self) -> int:
    """Distinct programs this sampler has asked XLA for (extend buckets, decode, truncate)."""
    return len(self._shapes)

  # ------------------------------------------------------------------ convenience

  def generate(
    self,
    params,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    rng: jax.Array | None = None,
  ) -> list[dict]:
    """Prefill + decode; per prompt: new token ids, their log-probs and why it stopped."""
    state = self.prefill(params, prompts, rng)
    start = [len(p) for p in prompts]
    state = self.decode(params, state, max_new_tokens)
    return rows_since(state, start)


def rows_since(state: SamplingState, start: Sequence[int]) -> list[dict]:
  """Host copies of each row's tokens/log-probs from `start[i]` to its end, and its finish."""
  tokens, logprobs, lengths, finish = jax.device_get(
    (state.tokens, state.logprobs, state.lengths, state.finish)
  )
  return [
    {
      "tokens": tokens[i, s : lengths[i]].tolist(),
      "logprobs": logprobs[i, s : lengths[i]].tolist(),
      "finish": FINISH_NAMES[int(finish[i])],
    }
    for i, s in enumerate(start)
  ]
