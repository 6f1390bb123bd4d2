"""The sampler's jitted kernels: extend (prefill/append), scoring next tokens after a
chunk without keeping it, truncate, the decode loop, and taking rows out of a state into a
smaller one and putting them back.

Each takes a `SamplingState` (donated, but for take_rows) and returns one (score_after with
the scores); static arguments are the model config,
the sampling config and the attention span, so programs are few and reused.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.sampling import methods as methods_lib
from sr2.sampling.state import (
  CONTEXT_FULL,
  EOS,
  MAX_NEW_TOKENS,
  ROW_FIELDS,
  RUNNING,
  STOP_STRING,
  SamplingConfig,
  SamplingState,
)


def _reopened(state: SamplingState, rows_B) -> dict[str, jax.Array]:
  """The `done`, `finish` and `stop_state` fields of `state` with the rows where `rows_B` is
  True running again (not done, no finish reason, no stop string begun)."""
  return dict(
    done=jnp.where(rows_B, False, state.done),
    finish=jnp.where(rows_B, RUNNING, state.finish),
    stop_state=jnp.where(rows_B[:, None], 0, state.stop_state),
  )


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnames=("state",))
def extend(model: ModelConfig, span: int, params, state: SamplingState, chunk_BxC, chunk_len_B):
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
  return dataclasses.replace(
    state,
    tokens=tokens,
    logprobs=logprobs,
    lengths=new,
    cache=cache,
    **_reopened(state, chunk_len_B > 0),
  )


@functools.partial(jax.jit, static_argnums=(0, 1), donate_argnames=("state",))
def score_after(
  model: ModelConfig, span: int, params, state: SamplingState, chunk_BxC, chunk_len_B, choices_BxK
):
  """log p(choices | row + chunk) per row, without adding the chunk to the row.

  Feeds each row's last token and its chunk at the positions after it. Their keys/values
  land in the slots from the row's end on, which the next append or decode writes before
  it reads them (and the last token's slot gets what decode would write there), so only
  the cache changes. Rows with `chunk_len` 0 are not fed; their scores are meaningless.
  """
  b, c = chunk_BxC.shape
  rows = jnp.arange(b)
  last = jnp.maximum(state.lengths - 1, 0)
  t_C = jnp.arange(c + 1)
  feed = jnp.concatenate([state.tokens[rows, last][:, None], chunk_BxC], axis=1)
  pos_BxC = last[:, None] + t_C[None]
  valid = (t_C[None] <= chunk_len_B[:, None]) & (chunk_len_B[:, None] > 0)
  hidden_Bx1xD, cache = transformer.forward_with_cache_hidden(
    model, params, feed, jnp.minimum(pos_BxC, span - 1), state.cache, valid, span, chunk_len_B
  )
  scores = transformer.next_token_logprobs(model, params, hidden_Bx1xD, choices_BxK)
  return dataclasses.replace(state, cache=cache), scores


@functools.partial(jax.jit, donate_argnames=("state",))
def truncate(state: SamplingState, new_len_B, mask_B):
  lengths = jnp.where(mask_B, new_len_B, state.lengths)
  keep = jnp.arange(state.max_len)[None] < lengths[:, None]
  return dataclasses.replace(
    state,
    tokens=jnp.where(keep, state.tokens, 0),
    logprobs=jnp.where(keep, state.logprobs, 0.0),
    lengths=lengths,
    **_reopened(state, mask_B),
  )


@jax.jit
def take_rows(state: SamplingState, rows_B, live_B):
  """A state whose row i is `state`'s row rows_B[i]; rows with live_B[i] False are done.

  Row data, PRNG keys and KV cache are copied as they are (nothing re-encoded).
  """
  fields = {name: getattr(state, name)[rows_B] for name in ROW_FIELDS}
  fields["done"] = fields["done"] | ~live_B
  cache = [{k: v[rows_B] for k, v in layer.items()} for layer in state.cache]
  return dataclasses.replace(state, cache=cache, **fields)


@functools.partial(jax.jit, donate_argnames=("state",))
def put_rows(state: SamplingState, sub: SamplingState, rows_B, live_B):
  """`state` with its row rows_B[i] set to `sub`'s row i where live_B[i]."""
  at = jnp.where(live_B, rows_B, state.batch)  # out of range: dropped

  def put(full, part):
    return full.at[at].set(part, mode="drop")

  fields = {name: put(getattr(state, name), getattr(sub, name)) for name in ROW_FIELDS}
  cache = [
    {k: put(v, part[k]) for k, v in layer.items()}
    for layer, part in zip(state.cache, sub.cache, strict=True)
  ]
  return dataclasses.replace(state, cache=cache, **fields)


@functools.partial(jax.jit, static_argnums=(0, 1, 2), donate_argnames=("state",))
def decode(
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
    # Each row splits its own key, and only when it samples: a row's draws depend on its
    # own history, not on the rows beside it.
    keys = jax.vmap(jax.random.split)(st.rng)
    tok, lp, raw = methods_lib.sample(cfg.method, logits[:, 0], keys[:, 1])
    rng = jnp.where(active, keys[:, 0], st.rng)
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
