"""A pure-functional decoder for the Llama / Qwen2 / Qwen3 family.

A model is `(config, params)`: `params` is a plain pytree of arrays (dicts and a list of
layers), and every function here takes the static `ModelConfig` and the params explicitly,
so params jit, shard and checkpoint as they are.

Shapes use suffixes: B batch, T new tokens, S cache slots, D d_model, H query heads,
K kv heads, G = H / K, Dh head width, F MLP width, V vocabulary.

KV cache: slot s of a row holds the token at position s. A call with a cache writes the new
tokens' keys/values at their positions, then each query at position p attends to slots
s <= p. Stale slots past a row's end (left by padding or a cut) are never attended, because
the next token written at position p overwrites slot p before anything reads it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from sr2.models.config import ModelConfig

Params = dict[str, Any]
Cache = list[dict[str, jax.Array]]


def _dtype(config: ModelConfig):
  return jnp.dtype(config.dtype)


# --------------------------------------------------------------------------- params


def param_shapes(config: ModelConfig) -> Params:
  """The params pytree as `(shape, logical_axes)` leaves (tuples), for init and sharding."""
  d, h, k = config.d_model, config.n_heads, config.n_kv_heads
  dh, f, v = config.head_dim, config.d_ff, config.vocab_size
  layer = {
    "attn_norm": ((d,), ("embed",)),
    "q": ((d, h, dh), ("embed", "heads", "head_dim")),
    "k": ((d, k, dh), ("embed", "kv_heads", "head_dim")),
    "v": ((d, k, dh), ("embed", "kv_heads", "head_dim")),
    "o": ((h, dh, d), ("heads", "head_dim", "embed")),
    "mlp_norm": ((d,), ("embed",)),
    "gate": ((d, f), ("embed", "mlp")),
    "up": ((d, f), ("embed", "mlp")),
    "down": ((f, d), ("mlp", "embed")),
  }
  if config.qkv_bias:
    layer["q_bias"] = ((h, dh), ("heads", "head_dim"))
    layer["k_bias"] = ((k, dh), ("kv_heads", "head_dim"))
    layer["v_bias"] = ((k, dh), ("kv_heads", "head_dim"))
  if config.qk_norm:
    layer["q_norm"] = ((dh,), ("head_dim",))
    layer["k_norm"] = ((dh,), ("head_dim",))
  params = {
    "embed": ((v, d), ("vocab", "embed")),
    "layers": [dict(layer) for _ in range(config.n_layers)],
    "final_norm": ((d,), ("embed",)),
  }
  if not config.tie_embeddings:
    params["head"] = ((d, v), ("embed", "vocab"))
  return params


def _is_spec(x) -> bool:
  return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple)


def param_axes(config: ModelConfig) -> Params:
  """Logical axis names of every param, as a pytree of tuples (same structure as params)."""
  return jax.tree.map(lambda s: s[1], param_shapes(config), is_leaf=_is_spec)


def init_params(config: ModelConfig, rng: jax.Array, std: float = 0.02) -> Params:
  """Random params: N(0, std) matrices, unit norm scales, zero biases."""
  specs = param_shapes(config)
  leaves, treedef = jax.tree.flatten_with_path(specs, is_leaf=_is_spec)
  keys = jax.random.split(rng, len(leaves))
  out = []
  for (path, (shape, _)), key in zip(leaves, keys, strict=True):
    name = str(path[-1].key)
    if name.endswith("norm"):
      x = jnp.ones(shape, jnp.float32)
    elif name.endswith("bias"):
      x = jnp.zeros(shape, jnp.float32)
    else:
      x = std * jax.random.normal(key, shape, jnp.float32)
    out.append(x.astype(_dtype(config)))
  return jax.tree.unflatten(treedef, out)


# --------------------------------------------------------------------------- layers


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
  x32 = x.astype(jnp.float32)
  x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
  return scale * x32.astype(x.dtype)


def rope(x_BxTxNxDh: jax.Array, positions_BxT: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in the split-halves layout of HF checkpoints (rotate_half)."""
  dh = x_BxTxNxDh.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))
  angles_BxTxDh2 = positions_BxT.astype(jnp.float32)[..., None] * inv_freq
  cos = jnp.cos(angles_BxTxDh2)[:, :, None, :]
  sin = jnp.sin(angles_BxTxDh2)[:, :, None, :]
  x = x_BxTxNxDh.astype(jnp.float32)
  x1, x2 = x[..., : dh // 2], x[..., dh // 2 :]
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxNxDh.dtype)


def _attention(config, q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS):
  b, t, h, dh = q_BxTxHxDh.shape
  q = q_BxTxHxDh.reshape(b, t, config.n_kv_heads, config.n_groups, dh)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k_BxSxKxDh, preferred_element_type=jnp.float32)
  scores = scores * (dh**-0.5)
  scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxDh.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxDh)
  return out.reshape(b, t, h, dh)


CAUSAL_BLOCK_MIN = 64  # query positions per block of `_causal_attention`, at least
CAUSAL_BLOCKS_MAX = 16  # and at most this many blocks (bounds the unrolled program)


def causal_block(t: int) -> int:
  """Query positions per block for causal self-attention over `t` positions."""
  return max(CAUSAL_BLOCK_MIN, -(-t // CAUSAL_BLOCKS_MAX))


def _causal_attention(config, q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, block: int):
  """Causal self-attention over positions 0..T-1, `block` query positions at a time.

  Equal to `_attention` under the mask u <= t, but query block [s, e) only scores keys
  [0, e): the blocks above the diagonal, which the mask would zero, are never computed.
  That halves the score matrix (and its softmax, the costly part on CPU) and the memory
  the backward pass keeps.
  """
  t = q_BxTxHxDh.shape[1]
  outs = []
  for start in range(0, t, block):
    end = min(start + block, t)
    mask_1xCxE = (jnp.arange(end)[None, :] <= jnp.arange(start, end)[:, None])[None]
    q, k, v = q_BxTxHxDh[:, start:end], k_BxTxKxDh[:, :end], v_BxTxKxDh[:, :end]
    outs.append(_attention(config, q, k, v, mask_1xCxE))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def _project(config, layer, x_BxTxD, positions_BxT, name: str):
  """Queries ("q") or keys ("k"): projection, bias, QK-norm and RoPE; values ("v"): projection
  and bias."""
  y = jnp.einsum("btd,dhk->bthk", x_BxTxD, layer[name])
  if config.qkv_bias:
    y = y + layer[f"{name}_bias"]
  if name == "v":
    return y
  if config.qk_norm:
    y = rms_norm(y, layer[f"{name}_norm"], config.norm_eps)
  return rope(y, positions_BxT, config.rope_theta)


def _take_positions(x_BxTx___: jax.Array, at_B: jax.Array) -> jax.Array:
  """x[b, at[b]] for every row, keeping a time axis of 1: [B, 1, ...]."""
  idx = at_B.reshape((-1, 1) + (1,) * (x_BxTx___.ndim - 2))
  return jnp.take_along_axis(x_BxTx___, idx, axis=1)


def _mlp(layer, x_BxTxD):
  gate = jnp.einsum("btd,df->btf", x_BxTxD, layer["gate"])
  up = jnp.einsum("btd,df->btf", x_BxTxD, layer["up"])
  return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, layer["down"])


def logits_from_hidden(config: ModelConfig, params: Params, x_BxTxD: jax.Array) -> jax.Array:
  """Final RMSNorm and LM head: float32 logits [B, T, V] from the last block's output.

  logits = rms_norm(x) @ W,  W = embed^T (tied) or head (untied). Each position is
  independent, so it can be applied to any slice of T (chunked log-probs rely on this).
  Reads only `final_norm` and `embed` (tied) or `head` (untied) from `params`.
  """
  x = rms_norm(x_BxTxD, params["final_norm"], config.norm_eps)
  if config.tie_embeddings:
    return jnp.einsum("btd,vd->btv", x, params["embed"], preferred_element_type=jnp.float32)
  return jnp.einsum("btd,dv->btv", x, params["head"], preferred_element_type=jnp.float32)


def next_token_logprobs(
  config: ModelConfig, params: Params, x_Bx1xD: jax.Array, tokens_BxC: jax.Array
) -> jax.Array:
  """log p(tokens[b, c] | row b), float32 [B, C], from the last block's output at the one
  position read per row (`forward_hidden(..., at_B=)` or `forward_with_cache_hidden(...,
  at_B=)`).

  The LM head and the softmax run on that position only, not on all T: what scoring a
  few candidate next tokens (the Meta-Refiner's "0".."n") needs.
  """
  logp_BxV = jax.nn.log_softmax(logits_from_hidden(config, params, x_Bx1xD)[:, 0], axis=-1)
  return jnp.take_along_axis(logp_BxV, tokens_BxC, axis=-1)


def head_params(config: ModelConfig, params: Params) -> Params:
  """The sub-pytree `logits_from_hidden` reads (final norm and output matrix)."""
  key = "embed" if config.tie_embeddings else "head"
  return {"final_norm": params["final_norm"], key: params[key]}


def _check_tokens(tokens) -> None:
  if tokens.ndim != 2:
    raise ValueError(f"tokens must be [batch, time], got shape {tokens.shape}")
  if not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"tokens must be integer ids, got dtype {tokens.dtype}")


def _decode(config, params, tokens_BxT, positions_BxT, attend, at_B) -> jax.Array:
  """Embeds the tokens and runs every decoder block: the residual stream after the last.

  `attend(i, q_BxTqxHxDh, k_BxTxKxDh, v_BxTxKxDh, at)` is block i's attention output
  [B, Tq, H, Dh] over the T new keys/values (or a cache after writing them there); `at` is
  `at_B` in the last block when it is given, else None.

  With `at_B`, the last block runs at one position per row (at[b]), the only one read after
  it, and the result is [B, 1, D]: every position's keys and values are still computed, but
  the query, attention output, output projection and MLP run on one position instead of T
  (Tq = 1), the same values as the full block there.
  """
  x = jnp.take(params["embed"], tokens_BxT, axis=0)
  for i, layer in enumerate(params["layers"]):
    at = at_B if i == len(params["layers"]) - 1 else None
    h = rms_norm(x, layer["attn_norm"], config.norm_eps)
    if at is None:
      q, k, v = (_project(config, layer, h, positions_BxT, name) for name in ("q", "k", "v"))
    else:
      k, v = (_project(config, layer, h, positions_BxT, name) for name in ("k", "v"))
      q = _project(config, layer, _take_positions(h, at), _take_positions(positions_BxT, at), "q")
      x = _take_positions(x, at)
    x = x + jnp.einsum("bthk,hkd->btd", attend(i, q, k, v, at), layer["o"])
    x = x + _mlp(layer, rms_norm(x, layer["mlp_norm"], config.norm_eps))
  return x


# --------------------------------------------------------------------------- forward


def forward_hidden(
  config: ModelConfig,
  params: Params,
  tokens_BxT: jax.Array,
  positions_BxT: jax.Array | None = None,
  at_B: jax.Array | None = None,
) -> jax.Array:
  """Causal forward pass without a cache, stopping before the final norm and LM head.

  forward(config, params, tokens) == logits_from_hidden(config, params, forward_hidden(...)).

  Args:
    config: the model's static config.
    params: the params pytree.
    tokens_BxT: integer token ids.
    positions_BxT: positions (default 0..T-1); token t attends to tokens u with
      position[u] <= position[t], so right padding never affects real tokens. With the
      default, attention is computed block by block below the diagonal
      (`_causal_attention`); explicit positions take the full masked path.
    at_B: if given, only the residual stream at index at[b] of each row is returned,
      [B, 1, D], and the last block runs only there (`_decode`): one block in
      n_layers less work when only one position is read, as in scoring next tokens.

  Returns:
    the residual stream after the last block, [B, T, D] in the params' dtype (the final
    RMSNorm is NOT applied; `logits_from_hidden` applies it); [B, 1, D] with `at_B`.
  """
  _check_tokens(tokens_BxT)
  causal = positions_BxT is None
  if causal:
    positions_BxT = jnp.broadcast_to(jnp.arange(tokens_BxT.shape[1]), tokens_BxT.shape)
  else:
    mask_BxTxT = positions_BxT[:, None, :] <= positions_BxT[:, :, None]
  block = causal_block(tokens_BxT.shape[1])

  def attend(i, q, k, v, at):
    if at is not None:
      mask_Bx1xT = positions_BxT[:, None, :] <= _take_positions(positions_BxT, at)[:, :, None]
      return _attention(config, q, k, v, mask_Bx1xT)
    if causal:
      return _causal_attention(config, q, k, v, block)
    return _attention(config, q, k, v, mask_BxTxT)

  return _decode(config, params, tokens_BxT, positions_BxT, attend, at_B)


def forward(
  config: ModelConfig,
  params: Params,
  tokens_BxT: jax.Array,
  positions_BxT: jax.Array | None = None,
) -> jax.Array:
  """Causal forward pass without a cache: float32 logits [B, T, V].

  The arguments are `forward_hidden`'s; right padding never affects real tokens.
  """
  x = forward_hidden(config, params, tokens_BxT, positions_BxT)
  return logits_from_hidden(config, params, x)


def init_cache(config: ModelConfig, batch: int, max_len: int, dtype=None) -> Cache:
  """An empty KV cache with `max_len` slots per row."""
  if max_len > config.max_seq_len:
    raise ValueError(f"cache length {max_len} exceeds model.max_seq_len={config.max_seq_len}")
  shape = (batch, max_len, config.n_kv_heads, config.head_dim)
  dtype = dtype or _dtype(config)
  return [
    {"k": jnp.zeros(shape, dtype), "v": jnp.zeros(shape, dtype)} for _ in range(config.n_layers)
  ]


CACHE_AXES = ("batch", "seq", "kv_heads", "head_dim")


def forward_with_cache(
  config: ModelConfig, params: Params, *args, **kwargs
) -> tuple[jax.Array, Cache]:
  """`forward_with_cache_hidden` (the same arguments) followed by the LM head on every
  position: (float32 logits [B, T, V], or [B, 1, V] with `at_B`; the updated cache)."""
  x, new_cache = forward_with_cache_hidden(config, params, *args, **kwargs)
  return logits_from_hidden(config, params, x), new_cache


def forward_with_cache_hidden(
  config: ModelConfig,
  params: Params,
  tokens_BxT: jax.Array,
  positions_BxT: jax.Array,
  cache: Cache,
  write_mask_BxT: jax.Array | None = None,
  attend_len: int | None = None,
  at_B: jax.Array | None = None,
) -> tuple[jax.Array, Cache]:
  """Runs new tokens against a KV cache, writing their keys/values at their positions.

  Prefill, incremental decoding and appending observations are all this call: each row's
  new tokens sit at that row's own positions, so ragged batches need no re-encoding.

  Args:
    config: the model's static config.
    params: the params pytree.
    tokens_BxT: new token ids.
    positions_BxT: their positions (= cache slots); must be < the cache length.
    cache: from `init_cache` (donate it under jit to update in place).
    write_mask_BxT: False for tokens that must not be written (padding, rows left alone).
    attend_len: static; attend only to the first `attend_len` slots (every position in
      `positions_BxT` must be below it). Decoding a short prefix of a long cache then
      reads `attend_len` slots per step instead of the whole cache.
    at_B: if given, the output is read at index at[b] of each row's new tokens only,
      [B, 1, D], and the last block's query, attention and MLP run only there (every
      new token's keys/values are still written to every layer's cache).

  Returns:
    (the last block's output [B, T, D] ([B, 1, D] with `at_B`), before the final norm,
    and the updated cache); `logits_from_hidden` turns the positions you need into logits.
  """
  _check_tokens(tokens_BxT)
  if len(cache) != len(params["layers"]):
    raise ValueError(f"cache has {len(cache)} layers, params {len(params['layers'])}")
  s = cache[0]["k"].shape[1]
  slots_BxT = positions_BxT
  if write_mask_BxT is not None:
    slots_BxT = jnp.where(write_mask_BxT, positions_BxT, s)  # out of range: dropped
  rows_Bx1 = jnp.arange(tokens_BxT.shape[0])[:, None]
  span = s if attend_len is None else min(attend_len, s)
  mask_BxTxS = jnp.arange(span)[None, None, :] <= positions_BxT[:, :, None]
  new_cache = []

  def attend(i, q, k, v, at):
    """Writes block i's new keys/values into its cache, then attends to the first `span` slots."""
    ck = cache[i]["k"].at[rows_Bx1, slots_BxT].set(k.astype(cache[i]["k"].dtype), mode="drop")
    cv = cache[i]["v"].at[rows_Bx1, slots_BxT].set(v.astype(cache[i]["v"].dtype), mode="drop")
    new_cache.append({"k": ck, "v": cv})
    mask = mask_BxTxS if at is None else _take_positions(mask_BxTxS, at)
    return _attention(config, q, ck[:, :span], cv[:, :span], mask)

  return _decode(config, params, tokens_BxT, positions_BxT, attend, at_B), new_cache
