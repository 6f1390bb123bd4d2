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
from sr2.models.layers import (  # noqa: F401  (causal_block, rope, rms_norm: re-exported)
  attention,
  causal_attention,
  causal_block,
  mlp,
  project,
  rms_norm,
  rope,
  take_positions,
)
from sr2.parallel.rules import AxisRules

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
  if config.scan_layers:  # one array per name, layers on a leading (unsharded) axis
    n = config.n_layers
    params["layers"] = {k: ((n, *x), ("layers", *a)) for k, (x, a) in layer.items()}
  return params


def stack_layers(params: Params) -> Params:
  """The `scan_layers` layout of `params`: the per-layer dicts stacked on a leading axis."""
  layers = params["layers"]
  if isinstance(layers, dict):
    return params
  return {**params, "layers": jax.tree.map(lambda *xs: jnp.stack(xs), *layers)}


def unstack_layers(params: Params) -> Params:
  """The unrolled layout of `params`: a list of per-layer dicts."""
  layers = params["layers"]
  if not isinstance(layers, dict):
    return params
  n = len(next(iter(layers.values())))
  return {**params, "layers": [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(n)]}


def _layer(layers, i: int) -> Params:
  """Layer i's params in either layout."""
  return jax.tree.map(lambda a: a[i], layers) if isinstance(layers, dict) else layers[i]


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


def _block(config, layer, x_BxTxD, positions_BxT, attend, at) -> jax.Array:
  """One decoder block: attention (`attend(q, k, v, at)`) and the MLP, each with a residual.

  With `at` ([B] indices), the block runs at one position per row (at[b]) and returns
  [B, 1, D]: every position's keys and values are still computed, but the query, attention
  output, output projection and MLP run on one position (the same values as the full
  block there).
  """
  h = rms_norm(x_BxTxD, layer["attn_norm"], config.norm_eps)
  if at is None:
    q, k, v = (project(config, layer, h, positions_BxT, name) for name in ("q", "k", "v"))
  else:
    k, v = (project(config, layer, h, positions_BxT, name) for name in ("k", "v"))
    q = project(config, layer, take_positions(h, at), take_positions(positions_BxT, at), "q")
    x_BxTxD = take_positions(x_BxTxD, at)
  x = x_BxTxD + jnp.einsum("bthk,hkd->btd", attend(q, k, v, at), layer["o"])
  return x + mlp(layer, rms_norm(x, layer["mlp_norm"], config.norm_eps))


def _rows_sharded(x_BxTxD: jax.Array) -> jax.Array:
  """Pins the residual stream's rows to the mesh axes of the logical "batch" axis
  (`AxisRules`), when a mesh is set (`jax.set_mesh`), so that sharding propagation never
  trades the batch's sharding for the FSDP params' (which would replicate the activations)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x_BxTxD
  spec = AxisRules().spec(("batch", None, None), x_BxTxD.shape, mesh)
  return jax.lax.with_sharding_constraint(x_BxTxD, spec) if spec[0] else x_BxTxD


_REMAT_POLICIES = {
  "full": jax.checkpoint_policies.nothing_saveable,
  "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


def _decode(config, params, tokens_BxT, positions_BxT, attend, at_B, cached: bool) -> jax.Array:
  """Embeds the tokens and runs every decoder block: the residual stream after the last.

  `attend(i, q_BxTqxHxDh, k_BxTxKxDh, v_BxTxKxDh, at)` is block i's attention output
  [B, Tq, H, Dh] over the T new keys/values (or a cache after writing them there); `at` is
  `at_B` in the last block when it is given (`_block`), else None. `cached` says `attend`
  writes a cache: such blocks run one by one. Otherwise `attend` must not depend on i,
  and the blocks that run at every position are rematerialised as `config.remat` says and,
  with stacked layers (`config.scan_layers`), run as one `lax.scan`.
  """
  x = _rows_sharded(jnp.take(params["embed"], tokens_BxT, axis=0))
  layers, n = params["layers"], config.n_layers
  if cached:
    for i in range(n):
      at = at_B if i == n - 1 else None
      x = _block(config, _layer(layers, i), x, positions_BxT, lambda *a, i=i: attend(i, *a), at)
    return x

  def full(x, layer):  # a block at every position
    x = _block(config, layer, x, positions_BxT, lambda *a: attend(None, *a), None)
    return _rows_sharded(x)

  if config.remat != "none":
    # Unrolled, CSE would merge the recomputation back into the forward pass and keep every
    # block's activations (a TPU's gradient temporaries did not shrink at all); inside a
    # scan it cannot, and the barrier would only cost. XLA's CPU schedule keeps them even
    # so: on a CPU only scanned layers save memory (`scan_layers`).
    full = jax.checkpoint(
      full, policy=_REMAT_POLICIES[config.remat], prevent_cse=not isinstance(layers, dict)
    )
  m = n - 1 if at_B is not None else n  # blocks at every position
  if isinstance(layers, dict):
    x, _ = jax.lax.scan(lambda x, layer: (full(x, layer), None), x, _head(layers, m))
  else:
    for i in range(m):
      x = full(x, layers[i])
  if at_B is not None:
    x = _block(config, _layer(layers, n - 1), x, positions_BxT, lambda *a: attend(None, *a), at_B)
  return x


def _head(layers: Params, m: int) -> Params:
  """The first m of stacked layers (all of them without a copy)."""
  n = len(next(iter(layers.values())))
  return layers if m == n else jax.tree.map(lambda a: a[:m], layers)


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
      (`causal_attention`); explicit positions take the full masked path.
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
      mask_Bx1xT = positions_BxT[:, None, :] <= take_positions(positions_BxT, at)[:, :, None]
      return attention(config, q, k, v, mask_Bx1xT)
    if causal:
      return causal_attention(config, q, k, v, block)
    return attention(config, q, k, v, mask_BxTxT)

  return _decode(config, params, tokens_BxT, positions_BxT, attend, at_B, cached=False)


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
  if len(cache) != config.n_layers:
    raise ValueError(f"cache has {len(cache)} layers, the model {config.n_layers}")
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
    mask = mask_BxTxS if at is None else take_positions(mask_BxTxS, at)
    return attention(config, q, ck[:, :span], cv[:, :span], mask)

  return _decode(config, params, tokens_BxT, positions_BxT, attend, at_B, cached=True), new_cache
