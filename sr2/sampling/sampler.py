"""The sampler: a fixed-size state, jitted extend (prefill/append), decode, truncate and
next-token scores after a chunk that is read but not kept (`score_after`).

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
  * score_after: feed the last token and a chunk, read the log-probs after the chunk,
    keep the row as it was. The chunk's entries land in slots >= lengths - 1, which, like
    truncate's stale entries, are written again before any query reads them.
  * decode: a `lax.while_loop` of single-token steps; a row stops on EOS, on completing a
    stop string (stops.py), on its new-token budget or when its buffer is full, and stays
    stopped while the others go on.

Decode and extend attend only to the first `span` cache slots, `span` being the bucket
above the longest length any row reaches in the call: a short prefix of a long row costs
what its length costs, not the row capacity.

Programs compiled, per batch size and capacity: one decode per span bucket, one extend per
(chunk bucket, span bucket), one score_after per (chunk width, choices, span bucket), one
truncate; `select` and `merge` one each per pair of batch sizes. `Sampler.num_programs`
reports the count.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.parallel.rules import AxisRules
from sr2.sampling import kernels
from sr2.sampling import stops as stops_lib
from sr2.sampling.state import FINISH_NAMES, SamplingConfig, SamplingState, bucket


class Sampler:
  """Host-side driver: pads chunks to buckets, holds stop tables, counts programs.

  Params are passed to each call (they change between RL steps); the static model and
  sampling configs are fixed per sampler. With a `mesh`, every state is born laid out by
  logical axes (`state_shardings`): rows over the `batch` rule's axes (data x fsdp), KV
  heads over `tensor` where they divide; the jitted kernels keep that layout, so each
  device holds and decodes its own rows. Without one, states live on the default device.
  """

  def __init__(
    self,
    model: ModelConfig,
    tokenizer,
    config: SamplingConfig | None = None,
    mesh: Mesh | None = None,
    rules: AxisRules | None = None,
  ):
    config = config or SamplingConfig()
    if config.max_len > model.max_seq_len:
      raise ValueError(
        f"sampling.max_len={config.max_len} exceeds model.max_seq_len={model.max_seq_len}"
      )
    self.model = model
    self.config = config
    self.tokenizer = tokenizer
    self.mesh = mesh
    self.rules = rules or AxisRules()
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

  def init_state(
    self, batch: int, rng: jax.Array | None = None, first_row: int = 0
  ) -> SamplingState:
    """Empty rows (length 0, done) with a cache of `config.max_len` slots.

    Row i's PRNG key is `fold_in(rng, first_row + i)`: a row numbered the same in a larger
    batch, another chunk or another process samples the same tokens. With a mesh the
    buffers are created in place on their shards (no whole copy on one device first).
    """
    rng = rng if rng is not None else jax.random.key(0)
    n_stop = len(self.config.stop_strings)
    return _fresh_state(
      self.model, self.config.max_len, n_stop, batch, self.mesh, self.rules, rng, first_row
    )

  def state_shardings(self, batch: int) -> SamplingState:
    """A SamplingState of NamedShardings for `batch` rows on the sampler's mesh."""
    if self.mesh is None:
      raise ValueError("state_shardings needs a sampler with a mesh")
    n_stop = len(self.config.stop_strings)
    return state_shardings(self.model, self.config.max_len, n_stop, batch, self.mesh, self.rules)

  def attention_span(self, n: int) -> int:
    """Cache slots attended when no position reaches `n`: a bucket, so few programs."""
    return self._bucket(n)

  def _bucket(self, n: int) -> int:
    return bucket(n, self.config.buckets, cap=self.config.max_len)

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
      chunk_len[r] = self._fitting_len(state, r, lengths[r], chunk)
    width = self._bucket(int(chunk_len.max()))
    arr = np.zeros((b, width), np.int32)
    for r, chunk in zip(rows, token_chunks, strict=True):
      arr[r, : len(chunk)] = chunk
    span = self.attention_span(int((lengths + chunk_len).max()))
    self._shapes.add(("extend", b, width, span))
    return kernels.extend(self.model, span, params, state, jnp.asarray(arr), jnp.asarray(chunk_len))

  def score_after(
    self,
    params,
    state: SamplingState,
    rows: Sequence[int],
    chunks: Sequence[Sequence[int]],
    choices: Sequence[Sequence[int]],
  ) -> tuple[SamplingState, list[np.ndarray]]:
    """log p(c | row's tokens + chunk) for each chosen row's candidate next tokens `c`.

    The chunk is read, not added: every row keeps its tokens, log-probs, length and flags,
    and decoding goes on as before. Only the cache changes, in slots past the rows' ends
    that are written again before they are read, so `state` is donated and the returned
    state replaces it. One forward pass over the chunks against the rows' own cache: the
    Meta-Refiner's question after a rollout (refiner.prompt="continuation") costs its own
    tokens, not a re-encoding of the trajectory.

    Returns:
      (the state, float32 log-probs per chosen row, one per candidate, in `rows` order).
    """
    if not len(rows) == len(chunks) == len(choices):
      raise ValueError(
        f"score_after got {len(rows)} rows, {len(chunks)} chunks and {len(choices)} choice lists"
      )
    if not len(rows):
      return state, []
    idx = self._check_rows(state, rows)
    lengths = np.asarray(jax.device_get(state.lengths))
    chunk_len = np.zeros((state.batch,), np.int32)
    for r, chunk, cand in zip(idx, chunks, choices, strict=True):
      if lengths[r] < 1:
        raise ValueError(f"row {r} is empty; score_after reads after a row's tokens")
      if len(chunk) == 0 or len(cand) == 0:
        raise ValueError(f"row {r}: empty chunk or no choices")
      chunk_len[r] = self._fitting_len(state, r, lengths[r], chunk)
    # The chunks here (the refiner's question) are short and of one or two lengths: a
    # multiple of 16 pads them less than the chunk buckets would, and compiles as few.
    width = -(-int(chunk_len.max()) // 16) * 16
    k = -(-max(len(c) for c in choices) // 8) * 8  # few programs: widths 8, 16, ...
    arr = np.zeros((state.batch, width), np.int32)
    cand = np.zeros((state.batch, k), np.int32)
    for r, chunk, c in zip(idx, chunks, choices, strict=True):
      arr[r, : len(chunk)] = chunk
      cand[r, : len(c)] = c
    span = self.attention_span(int((lengths + chunk_len).max()))
    self._shapes.add(("score_after", state.batch, width, k, span))
    state, scores = kernels.score_after(
      self.model, span, params, state, jnp.asarray(arr), jnp.asarray(chunk_len), jnp.asarray(cand)
    )
    scores = np.asarray(scores)
    return state, [scores[r, : len(c)] for r, c in zip(idx, choices, strict=True)]

  def prefill(
    self,
    params,
    prompts: Sequence[Sequence[int]],
    rng: jax.Array | None = None,
    batch: int | None = None,
    first_row: int = 0,
  ) -> SamplingState:
    """A fresh state with one prompt per row (rows beyond the prompts stay empty and done).

    `first_row` numbers the rows for their PRNG keys (`init_state`).
    """
    if not prompts:
      raise ValueError("prefill needs at least one prompt")
    batch = batch or len(prompts)
    if len(prompts) > batch:
      raise ValueError(f"{len(prompts)} prompts for a batch of {batch}")
    state = self.init_state(batch, rng, first_row)
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
    return kernels.truncate(state, jnp.asarray(new), jnp.asarray(mask))

  def select(self, state: SamplingState, rows: Sequence[int], batch: int) -> SamplingState:
    """A state of `batch` rows holding `rows` of `state` in order (the rest empty, done).

    Work on a few rows of a large batch (regenerating the Meta-Refiner's revised rows)
    then costs what those rows cost; `merge` puts them back. `state` is left as it is.
    """
    rows = self._check_rows(state, rows)
    if not len(rows) <= batch:
      raise ValueError(f"{len(rows)} rows do not fit a batch of {batch}")
    self._shapes.add(("take_rows", state.batch, batch))
    return kernels.take_rows(state, *self._row_index(rows, batch))

  def merge(self, state: SamplingState, sub: SamplingState, rows: Sequence[int]) -> SamplingState:
    """`state` with `rows` set to the first rows of `sub` (from `select`), keys included."""
    rows = self._check_rows(state, rows)
    if len(rows) > sub.batch or sub.max_len != state.max_len:
      raise ValueError(
        f"cannot merge {len(rows)} rows from a batch of {sub.batch} x {sub.max_len} "
        f"into one of {state.batch} x {state.max_len}"
      )
    self._shapes.add(("put_rows", state.batch, sub.batch))
    return kernels.put_rows(state, sub, *self._row_index(rows, sub.batch))

  @staticmethod
  def _row_index(rows: np.ndarray, batch: int) -> tuple[jax.Array, jax.Array]:
    """(rows padded with 0 to `batch`, which entries are real) for take_rows / put_rows."""
    idx = np.zeros(batch, np.int32)
    idx[: len(rows)] = rows
    return jnp.asarray(idx), jnp.asarray(np.arange(batch) < len(rows))

  @staticmethod
  def _fitting_len(state: SamplingState, row: int, length: int, chunk: Sequence[int]) -> int:
    """`len(chunk)`, after checking that it fits after the `length` tokens of `row`."""
    if length + len(chunk) > state.max_len:
      raise ValueError(
        f"row {row}: {length} + {len(chunk)} tokens exceed the row capacity "
        f"{state.max_len}; finish the row or raise sampling.max_len"
      )
    return len(chunk)

  @staticmethod
  def _check_rows(state: SamplingState, rows: Sequence[int]) -> np.ndarray:
    rows = np.asarray(rows, np.int64).reshape(-1)
    bad = [int(r) for r in rows if not 0 <= r < state.batch]
    if bad:
      raise ValueError(f"rows {bad} out of range for batch {state.batch}")
    if len(set(rows.tolist())) != len(rows):
      raise ValueError(f"rows {rows.tolist()} repeat a row")
    return rows

  def decode(self, params, state: SamplingState, max_new_tokens: int) -> SamplingState:
    """Generates for every row that is not done, until each stops."""
    if max_new_tokens < 1:
      raise ValueError(f"max_new_tokens={max_new_tokens}; expected >= 1")
    lengths, done = jax.device_get((state.lengths, state.done))
    live = lengths[~done]
    # Attend only as far as any live row can reach in this call.
    span = self.attention_span(int(live.max()) + max_new_tokens if live.size else 1)
    self._shapes.add(("decode", state.batch, span))
    return kernels.decode(
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


def state_shardings(
  model: ModelConfig, max_len: int, n_stop: int, batch: int, mesh: Mesh, rules: AxisRules
) -> SamplingState:
  """Where a state's buffers live: rows by the `batch` rule, the cache by `CACHE_AXES`."""

  def rows(*rest: int) -> NamedSharding:
    axes = ("batch",) + (None,) * len(rest)
    return NamedSharding(mesh, rules.spec(axes, (batch, *rest), mesh))

  kv = (batch, max_len, model.n_kv_heads, model.head_dim)
  kv = NamedSharding(mesh, rules.spec(transformer.CACHE_AXES, kv, mesh))
  return SamplingState(
    tokens=rows(max_len),
    logprobs=rows(max_len),
    lengths=rows(),
    turn_start=rows(),
    done=rows(),
    finish=rows(),
    stop_state=rows(n_stop),
    cache=[{"k": kv, "v": kv} for _ in range(model.n_layers)],
    rng=rows(),
  )


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5))
def _fresh_state(model, max_len, n_stop, batch, mesh, rules, rng, first_row) -> SamplingState:
  """Empty rows with their keys (see `Sampler.init_state`), laid out on `mesh` if given."""
  rows = first_row + jnp.arange(batch, dtype=jnp.uint32)
  state = SamplingState(
    tokens=jnp.zeros((batch, max_len), jnp.int32),
    logprobs=jnp.zeros((batch, max_len), jnp.float32),
    lengths=jnp.zeros((batch,), jnp.int32),
    turn_start=jnp.zeros((batch,), jnp.int32),
    done=jnp.ones((batch,), bool),
    finish=jnp.zeros((batch,), jnp.int32),
    stop_state=jnp.zeros((batch, n_stop), jnp.int32),
    cache=transformer.init_cache(model, batch, max_len),
    rng=jax.vmap(jax.random.fold_in, (None, 0))(rng, rows),
  )
  if mesh is None:
    return state
  shardings = state_shardings(model, max_len, n_stop, batch, mesh, rules)
  return jax.lax.with_sharding_constraint(state, shardings)


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
