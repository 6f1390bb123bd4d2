"""Next-token log-probs (and entropy) of a sequence, optionally without the [B, T, V] logits.

The plain path runs `transformer.forward` and keeps float32 logits [B, T-1, V] for the
backward pass: 4·B·T·V bytes, several GB at RL batch sizes with a 49k-152k vocabulary.
The chunked path runs the decoder to its last hidden state [B, T-1, D], then applies the
final norm and LM head to C positions at a time inside a `lax.map`; each chunk's head +
logsumexp is `jax.checkpoint`ed, so the backward pass recomputes that chunk's logits
instead of storing them. Peak logits memory drops from B·(T-1)·V to B·C·V floats; the
price is one more head matmul per chunk on the backward pass.

Both paths compute the same functions (up to float reassociation):
  logp[b, t]  = log softmax(logits[b, t])[x[b, t+1]],                t = 0 .. T-2
  entropy     = Σ_bt m_bt H_bt / max(Σ_bt m_bt, 1),  H_bt = −Σ_v p_v log p_v
with the NaN safety of `token_entropy` (masked rows zeroed before softmax, p_v = 0 terms
contribute 0). `target_logprobs` and `token_entropy` are the two per-position functions
every path (GRPO, SFT, the reference policy) is built from.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from sr2.models import transformer
from sr2.models.config import ModelConfig
from sr2.rl.grpo import masked_mean


def target_logprobs(logits_BxTxV: jax.Array, targets_BxT: jax.Array) -> jax.Array:
  """log softmax(logits)[target] in float32: logits_y − logsumexp(logits), [B, T].

  logits[:, t] must be the prediction for targets[:, t] (shift before calling).
  """
  logits = logits_BxTxV.astype(jnp.float32)
  picked_BxT = jnp.take_along_axis(logits, targets_BxT[..., None], axis=-1)[..., 0]
  return picked_BxT - jax.nn.logsumexp(logits, axis=-1)


def token_entropy(logits_BxTxV: jax.Array, mask_BxT: jax.Array) -> jax.Array:
  """H_t = −Σ_v p_v log p_v per position in float32, [B, T].

  Terms with p_v = 0 (e.g. −inf logits) contribute 0 and no NaN gradient; masked rows are
  zeroed first so their logits cannot leak NaN into the gradient.
  """
  logits = jnp.where(mask_BxT[..., None] != 0, logits_BxTxV.astype(jnp.float32), 0.0)
  logp_BxTxV = jax.nn.log_softmax(logits, axis=-1)
  p_BxTxV = jnp.exp(logp_BxTxV)
  safe_logp = jnp.where(p_BxTxV > 0, logp_BxTxV, 0.0)
  return -jnp.sum(p_BxTxV * safe_logp, axis=-1)


def _chunked(config, params, x_BxNxD, targets_BxN, mask_BxN, chunk: int, with_entropy: bool):
  """log p [B, N] and per-token entropy [B, N] (or None), C = `chunk` positions at a time."""
  b, n, d = x_BxNxD.shape
  num_chunks = -(-n // chunk)
  pad = num_chunks * chunk - n
  # Padded positions see zero hidden states and target 0; they are sliced off below.
  x_BxNxD = jnp.pad(x_BxNxD, ((0, 0), (0, pad), (0, 0)))
  targets_BxN = jnp.pad(targets_BxN, ((0, 0), (0, pad)))
  mask_BxN = jnp.pad(mask_BxN, ((0, 0), (0, pad)))
  x_LxBxCxD = x_BxNxD.reshape(b, num_chunks, chunk, d).transpose(1, 0, 2, 3)
  targets_LxBxC = targets_BxN.reshape(b, num_chunks, chunk).transpose(1, 0, 2)
  mask_LxBxC = mask_BxN.reshape(b, num_chunks, chunk).transpose(1, 0, 2)

  # Nothing inside is saved for the backward pass but the inputs; prevent_cse=False is
  # safe under lax.map (a scan) and lets XLA fuse the recomputation.
  @functools.partial(jax.checkpoint, prevent_cse=False)
  def one_chunk(head, x_BxCxD, targets_BxC, mask_BxC):
    logits_BxCxV = transformer.logits_from_hidden(config, head, x_BxCxD)
    logp_BxC = target_logprobs(logits_BxCxV, targets_BxC)
    if not with_entropy:
      return logp_BxC, None
    return logp_BxC, token_entropy(logits_BxCxV, mask_BxC)

  head = transformer.head_params(config, params)
  logp_LxBxC, h_LxBxC = jax.lax.map(
    lambda xs: one_chunk(head, *xs), (x_LxBxCxD, targets_LxBxC, mask_LxBxC)
  )
  unchunk = lambda a_LxBxC: a_LxBxC.transpose(1, 0, 2).reshape(b, -1)[:, :n]
  return unchunk(logp_LxBxC), None if h_LxBxC is None else unchunk(h_LxBxC)


def token_logprobs(
  config: ModelConfig,
  params,
  tokens_BxT: jax.Array,
  *,
  chunk_size: int | None = None,
  with_entropy: bool = False,
  entropy_mask_BxT: jax.Array | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """log p(tokens[:, t] | tokens[:, :t]) for t >= 1, optionally with the masked entropy.

  Column t of the result scores token t + 1.

  Args:
    config: the model's static config.
    params: the params pytree.
    tokens_BxT: integer token ids, T >= 2.
    chunk_size: None for the plain path (full [B, T-1, V] logits); otherwise the number
      of positions per head chunk (static, >= 1; clipped to T-1). Values and gradients
      match the plain path.
    with_entropy: also return the masked token-mean entropy of the predictive
      distributions (`token_entropy`).
    entropy_mask_BxT: 0/1 mask [B, T-1] aligned with the result (e.g. the GRPO loss
      mask); None = every position. Only valid with `with_entropy=True`.

  Returns:
    float32 log-probs [B, T-1], or (log-probs, scalar float32 entropy) if with_entropy.
  """
  if chunk_size is not None and (
    not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1
  ):
    raise ValueError(f"chunk_size={chunk_size!r}; expected None or an integer >= 1")
  if entropy_mask_BxT is not None and not with_entropy:
    raise ValueError("entropy_mask_BxT is only used with with_entropy=True")
  b, t = tokens_BxT.shape
  if t < 2:
    raise ValueError(f"tokens have T={t}; next-token log-probs need T >= 2")
  if entropy_mask_BxT is None:
    entropy_mask_BxT = jnp.ones((b, t - 1), jnp.int32)
  elif entropy_mask_BxT.shape != (b, t - 1):
    raise ValueError(
      f"entropy_mask_BxT has shape {entropy_mask_BxT.shape}; expected {(b, t - 1)} "
      "(aligned with the log-probs)"
    )
  inputs_BxN, targets_BxN = tokens_BxT[:, :-1], tokens_BxT[:, 1:]

  if chunk_size is None:
    logits_BxNxV = transformer.forward(config, params, inputs_BxN)
    logp_BxN = target_logprobs(logits_BxNxV, targets_BxN)
    if not with_entropy:
      return logp_BxN
    h_BxN = token_entropy(logits_BxNxV, entropy_mask_BxT)
    return logp_BxN, masked_mean(h_BxN, entropy_mask_BxT)

  x_BxNxD = transformer.forward_hidden(config, params, inputs_BxN)
  chunk = min(chunk_size, t - 1)
  logp_BxN, h_BxN = _chunked(
    config, params, x_BxNxD, targets_BxN, entropy_mask_BxT, chunk, with_entropy
  )
  if not with_entropy:
    return logp_BxN
  return logp_BxN, masked_mean(h_BxN, entropy_mask_BxT)
