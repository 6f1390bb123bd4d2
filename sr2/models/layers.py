"""The decoder's building blocks: RMSNorm, RoPE, attention (masked and blocked causal), the
q/k/v projections and the SwiGLU MLP. Pure functions of arrays and a layer's params.

Shapes use the suffixes of transformer.py: B batch, T new tokens, S cache slots, D
d_model, H query heads, K kv heads, G = H / K, Dh head width, F MLP width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


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


def attention(config, q_BxTxHxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS):
  b, t, h, dh = q_BxTxHxDh.shape
  q = q_BxTxHxDh.reshape(b, t, config.n_kv_heads, config.n_groups, dh)
  scores = jnp.einsum("btkgd,bskd->bkgts", q, k_BxSxKxDh, preferred_element_type=jnp.float32)
  scores = scores * (dh**-0.5)
  scores = jnp.where(mask_BxTxS[:, None, None], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v_BxSxKxDh.dtype)
  out = jnp.einsum("bkgts,bskd->btkgd", probs, v_BxSxKxDh)
  return out.reshape(b, t, h, dh)


CAUSAL_BLOCK_MIN = 64  # query positions per block of `causal_attention`, at least
CAUSAL_BLOCKS_MAX = 16  # and at most this many blocks (bounds the unrolled program)


def causal_block(t: int) -> int:
  """Query positions per block for causal self-attention over `t` positions."""
  return max(CAUSAL_BLOCK_MIN, -(-t // CAUSAL_BLOCKS_MAX))


def causal_attention(config, q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, block: int):
  """Causal self-attention over positions 0..T-1, `block` query positions at a time.

  Equal to `attention` under the mask u <= t, but query block [s, e) only scores keys
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
    outs.append(attention(config, q, k, v, mask_1xCxE))
  return outs[0] if len(outs) == 1 else jnp.concatenate(outs, axis=1)


def project(config, layer, x_BxTxD, positions_BxT, name: str):
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


def take_positions(x_BxTx___: jax.Array, at_B: jax.Array) -> jax.Array:
  """x[b, at[b]] for every row, keeping a time axis of 1: [B, 1, ...]."""
  idx = at_B.reshape((-1, 1) + (1,) * (x_BxTx___.ndim - 2))
  return jnp.take_along_axis(x_BxTx___, idx, axis=1)


def mlp(layer, x_BxTxD):
  gate = jnp.einsum("btd,df->btf", x_BxTxD, layer["gate"])
  up = jnp.einsum("btd,df->btf", x_BxTxD, layer["up"])
  return jnp.einsum("btf,fd->btd", jax.nn.silu(gate) * up, layer["down"])
